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
 *
 * Threads. Every pass is cut into the same blocks, fixed by n alone (at most
 * FO_LBFGS_MAX_BLOCKS of them, of equal lengths cut on multiples of 64 elements, each at least
 * FO_LBFGS_MIN_BLOCK; their count a multiple of 12 from 12 on, below that 6, 4, 2 or 1, so
 * that 2, 3, 4 or 6 threads take equal shares: a pass waits for its slowest thread):
 * a block's dot product is its own vectorized partial sum, and a pass's dot product is the
 * sum of the block partials in block order. So the direction is the same bits on any number
 * of threads. One parallel region runs the whole recursion: each thread takes a contiguous
 * share of the blocks, one barrier per pass publishes the partials, and every thread sums
 * them (at most 1024 additions) to get the next coefficient itself; the partials alternate
 * between two arrays, so a pass never overwrites the ones a slower thread is still summing.
 * Serial below the update loops' parallel threshold (fastopt.set_parallel_threshold).
 *
 * The rest of an iteration. Around the recursion, torch's step makes a dozen passes over n
 * (y = g - g_prev, s = t d, y . s, y . y, copies of s and y into the history, g_prev = g,
 * g . d, max |d|, the move p += t d after saving p, max |g|). Once the history is beyond the
 * caches, so is every n-vector after the recursion streams it, and those passes cost about a
 * sixth of the recursion. Here they are four, each one loop over the same blocks (so their
 * sums are the same bits on any number of threads): fo_lbfgs_pair (y and s written straight
 * into the history's spare slot, g_prev = g, y . s and y . y), fo_lbfgs_slope (g . d and
 * max |d|), fo_lbfgs_move (p saved, then p += t d as torch's add with alpha: one fma) and
 * fo_lbfgs_amax (max |g|).
 */
#include <math.h>

#include "fastopt/lbfgs.h"
#include "fastopt/parallel.h"   /* FO_PRAGMA, FO_CLONES, FO_REGION, fo_team_cap, fo_share */

#define FO_LBFGS_MAX_BLOCKS 1024
#define FO_LBFGS_MIN_BLOCK 4096

/* The number of blocks for n elements: one per FO_LBFGS_MIN_BLOCK elements, at most
 * FO_LBFGS_MAX_BLOCKS, rounded down to a multiple of 12 (from 12 on; below: to 6, 4, 2 or 1),
 * so that 2, 3, 4 or 6 threads take equal shares (a pass waits for its slowest thread). */
static int64_t fo_lbfgs_nblocks(int64_t n)
{
    int64_t nb = n / FO_LBFGS_MIN_BLOCK;
    if (nb > FO_LBFGS_MAX_BLOCKS) nb = FO_LBFGS_MAX_BLOCKS;
    if (nb >= 12) return nb - nb % 12;
    return nb >= 6 ? 6 : nb >= 4 ? 4 : nb >= 2 ? 2 : 1;
}

/* where block b of nb starts (b = nb: n): equal lengths, cut on multiples of 64 elements */
static inline int64_t fo_lbfgs_edge(int64_t b, int64_t n, int64_t nb)
{
    return b >= nb ? n : (b * n / nb) & ~(int64_t)63;
}

/* For every block b_ of this thread's [blo, bhi) of the nb blocks of the n elements in scope,
 * the statements with [lo_, hi_) the block's elements */
#define FO_LBFGS_FOR_BLOCKS(...)                                                              \
    for (int64_t b_ = blo; b_ < bhi; ++b_) {                                                  \
        const int64_t lo_ = fo_lbfgs_edge(b_, n, nb);                                         \
        const int64_t hi_ = fo_lbfgs_edge(b_ + 1, n, nb);                                     \
        __VA_ARGS__                                                                           \
    }

/* Over this thread's blocks: for every element j of block b, STATEMENT (which may use j and
 * accumulates the block's dot product into `acc_`), then part[b] = acc_. */
#define FO_LBFGS_BLOCKS(T, part, STATEMENT)                                                   \
    FO_LBFGS_FOR_BLOCKS(                                                                      \
        T acc_ = 0;                                                                           \
        FO_PRAGMA(omp simd reduction(+ : acc_))                                               \
        for (int64_t j = lo_; j < hi_; ++j) { STATEMENT }                                     \
        (part)[b_] = acc_;                                                                    \
    )

/* the pass's dot product: the block partials summed in block order, after every thread
 * wrote its own (the barrier; none on one thread, where it would bind to a caller's team) */
#define FO_LBFGS_TOTAL(T, part, out)                                                          \
    do {                                                                                      \
        if (team > 1) { FO_PRAGMA(omp barrier) }                                              \
        T sum_ = 0;                                                                           \
        for (int64_t b_ = 0; b_ < nb; ++b_) sum_ += (part)[b_];                               \
        (out) = sum_;                                                                         \
    } while (0)

#define FO_LBFGS_STAMP(SFX, T, FMA)                                                           \
FO_CLONES int fo_lbfgs_two_loop_##SFX(const T *hist, int64_t n, const int64_t *order,        \
                                      int64_t k, const double *ro, const T *g, T *d,          \
                                      double h_diag, double *al, int64_t threshold,           \
                                      int n_threads)                                          \
{                                                                                             \
    const int64_t nb = fo_lbfgs_nblocks(n);                                                   \
    T parts[2][FO_LBFGS_MAX_BLOCKS];                                                          \
    const int nt = fo_team_cap(n, threshold, n_threads, nb);                                  \
    FO_REGION(nt, , t, team, {                                                                \
        int64_t blo, bhi, i;                                                                  \
        fo_share(nb, t, team, 1, &blo, &bhi);                                                 \
        int ping = 0;                                                                         \
        T acc;                                                                                \
        {                                                                                     \
            const T *s = hist + 2 * order[k - 1] * n;                                         \
            FO_LBFGS_BLOCKS(T, parts[ping], const T q = -g[j]; d[j] = q; acc_ += s[j] * q;)   \
            FO_LBFGS_TOTAL(T, parts[ping], acc);                                              \
        }                                                                                     \
        for (i = k - 1; i >= 0; --i) {                                                        \
            const T *y = hist + (2 * order[i] + 1) * n;                                       \
            const T a = acc * (T)ro[order[i]];                                                \
            const T na = -a;                                                                  \
            if (t == 0) al[i] = (double)a;                                                    \
            ping ^= 1;                                                                        \
            if (i > 0) {                                                                      \
                const T *sn = hist + 2 * order[i - 1] * n;                                    \
                FO_LBFGS_BLOCKS(T, parts[ping],                                               \
                                const T q = FMA(y[j], na, d[j]); d[j] = q; acc_ += sn[j] * q;) \
                FO_LBFGS_TOTAL(T, parts[ping], acc);                                          \
            } else {                   /* i = 0: then r = H_diag q and y_0 . r, one pass */ \
                const T hd = (T)h_diag;                                                       \
                FO_LBFGS_BLOCKS(T, parts[ping],                                               \
                                const T r = FMA(y[j], na, d[j]) * hd; d[j] = r;               \
                                acc_ += y[j] * r;)                                            \
                FO_LBFGS_TOTAL(T, parts[ping], acc);                                          \
            }                                                                                 \
        }                                                                                     \
        for (i = 0; i < k; ++i) {                                                             \
            const T *si = hist + 2 * order[i] * n;                                            \
            const T be = acc * (T)ro[order[i]];                                               \
            const T c = (T)al[i] - be;                                                        \
            ping ^= 1;                                                                        \
            if (i + 1 < k) {                                                                  \
                const T *yn = hist + (2 * order[i + 1] + 1) * n;                              \
                FO_LBFGS_BLOCKS(T, parts[ping],                                               \
                                const T r = FMA(si[j], c, d[j]); d[j] = r; acc_ += yn[j] * r;) \
                FO_LBFGS_TOTAL(T, parts[ping], acc);                                          \
            } else {                                                                          \
                FO_LBFGS_FOR_BLOCKS(                                                          \
                    FO_PRAGMA(omp simd)                                                       \
                    for (int64_t j = lo_; j < hi_; ++j) d[j] = FMA(si[j], c, d[j]);           \
                )                                                                             \
            }                                                                                 \
        }                                                                                     \
    });                                                                                       \
    return nt;                                                                                \
}

