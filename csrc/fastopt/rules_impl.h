/*
 * The update rules, generic over FO_T (float or double). Included by rules.h only, once per
 * element type, with FO_T, FO_NAME, FO_SQRT and FO_FABS defined. No include guard on purpose.
 *
 * Notation in the comments: p parameter, g gradient (negated when maximizing, plus wd*p for
 * coupled weight decay), lr the scheduled learning rate of this step.
 *
 * FO_FMA(a, b, c) = a*b + c rounded once. It is used wherever torch's operation is a fused
 * multiply-add (Tensor.add with alpha, addcmul) and the two terms can have opposite signs:
 * there a separately rounded product can overflow to inf while the sum is finite (centered
 * RMSprop's v - m^2 with a gradient of 2e21 in float32 gave inf - inf = NaN). Coupled weight
 * decay g + wd p, SGD's momentum and update, RMSprop's centered variance and momentum update,
 * Adadelta's update. Sums of terms of one sign (v + (1 - beta2) g^2) cannot overflow where
 * the exact sum does not, and keep their plain form.
 */

/* The gradient a rule works with: -g when maximizing, then coupled weight decay g + wd p
 * (rounded once, FO_FMA). Every rule starts with it (Adam applies only the sign here: its
 * weight decay may be decoupled). */
FO_DEVICE FO_T FO_NAME(fo_grad)(FO_T g, FO_T p, FO_T weight_decay, int flags)
{
    if (flags & FO_MAXIMIZE) g = -g;
    return weight_decay != 0 ? FO_FMA(weight_decay, p, g) : g;
}

/* torch's lerp: self + w (end - self) for |w| < 1/2, else end - (end - self)(1 - w). */
FO_DEVICE FO_T FO_NAME(fo_lerp)(FO_T self, FO_T end, FO_T w, FO_T one_minus_w, int small_w)
{
    return small_w ? self + w * (end - self) : end - (end - self) * one_minus_w;
}

/* ---------------------------------------------------------------- SGD
 * torch:      b = g (first step) | mu b + (1 - dampening) g;  d = g + mu b (nesterov) | b
 *             p -= lr d
 * sutskever:  v = mu v - lr g;  p += v  (nesterov: p += mu v - lr g)
 * state: s0 = momentum_buffer
 */
typedef struct {
    FO_T lr, momentum, one_minus_dampening, weight_decay;
    int flags;
} FO_NAME(fo_sgd_k);

FO_DEVICE void FO_NAME(fo_sgd_rule)(fo_index i, FO_T *FO_RESTRICT p, const FO_T *FO_RESTRICT g_,
                                    FO_T *FO_RESTRICT s0, FO_T *FO_RESTRICT s1,
                                    FO_T *FO_RESTRICT s2, FO_NAME(fo_sgd_k) k)
{
    (void)s1; (void)s2;
    FO_T g = FO_NAME(fo_grad)(g_[i], p[i], k.weight_decay, k.flags);
    if (k.flags & FO_MOMENTUM) {
        if (k.flags & FO_SUTSKEVER) {
            FO_T v = FO_FMA(-k.lr, g, k.momentum * s0[i]);
            s0[i] = v;
            p[i] = (k.flags & FO_NESTEROV) ? p[i] + FO_FMA(k.momentum, v, -k.lr * g) : p[i] + v;
            return;
        }
        FO_T b = (k.flags & FO_FIRST) ? g : FO_FMA(k.one_minus_dampening, g, k.momentum * s0[i]);
        s0[i] = b;
        g = (k.flags & FO_NESTEROV) ? FO_FMA(k.momentum, b, g) : b;
    }
    p[i] = FO_FMA(-k.lr, g, p[i]);
}

/* ---------------------------------------------------------------- Adagrad
 * s += g^2;  p -= clr g / (sqrt(s) + eps),  clr = lr / (1 + (t - 1) lr_decay)
 * eps_in_sqrt:  p -= clr g / sqrt(s + eps)
 * state: s0 = sum
 */
