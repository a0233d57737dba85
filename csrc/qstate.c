/*
 * qstate.c -- the rules of fastopt/rules.h over low-bit optimizer state (API: fastopt/qstate.h).
 *
 * Design note
 * -----------
 * The state format is a property of a state slot, not of an optimizer: every rule runs on
 * float32 values, and a slot held in bfloat16 or blockwise int8 is decoded into an L1-resident
 * float32 block before the rule and encoded back after it, in the same pass over memory. A
 * thread walks its share of a group in blocks of FO_QBLOCK (256) elements, the int8 block:
 *
 *   1. each low-bit slot of the block is decoded into a stack buffer: bfloat16 by a shift,
 *      int8 by `qmap[code] * absmax` (a 256-entry table in L1, a vector gather);
 *   2. the rule runs over the block exactly as in kernels.c (same rule, same constants from
 *      fastopt/constants.h, the same FO_CASES_<opt> branch-free instances), on the parameter
 *      and gradient in place and on the buffers (a float32 slot in place);
 *   3. each low-bit slot is encoded back: bfloat16 rounded to nearest even or stochastically
 *      (fastopt/half.h); int8 with the block's new absmax = max |v| (NaN ignored, as
 *      bitsandbytes' fmax), then per element the nearest map entry to v / absmax, found by a
 *      branch-free binary search over the sorted map (8 selects, then the closer of the two
 *      neighbours, ties to the lower code): bitsandbytes' CPU quantize_blockwise, code for code.
 *
 * So codes and absmax are read and written once per step, and nothing but 2 (bfloat16) or
 * 1 + 4/256 (int8) bytes per element and slot moves for the state. Work is split over whole
 * blocks: a group's tensors are cut into blocks (the last of each tensor may be short), and
 * thread t of T takes an equal share of them (fo_share), so no two threads touch one absmax.
 * Stochastic noise is a counter-based hash of (seed, call counter, parameter index and slot,
 * element index): results do not depend on the number of threads.
 */
#include "fastopt/kernels.h"
#include "fastopt/rules.h"
#include "fastopt/constants.h"
#include "fastopt/mixed.h"       /* FO_ROUND_* */
#include "fastopt/qstate.h"
#include "fastopt/instances.h"   /* FO_QSTATE_KERNELS, FO_MASK_<opt>, FO_CASES_<opt>, FO_COST_<opt> */
#include "fastopt/half.h"        /* bfloat16 conversions, stochastic-rounding noise */

#include "fastopt/parallel.h"

/* ------------------------------------------------------------------------------- codecs */
static inline void fo_q8_decode(const uint8_t *FO_RESTRICT q, float absmax,
                                const float *FO_RESTRICT map, float *FO_RESTRICT out, int64_t m)
{
    FO_PRAGMA(omp simd)
    for (int64_t i = 0; i < m; ++i) out[i] = map[q[i]] * absmax;
}

/* One block: returns its absmax and writes the codes. */
static inline float fo_q8_encode(const float *FO_RESTRICT v, int64_t m,
                                 const float *FO_RESTRICT map, uint8_t *FO_RESTRICT out)
{
    float amax = 0.0f;
    FO_PRAGMA(omp simd reduction(max:amax))
    for (int64_t i = 0; i < m; ++i) {
        const float a = fabsf(v[i]);
        amax = a > amax ? a : amax;            /* a NaN is skipped, as fmax does */
    }
    FO_PRAGMA(omp simd)
    for (int64_t i = 0; i < m; ++i) {
        const float x = v[i] / amax;
        int32_t j = 0;
        j += map[j + 128] <= x ? 128 : 0;
        j += map[j + 64] <= x ? 64 : 0;
        j += map[j + 32] <= x ? 32 : 0;
        j += map[j + 16] <= x ? 16 : 0;
        j += map[j + 8] <= x ? 8 : 0;
        j += map[j + 4] <= x ? 4 : 0;
        j += map[j + 2] <= x ? 2 : 0;
        j += map[j + 1] <= x ? 1 : 0;
        const int32_t r = j < 255 ? j + 1 : 255;
        j += (fabsf(x - map[r]) < fabsf(x - map[j])) ? 1 : 0;   /* r == j: never */
        out[i] = (uint8_t)j;
    }
    return amax;
}

static inline void fo_bf16_decode(const uint16_t *FO_RESTRICT s, float *FO_RESTRICT out, int64_t m)
{
    FO_PRAGMA(omp simd)
    for (int64_t i = 0; i < m; ++i) out[i] = fo_bf2f(s[i]);
}

