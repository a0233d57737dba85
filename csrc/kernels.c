/*
 * kernels.c -- the OpenMP loops over the rules of fastopt/rules.h.
 *
 * Design note
 * -----------
 * One loop shape serves every optimizer and both element types; FO_STAMP writes it out per
 * (optimizer, type). A step is bound by memory bandwidth for large groups, by vector width
 * for cache-resident ones and by call and thread start-up cost for small ones, so:
 *
 * - One parallel region per group. A group's segments are treated as one array of `total`
 *   elements; thread t of T takes [split(t), split(t+1)) and walks the segments that overlap
 *   it. Hundreds of small tensors thus cost one fork/join, not hundreds.
 * - Static, cache-line-aligned chunks. split(t) starts from t*total/T and is moved down to the
 *   nearest element whose parameter address is a multiple of 64 bytes, so no two threads
 *   write the same cache line of a parameter (state buffers from the same allocator share
 *   the parameter's alignment). Every thread computes the same splits, so the chunks tile the
 *   range exactly.
 * - A serial path: a step whose work, elements times the optimizer's relative cost per
 *   element (FO_COST_<opt>: 1 for SGD's few flops up to 4 for Adadelta's two square roots and
 *   a division, measured in cache), is below fo_parallel_threshold runs on the caller's
 *   thread, with no fork/join. Both numbers come from `fastopt bench`'s crossover section.
 * - Scalars hoisted: the rule's constants `k` are converted to the element type once per call.
 * - Option flags specialized: a rule's store-affecting options (AMSGRAD, DECOUPLED, CENTERED,
 *   MOMENTUM, ...) are made compile-time constants by one loop instance per meaningful
 *   combination (FO_CASES_<opt>, generated from the optimizer table into
 *   fastopt/instances.h), so every instance is a branch-free `omp simd` loop; the
 *   remaining flags (MAXIMIZE, EPS_IN_SQRT, a zero weight decay) are loop-invariant selects.
 *   Other combinations run the generic instance, which is correct but may stay scalar.
 * - Vector code a portable build can use. On x86-64 with GCC and an ifunc-capable libc the
 *   range functions are compiled for AVX-512F, AVX2 and the baseline ISA
 *   (`target_clones`), and the loader picks one per machine. setup.py passes
 *   -ffp-contract=off, so every instance rounds exactly like the baseline (no FMA
 *   contraction): results do not depend on the CPU. -DFASTOPT_NO_CLONES=1 turns this off;
 *   MSVC and clang builds get the baseline loop.
 */
#include "fastopt/kernels.h"
#include "fastopt/rules.h"
#include "fastopt/constants.h"   /* fo_<opt>_constants_<sfx>: hp -> k, shared with CUDA */
#include "fastopt/instances.h"   /* FO_CPU_KERNELS, FO_MASK_<opt>, FO_CASES_<opt>, FO_COST_<opt> */

#include <stdint.h>

#include "fastopt/parallel.h"   /* FO_PRAGMA, FO_CLONES, fo_team_size, the loop skeleton */

#if defined(_MSC_VER)
#define FO_INLINE static __forceinline
#elif defined(__GNUC__)
#define FO_INLINE static inline __attribute__((always_inline))
#else
#define FO_INLINE static inline
#endif

#define FO_CACHE_LINE 64

int64_t fo_parallel_threshold = 32768;

int fo_omp_max_threads(void) { return fo_max_threads(); }

int fo_has_openmp(void)
{
#ifndef FASTOPT_NO_OPENMP
    return 1;
#else
    return 0;
#endif
}

int fo_has_clones(void) { return FO_HAS_CLONES; }

/* The instruction set the range functions run with on this machine (for reports). */
const char *fo_vector_isa(void)
{
#if FO_HAS_CLONES
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return "avx512f";
    if (__builtin_cpu_supports(FO_AVX2_CLONE)) return "avx2";
    return "baseline";
#elif defined(__AVX512F__)
    return "avx512f (compile-time)";
#elif defined(__AVX2__)
    return "avx2 (compile-time)";
#else
    return "baseline";
#endif
}


/*
 * Start of thread t's chunk of the concatenated segments (t in [0, nt]): t*total/nt moved down
 * to the nearest element of the same segment whose parameter address is cache-line aligned.
 * Monotone in t, split(0) = 0, split(nt) = total.
 */
#define FO_SPLIT(SFX, T)                                                                      \
    static int64_t fo_split_##SFX(const fo_segment_##SFX *segs, int64_t nseg, int64_t total,  \
                                  int t, int nt)                                              \
    {                                                                                         \
        if (t <= 0) return 0;                                                                 \
        if (t >= nt) return total;                                                            \
        int64_t raw = (int64_t)((double)total * t / nt), start = 0;                           \
        for (int64_t s = 0; s < nseg; ++s) {                                                  \
            const int64_t n = segs[s].n;                                                      \
            if (raw < start + n) {                                                            \
                int64_t off = raw - start;                                                    \
                const uintptr_t addr = (uintptr_t)(segs[s].param + off);                      \
                off -= (int64_t)((addr % FO_CACHE_LINE) / sizeof(T));                         \
                return start + (off > 0 ? off : 0);                                           \
            }                                                                                 \
            start += n;                                                                       \
        }                                                                                     \
        return total;                                                                         \
    }
FO_SPLIT(f32, float)
FO_SPLIT(f64, double)