typedef struct {
    FO_T clr, eps, weight_decay;
    int flags;
} FO_NAME(fo_adagrad_k);

FO_DEVICE void FO_NAME(fo_adagrad_rule)(fo_index i, FO_T *FO_RESTRICT p, const FO_T *FO_RESTRICT g_,
                                        FO_T *FO_RESTRICT s0, FO_T *FO_RESTRICT s1,
                                        FO_T *FO_RESTRICT s2, FO_NAME(fo_adagrad_k) k)
{
    (void)s1; (void)s2;
    FO_T g = FO_NAME(fo_grad)(g_[i], p[i], k.weight_decay, k.flags);
    FO_T s = s0[i] + g * g;
    s0[i] = s;
    FO_T std = (k.flags & FO_EPS_IN_SQRT) ? FO_SQRT(s + k.eps) : FO_SQRT(s) + k.eps;
    p[i] = p[i] + (-k.clr) * (g / std);
}

/* ---------------------------------------------------------------- RMSprop
 * v = alpha v + (1 - alpha) g^2
 * centered: m = lerp(m, g, 1 - alpha);  a = sqrt(v - m^2) + eps   else a = sqrt(v) + eps
 * momentum: b = mu b + g / a;  p -= lr b      else p -= lr g / a
 * eps_in_sqrt: a = sqrt(v (- m^2) + eps)
 * state: s0 = square_avg, s1 = momentum_buffer, s2 = grad_avg
 */
typedef struct {
    FO_T lr, alpha, one_minus_alpha, eps, weight_decay, momentum;
    int flags;
} FO_NAME(fo_rmsprop_k);

FO_DEVICE void FO_NAME(fo_rmsprop_rule)(fo_index i, FO_T *FO_RESTRICT p, const FO_T *FO_RESTRICT g_,
                                        FO_T *FO_RESTRICT s0, FO_T *FO_RESTRICT s1,
                                        FO_T *FO_RESTRICT s2, FO_NAME(fo_rmsprop_k) k)
{
    FO_T g = FO_NAME(fo_grad)(g_[i], p[i], k.weight_decay, k.flags);
    FO_T v = s0[i] * k.alpha + k.one_minus_alpha * g * g;
    s0[i] = v;
    if (k.flags & FO_CENTERED) {
        FO_T m = FO_NAME(fo_lerp)(s2[i], g, k.one_minus_alpha, k.alpha, k.one_minus_alpha < (FO_T)0.5);
        s2[i] = m;
        v = FO_FMA(-m, m, v);
    }
    FO_T a = (k.flags & FO_EPS_IN_SQRT) ? FO_SQRT(v + k.eps) : FO_SQRT(v) + k.eps;
    if (k.flags & FO_MOMENTUM) {
        FO_T b = s1[i] * k.momentum + g / a;
        s1[i] = b;
        p[i] = FO_FMA(-k.lr, b, p[i]);
    } else {
        p[i] = p[i] + (-k.lr) * (g / a);
    }
}

/* ---------------------------------------------------------------- Adam / AdamW
 * decoupled (AdamW): p *= 1 - lr wd        else g += wd p
 * m = lerp(m, g, 1 - beta1);  v = beta2 v + (1 - beta2) g^2;  amsgrad: vmax = max(vmax, v)
 * p -= step_size m / (sqrt(v or vmax) / bc2_sqrt + eps)
 * with step_size = lr / (1 - beta1^t), bc2_sqrt = sqrt(1 - beta2^t)
 * state: s0 = exp_avg, s1 = exp_avg_sq, s2 = max_exp_avg_sq
 */
typedef struct {
    FO_T step_size, beta1, one_minus_beta1, beta2, one_minus_beta2, bc2_sqrt, eps;
    FO_T weight_decay, decay_factor;
    int flags;
} FO_NAME(fo_adam_k);

