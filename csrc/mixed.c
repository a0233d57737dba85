/*
 * mixed.c -- mixed-precision loops over the rules of fastopt/rules.h (API: fastopt/mixed.h).
 *
 * Design note
 * -----------
 * Parameters held in float16 or bfloat16 are updated through float32, with the float32 rule of
 * rules.h and float32 state, in one pass over memory. A thread walks its share of a group's
 * elements in blocks of FO_BLOCK (a few KiB, resident in L1):
 *
 *   1. the block's gradients are widened to float32 (exactly) and divided by the loss scale
 *      into a stack buffer (a float32 gradient that needs neither is used in place);
 *   2. the float32 values to update are the master copy, or, without one, a stack buffer
 *      holding the widened 16-bit parameter;
 *   3. the rule runs over the block exactly as in kernels.c (same rule, same constants from
 *      fastopt/constants.h), updating the float32 values and the state;
 *   4. the 16-bit parameter is written from the updated float32 values, rounded to nearest
 *      even, or (bfloat16 without master) stochastically.
 *
 * So each element's master, state and 16-bit copy are read and written once, and the float32
 * master follows bit for bit the trajectory that kernels.c gives a float32 parameter with the
 * same float32 gradients. Conversions (fastopt/half.h) are integer bit manipulations (no FPU
 * mode or F16C needed), written branch-free so that they vectorize. Stochastic rounding draws
 * 16 bits of noise from a counter-based hash of (seed, call counter, parameter index, element
 * index), so results do not depend on the number of threads; a segment that is a shard of a
 * larger tensor may map its element indices to the whole tensor's (noise_block, noise_stride,
 * noise_base of fo_mixed_segment), so results do not depend on the sharding either.
 *
 * Work is split like kernels.c: a group's segments form one range of `total` elements, thread t
 * of T takes [t*total/T, (t+1)*total/T) with boundaries on multiples of 32 elements (one cache
 * line of 16-bit values), and groups below `parallel_threshold` elements run on the caller's
 * thread.
 */
#include "fastopt/kernels.h"
#include "fastopt/rules.h"
#include "fastopt/constants.h"
#include "fastopt/mixed.h"
#include "fastopt/instances.h"   /* FO_MIXED_KERNELS, FO_MASK_<opt>, FO_CASES_<opt> */
#include "fastopt/half.h"     /* the 16-bit conversions and the stochastic-rounding noise */

#include "fastopt/parallel.h"   /* FO_PRAGMA, FO_CLONES, fo_team_size, the loop skeleton */

#define FO_BLOCK 512


/* ------------------------------------------------------------------------- block helpers */
#define FO_AT(ptr, off) ((ptr) ? (ptr) + (off) : (ptr))

/* dst[i] = CONV(src[i]) for i in [0, m), divided by `scale` if `scaled`. */
#define FO_WIDEN(DST, SRC, M, CONV, SCALE, SCALED)                                            \
    do {                                                                                      \
        if (SCALED) {                                                                         \
            FO_PRAGMA(omp simd)                                                               \
            for (int64_t i = 0; i < (M); ++i) (DST)[i] = CONV((SRC)[i]) / (SCALE);            \
        } else {                                                                              \
            FO_PRAGMA(omp simd)                                                               \
            for (int64_t i = 0; i < (M); ++i) (DST)[i] = CONV((SRC)[i]);                      \
        }                                                                                     \
    } while (0)

/* The block's gradients as float32 divided by `scale`; in place when float32 and unscaled. */
static inline const float *fo_load_grad(const fo_mixed_segment *sg, int64_t c, int64_t m,
                                        float *FO_RESTRICT buf, float scale, int scaled)
{
    if (sg->grad_dtype == FO_DT_F32) {
        const float *g = (const float *)sg->grad + c;
        if (!scaled)
            return g;
        FO_PRAGMA(omp simd)
        for (int64_t i = 0; i < m; ++i) buf[i] = g[i] / scale;
    } else if (sg->grad_dtype == FO_DT_F16) {
        FO_WIDEN(buf, (const uint16_t *)sg->grad + c, m, fo_h2f, scale, scaled);
    } else {
        FO_WIDEN(buf, (const uint16_t *)sg->grad + c, m, fo_bf2f, scale, scaled);
    }
    return buf;
}

