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

/* the codecs: inlined into the two slot functions below, each compiled for every ISA (one copy
 * per ISA for all kernels, called once per block and slot) */
#define FO_QI static inline

/* ------------------------------------------------------------------------------- codecs */
/*
 * int8 encoding by thresholds. With m the sorted map, element v of a block with absmax a gets
 * code j = #{ k < 255 : x >= t_k }, x = v / a, where t_k is the smallest float32 above the
 * exact midpoint (m_k + m_{k+1}) / 2. That is bitsandbytes' rule (the largest j with
 * m_j <= x, then j + 1 when |x - m_{j+1}| < |x - m_j|): between two neighbouring codes both
 * differences are exact (Sterbenz), so its comparison is the exact one against the midpoint,
 * ties to the lower code; NaN gets code 0 as there. The count is done in two levels of 16:
 * the group c = #{ g in 1..15 : x >= t_{16g} }, then j = 16 c + #{ s : x >= t_{16c+s} }, with
 * the second level's thresholds of all 16 groups in one 16-lane row per s, so that an AVX-512
 * register permute (vpermps) picks each lane's threshold: 31 compares and 16 permutes per 16
 * elements, no memory gathers. Decoding picks m[code] with 8 two-register permutes
 * (vpermi2ps) and a blend tree. Where AVX-512F is absent the same counts run as scalar code
 * (the same thresholds, so the same codes); fo_q8_vector says which.
 */
typedef struct {
    const float *map;         /* the map these thresholds belong to */
    float t[256];             /* t[k], k < 255; t[255] = +inf */
    float row[16][16];        /* row[s][c] = t[16 c + s] */
    float m[256];             /* the map itself, 64-byte aligned for vector loads */
} __attribute__((aligned(64))) fo_q8_table;

static void fo_q8_prepare(fo_q8_table *T, const float *map)
{
    T->map = map;
    for (int k = 0; k < 255; ++k) {
        const double mid = ((double)map[k] + (double)map[k + 1]) / 2.0;
        float f = (float)mid;
        if ((double)f <= mid)
            f = nextafterf(f, INFINITY);
        T->t[k] = f;
    }
    T->t[255] = INFINITY;
    for (int s = 0; s < 16; ++s)
        for (int c = 0; c < 16; ++c) T->row[s][c] = T->t[16 * c + s];
    for (int k = 0; k < 256; ++k) T->m[k] = map[k];
}

FO_QI float fo_q8_absmax(const float *FO_RESTRICT v, int64_t m)
{
    float amax = 0.0f;
    FO_PRAGMA(omp simd reduction(max:amax))
    for (int64_t i = 0; i < m; ++i) {
        const float a = fabsf(v[i]);
        amax = a > amax ? a : amax;            /* a NaN is skipped, as fmax does */
    }
    return amax;
}

FO_QI uint8_t fo_q8_code(float x, const fo_q8_table *T)
{
    int32_t c = 0;
    for (int g = 1; g < 16; ++g) c += x >= T->t[16 * g];
    int32_t j = 16 * c;
    for (int s = 0; s < 16; ++s) j += x >= T->t[16 * c + s];
    return (uint8_t)j;
}

static void fo_q8_encode_scalar(const float *FO_RESTRICT v, int64_t m, float amax,
                                const fo_q8_table *T, uint8_t *FO_RESTRICT out)
{
    for (int64_t i = 0; i < m; ++i) out[i] = fo_q8_code(v[i] / amax, T);
}

static void fo_q8_decode_scalar(const uint8_t *FO_RESTRICT q, float absmax,
                                const fo_q8_table *T, float *FO_RESTRICT out, int64_t m)
{
    for (int64_t i = 0; i < m; ++i) out[i] = T->m[q[i]] * absmax;
}

#if FO_HAS_CLONES
#include <string.h>
typedef float fo_v16f __attribute__((vector_size(64)));
typedef int32_t fo_v16i __attribute__((vector_size(64)));