/* The moments of Adam and RAdam: decoupled, the parameter x = p (1 - lr wd) (`decay_factor`),
 * else the gradient g + wd x; then m = lerp(m, g, 1 - beta1) and v = beta2 v + (1 - beta2) g^2,
 * stored in s0[i] and s1[i]. Returns x; *m_out, *v_out: the new moments. */
FO_DEVICE FO_T FO_NAME(fo_moments)(fo_index i, FO_T p, FO_T g, FO_T *FO_RESTRICT s0,
                                   FO_T *FO_RESTRICT s1, FO_T beta1, FO_T one_minus_beta1,
                                   FO_T beta2, FO_T one_minus_beta2, FO_T weight_decay,
                                   FO_T decay_factor, int flags, FO_T *m_out, FO_T *v_out)
{
    if (flags & FO_MAXIMIZE) g = -g;
    if (flags & FO_DECOUPLED) p = p * decay_factor;
    else if (weight_decay != 0) g = FO_FMA(weight_decay, p, g);
    FO_T m = FO_NAME(fo_lerp)(s0[i], g, one_minus_beta1, beta1, one_minus_beta1 < (FO_T)0.5);
    FO_T v = s1[i] * beta2 + one_minus_beta2 * g * g;
    s0[i] = m;
    s1[i] = v;
    *m_out = m;
    *v_out = v;
    return p;
}

/* The way fo_moments' loop-invariant branches go on most steps: no maximize, no coupled weight
 * decay, the lerp taken from the moment (beta1 > 1/2). A CPU loop tests this once per call and
 * runs that case as an instance of its own, in which the tested conditions fold away
 * (FO_PLAIN_<opt> in rules.h); the other cases keep the branches. */
#if !defined(__CUDACC__) && !defined(__CUDACC_RTC__)   /* CPU loops only (unused on the GPU) */
FO_DEVICE int FO_NAME(fo_moments_plain)(int flags, FO_T weight_decay, FO_T one_minus_beta1)
{
    return !(flags & FO_MAXIMIZE) && ((flags & FO_DECOUPLED) || weight_decay == 0)
           && one_minus_beta1 < (FO_T)0.5;
}
#endif

FO_DEVICE void FO_NAME(fo_adam_rule)(fo_index i, FO_T *FO_RESTRICT p, const FO_T *FO_RESTRICT g_,
                                     FO_T *FO_RESTRICT s0, FO_T *FO_RESTRICT s1,
                                     FO_T *FO_RESTRICT s2, FO_NAME(fo_adam_k) k)
{
    FO_T m, v;
    FO_T x = FO_NAME(fo_moments)(i, p[i], g_[i], s0, s1, k.beta1, k.one_minus_beta1, k.beta2,
                                 k.one_minus_beta2, k.weight_decay, k.decay_factor, k.flags,
                                 &m, &v);
    if (k.flags & FO_AMSGRAD) {
        v = FO_MAX(s2[i], v);
        s2[i] = v;
    }
    FO_T denom = FO_SQRT(v) / k.bc2_sqrt + k.eps;
    p[i] = x + (-k.step_size) * (m / denom);
}

/* ---------------------------------------------------------------- Adadelta
 * v = rho v + (1 - rho) g^2;  d = sqrt(u + eps) / sqrt(v + eps) g;  u = rho u + (1 - rho) d^2
 * p -= lr d
 * state: s0 = square_avg, s1 = acc_delta
 */
typedef struct {
    FO_T lr, rho, one_minus_rho, eps, weight_decay;
    int flags;
} FO_NAME(fo_adadelta_k);

FO_DEVICE void FO_NAME(fo_adadelta_rule)(fo_index i, FO_T *FO_RESTRICT p, const FO_T *FO_RESTRICT g_,
                                         FO_T *FO_RESTRICT s0, FO_T *FO_RESTRICT s1,
                                         FO_T *FO_RESTRICT s2, FO_NAME(fo_adadelta_k) k)
{
    (void)s2;
    FO_T g = FO_NAME(fo_grad)(g_[i], p[i], k.weight_decay, k.flags);
    FO_T v = s0[i] * k.rho + k.one_minus_rho * g * g;
    s0[i] = v;
    FO_T std = FO_SQRT(v + k.eps);
    FO_T d = FO_SQRT(s1[i] + k.eps) / std * g;
    s1[i] = s1[i] * k.rho + k.one_minus_rho * d * d;
    p[i] = FO_FMA(-k.lr, d, p[i]);
}