static inline void fo_bf16_encode(const float *FO_RESTRICT v, uint16_t *FO_RESTRICT out, int64_t m,
                                  int stochastic, uint64_t key, int64_t c)
{
    if (stochastic) {
        FO_PRAGMA(omp simd)
        for (int64_t i = 0; i < m; ++i) out[i] = fo_f2bf_sr(v[i], fo_noise(key, c + i));
    } else {
        FO_PRAGMA(omp simd)
        for (int64_t i = 0; i < m; ++i) out[i] = fo_f2bf(v[i]);
    }
}

/* Slot k of the block at element c (m elements): its float32 values, decoded into buf if the
 * slot is low-bit; NULL for an unused slot. */
static inline float *fo_q_load(const fo_qstate_segment *sg, int k, int64_t c, int64_t m,
                               float *FO_RESTRICT buf)
{
    if (!sg->state[k])
        return 0;
    switch (sg->format[k]) {
    case FO_SF_BF16:
        fo_bf16_decode((const uint16_t *)sg->state[k] + c, buf, m);
        return buf;
    case FO_SF_Q8:
        fo_q8_decode((const uint8_t *)sg->state[k] + c, sg->absmax[k][c / FO_QBLOCK],
                     sg->qmap[k], buf, m);
        return buf;
    default:
        return (float *)sg->state[k] + c;
    }
}

static inline void fo_q_store(const fo_qstate_segment *sg, int k, int64_t c, int64_t m,
                              const float *FO_RESTRICT buf, int stochastic, uint64_t key)
{
    if (!sg->state[k])
        return;
    if (sg->format[k] == FO_SF_BF16)
        fo_bf16_encode(buf, (uint16_t *)sg->state[k] + c, m, stochastic, key, c);
    else if (sg->format[k] == FO_SF_Q8)
        sg->absmax[k][c / FO_QBLOCK] = fo_q8_encode(buf, m, sg->qmap[k],
                                                    (uint8_t *)sg->state[k] + c);
}

static inline int64_t fo_q_blocks(int64_t n) { return (n + FO_QBLOCK - 1) / FO_QBLOCK; }

static inline int fo_q_bad_segment(const fo_qstate_segment *sg)
{
    if (sg->n > 0 && (sg->param == 0 || sg->grad == 0)) return 1;
    for (int k = 0; k < FO_MAX_STATE; ++k) {
        const int32_t f = sg->format[k];
        if (f < FO_SF_F32 || f > FO_SF_Q8) return 1;
        if (f == FO_SF_Q8 && sg->state[k] && (sg->absmax[k] == 0 || sg->qmap[k] == 0)) return 1;
    }
    return 0;
}

int fo_qstate_decode(int32_t format, const void *src, const float *absmax, const float *qmap,
                     float *dst, int64_t n)
{
    fo_qstate_segment sg = {0};
    if (n < 0 || (n > 0 && (src == 0 || dst == 0))) return -1;
    sg.state[0] = (void *)src;
    sg.absmax[0] = (float *)absmax;
    sg.qmap[0] = qmap;
    sg.format[0] = format;
    sg.n = n;
    if (fo_q_bad_segment(&sg) && n > 0 && format != FO_SF_F32) return -1;
    for (int64_t c = 0; c < n; c += FO_QBLOCK) {
        const int64_t m = n - c < FO_QBLOCK ? n - c : FO_QBLOCK;
        const float *v = fo_q_load(&sg, 0, c, m, dst + c);
        if (v != dst + c)
            for (int64_t i = 0; i < m; ++i) dst[c + i] = v[i];
    }
    return 0;
}

int fo_qstate_encode(int32_t format, const float *src, void *dst, float *absmax,
                     const float *qmap, int64_t n)
{
    fo_qstate_segment sg = {0};
    if (n < 0 || (n > 0 && (src == 0 || dst == 0))) return -1;
    if (format == FO_SF_Q8 && n > 0 && (absmax == 0 || qmap == 0)) return -1;
    if (format < FO_SF_F32 || format > FO_SF_Q8) return -1;
    sg.state[0] = dst;
    sg.absmax[0] = absmax;
    sg.qmap[0] = qmap;
    sg.format[0] = format;
    for (int64_t c = 0; c < n; c += FO_QBLOCK) {
        const int64_t m = n - c < FO_QBLOCK ? n - c : FO_QBLOCK;
        if (format == FO_SF_F32)
            for (int64_t i = 0; i < m; ++i) ((float *)dst)[c + i] = src[c + i];
        else
            fo_q_store(&sg, 0, c, m, src + c, 0, 0);
    }
    return 0;
}