__attribute__((target("avx512f"))) static void
fo_q8_encode_avx512(const float *FO_RESTRICT v, int64_t m, float amax, const fo_q8_table *T,
                    uint8_t *FO_RESTRICT out)
{
    int64_t i = 0;
    for (; i + 16 <= m; i += 16) {
        fo_v16f x;
        memcpy(&x, v + i, sizeof x);
        x = x / amax;
        fo_v16i c = {0};
        for (int g = 1; g < 16; ++g) c -= (x >= T->t[16 * g]);     /* true: -1 */
        fo_v16i j = c * 16;
        for (int s = 0; s < 16; ++s) {
            fo_v16f row;
            memcpy(&row, T->row[s], sizeof row);
            j -= (x >= __builtin_shuffle(row, c));
        }
        for (int l = 0; l < 16; ++l) out[i + l] = (uint8_t)j[l];
    }
    for (; i < m; ++i) out[i] = fo_q8_code(v[i] / amax, T);
}

__attribute__((target("avx512f"))) static void
fo_q8_decode_avx512(const uint8_t *FO_RESTRICT q, float absmax, const fo_q8_table *T,
                    float *FO_RESTRICT out, int64_t m)
{
    fo_v16f tab[16];
    memcpy(tab, T->m, sizeof tab);
    int64_t i = 0;
    for (; i + 16 <= m; i += 16) {
        fo_v16i code;
        for (int l = 0; l < 16; ++l) code[l] = q[i + l];
        const fo_v16i lo = code & 31, hi = code >> 5;
        fo_v16f r = __builtin_shuffle(tab[0], tab[1], lo);
        for (int h = 1; h < 8; ++h) {
            const fo_v16f t = __builtin_shuffle(tab[2 * h], tab[2 * h + 1], lo);
            const fo_v16i pick = hi == h;                       /* -1 where true */
            r = (fo_v16f)(((fo_v16i)t & pick) | ((fo_v16i)r & ~pick));
        }
        r = r * absmax;
        memcpy(out + i, &r, sizeof r);
    }
    for (; i < m; ++i) out[i] = T->m[q[i]] * absmax;
}

/* 1 when the AVX-512 codecs run (set once by fo_q8_init; -1: not decided yet) */
static int fo_q8_vector = -1;
static void fo_q8_init(void)
{
    if (fo_q8_vector < 0) {
        __builtin_cpu_init();
        fo_q8_vector = __builtin_cpu_supports("avx512f") ? 1 : 0;
    }
}
#define FO_Q8_ENCODE(V, M, A, T, OUT) \
    (fo_q8_vector ? fo_q8_encode_avx512(V, M, A, T, OUT) : fo_q8_encode_scalar(V, M, A, T, OUT))
#define FO_Q8_DECODE(Q, A, T, OUT, M) \
    (fo_q8_vector ? fo_q8_decode_avx512(Q, A, T, OUT, M) : fo_q8_decode_scalar(Q, A, T, OUT, M))
#else
static int fo_q8_vector = 0;
static void fo_q8_init(void) {}
#define FO_Q8_ENCODE fo_q8_encode_scalar
#define FO_Q8_DECODE fo_q8_decode_scalar
#endif

int fo_qstate_vector_codecs(int use)
{
    if (use >= 0) fo_q8_vector = -1;      /* decide again */
    fo_q8_init();
    if (use == 0) fo_q8_vector = 0;
    return fo_q8_vector;
}

FO_QI void fo_bf16_decode(const uint16_t *FO_RESTRICT s, float *FO_RESTRICT out, int64_t m)
{
    FO_PRAGMA(omp simd)
    for (int64_t i = 0; i < m; ++i) out[i] = fo_bf2f(s[i]);
}

