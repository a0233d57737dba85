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
 * of all segments, equal shares rounded to 16 elements (fo_share), serial below
 * fo_parallel_threshold (fo_team_size, the rule of the update loops).
 * An element is non-finite iff its exponent bits are all ones; the test is done on the bit
 * pattern (copied with memcpy, which the compiler turns into a plain load), so no floating-
 * point mode or optimisation flag can fold it away, and it vectorizes as an integer and/or
 * reduction (compiled for AVX-512F, AVX2 and the baseline ISA where kernels.c is). Each thread
 * scans its share in blocks of FO_FINITE_BLOCK elements and stops at the first block holding a
 * non-finite element.
 */
#include <string.h>

#include "fastopt/finite.h"
#include "fastopt/kernels.h"    /* fo_parallel_threshold */
#include "fastopt/parallel.h"   /* FO_PRAGMA, FO_CLONES, fo_team_size, the loop skeleton */

#define FO_FINITE_BLOCK 4096

/* A segment with elements but no gradient is invalid. */
#define FO_NO_GRAD(sg) ((sg)->n > 0 && (sg)->grad == 0)

#define FO_FINITE_STAMP(SFX, T, U, EXP)                                                       \
    /* 1 if grad elements [lo, hi) of the concatenated segments are all finite, else 0. */    \
    FO_CLONES static int fo_range_finite_##SFX(const fo_segment_##SFX *segs, int64_t nseg,   \
                                               int64_t lo, int64_t hi)                        \
    {                                                                                         \
        FO_FOR_SEGMENTS(segs, nseg, lo, hi, s, a, b) {                                        \
            const T *g = segs[s].grad;                                                        \
            for (int64_t blk = a; blk < b; blk += FO_FINITE_BLOCK) {                          \
                const int64_t stop = b - blk < FO_FINITE_BLOCK ? b : blk + FO_FINITE_BLOCK;   \
                U bad = 0;                                                                    \
                FO_PRAGMA(omp simd reduction(| : bad))                                        \
                for (int64_t i = blk; i < stop; ++i) {                                        \
                    U u;                                                                      \
                    memcpy(&u, g + i, sizeof u);                                              \
                    bad |= (U)((u & EXP) == EXP);                                             \
                }                                                                             \
                if (bad) return 0;                                                            \
            }                                                                                 \
        }                                                                                     \
        return 1;                                                                             \
    }                                                                                         \
    int fo_all_finite_##SFX(const fo_segment_##SFX *segs, int64_t nseg, int n_threads)        \
    {                                                                                         \
        int64_t total = 0;                                                                    \
        FO_SUM_SEGMENTS(segs, nseg, total, FO_NO_GRAD);                                       \
        const int nt = fo_team_size(total, fo_parallel_threshold, n_threads);                 \
        int ok = 1;                                                                           \
        FO_SHARE_REGION(nt, reduction(& : ok), total, 16, lo, hi,                             \
                        ok &= fo_range_finite_##SFX(segs, nseg, lo, hi););                    \
        return ok;                                                                            \
    }


FO_FINITE_STAMP(f32, float, uint32_t, UINT32_C(0x7f800000))
FO_FINITE_STAMP(f64, double, uint64_t, UINT64_C(0x7ff0000000000000))