/* FO_REGION in which each thread runs `statements` on its cache-line-aligned share [lo, hi)
 * of the segments (fo_split_SFX), if not empty. */
#define FO_SPLIT_REGION(SFX, NT, SEGS, NSEG, TOTAL, LO, HI, ...)                              \
    FO_REGION(NT, , fo_t_, fo_team_,                                                          \
              const int64_t LO = fo_split_##SFX(SEGS, NSEG, TOTAL, fo_t_, fo_team_);          \
              const int64_t HI = fo_split_##SFX(SEGS, NSEG, TOTAL, fo_t_ + 1, fo_team_);      \
              if (HI > LO) { __VA_ARGS__ })

/*
 * FO_STAMP(OPT, SFX, T): for optimizer OPT and element type T,
 *   fo_OPT_loop_SFX   the element loop over [lo, hi) of the concatenated segments (inlined);
 *   fo_OPT_range_SFX  the ISA-cloned entry that fixes the FO_MASK_OPT bits of k.flags to
 *                     constants (one loop instance per combination listed in FO_CASES_OPT);
 *   fo_OPT_step_SFX   the public step: checks, constants, serial path or one parallel region.
 */
#define FO_CASE(OPT, SFX, V)                                                                  \
    case (V):                                                                                 \
        k.flags = (k.flags & ~(FO_MASK_##OPT)) | (V);                                         \
        fo_##OPT##_loop_##SFX(segs, nseg, lo, hi, k);                                         \
        return;

#define FO_STAMP(OPT, SFX, T)                                                                 \
    FO_INLINE void fo_##OPT##_loop_##SFX(const fo_segment_##SFX *segs, int64_t nseg,          \
                                         int64_t lo, int64_t hi, fo_##OPT##_k_##SFX k)        \
    {                                                                                         \
        FO_FOR_SEGMENTS(segs, nseg, lo, hi, s, a, b) {                                        \
            T *FO_RESTRICT p = segs[s].param;                                                 \
            const T *FO_RESTRICT g = segs[s].grad;                                            \
            T *FO_RESTRICT s0 = segs[s].state[0];                                             \
            T *FO_RESTRICT s1 = segs[s].state[1];                                             \
            T *FO_RESTRICT s2 = segs[s].state[2];                                             \
            FO_PRAGMA(omp simd)                                                               \
            for (int64_t i = a; i < b; ++i)                                                   \
                fo_##OPT##_rule_##SFX(i, p, g, s0, s1, s2, k);                                \
        }                                                                                     \
    }                                                                                         \
    FO_CLONES static void fo_##OPT##_range_##SFX(const fo_segment_##SFX *segs, int64_t nseg,  \
                                                 int64_t lo, int64_t hi,                      \
                                                 fo_##OPT##_k_##SFX k)                        \
    {                                                                                         \
        switch (k.flags & (FO_MASK_##OPT)) {                                                  \
            FO_CASES_##OPT(FO_CASE, OPT, SFX)                                                 \
        default:                                                                              \
            fo_##OPT##_loop_##SFX(segs, nseg, lo, hi, k);                                     \
        }                                                                                     \
    }                                                                                         \
    int fo_##OPT##_step_##SFX(const fo_segment_##SFX *segs, int64_t nseg,                     \
                              const fo_##OPT##_hp *hp, int n_threads)                         \
    {                                                                                         \
        int64_t total = 0;                                                                    \
        if (hp == 0) return -1;                                                               \
        FO_SUM_SEGMENTS(segs, nseg, total, FO_SEGMENT_OK);                                    \
        const fo_##OPT##_k_##SFX k = fo_##OPT##_constants_##SFX(hp);                          \
        const int nt = fo_team_size(total * (FO_COST_##OPT), fo_parallel_threshold,           \
                                    n_threads);                                               \
        FO_SPLIT_REGION(SFX, nt, segs, nseg, total, lo, hi,                                   \
                        fo_##OPT##_range_##SFX(segs, nseg, lo, hi, k););                      \
        return 0;                                                                             \
    }


/* One loop per (optimizer, element type); the list, option combinations and costs are in
 * fastopt/instances.h, generated from the optimizer table. */
#define FO_STAMP_BOTH(OPT) FO_STAMP(OPT, f32, float) FO_STAMP(OPT, f64, double)
FO_CPU_KERNELS(FO_STAMP_BOTH)

/* The bandwidth yardstick b += s * c, split and vectorized exactly like the update loops. */
#define FO_STREAM(SFX, T)                                                                     \
    FO_CLONES static void fo_stream_range_##SFX(T *FO_RESTRICT b, const T *FO_RESTRICT c,     \
                                                T s, int64_t lo, int64_t hi)                  \
    {                                                                                         \
        FO_PRAGMA(omp simd)                                                                   \
        for (int64_t i = lo; i < hi; ++i) b[i] += s * c[i];                                   \
    }                                                                                         \
    void fo_stream_axpy_##SFX(T *b, const T *c, T s, int64_t n, int n_threads)                \
    {                                                                                         \
        const int nt = fo_team_size(n, fo_parallel_threshold, n_threads);                     \
        fo_segment_##SFX seg = {0};                                                           \
        seg.param = b;                                                                        \
        seg.n = n;                                                                            \
        FO_SPLIT_REGION(SFX, nt, &seg, 1, n, lo, hi, fo_stream_range_##SFX(b, c, s, lo, hi););\
    }
FO_STREAM(f32, float)
FO_STREAM(f64, double)