/* ---------------------------------------------------------------- Adamax
 * m = lerp(m, g, 1 - beta1);  u = max(beta2 u, |g| + eps);  p -= clr m / u,
 * clr = lr / (1 - beta1^t)
 * state: s0 = exp_avg, s1 = exp_inf
 */
typedef struct {
    FO_T clr, beta1, one_minus_beta1, beta2, eps, weight_decay;
    int flags;
} FO_NAME(fo_adamax_k);

FO_DEVICE void FO_NAME(fo_adamax_rule)(fo_index i, FO_T *FO_RESTRICT p, const FO_T *FO_RESTRICT g_,
                                       FO_T *FO_RESTRICT s0, FO_T *FO_RESTRICT s1,
                                       FO_T *FO_RESTRICT s2, FO_NAME(fo_adamax_k) k)
{
    (void)s2;
    FO_T g = FO_NAME(fo_grad)(g_[i], p[i], k.weight_decay, k.flags);
    FO_T m = FO_NAME(fo_lerp)(s0[i], g, k.one_minus_beta1, k.beta1, k.one_minus_beta1 < (FO_T)0.5);
    FO_T a = s1[i] * k.beta2;
    FO_T b = FO_FABS(g) + k.eps;
    FO_T u = FO_MAX(a, b);
    s0[i] = m;
    s1[i] = u;
    p[i] = p[i] + (-k.clr) * (m / u);
}

/* ---------------------------------------------------------------- Lion
 * lion-pytorch:  p *= 1 - lr wd;  c = beta1 m + (1 - beta1) g;  p -= lr sign(c)  (sign 0 at 0
 *                and NaN, as torch's sgn);  m = beta2 m + (1 - beta2) g
 * state: s0 = exp_avg
 */
typedef struct {
    FO_T lr, beta1, one_minus_beta1, beta2, one_minus_beta2, decay_factor;
    int flags;
} FO_NAME(fo_lion_k);

FO_DEVICE void FO_NAME(fo_lion_rule)(fo_index i, FO_T *FO_RESTRICT p, const FO_T *FO_RESTRICT g_,
                                     FO_T *FO_RESTRICT s0, FO_T *FO_RESTRICT s1,
                                     FO_T *FO_RESTRICT s2, FO_NAME(fo_lion_k) k)
{
    (void)s1;
    (void)s2;
    FO_T g = FO_NAME(fo_grad)(g_[i], p[i], (FO_T)0, k.flags);
    FO_T m = s0[i];
    FO_T c = FO_FMA(k.one_minus_beta1, g, m * k.beta1);
    FO_T sign = (FO_T)((c > (FO_T)0) - (c < (FO_T)0));
    s0[i] = FO_FMA(k.one_minus_beta2, g, m * k.beta2);
    p[i] = FO_FMA(-k.lr, sign, p[i] * k.decay_factor);
}

/* ---------------------------------------------------------------- Schedule-Free AdamW
 * schedulefree.AdamWScheduleFree (Defazio et al. 2024), at the gradient point y = p:
 *   v = beta2 v + (1 - beta2) g^2;  d = g / (sqrt(v / bc2) + eps) + wd y
 *   y = lerp(y, z, ckp1) + lr (beta1 (1 - ckp1) - 1) d;  z -= lr d  (with the old z in lerp)
 * lr is the warmed-up lr of the step, bc2 = 1 - beta2^t, ckp1 the averaging weight c_t (all
 * computed once per step from the group's k, weight_sum and lr_max; see the optimizer table).
 * state: s0 = z, s1 = exp_avg_sq
 */