FO_LBFGS_STAMP(f32, float, fmaf)
FO_LBFGS_STAMP(f64, double, fma)

/* The passes around the recursion (the design note): one parallel region each, over the
 * recursion's blocks; the sums are block partials added in block order, as the recursion's. */

/* max |x| of a block into `m`, NaN (in `nan`) when x has one */
#define FO_LBFGS_AMAX_OF(T, x, j, m, nan)                                                     \
    do {                                                                                      \
        const T a_ = (x)[j] < 0 ? -(x)[j] : (x)[j];                                           \
        nan |= a_ != a_;                                                                      \
        m = a_ > m ? a_ : m;                                                                  \
    } while (0)

/* On nt threads, FO_LBFGS_FOR_BLOCKS over each thread's share of the nb blocks (the passes
 * around the recursion, which keep per-block partials) */
#define FO_LBFGS_EACH_BLOCK(nt, nb, ...)                                                      \
    FO_REGION(nt, , t_, team_, {                                                              \
        int64_t blo, bhi;                                                                     \
        fo_share(nb, t_, team_, 1, &blo, &bhi);                                               \
        FO_LBFGS_FOR_BLOCKS(__VA_ARGS__)                                                      \
    })

#define FO_LBFGS_PASSES(SFX, T, FMA)                                                          \
FO_CLONES int fo_lbfgs_pair_##SFX(const T *g, T *pg, const T *d, double t, T *s, T *y,        \
                                  int64_t n, double *sums, int64_t threshold, int n_threads)  \
{                                                                                             \
    const int64_t nb = fo_lbfgs_nblocks(n);                                                   \
    T ys_part[FO_LBFGS_MAX_BLOCKS], yy_part[FO_LBFGS_MAX_BLOCKS];                             \
    const T tt = (T)t;                                                                        \
    const int nt = fo_team_cap(n, threshold, n_threads, nb);                                  \
    FO_LBFGS_EACH_BLOCK(nt, nb, {                                                             \
        T ys = 0, yy = 0;                                                                     \
        FO_PRAGMA(omp simd reduction(+ : ys, yy))                                             \
        for (int64_t j = lo_; j < hi_; ++j) {                                                 \
            const T yj = g[j] - pg[j], sj = d[j] * tt;                                        \
            y[j] = yj; s[j] = sj; pg[j] = g[j];                                               \
            ys += yj * sj; yy += yj * yj;                                                     \
        }                                                                                     \
        ys_part[b_] = ys; yy_part[b_] = yy;                                                   \
    });                                                                                       \
    T ys = 0, yy = 0;                                                                         \
    for (int64_t b_ = 0; b_ < nb; ++b_) { ys += ys_part[b_]; yy += yy_part[b_]; }             \
    sums[0] = (double)ys; sums[1] = (double)yy;                                               \
    return nt;                                                                                \
}                                                                                             \
                                                                                              \