/* ------------------------------------------------------------------------- the step loops */
#define FO_Q_RULE_LOOP(OPT, K)                                                                \
    do {                                                                                      \
        FO_PRAGMA(omp simd)                                                                   \
        for (int64_t i = 0; i < m; ++i)                                                       \
            fo_##OPT##_rule_f32(i, p, g, s0, s1, s2, (K));                                    \
    } while (0)

#define FO_Q_CASE(OPT, SFX, V)                                                                \
    case (V): {                                                                               \
        fo_##OPT##_k_f32 kv = k;                                                              \
        kv.flags = (k.flags & ~FO_MASK_##OPT) | (V);                                          \
        FO_Q_RULE_LOOP(OPT, kv);                                                              \
        break;                                                                                \
    }

/* Blocks [blo, bhi) of the group (the tensors' blocks numbered in order). */
#define FO_QSTATE_STAMP(OPT)                                                                  \
    FO_CLONES static void fo_qstate_##OPT##_range(const fo_qstate_segment *segs, int64_t nseg,\
                                        int64_t blo, int64_t bhi, fo_##OPT##_k_f32 k,         \
                                        const fo_qstate_opts *o)                              \
    {                                                                                         \
        float buf[FO_MAX_STATE][FO_QBLOCK] __attribute__((aligned(64)));                      \
        const int stochastic = o->rounding == FO_ROUND_STOCHASTIC;                            \
        int64_t first = 0;                                                                    \
        for (int64_t s = 0; s < nseg && first < bhi; ++s) {                                   \
            const fo_qstate_segment *sg = &segs[s];                                           \
            const int64_t nb = fo_q_blocks(sg->n), last = first + nb;                         \
            const int64_t ja = blo > first ? blo - first : 0;                                 \
            const int64_t jb = bhi < last ? bhi - first : nb;                                 \
            uint64_t key[FO_MAX_STATE] = {0};                                                 \
            if (stochastic)                                                                   \
                for (int q = 0; q < FO_MAX_STATE; ++q)                                        \
                    key[q] = fo_stream_key(o->seed, o->counter, sg->stream * 4 + q);          \
            for (int64_t j = ja; j < jb; ++j) {                                               \
                const int64_t c = j * FO_QBLOCK;                                              \
                const int64_t m = sg->n - c < FO_QBLOCK ? sg->n - c : FO_QBLOCK;              \
                float *FO_RESTRICT p = sg->param + c;                                         \
                const float *FO_RESTRICT g = sg->grad + c;                                    \
                float *FO_RESTRICT s0 = fo_q_load(sg, 0, c, m, buf[0]);                       \
                float *FO_RESTRICT s1 = fo_q_load(sg, 1, c, m, buf[1]);                       \
                float *FO_RESTRICT s2 = fo_q_load(sg, 2, c, m, buf[2]);                       \
                switch (k.flags & FO_MASK_##OPT) {                                            \
                    FO_CASES_##OPT(FO_Q_CASE, OPT, f32)                                       \
                default:                                                                      \
                    FO_Q_RULE_LOOP(OPT, k);                                                   \
                }                                                                             \
                for (int q = 0; q < FO_MAX_STATE; ++q)                                        \
                    fo_q_store(sg, q, c, m, buf[q], stochastic, key[q]);                      \
            }                                                                                 \
            first = last;                                                                     \
        }                                                                                     \
    }                                                                                         \
    int fo_qstate_##OPT##_step(const fo_qstate_segment *segs, int64_t nseg,                   \
                               const fo_##OPT##_hp *hp, const fo_qstate_opts *o,              \
                               int64_t threshold, int n_threads)                              \
    {                                                                                         \
        int64_t total = 0, blocks = 0;                                                        \
        if (hp == 0 || o == 0) return -1;                                                     \
        FO_SUM_SEGMENTS(segs, nseg, total, fo_q_bad_segment);                                 \
        for (int64_t s = 0; s < nseg; ++s) blocks += fo_q_blocks(segs[s].n);                  \
        const fo_##OPT##_k_f32 k = fo_##OPT##_constants_f32(hp);                              \
        const int nt = fo_team_cap(total * (FO_COST_##OPT), threshold, n_threads, blocks);    \
        FO_SHARE_REGION(nt, , blocks, 1, lo, hi,                                              \
                        fo_qstate_##OPT##_range(segs, nseg, lo, hi, k, o););                  \
        return 0;                                                                             \
    }

FO_QSTATE_KERNELS(FO_QSTATE_STAMP)
