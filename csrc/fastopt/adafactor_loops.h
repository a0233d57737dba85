/*
 * fastopt/adafactor_loops.h -- the loops of csrc/adafactor.c for one element type; internal.
 * Included once per type with FO_AF_T (the element type), FO_AF_SFX (f32 or f64), FO_AF_SQRT
 * and FO_AF_FMA (its sqrt and fma) defined. See fastopt/adafactor.h for the equations.
 */
#define FO_AF_CAT_(a, b) a##_##b
#define FO_AF_CAT(a, b) FO_AF_CAT_(a, b)
#define FO_AF_FN(name) FO_AF_CAT(fo_af_##name, FO_AF_SFX)

/* torch's lerp (LerpKernel.cpp's vector form): self + w (end - self), or for |w| >= 1/2
 * end + (w - 1)(end - self), as one fma. */
static inline FO_AF_T FO_AF_FN(lerp)(FO_AF_T self, FO_AF_T end, FO_AF_T w)
{
    const int small = w < (FO_AF_T)0.5 && w > (FO_AF_T)-0.5;
    return FO_AF_FMA(small ? w : w - (FO_AF_T)1, end - self, small ? self : end);
}

/* Rows [lo, hi) of the (rows, cols) matrices g, p: each row's mean of g^2 lerped into
 * row_var[i], each g^2 added to part[j] (double), and the sum of p^2 returned. */
FO_CLONES static double FO_AF_FN(rows)(const FO_AF_T *g, const FO_AF_T *p, FO_AF_T *row_var,
                                       double *part, int64_t cols, int64_t lo, int64_t hi,
                                       FO_AF_T w)
{
    double psq = 0.0;
    for (int64_t i = lo; i < hi; ++i) {
        const FO_AF_T *gi = g + i * cols, *pi = p + i * cols;
        double rs = 0.0, ps = 0.0;
        FO_PRAGMA(omp simd reduction(+ : rs, ps))
        for (int64_t j = 0; j < cols; ++j) {
            const double x = (double)gi[j], y = (double)pi[j];
            const double x2 = x * x;
            rs += x2;
            part[j] += x2;
            ps += y * y;
        }
        row_var[i] = FO_AF_FN(lerp)(row_var[i], (FO_AF_T)(rs / (double)cols), w);
        psq += ps;
    }
    return psq;
}

/* col_var[j] = lerp(col_var[j], (sum of the n_parts parts' column j) / rows, w). */
static void FO_AF_FN(cols)(FO_AF_T *col_var, const double *parts, int n_parts, int64_t cols,
                           int64_t rows, FO_AF_T w)
{
    for (int64_t j = 0; j < cols; ++j) {
        double s = 0.0;
        for (int t = 0; t < n_parts; ++t)
            s += parts[(int64_t)t * cols + j];
        col_var[j] = FO_AF_FN(lerp)(col_var[j], (FO_AF_T)(s / (double)rows), w);
    }
}

/* max(mean of a batch's row factor, eps1), as torch's row_var.mean(-2).clamp_(min=eps1). */
static FO_AF_T FO_AF_FN(row_mean)(const FO_AF_T *row_var, int64_t rows, FO_AF_T eps1)
{
    double s = 0.0;
    for (int64_t i = 0; i < rows; ++i)
        s += (double)row_var[i];
    const FO_AF_T mean = (FO_AF_T)(s / (double)rows);
    return mean < eps1 ? eps1 : mean;
}

/* U of global rows [lo, hi) (row i in batch i / rows): U = g / sqrt(max(V, eps1^2)) with
 * V = (row_var_i col_var_j) / max(mean row_var, eps1). update == 0: returns the sum of U^2;
 * else p = fma(U, s, p * decay) and returns 0. */
FO_CLONES static double FO_AF_FN(factored_u)(FO_AF_T *p, const FO_AF_T *g,
                                             const FO_AF_T *row_var, const FO_AF_T *col_var,
                                             int64_t rows, int64_t cols, int64_t lo,
                                             int64_t hi, FO_AF_T eps1, FO_AF_T eps1sq,
                                             int update, FO_AF_T decay, FO_AF_T s)
{
    double usq = 0.0;
    int64_t batch = -1;
    FO_AF_T mean = 0;
    for (int64_t i = lo; i < hi; ++i) {
        if (i / rows != batch) {
            batch = i / rows;
            mean = FO_AF_FN(row_mean)(row_var + batch * rows, rows, eps1);
        }
        const FO_AF_T r = row_var[i];
        const FO_AF_T *c = col_var + batch * cols;
        const FO_AF_T *gi = g + i * cols;
        if (!update) {
            double us = 0.0;
            FO_PRAGMA(omp simd reduction(+ : us))
            for (int64_t j = 0; j < cols; ++j) {
                FO_AF_T v = (r * c[j]) / mean;
                v = v < eps1sq ? eps1sq : v;
                const double u = (double)(gi[j] * ((FO_AF_T)1 / FO_AF_SQRT(v)));
                us += u * u;
            }
            usq += us;
        } else {
            FO_AF_T *pi = p + i * cols;
            FO_PRAGMA(omp simd)
            for (int64_t j = 0; j < cols; ++j) {
                FO_AF_T v = (r * c[j]) / mean;
                v = v < eps1sq ? eps1sq : v;
                const FO_AF_T u = gi[j] * ((FO_AF_T)1 / FO_AF_SQRT(v));
                pi[j] = FO_AF_FMA(u, s, pi[j] * decay);
            }
        }
    }
    return usq;
}

