/*
 * fastopt/parallel.h -- the OpenMP and instruction-set plumbing and the one loop skeleton shared
 * by the C loops (kernels.c, finite.c, mixed.c, resize.c); internal, not part of the C API.
 *
 * - FO_PRAGMA(x): an OpenMP pragma, or nothing in a FASTOPT_NO_OPENMP build.
 * - FO_THREAD_ID(t, team): this thread's number and the team's size inside a parallel region.
 * - FO_CLONES: on x86-64 with GCC and an ifunc-capable libc, a function compiled for AVX-512F,
 *   AVX2 (with FMA: x86-64-v3, GCC >= 12; plain AVX2 before) and the baseline ISA, one picked
 *   by the loader per machine (`target_clones`); setup.py passes -ffp-contract=off, so every
 *   instance rounds alike (the rules' explicit fmaf/fma are correctly rounded everywhere; a
 *   clone without FMA instructions calls libm for them). FO_AVX2_CLONE names the AVX2 clone's
 *   target. -DFASTOPT_NO_CLONES=1 turns it off; FO_HAS_CLONES says which.
 * - fo_max_threads(): OpenMP's max threads (respects OMP_NUM_THREADS), 1 without OpenMP.
 * - fo_team_cap(work, threshold, n_threads, units): threads for `work`: 1 below `threshold`,
 *   else n_threads, but at most `units` (the pieces the work can be cut into).
 * - fo_team_size(work, threshold, n_threads): fo_team_cap with one unit per threshold/2 of
 *   work (the update loops' rule: serial below the threshold, no thread with too little).
 * - fo_share(total, t, nt, quantum, lo, hi): thread t's part of [0, total) in equal shares,
 *   cut on multiples of `quantum` (a power of two); the last share ends at total.
 *
 * The loop skeleton. A group's segments (structs with an int64_t length `n`) are one range of
 * `total` elements; each thread takes a share [lo, hi) of it and walks the segments it overlaps.
 * - FO_SUM_SEGMENTS(segs, nseg, total, BAD): adds the lengths to `total`; returns -1 from the
 *   enclosing function when nseg < 0, segs is NULL with nseg > 0, a length is negative or
 *   BAD(&segs[s]) holds for a segment (FO_SEGMENT_OK: no further check).
 * - FO_FOR_SEGMENTS(segs, nseg, lo, hi, s, a, b) statement: `statement` for every segment s
 *   that overlaps [lo, hi), with [a, b) the overlap in the segment's own indices.
 * - FO_REGION(nt, CLAUSES, t, team, statements...): `statements` with t = 0, team = 1 on the
 *   caller's thread when nt == 1 (no fork/join), else in one OpenMP parallel region of nt
 *   threads with t, team the thread's number and the team's size. CLAUSES: further clauses
 *   of the region (a reduction), or nothing.
 * - FO_SHARE_REGION(nt, CLAUSES, total, quantum, lo, hi, statements...): FO_REGION in which
 *   each thread runs `statements` on its fo_share [lo, hi) of [0, total), if not empty.
 */
#ifndef FASTOPT_PARALLEL_H
#define FASTOPT_PARALLEL_H

#include <stdint.h>

#ifndef FASTOPT_NO_OPENMP
#include <omp.h>
#define FO_PRAGMA(x) _Pragma(#x)
#define FO_THREAD_ID(t, team) do { t = omp_get_thread_num(); team = omp_get_num_threads(); } while (0)
#else
#define FO_PRAGMA(x)
#define FO_THREAD_ID(t, team) do { (void)t; (void)team; } while (0)
#endif

#if !defined(FASTOPT_NO_CLONES) && defined(__GNUC__) && !defined(__clang__) && !defined(__INTEL_COMPILER) \
    && (__GNUC__ >= 8) && defined(__x86_64__) && defined(__linux__) && defined(__GLIBC__)
