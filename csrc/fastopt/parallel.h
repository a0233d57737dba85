/*
 * fastopt/parallel.h -- the OpenMP and instruction-set plumbing shared by the C loops
 * (kernels.c, finite.c, mixed.c); internal, not part of the C API.
 *
 * - FO_PRAGMA(x): an OpenMP pragma, or nothing in a FASTOPT_NO_OPENMP build.
 * - FO_THREAD_ID(t, team): this thread's number and the team's size inside a parallel region.
 * - FO_CLONES: on x86-64 with GCC and an ifunc-capable libc, a function compiled for AVX-512F,
 *   AVX2 (with FMA: x86-64-v3, GCC >= 12; plain AVX2 before) and the baseline ISA, one picked
 *   by the loader per machine (`target_clones`); setup.py passes -ffp-contract=off, so every
 *   instance rounds alike (the rules' explicit fmaf/fma are correctly rounded everywhere; a
 *   clone without FMA instructions calls libm for them). FO_AVX2_CLONE names the AVX2 clone's
 *   target. -DFASTOPT_NO_CLONES=1 turns it off; FO_HAS_CLONES says which.
 * - fo_team_size(work, threshold, n_threads): threads for `work` units: 1 below `threshold`,
 *   else at most n_threads, one per threshold/2 units.
 * - fo_share(total, t, nt, quantum, lo, hi): thread t's part of [0, total) in equal shares,
 *   cut on multiples of `quantum` (a power of two); the last share ends at total.
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

static inline int fo_team_size(int64_t work, int64_t threshold, int n_threads)
{
    if (n_threads < 1) n_threads = 1;
    if (work < threshold || n_threads == 1) return 1;
    const int64_t share = threshold / 2 > 0 ? threshold / 2 : 1;
    const int64_t useful = work / share;
    if (useful < n_threads) n_threads = (int)(useful < 1 ? 1 : useful);
    return n_threads;
}

static inline void fo_share(int64_t total, int t, int nt, int64_t quantum, int64_t *lo, int64_t *hi)
{
    const int64_t a = (int64_t)((double)total * t / nt);
    const int64_t b = (int64_t)((double)total * (t + 1) / nt);
    *lo = a & ~(quantum - 1);
    *hi = (t + 1 == nt) ? total : (b & ~(quantum - 1));
}

#endif