/* Vector pass 1 on [lo, hi): variance = lerp(variance, g*g, w); returns the sum of p^2 and
 * adds the sum of U^2 to *usq. */
FO_CLONES static double FO_AF_FN(vector_moment)(const FO_AF_T *p, const FO_AF_T *g,
                                                FO_AF_T *var, int64_t lo, int64_t hi,
                                                FO_AF_T w, FO_AF_T eps1sq, double *usq)
{
    double ps = 0.0, us = 0.0;
    const int small = w < (FO_AF_T)0.5 && w > (FO_AF_T)-0.5;
    const FO_AF_T coeff = small ? w : w - (FO_AF_T)1;
    FO_PRAGMA(omp simd reduction(+ : ps, us))
    for (int64_t i = lo; i < hi; ++i) {
        const FO_AF_T g2 = g[i] * g[i];
        FO_AF_T v = FO_AF_FMA(coeff, g2 - var[i], small ? var[i] : g2);
        var[i] = v;
        v = v < eps1sq ? eps1sq : v;
        const double u = (double)(g[i] * ((FO_AF_T)1 / FO_AF_SQRT(v)));
        const double y = (double)p[i];
        ps += y * y;
        us += u * u;
    }
    *usq += us;
    return ps;
}

/* Vector pass 2 on [lo, hi): p = fma(U, s, p * decay). */
FO_CLONES static void FO_AF_FN(vector_update)(FO_AF_T *p, const FO_AF_T *g, const FO_AF_T *var,
                                              int64_t lo, int64_t hi, FO_AF_T eps1sq,
                                              FO_AF_T decay, FO_AF_T s)
{
    FO_PRAGMA(omp simd)
    for (int64_t i = lo; i < hi; ++i) {
        FO_AF_T v = var[i];
        v = v < eps1sq ? eps1sq : v;
        const FO_AF_T u = g[i] * ((FO_AF_T)1 / FO_AF_SQRT(v));
        p[i] = FO_AF_FMA(u, s, p[i] * decay);
    }
}

/* alpha and the update's scale s = -alpha / denom (negated under maximize: U of -g is -U of
 * g), from the sums of squares, as torch computes them (the norms rounded to the type). */
static FO_AF_T FO_AF_FN(scale)(double psq, double usq, int64_t numel,
                               const fo_adafactor_hp *hp, fo_adafactor_out *out)
{
    const double root = sqrt((double)numel);
    double rms = (double)(FO_AF_T)sqrt(psq) / root;
    double alpha = (rms > hp->eps2 ? rms : hp->eps2) * hp->rho;
    double ratio = (double)(FO_AF_T)sqrt(usq) / (root * hp->d);
    const double denom = ratio > 1.0 ? ratio : 1.0;
    double s = -alpha / denom;
    if (hp->f32_scalars) {      /* torch's 0-d float32 tensor arithmetic (a tensor lr) */
        const float a32 = (float)(rms > hp->eps2 ? rms : hp->eps2) * (float)hp->rho;
        alpha = (double)a32;
        s = (double)(-a32 / (float)denom);
    }
    if (out) {
        out->alpha = alpha;
        out->denom = denom;
    }
    return (FO_AF_T)(hp->maximize ? -s : s);
}