/* The block's float32 values to update: the master, or the widened 16-bit parameter. */
static inline float *fo_load_values(const fo_mixed_segment *sg, int64_t c, int64_t m,
                                    float *FO_RESTRICT buf)
{
    if (sg->master)
        return sg->master + c;
    const uint16_t *p = (const uint16_t *)sg->lowp + c;
    if (sg->lowp_dtype == FO_DT_F16)
        FO_WIDEN(buf, p, m, fo_h2f, 1.0f, 0);
    else
        FO_WIDEN(buf, p, m, fo_bf2f, 1.0f, 0);
    return buf;
}

/* Write the 16-bit parameter of the block from the updated float32 values. */
static inline void fo_store_lowp(const fo_mixed_segment *sg, int64_t c, int64_t m,
                                 const float *FO_RESTRICT v, int stochastic, uint64_t key)
{
    uint16_t *out = (uint16_t *)sg->lowp + c;
    if (sg->lowp_dtype == FO_DT_F16) {
        FO_PRAGMA(omp simd)
        for (int64_t i = 0; i < m; ++i) out[i] = fo_f2h(v[i]);
    } else if (stochastic && !sg->master && sg->noise_block > 0) {
        /* a shard: the noise of the element's index in the whole tensor (see mixed.h) */
        const int64_t blk = sg->noise_block, stride = sg->noise_stride, base = sg->noise_base;
        for (int64_t i = 0; i < m; ++i) {
            const int64_t e = c + i, q = e / blk;
            out[i] = fo_f2bf_sr(v[i], fo_noise(key, base + q * stride + (e - q * blk)));
        }
    } else if (stochastic && !sg->master) {
        FO_PRAGMA(omp simd)
        for (int64_t i = 0; i < m; ++i) out[i] = fo_f2bf_sr(v[i], fo_noise(key, c + i));
    } else {
        FO_PRAGMA(omp simd)
        for (int64_t i = 0; i < m; ++i) out[i] = fo_f2bf(v[i]);
    }
}

/* ------------------------------------------------------------------------- segment checks */
/* A segment whose gradient is missing or of an unknown type (for FO_SUM_SEGMENTS). */
static inline int fo_bad_grad(const fo_mixed_segment *sg)
{
    return (sg->n > 0 && sg->grad == 0) || sg->grad_dtype < FO_DT_F32
        || sg->grad_dtype > FO_DT_BF16;
}

/* ... or without values to update, or with a 16-bit parameter of an unknown type. */
static inline int fo_bad_segment(const fo_mixed_segment *sg)
{
    return fo_bad_grad(sg) || (sg->n > 0 && sg->master == 0 && sg->lowp == 0)
        || (sg->lowp && sg->lowp_dtype != FO_DT_F16 && sg->lowp_dtype != FO_DT_BF16);
}

/* ------------------------------------------------------------------------- the step loops */
/* The rule over one block. The option flags that change what a rule stores are made
 * compile-time constants by one loop instance per combination the Python layer sends (the
 * FO_CASES_<opt> of fastopt/instances.h, shared with kernels.c), so each instance is a
 * branch-free `omp simd` loop; other combinations run the generic loop, which is as correct
 * and may stay scalar. */
#define FO_MIXED_RULE_LOOP(OPT, K)                                                            \
    do {                                                                                      \
        FO_PRAGMA(omp simd)                                                                   \
        for (int64_t i = 0; i < m; ++i)                                                       \
            fo_##OPT##_rule_f32(i, p, g, s0, s1, s2, (K));                                    \
    } while (0)