FO_CLONES int fo_lbfgs_slope_##SFX(const T *g, const T *d, int64_t n, double *out,           \
                                   int64_t threshold, int n_threads)                          \
{                                                                                             \
    const int64_t nb = fo_lbfgs_nblocks(n);                                                   \
    T gd_part[FO_LBFGS_MAX_BLOCKS], max_part[FO_LBFGS_MAX_BLOCKS];                            \
    int nan_part[FO_LBFGS_MAX_BLOCKS];                                                        \
    const int nt = fo_team_cap(n, threshold, n_threads, nb);                                  \
    FO_LBFGS_EACH_BLOCK(nt, nb, {                                                             \
        T gd = 0, m = 0;                                                                      \
        int nan = 0;                                                                          \
        FO_PRAGMA(omp simd reduction(+ : gd) reduction(max : m) reduction(| : nan))           \
        for (int64_t j = lo_; j < hi_; ++j) {                                                 \
            gd += g[j] * d[j];                                                                \
            FO_LBFGS_AMAX_OF(T, d, j, m, nan);                                                \
        }                                                                                     \
        gd_part[b_] = gd; max_part[b_] = m; nan_part[b_] = nan;                               \
    });                                                                                       \
    T gd = 0, m = 0;                                                                          \
    int nan = 0;                                                                              \
    for (int64_t b_ = 0; b_ < nb; ++b_) {                                                     \
        gd += gd_part[b_]; m = max_part[b_] > m ? max_part[b_] : m; nan |= nan_part[b_];      \
    }                                                                                         \
    out[0] = (double)gd; out[1] = nan ? (double)NAN : (double)m;                              \
    return nt;                                                                                \
}                                                                                             \
                                                                                              \
FO_CLONES int fo_lbfgs_move_##SFX(T *p, const T *d, double t, T *saved, int64_t n,            \
                                  int64_t threshold, int n_threads)                           \
{                                                                                             \
    const T tt = (T)t;                                                                        \
    const int nt = fo_team_size(n, threshold, n_threads);                                     \
    FO_SHARE_REGION(nt, , n, 64, lo, hi, {                                                    \
        if (saved) {                                                                          \
            FO_PRAGMA(omp simd)                                                               \
            for (int64_t j = lo; j < hi; ++j) { saved[j] = p[j]; p[j] = FMA(d[j], tt, p[j]); } \
        } else {                                                                              \
            FO_PRAGMA(omp simd)                                                               \
            for (int64_t j = lo; j < hi; ++j) p[j] = FMA(d[j], tt, p[j]);                     \
        }                                                                                     \
    });                                                                                       \
    return nt;                                                                                \
}                                                                                             \
                                                                                              \
FO_CLONES double fo_lbfgs_amax_##SFX(const T *x, int64_t n, int64_t threshold, int n_threads) \
{                                                                                             \
    T m = 0;                                                                                  \
    int nan = 0;                                                                              \
    const int nt = fo_team_size(n, threshold, n_threads);                                     \
    FO_SHARE_REGION(nt, reduction(max : m) reduction(| : nan), n, 64, lo, hi, {               \
        T mm = 0;                                                                             \
        int nn = 0;                                                                           \
        FO_PRAGMA(omp simd reduction(max : mm) reduction(| : nn))                             \
        for (int64_t j = lo; j < hi; ++j) FO_LBFGS_AMAX_OF(T, x, j, mm, nn);                  \
        m = mm > m ? mm : m; nan |= nn;                                                       \
    });                                                                                       \
    return nan ? (double)NAN : (double)m;                                                     \
}

FO_LBFGS_PASSES(f32, float, fmaf)
FO_LBFGS_PASSES(f64, double, fma)