typedef struct {
    FO_T lr, ckp1, one_minus_ckp1, small_ckp1, y_coef, beta2, one_minus_beta2, bc2, eps,
        weight_decay;
    int flags;
} FO_NAME(fo_schedule_free_adamw_k);

FO_DEVICE void FO_NAME(fo_schedule_free_adamw_rule)(fo_index i, FO_T *FO_RESTRICT p,
                                                    const FO_T *FO_RESTRICT g_,
                                                    FO_T *FO_RESTRICT s0, FO_T *FO_RESTRICT s1,
                                                    FO_T *FO_RESTRICT s2,
                                                    FO_NAME(fo_schedule_free_adamw_k) k)
{
    (void)s2;
    FO_T g = g_[i], y = p[i], z = s0[i];
    FO_T v = s1[i] * k.beta2 + k.one_minus_beta2 * g * g;
    s1[i] = v;
    FO_T d = g / (FO_SQRT(v / k.bc2) + k.eps);
    if (k.weight_decay != 0) d = FO_FMA(k.weight_decay, y, d);
    y = FO_NAME(fo_lerp)(y, z, k.ckp1, k.one_minus_ckp1, k.small_ckp1 != 0);
    p[i] = FO_FMA(k.y_coef, d, y);
    s0[i] = FO_FMA(-k.lr, d, z);
}

/* ---------------------------------------------------------------- Schedule-Free SGD
 * schedulefree.SGDScheduleFree, at y = p:  d = g + wd y;
 *   y = lerp(y, z, ckp1) + lr (momentum (1 - ckp1) - 1) d;  z -= lr d
 * state: s0 = z
 */
typedef struct {
    FO_T lr, ckp1, one_minus_ckp1, small_ckp1, y_coef, weight_decay;
    int flags;
} FO_NAME(fo_schedule_free_sgd_k);

FO_DEVICE void FO_NAME(fo_schedule_free_sgd_rule)(fo_index i, FO_T *FO_RESTRICT p,
                                                  const FO_T *FO_RESTRICT g_,
                                                  FO_T *FO_RESTRICT s0, FO_T *FO_RESTRICT s1,
                                                  FO_T *FO_RESTRICT s2,
                                                  FO_NAME(fo_schedule_free_sgd_k) k)
{
    (void)s1;
    (void)s2;
    FO_T y = p[i], z = s0[i];
    FO_T d = FO_NAME(fo_grad)(g_[i], y, k.weight_decay, k.flags);
    y = FO_NAME(fo_lerp)(y, z, k.ckp1, k.one_minus_ckp1, k.small_ckp1 != 0);
    p[i] = FO_FMA(k.y_coef, d, y);
    s0[i] = FO_FMA(-k.lr, d, z);
}

/* ---------------------------------------------------------------- Schedule-Free RAdam
 * schedulefree.RAdamScheduleFree, at y = p:  v = beta2 v + (1 - beta2) g^2;
 * rectify (rho_t > 4):  d = g / (sqrt(v / bc2) + eps) + wd y      else:  d = g + wd y
 * y = lerp(y, z, ckp1) + lr (beta1 (1 - ckp1) - 1) d;  z -= lr d
 * lr is the rectified lr of the step (0 or the group's lr while rho_t <= 4, silent_sgd_phase);
 * see the optimizer table.  state: s0 = z, s1 = exp_avg_sq
 */
typedef struct {
    FO_T lr, ckp1, one_minus_ckp1, small_ckp1, y_coef, beta2, one_minus_beta2, bc2, eps,
        weight_decay;
    int flags;
} FO_NAME(fo_schedule_free_radam_k);

