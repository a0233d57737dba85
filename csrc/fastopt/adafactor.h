/*
 * fastopt/adafactor.h -- torch.optim.Adafactor's step (its single-tensor path), one tensor
 * per call.
 *
 *     int fo_adafactor_factored_<f32|f64>(T *param, const T *grad, T *row_var, T *col_var,
 *                                         int64_t batch, int64_t rows, int64_t cols,
 *                                         double *scratch, int64_t scratch_len,
 *                                         const fo_adafactor_hp *hp, int64_t threshold,
 *                                         int n_threads, fo_adafactor_out *out);
 *     int fo_adafactor_vector_<f32|f64>(T *param, const T *grad, T *variance, int64_t n,
 *                                       const fo_adafactor_hp *hp, int64_t threshold,
 *                                       int n_threads, fo_adafactor_out *out);
 *
 * Factored: `param` and `grad` are C-contiguous (batch, rows, cols) (a tensor of >= 2 dims,
 * its leading dims flattened into `batch`); row_var holds batch*rows values (torch's shape
 * (..., rows, 1)), col_var batch*cols (torch's (..., 1, cols)). `scratch` is caller-owned
 * memory for the per-thread column sums: at least `cols` doubles; a call uses at most
 * scratch_len / cols threads for its first pass. Vector: a tensor of < 2 dims, `variance` of
 * its length. With G = -grad under `maximize`, else grad, and w = hp->one_minus_beta2:
 *
 *   alpha = max(eps2, ||param|| / sqrt(numel)) * rho        (param before the decay)
 *   factored: row_var = lerp(row_var, mean_j G^2, w); col_var = lerp(col_var, mean_i G^2, w)
 *             V = (row_var_i * col_var_j) / max(mean_i row_var, eps1)    (per batch matrix)
 *   vector:   variance = lerp(variance, G*G, w); V = variance
 *   U = G * (1 / sqrt(max(V, eps1*eps1)));  denom = max(1, ||U|| / (sqrt(numel) * d))
 *   param = param * decay + (-alpha / denom) * U              (decay = 1 - lr * weight_decay)
 *
 * in the element type, lerp as torch's (fma(w, end - self, self) for |w| < 1/2, else
 * fma(w - 1, end - self, end)), the last line one fma; the sums of squares (the norms, the
 * row and column means) accumulate in double. Passes over the tensor: factored 3 (the
 * reductions of G^2 and param^2; the norm of U; the update), vector 2 (moment, param^2 and
 * the norm of U; the update); U is recomputed, never stored. Column sums and the norms
 * are reduced in per-thread parts, so float results may differ in the last bits between
 * thread counts. An empty tensor is left as it is. `out` (may be NULL) receives alpha and
 * denom. Returns 0, or -1 for invalid arguments.
 */
#ifndef FASTOPT_ADAFACTOR_H
#define FASTOPT_ADAFACTOR_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    double one_minus_beta2;   /* t ** beta2_decay: the moments' lerp weight */
    double rho;               /* min(lr, 1 / sqrt(t)) */
    double eps1;              /* floor of the row factor's mean; eps1**2 floors V */
    double eps2;              /* floor of the parameter's RMS */
    double d;                 /* clipping threshold of the update's RMS */
    double decay;             /* 1 - lr * weight_decay */
    int maximize;
    int f32_scalars;          /* alpha and -alpha / denom in float32 arithmetic, as torch's for
                               * a float32 tensor lr (rho its value); else in double */
} fo_adafactor_hp;

typedef struct {
    double alpha;             /* max(eps2, RMS(param)) * rho */
    double denom;             /* max(1, RMS(U) / d) */
} fo_adafactor_out;

#define FO_ADAFACTOR_DECLARE(SFX, T)                                                          \
    int fo_adafactor_factored_##SFX(T *param, const T *grad, T *row_var, T *col_var,         \
                                    int64_t batch, int64_t rows, int64_t cols,               \
                                    double *scratch, int64_t scratch_len,                    \
                                    const fo_adafactor_hp *hp, int64_t threshold,            \
                                    int n_threads, fo_adafactor_out *out);                   \
    int fo_adafactor_vector_##SFX(T *param, const T *grad, T *variance, int64_t n,           \
                                  const fo_adafactor_hp *hp, int64_t threshold,              \
                                  int n_threads, fo_adafactor_out *out);

FO_ADAFACTOR_DECLARE(f32, float)
FO_ADAFACTOR_DECLARE(f64, double)
#undef FO_ADAFACTOR_DECLARE

#ifdef __cplusplus
}
#endif
#endif /* FASTOPT_ADAFACTOR_H */