int FO_AF_CAT(fo_adafactor_factored, FO_AF_SFX)(FO_AF_T *param, const FO_AF_T *grad,
                                                FO_AF_T *row_var, FO_AF_T *col_var,
                                                int64_t batch, int64_t rows, int64_t cols,
                                                double *scratch, int64_t scratch_len,
                                                const fo_adafactor_hp *hp, int64_t threshold,
                                                int n_threads, fo_adafactor_out *out)
{
    if (!hp || batch < 0 || rows < 0 || cols < 0 || scratch_len < 0)
        return -1;
    const int64_t total_rows = batch * rows, numel = total_rows * cols;
    if (numel == 0) {
        if (out) out->alpha = out->denom = 0.0;
        return 0;
    }
    if (!param || !grad || !row_var || !col_var || !scratch || scratch_len < cols)
        return -1;
    const FO_AF_T w = (FO_AF_T)hp->one_minus_beta2, eps1 = (FO_AF_T)hp->eps1;
    const FO_AF_T eps1sq = (FO_AF_T)(hp->eps1 * hp->eps1);
    int nt = fo_team_cap(numel, threshold, n_threads, total_rows);
    int nt1 = nt;
    if (scratch_len / cols < nt1) nt1 = (int)(scratch_len / cols);
    double psq = 0.0;

    /* pass 1: the row and column means of g^2 into the factors, and the sum of p^2 */
    if (batch >= nt1) {               /* whole batches per thread: exact column sums */
        FO_REGION(nt1, reduction(+ : psq), t, team,
            int64_t lo, hi;
            fo_share(batch, t, team, 1, &lo, &hi);
            double *part = scratch + (int64_t)t * cols;
            for (int64_t b = lo; b < hi; ++b) {
                for (int64_t j = 0; j < cols; ++j) part[j] = 0.0;
                psq += FO_AF_FN(rows)(grad, param, row_var, part, cols, b * rows,
                                      (b + 1) * rows, w);
                FO_AF_FN(cols)(col_var + b * cols, part, 1, cols, rows, w);
            });
    } else {                          /* few batches: rows split, column parts summed */
        const int nt2 = nt1 < rows ? nt1 : (int)rows;
        for (int64_t b = 0; b < batch; ++b) {
            int used = 1;
            FO_REGION(nt2, reduction(+ : psq), t, team,
                int64_t lo, hi;
                fo_share(rows, t, team, 1, &lo, &hi);
                double *part = scratch + (int64_t)t * cols;
                for (int64_t j = 0; j < cols; ++j) part[j] = 0.0;
                if (t == 0) used = team;
                psq += FO_AF_FN(rows)(grad, param, row_var, part, cols, b * rows + lo,
                                      b * rows + hi, w););
            FO_AF_FN(cols)(col_var + b * cols, scratch, used, cols, rows, w);
        }
    }

    /* pass 2: the norm of U */
    double usq = 0.0;
    FO_REGION(nt, reduction(+ : usq), t, team,
        int64_t lo, hi;
        fo_share(total_rows, t, team, 1, &lo, &hi);
        usq += FO_AF_FN(factored_u)(param, grad, row_var, col_var, rows, cols, lo, hi, eps1,
                                    eps1sq, 0, 0, 0););

    /* pass 3: the update */
    const FO_AF_T s = FO_AF_FN(scale)(psq, usq, numel, hp, out);
    const FO_AF_T decay = (FO_AF_T)hp->decay;
    FO_REGION(nt, , t, team,
        int64_t lo, hi;
        fo_share(total_rows, t, team, 1, &lo, &hi);
        FO_AF_FN(factored_u)(param, grad, row_var, col_var, rows, cols, lo, hi, eps1, eps1sq,
                             1, decay, s););
    return 0;
}

int FO_AF_CAT(fo_adafactor_vector, FO_AF_SFX)(FO_AF_T *param, const FO_AF_T *grad,
                                              FO_AF_T *variance, int64_t n,
                                              const fo_adafactor_hp *hp, int64_t threshold,
                                              int n_threads, fo_adafactor_out *out)
{
    if (!hp || n < 0)
        return -1;
    if (n == 0) {
        if (out) out->alpha = out->denom = 0.0;
        return 0;
    }
    if (!param || !grad || !variance)
        return -1;
    const FO_AF_T w = (FO_AF_T)hp->one_minus_beta2;
    const FO_AF_T eps1sq = (FO_AF_T)(hp->eps1 * hp->eps1);
    const int nt = fo_team_size(n, threshold, n_threads);
    double psq = 0.0, usq = 0.0;
    FO_REGION(nt, reduction(+ : psq, usq), t, team,
        int64_t lo, hi;
        fo_share(n, t, team, 16, &lo, &hi);
        if (hi > lo)
            psq += FO_AF_FN(vector_moment)(param, grad, variance, lo, hi, w, eps1sq, &usq););
    const FO_AF_T s = FO_AF_FN(scale)(psq, usq, n, hp, out);
    const FO_AF_T decay = (FO_AF_T)hp->decay;
    FO_REGION(nt, , t, team,
        int64_t lo, hi;
        fo_share(n, t, team, 16, &lo, &hi);
        if (hi > lo)
            FO_AF_FN(vector_update)(param, grad, variance, lo, hi, eps1sq, decay, s););
    return 0;
}

#undef FO_AF_FN
#undef FO_AF_CAT
#undef FO_AF_CAT_
