/*
 * kernels.c -- the OpenMP loops over the rules of fastopt/rules.h.
 *
 * Design note
 * -----------
 * One loop shape serves every optimizer and both element types; FO_STAMP writes it out per
 * (optimizer, type). A group's segments are treated as one array of `total` elements; thread t
 * of T takes the elements [t*total/T, (t+1)*total/T), boundaries rounded to 16 elements (one
 * 64-byte cache line of floats), and walks the segments that overlap its range. Hundreds of
 * small tensors thus cost one parallel region, not hundreds. Below fo_parallel_threshold
 * elements the loop runs serially on the caller's thread (no fork/join cost). Each inner loop
 * is a plain `omp simd` loop over one contiguous segment; the rule's option flags are
 * loop-invariant, so the compiler unswitches them out of the loop.
 */
#include "fastopt/kernels.h"
#include "fastopt/rules.h"
#include "fastopt/constants.h"   /* fo_<opt>_constants_<sfx>: hp -> k, shared with CUDA */

#ifndef FASTOPT_NO_OPENMP
#include <omp.h>
#define FO_PRAGMA(x) _Pragma(#x)
#else
#define FO_PRAGMA(x)
#endif

int64_t fo_parallel_threshold = 32768;

int fo_omp_max_threads(void)
{
#ifndef FASTOPT_NO_OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

int fo_has_openmp(void)
{
#ifndef FASTOPT_NO_OPENMP
    return 1;
#else
    return 0;
#endif
}

/* Threads actually used: at most n_threads, one per threshold-sized share of the work. */
static int fo_team_size(int64_t total, int n_threads)
{
    if (n_threads < 1) n_threads = 1;
    if (total < fo_parallel_threshold || n_threads == 1) return 1;
    const int64_t half = fo_parallel_threshold / 2;      /* a threshold of 1 gives 0 */
    int64_t useful = total / (half > 0 ? half : 1);
    if (useful < n_threads) n_threads = (int)(useful < 1 ? 1 : useful);
    return n_threads;
}

/* Thread t's share of [0, total), boundaries on 16-element multiples. */
static inline void fo_share(int64_t total, int t, int nt, int64_t *lo, int64_t *hi)
{
    int64_t a = (int64_t)((double)total * t / nt);
    int64_t b = (int64_t)((double)total * (t + 1) / nt);
    a &= ~(int64_t)15;
    b = (t + 1 == nt) ? total : (b & ~(int64_t)15);
    *lo = a;
    *hi = b;
}

#define FO_STAMP(OPT, SFX, T)                                                                 \
    static void fo_##OPT##_range_##SFX(const fo_segment_##SFX *segs, int64_t nseg,            \
                                       int64_t lo, int64_t hi, fo_##OPT##_k_##SFX k)          \
    {                                                                                         \
        int64_t start = 0;                                                                    \
        for (int64_t s = 0; s < nseg && start < hi; ++s) {                                    \
            const int64_t n = segs[s].n, end = start + n;                                     \
            if (end > lo) {                                                                   \
                const int64_t a = lo > start ? lo - start : 0;                                \
                const int64_t b = hi < end ? hi - start : n;                                  \
                T *p = segs[s].param;                                                         \
                const T *g = segs[s].grad;                                                    \
                T *s0 = segs[s].state[0], *s1 = segs[s].state[1], *s2 = segs[s].state[2];     \
                FO_PRAGMA(omp simd)                                                           \
                for (int64_t i = a; i < b; ++i)                                               \
                    fo_##OPT##_rule_##SFX(i, p, g, s0, s1, s2, k);                            \
            }                                                                                 \
            start = end;                                                                      \
        }                                                                                     \
    }                                                                                         \
    int fo_##OPT##_step_##SFX(const fo_segment_##SFX *segs, int64_t nseg,                     \
                              const fo_##OPT##_hp *hp, int n_threads)                         \
    {                                                                                         \
        if (nseg < 0 || (nseg > 0 && segs == 0) || hp == 0) return -1;                        \
        int64_t total = 0;                                                                    \
        for (int64_t s = 0; s < nseg; ++s) {                                                  \
            if (segs[s].n < 0) return -1;                                                     \
            total += segs[s].n;                                                               \
        }                                                                                     \
        const fo_##OPT##_k_##SFX k = fo_##OPT##_constants_##SFX(hp);                          \
        const int nt = fo_team_size(total, n_threads);                                        \
        if (nt == 1) {                                                                        \
            fo_##OPT##_range_##SFX(segs, nseg, 0, total, k);                                  \
            return 0;                                                                         \
        }                                                                                     \
        FO_PRAGMA(omp parallel num_threads(nt))                                               \
        {                                                                                     \
            int t = 0, team = 1;                                                              \
            FO_THREAD_ID(t, team);                                                            \
            int64_t lo, hi;                                                                   \
            fo_share(total, t, team, &lo, &hi);                                               \
            fo_##OPT##_range_##SFX(segs, nseg, lo, hi, k);                                    \
        }                                                                                     \
        return 0;                                                                             \
    }

#ifndef FASTOPT_NO_OPENMP
#define FO_THREAD_ID(t, team) do { t = omp_get_thread_num(); team = omp_get_num_threads(); } while (0)
#else
#define FO_THREAD_ID(t, team) do { (void)t; (void)team; } while (0)
#endif

#define FO_STAMP_BOTH(OPT) FO_STAMP(OPT, f32, float) FO_STAMP(OPT, f64, double)
FO_STAMP_BOTH(sgd)
FO_STAMP_BOTH(adagrad)
FO_STAMP_BOTH(rmsprop)
FO_STAMP_BOTH(adam)
FO_STAMP_BOTH(adadelta)
FO_STAMP_BOTH(adamax)

#define FO_STREAM(SFX, T)                                                                     \
    void fo_stream_axpy_##SFX(T *b, const T *c, T s, int64_t n, int n_threads)                \
    {                                                                                         \
        const int nt = fo_team_size(n, n_threads);                                            \
        FO_PRAGMA(omp parallel num_threads(nt) if (nt > 1))                                   \
        {                                                                                     \
            int t = 0, team = 1;                                                              \
            FO_THREAD_ID(t, team);                                                            \
            int64_t lo, hi;                                                                   \
            fo_share(n, t, team, &lo, &hi);                                                   \
            FO_PRAGMA(omp simd)                                                               \
            for (int64_t i = lo; i < hi; ++i) b[i] += s * c[i];                               \
        }                                                                                     \
    }
FO_STREAM(f32, float)
FO_STREAM(f64, double)
