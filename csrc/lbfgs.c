/*
 * lbfgs.c -- L-BFGS's two-loop recursion (fastopt/lbfgs.h), as torch.optim.LBFGS computes it.
 *
 * Design note
 * -----------
 * torch runs the recursion as 2k dot products and 2k axpys over the flat vectors, each its
 * own pass:
 *
 *     q = -g;  for i = k-1..0: al_i = (s_i . q) ro_i;  q += -al_i y_i
 *     r = H_diag q;  for i = 0..k-1: be_i = (y_i . r) ro_i;  r += (al_i - be_i) s_i
 *
 * Each dot product here is fused into the pass before it: the pass that updates q with y_i
 * also accumulates s_{i-1} . q over the updated elements (and likewise in the second loop), so
 * the recursion makes 2k + 2 passes instead of 4k, each streaming one or two history vectors
 * while q (in d) stays in cache for moderate n. The arithmetic is torch's: the scalars in the
 * parameters' type T (al_i, be_i, the products with ro and H_diag), the updates as fused
 * multiply-adds (torch's vectorized add with alpha is an FMA), the dot products accumulated in
 * T (vectorized partial sums, as BLAS does; the summation order differs, so results agree to
 * rounding). Compiled per instruction set like the update loops (FO_CLONES).
 */
#include <math.h>

#include "fastopt/lbfgs.h"
#include "fastopt/parallel.h"   /* FO_PRAGMA, FO_CLONES */

#define FO_LBFGS_STAMP(SFX, T, FMA)                                                           \
FO_CLONES int fo_lbfgs_two_loop_##SFX(const T *hist, int64_t n, const int64_t *order,        \
                                      int64_t k, const double *ro, const T *g, T *d,          \
                                      double h_diag, double *al)                              \
{                                                                                             \
    int64_t i, j;                                                                             \
    T acc = 0;                                                                                \
    const T *s = hist + 2 * order[k - 1] * n;                                                 \
    FO_PRAGMA(omp simd reduction(+ : acc))                                                    \
    for (j = 0; j < n; ++j) {                                                                 \
        const T q = -g[j];                                                                    \
        d[j] = q;                                                                             \
        acc += s[j] * q;                                                                      \
    }                                                                                         \
    for (i = k - 1; i >= 0; --i) {                                                            \
        const T *y = hist + (2 * order[i] + 1) * n;                                           \
        const T a = acc * (T)ro[order[i]];                                                    \
        const T na = -a;                                                                      \
        al[i] = (double)a;                                                                    \
        if (i > 0) {                                                                          \
            const T *sn = hist + 2 * order[i - 1] * n;                                        \
            T next = 0;                                                                       \
            FO_PRAGMA(omp simd reduction(+ : next))                                           \
            for (j = 0; j < n; ++j) {                                                         \
                const T q = FMA(y[j], na, d[j]);                                              \
                d[j] = q;                                                                     \
                next += sn[j] * q;                                                            \
            }                                                                                 \
            acc = next;                                                                       \
        } else {                                                                              \
            FO_PRAGMA(omp simd)                                                               \
            for (j = 0; j < n; ++j)                                                           \
                d[j] = FMA(y[j], na, d[j]);                                                   \
        }                                                                                     \
    }                                                                                         \
    const T hd = (T)h_diag;                                                                   \
    const T *y0 = hist + (2 * order[0] + 1) * n;                                              \
    acc = 0;                                                                                  \
    FO_PRAGMA(omp simd reduction(+ : acc))                                                    \
    for (j = 0; j < n; ++j) {                                                                 \
        const T r = d[j] * hd;                                                                \
        d[j] = r;                                                                             \
        acc += y0[j] * r;                                                                     \
    }                                                                                         \
    for (i = 0; i < k; ++i) {                                                                 \
        const T *si = hist + 2 * order[i] * n;                                                \
        const T be = acc * (T)ro[order[i]];                                                   \
        const T c = (T)al[i] - be;                                                            \
        if (i + 1 < k) {                                                                      \
            const T *yn = hist + (2 * order[i + 1] + 1) * n;                                  \
            T next = 0;                                                                       \
            FO_PRAGMA(omp simd reduction(+ : next))                                           \
            for (j = 0; j < n; ++j) {                                                         \
                const T r = FMA(si[j], c, d[j]);                                              \
                d[j] = r;                                                                     \
                next += yn[j] * r;                                                            \
            }                                                                                 \
            acc = next;                                                                       \
        } else {                                                                              \
            FO_PRAGMA(omp simd)                                                               \
            for (j = 0; j < n; ++j)                                                           \
                d[j] = FMA(si[j], c, d[j]);                                                   \
        }                                                                                     \
    }                                                                                         \
    return 0;                                                                                 \
}

FO_LBFGS_STAMP(f32, float, fmaf)
FO_LBFGS_STAMP(f64, double, fma)
