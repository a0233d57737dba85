/*
 * finite.c -- the all-finite reduction over a group's gradients (fastopt/finite.h).
 *
 * Design note
 * -----------
 * `step(grads, nonfinite="skip")` must leave parameters and state untouched when any gradient
 * element is NaN or Inf. A detector fused into the update loop cannot promise that: when the
 * bad element is met, earlier elements are already written, and undoing them needs a copy of
 * everything the step writes (params + state, 3-4x the gradient's bytes). So the check is a
 * separate read-only pass over the gradients only, run before the update: 1 stream against the
 * 5-7 streams of an update (Adam reads p, g, m, v and writes p, m, v).
 *
 * The loop has the update loops' shape (kernels.c): one parallel region over the total length
 * of all segments, equal shares rounded to 16 elements, serial below fo_parallel_threshold.
 * An element is non-finite iff its exponent bits are all ones; the test is done on the bit
 * pattern (copied with memcpy, which the compiler turns into a plain load), so no floating-
 * point mode or optimisation flag can fold it away, and it vectorizes as an integer and/or
 * reduction (compiled for AVX-512F, AVX2 and the baseline ISA where kernels.c is). Each thread
 * scans its share in blocks of FO_FINITE_BLOCK elements and stops at the first block holding a
 * non-finite element.
 */
#include <string.h>

#include "fastopt/finite.h"

#ifndef FASTOPT_NO_OPENMP
#include <omp.h>
#define FO_PRAGMA(x) _Pragma(#x)
#else
#define FO_PRAGMA(x)
#endif

#define FO_FINITE_BLOCK 4096

/* As kernels.c: AVX-512F / AVX2 / baseline instances picked at load time (x86-64 GCC, glibc). */
#if !defined(FASTOPT_NO_CLONES) && defined(__GNUC__) && !defined(__clang__) && !defined(__INTEL_COMPILER) \
    && (__GNUC__ >= 8) && defined(__x86_64__) && defined(__linux__) && defined(__GLIBC__)
#define FO_FINITE_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FO_FINITE_CLONES
#endif

/* The partition of kernels.c: threads used, and thread t's share on 16-element boundaries. */
static int fo_finite_team(int64_t total, int n_threads)
{
    if (n_threads < 1) n_threads = 1;
    if (total < fo_parallel_threshold || n_threads == 1) return 1;
    int64_t useful = total / (fo_parallel_threshold / 2 > 0 ? fo_parallel_threshold / 2 : 1);
    if (useful < n_threads) n_threads = (int)(useful < 1 ? 1 : useful);
    return n_threads;
}

static void fo_finite_share(int64_t total, int t, int nt, int64_t *lo, int64_t *hi)
{
    int64_t a = (int64_t)((double)total * t / nt);
    int64_t b = (int64_t)((double)total * (t + 1) / nt);
    a &= ~(int64_t)15;
    b = (t + 1 == nt) ? total : (b & ~(int64_t)15);
    *lo = a;
    *hi = b;
}

#define FO_FINITE_STAMP(SFX, T, U, EXP)                                                       \
    /* 1 if grad elements [lo, hi) of the concatenated segments are all finite, else 0. */    \
    FO_FINITE_CLONES static int fo_range_finite_##SFX(const fo_segment_##SFX *segs,          \
                                                      int64_t nseg, int64_t lo, int64_t hi)   \
    {                                                                                         \
        int64_t start = 0;                                                                    \
        for (int64_t s = 0; s < nseg && start < hi; ++s) {                                    \
            const int64_t n = segs[s].n, end = start + n;                                     \
            if (end > lo) {                                                                   \
                const int64_t a = lo > start ? lo - start : 0;                                \
                const int64_t b = hi < end ? hi - start : n;                                  \
                const T *g = segs[s].grad;                                                    \
                for (int64_t blk = a; blk < b; blk += FO_FINITE_BLOCK) {                      \
                    const int64_t stop = b - blk < FO_FINITE_BLOCK ? b : blk + FO_FINITE_BLOCK; \
                    U bad = 0;                                                                \
                    FO_PRAGMA(omp simd reduction(| : bad))                                    \
                    for (int64_t i = blk; i < stop; ++i) {                                    \
                        U u;                                                                  \
                        memcpy(&u, g + i, sizeof u);                                          \
                        bad |= (U)((u & EXP) == EXP);                                         \
                    }                                                                         \
                    if (bad) return 0;                                                        \
                }                                                                             \
            }                                                                                 \
            start = end;                                                                      \
        }                                                                                     \
        return 1;                                                                             \
    }                                                                                         \
    int fo_all_finite_##SFX(const fo_segment_##SFX *segs, int64_t nseg, int n_threads)        \
    {                                                                                         \
        if (nseg < 0 || (nseg > 0 && segs == 0)) return -1;                                   \
        int64_t total = 0;                                                                    \
        for (int64_t s = 0; s < nseg; ++s) {                                                  \
            if (segs[s].n < 0 || (segs[s].n > 0 && segs[s].grad == 0)) return -1;            \
            total += segs[s].n;                                                               \
        }                                                                                     \
        const int nt = fo_finite_team(total, n_threads);                                      \
        if (nt == 1) return fo_range_finite_##SFX(segs, nseg, 0, total);                      \
        int ok = 1;                                                                           \
        FO_PRAGMA(omp parallel num_threads(nt) reduction(& : ok))                             \
        {                                                                                     \
            int t = 0, team = 1;                                                              \
            FO_FINITE_THREAD_ID(t, team);                                                     \
            int64_t lo, hi;                                                                   \
            fo_finite_share(total, t, team, &lo, &hi);                                        \
            ok &= fo_range_finite_##SFX(segs, nseg, lo, hi);                                  \
        }                                                                                     \
        return ok;                                                                            \
    }

#ifndef FASTOPT_NO_OPENMP
#define FO_FINITE_THREAD_ID(t, team) do { t = omp_get_thread_num(); team = omp_get_num_threads(); } while (0)
#else
#define FO_FINITE_THREAD_ID(t, team) do { (void)t; (void)team; } while (0)
#endif

FO_FINITE_STAMP(f32, float, uint32_t, UINT32_C(0x7f800000))
FO_FINITE_STAMP(f64, double, uint64_t, UINT64_C(0x7ff0000000000000))