#define FO_MIXED_CASE(OPT, SFX, V)                                                            \
    case (V): {                                                                               \
        fo_##OPT##_k_f32 kv = k;                                                              \
        kv.flags = (k.flags & ~FO_MASK_##OPT) | (V);                                          \
        FO_MIXED_RULE_LOOP(OPT, kv);                                                          \
        break;                                                                                \
    }

#define FO_MIXED_STAMP(OPT)                                                                   \
    FO_CLONES static void fo_mixed_##OPT##_range(const fo_mixed_segment *segs, int64_t nseg,  \
                                       int64_t lo, int64_t hi, fo_##OPT##_k_f32 k,            \
                                       const fo_mixed_opts *o)                                \
    {                                                                                         \
        float gbuf[FO_BLOCK], pbuf[FO_BLOCK];                                                 \
        const float scale = (float)o->grad_scale;                                             \
        const int scaled = o->grad_scale != 1.0;                                              \
        const int stochastic = o->rounding == FO_ROUND_STOCHASTIC;                            \
        FO_FOR_SEGMENTS(segs, nseg, lo, hi, s, a, b) {                                        \
            const fo_mixed_segment *sg = &segs[s];                                            \
            const uint64_t key = stochastic ? fo_stream_key(o->seed, o->counter, sg->stream) : 0; \
            for (int64_t c = a; c < b; c += FO_BLOCK) {                                       \
                const int64_t m = b - c < FO_BLOCK ? b - c : FO_BLOCK;                        \
                const float *g = fo_load_grad(sg, c, m, gbuf, scale, scaled);                 \
                float *p = fo_load_values(sg, c, m, pbuf);                                    \
                float *s0 = FO_AT(sg->state[0], c);                                           \
                float *s1 = FO_AT(sg->state[1], c);                                           \
                float *s2 = FO_AT(sg->state[2], c);                                           \
                switch (k.flags & FO_MASK_##OPT) {                                            \
                    FO_CASES_##OPT(FO_MIXED_CASE, OPT, f32)                                   \
                default:                                                                      \
                    FO_MIXED_RULE_LOOP(OPT, k);                                               \
                }                                                                             \
                if (sg->lowp)                                                                 \
                    fo_store_lowp(sg, c, m, p, stochastic, key);                              \
            }                                                                                 \
        }                                                                                     \
    }                                                                                         \
    int fo_mixed_##OPT##_step(const fo_mixed_segment *segs, int64_t nseg,                     \
                              const fo_##OPT##_hp *hp, const fo_mixed_opts *o,                \
                              int64_t threshold, int n_threads)                               \
    {                                                                                         \
        int64_t total = 0;                                                                    \
        if (hp == 0 || o == 0 || !(o->grad_scale > 0)) return -1;                             \
        FO_SUM_SEGMENTS(segs, nseg, total, fo_bad_segment);                                   \
        const fo_##OPT##_k_f32 k = fo_##OPT##_constants_f32(hp);                              \
        const int nt = fo_team_size(total, threshold, n_threads);                             \
        FO_SHARE_REGION(nt, , total, 32, lo, hi, fo_mixed_##OPT##_range(segs, nseg, lo, hi, k, o);); \
        return 0;                                                                             \
    }

FO_MIXED_KERNELS(FO_MIXED_STAMP)

/* --------------------------------------------------------------------- the non-finite check */
static inline int fo_nonfinite_f32(float v)
{
    return (fo_bits(v) & 0x7f800000u) == 0x7f800000u;
}

/* bad |= TEST for the elements i in [a, b) (a vectorized or-reduction). */
#define FO_ANY(TEST)                                                                          \
    do {                                                                                      \
        FO_PRAGMA(omp simd reduction(|:bad))                                                  \
        for (int64_t i = a; i < b; ++i) bad |= (TEST);                                        \
    } while (0)

FO_CLONES static int fo_nonfinite_range(const fo_mixed_segment *segs, int64_t nseg, int64_t lo,
                              int64_t hi, float scale, int scaled)
{
    FO_FOR_SEGMENTS(segs, nseg, lo, hi, s, a, b) {
        const fo_mixed_segment *sg = &segs[s];
        int bad = 0;
        if (sg->grad_dtype == FO_DT_F32) {
            const float *g = (const float *)sg->grad;
            if (scaled) FO_ANY(fo_nonfinite_f32(g[i] / scale));
            else FO_ANY(fo_nonfinite_f32(g[i]));
        } else if (sg->grad_dtype == FO_DT_F16) {
            const uint16_t *g = (const uint16_t *)sg->grad;
            if (scaled) FO_ANY(fo_nonfinite_f32(fo_h2f(g[i]) / scale));
            else FO_ANY((g[i] & 0x7c00u) == 0x7c00u);
        } else {
            const uint16_t *g = (const uint16_t *)sg->grad;
            if (scaled) FO_ANY(fo_nonfinite_f32(fo_bf2f(g[i]) / scale));
            else FO_ANY((g[i] & 0x7f80u) == 0x7f80u);
        }
        if (bad)
            return 1;
    }
    return 0;
}

int fo_mixed_all_finite(const fo_mixed_segment *segs, int64_t nseg, double grad_scale,
                        int64_t threshold, int n_threads)
{
    int64_t total = 0;
    if (!(grad_scale > 0)) return -1;
    FO_SUM_SEGMENTS(segs, nseg, total, fo_bad_grad);
    const float scale = (float)grad_scale;
    const int scaled = grad_scale != 1.0;
    const int nt = fo_team_size(total, threshold, n_threads);
    int bad = 0;
    FO_SHARE_REGION(nt, reduction(|:bad), total, 32, lo, hi,
                    bad |= fo_nonfinite_range(segs, nseg, lo, hi, scale, scaled););
    return bad ? 0 : 1;
}