FO_QI void fo_bf16_encode(const float *FO_RESTRICT v, uint16_t *FO_RESTRICT out, int64_t m,
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
 * slot is low-bit; NULL for an unused slot. `T`: the slot's int8 table (fo_q_table). */
FO_CLONES static float *fo_q_load(const fo_qstate_segment *sg, int k, int64_t c, int64_t m,
                               float *FO_RESTRICT buf, const fo_q8_table *T)
{
    if (!sg->state[k])
        return 0;
    switch (sg->format[k]) {
    case FO_SF_BF16:
        fo_bf16_decode((const uint16_t *)sg->state[k] + c, buf, m);
        return buf;
    case FO_SF_Q8:
        FO_Q8_DECODE((const uint8_t *)sg->state[k] + c, sg->absmax[k][c / FO_QBLOCK], T, buf, m);
        return buf;
    default:
        return (float *)sg->state[k] + c;
    }
}

FO_CLONES static void fo_q_store(const fo_qstate_segment *sg, int k, int64_t c, int64_t m,
                              const float *FO_RESTRICT buf, int stochastic, uint64_t key,
                              const fo_q8_table *T)
{
    if (!sg->state[k])
        return;
    if (sg->format[k] == FO_SF_BF16) {
        fo_bf16_encode(buf, (uint16_t *)sg->state[k] + c, m, stochastic, key, c);
    } else if (sg->format[k] == FO_SF_Q8) {
        const float amax = fo_q8_absmax(buf, m);
        sg->absmax[k][c / FO_QBLOCK] = amax;
        FO_Q8_ENCODE(buf, m, amax, T, (uint8_t *)sg->state[k] + c);
    }
}

/* The int8 table of slot k of a segment, rebuilt only when its map changes. */
FO_QI const fo_q8_table *fo_q_table(const fo_qstate_segment *sg, int k, fo_q8_table *T)
{
    if (sg->state[k] && sg->format[k] == FO_SF_Q8 && T->map != sg->qmap[k])
        fo_q8_prepare(T, sg->qmap[k]);
    return T;
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
    if (format < FO_SF_F32 || format > FO_SF_Q8) return -1;
    if (format == FO_SF_Q8 && n > 0 && (absmax == 0 || qmap == 0)) return -1;
    fo_q8_table T;
    T.map = 0;
    fo_q8_init();
    fo_q_table(&sg, 0, &T);
    for (int64_t c = 0; c < n; c += FO_QBLOCK) {
        const int64_t m = n - c < FO_QBLOCK ? n - c : FO_QBLOCK;
        const float *v = fo_q_load(&sg, 0, c, m, dst + c, &T);
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
    fo_q8_table T;
    T.map = 0;
    fo_q8_init();
    fo_q_table(&sg, 0, &T);
    for (int64_t c = 0; c < n; c += FO_QBLOCK) {
        const int64_t m = n - c < FO_QBLOCK ? n - c : FO_QBLOCK;
        if (format == FO_SF_F32)
            for (int64_t i = 0; i < m; ++i) ((float *)dst)[c + i] = src[c + i];
        else
            fo_q_store(&sg, 0, c, m, src + c, 0, 0, &T);
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
        fo_q8_table tab[FO_MAX_STATE];                                                        \
        tab[0].map = tab[1].map = tab[2].map = 0;                                             \
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
            const fo_q8_table *T0 = fo_q_table(sg, 0, &tab[0]);                               \
            const fo_q8_table *T1 = fo_q_table(sg, 1, &tab[1]);                               \
            const fo_q8_table *T2 = fo_q_table(sg, 2, &tab[2]);                               \
            for (int64_t j = ja; j < jb; ++j) {                                               \
                const int64_t c = j * FO_QBLOCK;                                              \
                const int64_t m = sg->n - c < FO_QBLOCK ? sg->n - c : FO_QBLOCK;              \
                float *FO_RESTRICT p = sg->param + c;                                         \
                const float *FO_RESTRICT g = sg->grad + c;                                    \
                float *FO_RESTRICT s0 = fo_q_load(sg, 0, c, m, buf[0], T0);                   \
                float *FO_RESTRICT s1 = fo_q_load(sg, 1, c, m, buf[1], T1);                   \
                float *FO_RESTRICT s2 = fo_q_load(sg, 2, c, m, buf[2], T2);                   \
                switch (k.flags & FO_MASK_##OPT) {                                            \
                    FO_CASES_##OPT(FO_Q_CASE, OPT, f32)                                       \
                default:                                                                      \
                    FO_Q_RULE_LOOP(OPT, k);                                                   \
                }                                                                             \
                fo_q_store(sg, 0, c, m, buf[0], stochastic, key[0], T0);                      \
                fo_q_store(sg, 1, c, m, buf[1], stochastic, key[1], T1);                      \
                fo_q_store(sg, 2, c, m, buf[2], stochastic, key[2], T2);                      \
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
        fo_q8_init();                                                                         \
        const int nt = fo_team_cap(total * (FO_COST_##OPT), threshold, n_threads, blocks);    \
        FO_SHARE_REGION(nt, , blocks, 1, lo, hi,                                              \
                        fo_qstate_##OPT##_range(segs, nseg, lo, hi, k, o););                  \
        return 0;                                                                             \
    }

FO_QSTATE_KERNELS(FO_QSTATE_STAMP)