FO_DEVICE void FO_NAME(fo_schedule_free_radam_rule)(fo_index i, FO_T *FO_RESTRICT p,
                                                    const FO_T *FO_RESTRICT g_,
                                                    FO_T *FO_RESTRICT s0, FO_T *FO_RESTRICT s1,
                                                    FO_T *FO_RESTRICT s2,
                                                    FO_NAME(fo_schedule_free_radam_k) k)
{
    (void)s2;
    FO_T g = g_[i], y = p[i], z = s0[i];
    FO_T v = s1[i] * k.beta2 + k.one_minus_beta2 * g * g;
    s1[i] = v;
    FO_T d = (k.flags & FO_RECTIFY) ? g / (FO_SQRT(v / k.bc2) + k.eps) : g;
    if (k.weight_decay != 0) d = FO_FMA(k.weight_decay, y, d);
    y = FO_NAME(fo_lerp)(y, z, k.ckp1, k.one_minus_ckp1, k.small_ckp1 != 0);
    p[i] = FO_FMA(k.y_coef, d, y);
    s0[i] = FO_FMA(-k.lr, d, z);
}

/* ---------------------------------------------------------------- RAdam
 * decoupled: p *= 1 - lr wd        else g += wd p
 * m = lerp(m, g, 1 - beta1);  v = beta2 v + (1 - beta2) g^2
 * rectify (rho_t > 5):  p -= m / bc1 * lr * (bc2_sqrt / (sqrt(v) + eps)) * rect
 * else:                 p -= m / bc1 * lr
 * with bc1 = 1 - beta1^t, bc2_sqrt = sqrt(1 - beta2^t) and the per-step rectification term
 * rect = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
 * state: s0 = exp_avg, s1 = exp_avg_sq
 */
typedef struct {
    FO_T lr, bc1, beta1, one_minus_beta1, beta2, one_minus_beta2, bc2_sqrt, rect, eps;
    FO_T weight_decay, decay_factor;
    int flags;
} FO_NAME(fo_radam_k);

FO_DEVICE void FO_NAME(fo_radam_rule)(fo_index i, FO_T *FO_RESTRICT p, const FO_T *FO_RESTRICT g_,
                                      FO_T *FO_RESTRICT s0, FO_T *FO_RESTRICT s1,
                                      FO_T *FO_RESTRICT s2, FO_NAME(fo_radam_k) k)
{
    (void)s2;
    FO_T m, v;
    FO_T x = FO_NAME(fo_moments)(i, p[i], g_[i], s0, s1, k.beta1, k.one_minus_beta1, k.beta2,
                                 k.one_minus_beta2, k.weight_decay, k.decay_factor, k.flags,
                                 &m, &v);
    FO_T d = m / k.bc1 * k.lr;
    if (k.flags & FO_RECTIFY) d = d * (k.bc2_sqrt / (FO_SQRT(v) + k.eps)) * k.rect;
    p[i] = x - d;
}

/* ---------------------------------------------------------------- Rprop
 * s = sign(g prev) (0 at NaN, as torch's sign);  s > 0: step_size *= etaplus;
 * s < 0: step_size *= etaminus and g = 0;  s = 0: step_size unchanged
 * step_size = clamp(step_size, step_size_min, step_size_max)  (NaN stays NaN; min > max gives max)
 * p -= sign(g) step_size;  prev = g
 * state: s0 = prev, s1 = step_size (starts at lr)
 */
typedef struct {
    FO_T etaminus, etaplus, step_size_min, step_size_max;
    int flags;
} FO_NAME(fo_rprop_k);

FO_DEVICE void FO_NAME(fo_rprop_rule)(fo_index i, FO_T *FO_RESTRICT p, const FO_T *FO_RESTRICT g_,
                                      FO_T *FO_RESTRICT s0, FO_T *FO_RESTRICT s1,
                                      FO_T *FO_RESTRICT s2, FO_NAME(fo_rprop_k) k)
{
    (void)s2;
    FO_T g = FO_NAME(fo_grad)(g_[i], p[i], (FO_T)0, k.flags);
    FO_T prod = g * s0[i];
    FO_T ss = s1[i];
    if (prod > (FO_T)0) {
        ss = ss * k.etaplus;
    } else if (prod < (FO_T)0) {
        ss = ss * k.etaminus;
        g = (FO_T)0;
    }
    ss = ss < k.step_size_min ? k.step_size_min : ss;
    ss = ss > k.step_size_max ? k.step_size_max : ss;
    s1[i] = ss;
    FO_T sign = (FO_T)((g > (FO_T)0) - (g < (FO_T)0));
    s0[i] = g;
    p[i] = p[i] - sign * ss;
}

