/*
 * fastopt/lbfgs.h -- L-BFGS's two-loop recursion over a ring buffer of (s, y) pairs (lbfgs.c).
 *
 * hist: the history, `size` slots of two n-vectors each (slot k: s_k at hist + 2 k n, y_k at
 * hist + (2 k + 1) n); order[i]: the slot of the i-th oldest of the k pairs; ro[slot] =
 * 1 / (y . s); g: the gradient; d: the direction written, -H g; h_diag: the initial Hessian
 * scale; al[i]: the first loop's coefficient of the i-th oldest pair (written). k >= 1.
 * threshold, n_threads: the update loops' parallel threshold and thread count (serial when
 * n < threshold); the result does not depend on them. No allocation; returns the number of
 * threads that ran it. Callable from inside an OpenMP parallel region (it then runs serially
 * or in a nested team, and never meets the caller's threads at a barrier).
 */
#ifndef FASTOPT_LBFGS_H
#define FASTOPT_LBFGS_H

#include <stdint.h>

int fo_lbfgs_two_loop_f32(const float *hist, int64_t n, const int64_t *order, int64_t k,
                          const double *ro, const float *g, float *d, double h_diag,
                          double *al, int64_t threshold, int n_threads);
int fo_lbfgs_two_loop_f64(const double *hist, int64_t n, const int64_t *order, int64_t k,
                          const double *ro, const double *g, double *d, double h_diag,
                          double *al, int64_t threshold, int n_threads);

/*
 * The passes around the recursion (one each, same threads rule; sums in the parameters' type,
 * block partials added in block order, so the same bits on any number of threads):
 * - fo_lbfgs_pair: y = g - pg, s = t d, then pg = g; sums[0] = y . s, sums[1] = y . y.
 * - fo_lbfgs_slope: out[0] = g . d, out[1] = max |d| (NaN when d has a NaN).
 * - fo_lbfgs_move: saved = p (when saved is not NULL), then p += t d, one fma per element
 *   (torch's add with alpha).
 * - fo_lbfgs_amax: max |x| (NaN when x has a NaN; 0 for n = 0).
 * Each returns the number of threads that ran it (amax: the value).
 */
#define FO_LBFGS_DECLARE_PASSES(SFX, T)                                                       \
    int fo_lbfgs_pair_##SFX(const T *g, T *pg, const T *d, double t, T *s, T *y, int64_t n,   \
                            double *sums, int64_t threshold, int n_threads);                  \
    int fo_lbfgs_slope_##SFX(const T *g, const T *d, int64_t n, double *out,                 \
                             int64_t threshold, int n_threads);                               \
    int fo_lbfgs_move_##SFX(T *p, const T *d, double t, T *saved, int64_t n,                  \
                            int64_t threshold, int n_threads);                                \
    double fo_lbfgs_amax_##SFX(const T *x, int64_t n, int64_t threshold, int n_threads);

FO_LBFGS_DECLARE_PASSES(f32, float)
FO_LBFGS_DECLARE_PASSES(f64, double)

#endif