#if __GNUC__ >= 12
/* x86-64-v3: AVX2 with FMA, so the rules' explicit fmaf/fma stay vector instructions */
#define FO_CLONES __attribute__((target_clones("avx512f", "arch=x86-64-v3", "default")))
#define FO_AVX2_CLONE "x86-64-v3"
#else
#define FO_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#define FO_AVX2_CLONE "avx2"
#endif
#define FO_HAS_CLONES 1
#else
#define FO_CLONES
#define FO_HAS_CLONES 0
#endif

static inline int fo_max_threads(void)
{
#ifndef FASTOPT_NO_OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

static inline int fo_team_cap(int64_t work, int64_t threshold, int n_threads, int64_t units)
{
    if (n_threads < 1) n_threads = 1;
    if (work < threshold || n_threads == 1) return 1;
    if (units < n_threads) n_threads = (int)(units < 1 ? 1 : units);
    return n_threads;
}

static inline int fo_team_size(int64_t work, int64_t threshold, int n_threads)
{
    const int64_t share = threshold / 2 > 0 ? threshold / 2 : 1;
    return fo_team_cap(work, threshold, n_threads, work / share);
}

static inline void fo_share(int64_t total, int t, int nt, int64_t quantum, int64_t *lo, int64_t *hi)
{
    const int64_t a = (int64_t)((double)total * t / nt);
    const int64_t b = (int64_t)((double)total * (t + 1) / nt);
    *lo = a & ~(quantum - 1);
    *hi = (t + 1 == nt) ? total : (b & ~(quantum - 1));
}


#define FO_SEGMENT_OK(sg) 0

#define FO_SUM_SEGMENTS(SEGS, NSEG, TOTAL, BAD)                                               \
    do {                                                                                      \
        if ((NSEG) < 0 || ((NSEG) > 0 && (SEGS) == 0)) return -1;                            \
        for (int64_t fo_s_ = 0; fo_s_ < (NSEG); ++fo_s_) {                                    \
            if ((SEGS)[fo_s_].n < 0 || BAD(&(SEGS)[fo_s_])) return -1;                       \
            (TOTAL) += (SEGS)[fo_s_].n;                                                       \
        }                                                                                     \
    } while (0)

/* fo_start_, fo_end_: where segment S starts and ends in the whole range. */
#define FO_FOR_SEGMENTS(SEGS, NSEG, LO, HI, S, A, B)                                          \
    for (int64_t S = 0, fo_start_ = 0, fo_end_ = 0; S < (NSEG) && fo_start_ < (HI);           \
         ++S, fo_start_ = fo_end_)                                                            \
        if ((fo_end_ = fo_start_ + (SEGS)[S].n) > (LO))                                       \
            for (int64_t A = (LO) > fo_start_ ? (LO) - fo_start_ : 0,                         \
                         B = (HI) < fo_end_ ? (HI) - fo_start_ : (SEGS)[S].n, fo_once_ = 1;  \
                 fo_once_; fo_once_ = 0)

#define FO_REGION(NT, CLAUSES, T, TEAM, ...)                                                  \
    do {                                                                                      \
        if ((NT) == 1) {                                                                      \
            const int T = 0, TEAM = 1;                                                        \
            __VA_ARGS__                                                                       \
        } else {                                                                              \
            FO_PRAGMA(omp parallel num_threads(NT) CLAUSES)                                   \
            {                                                                                 \
                int T = 0, TEAM = 1;                                                          \
                FO_THREAD_ID(T, TEAM);                                                        \
                __VA_ARGS__                                                                   \
            }                                                                                 \
        }                                                                                     \
    } while (0)

#define FO_SHARE_REGION(NT, CLAUSES, TOTAL, QUANTUM, LO, HI, ...)                             \
    FO_REGION(NT, CLAUSES, fo_t_, fo_team_,                                                   \
              int64_t LO, HI;                                                                 \
              fo_share(TOTAL, fo_t_, fo_team_, QUANTUM, &LO, &HI);                            \
              if (HI > LO) { __VA_ARGS__ })

#endif