/* ---------------------------------------------------------------- NAdam
 * decoupled: p *= 1 - lr wd        else g += wd p
 * m = lerp(m, g, 1 - beta1);  v = beta2 v + (1 - beta2) g^2;  d = sqrt(v / bc2) + eps
 * p += grad_coef g / d;  p += avg_coef m / d   (torch's two addcdiv, in its order)
 * with bc2 = 1 - beta2^t and, from the momentum cache mu_t, mu_{t+1} and the product
 * mu_product = mu_1 ... mu_t (computed once per step), grad_coef = -lr (1 - mu_t) /
 * (1 - mu_product), avg_coef = -lr mu_{t+1} / (1 - mu_product mu_{t+1})
 * state: s0 = exp_avg, s1 = exp_avg_sq
 */
typedef struct {
    FO_T beta1, one_minus_beta1, beta2, one_minus_beta2, bc2, eps, weight_decay, decay_factor;
    FO_T grad_coef, avg_coef;
    int flags;
} FO_NAME(fo_nadam_k);

FO_DEVICE void FO_NAME(fo_nadam_rule)(fo_index i, FO_T *FO_RESTRICT p, const FO_T *FO_RESTRICT g_,
                                      FO_T *FO_RESTRICT s0, FO_T *FO_RESTRICT s1,
                                      FO_T *FO_RESTRICT s2, FO_NAME(fo_nadam_k) k)
{
    (void)s2;
    FO_T m, v;
    /* the gradient the moments see: decoupled decay scales p instead */
    FO_T g = FO_NAME(fo_grad)(g_[i], p[i], (k.flags & FO_DECOUPLED) ? (FO_T)0 : k.weight_decay,
                              k.flags);
    FO_T x = FO_NAME(fo_moments)(i, p[i], g_[i], s0, s1, k.beta1, k.one_minus_beta1, k.beta2,
                                 k.one_minus_beta2, k.weight_decay, k.decay_factor, k.flags,
                                 &m, &v);
    FO_T d = FO_SQRT(v / k.bc2) + k.eps;
    x = x + k.grad_coef * (g / d);
    p[i] = x + k.avg_coef * (m / d);
}

/* ---------------------------------------------------------------- ASGD
 * g (+ wd p);  p = p (1 - lambd eta) - eta g;  average (mu != 1): ax += mu (p - ax), else ax = p
 * eta and mu are the state's per-parameter scalars as the previous step set them (computed once
 * per step: eta = lr / (1 + lambd lr t)^alpha, mu = 1 / max(1, t - t0))
 * state: s0 = ax
 */
typedef struct {
    FO_T eta, decay, mu, weight_decay;
    int flags;
} FO_NAME(fo_asgd_k);

FO_DEVICE void FO_NAME(fo_asgd_rule)(fo_index i, FO_T *FO_RESTRICT p, const FO_T *FO_RESTRICT g_,
                                     FO_T *FO_RESTRICT s0, FO_T *FO_RESTRICT s1,
                                     FO_T *FO_RESTRICT s2, FO_NAME(fo_asgd_k) k)
{
    (void)s1;
    (void)s2;
    FO_T g = FO_NAME(fo_grad)(g_[i], p[i], k.weight_decay, k.flags);
    FO_T x = FO_FMA(-k.eta, g, p[i] * k.decay);
    p[i] = x;
    if (k.flags & FO_AVERAGE) {
        FO_T a = s0[i];
        s0[i] = a + (x - a) * k.mu;
    } else {
        s0[i] = x;
    }
}
