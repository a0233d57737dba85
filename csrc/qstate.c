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
 *      int8 by `qmap[code] * absmax` (byte-table permutes or a vector gather, below);
 *   2. the rule runs over the block exactly as in kernels.c (same rule, same constants from
 *      fastopt/constants.h, the same FO_CASES_<opt> branch-free instances), on the parameter
 *      and gradient in place and on the buffers (a float32 slot in place);
 *   3. each low-bit slot is encoded back: bfloat16 rounded to nearest even or stochastically
 *      (fastopt/half.h); int8 with the block's new absmax = max |v| (NaN ignored, as
 *      bitsandbytes' fmax), then per element the nearest map entry to v * (1 / absmax), read
 *      from a bucket table by the bits of the value (below), ties to the lower code.
 *
 * Two bfloat16 moments with nearest rounding on AVX-512 or AVX2 (the common Adam-like case)
 * skip the block buffers: a thread's blocks of a tensor run as one stretch (FO_QF_RUN), 16
 * elements at a time decoded, run through the rule and encoded in registers and L1, so the
 * codecs' work overlaps the rule's divisions. Where the CPU has AVX-512 BF16 a copy of that
 * loop compiled for it encodes with the conversion instruction (fewer operations on the ports
 * the divisions also need), and the loop prefetches its streams FO_QF_AHEAD elements ahead:
 * together 0.70-0.84x the time at N=5e7. AVX2 runs the same loop with 8-lane codecs. The
 * rule's common case (FO_PLAIN_<opt>, instances.h, from the table's `plain`: Adam, RAdam,
 * NAdam without maximize or coupled weight decay) runs as an instance of its own with those
 * branches folded (FO_QF_LOOP_BY).
 *
 * Two int8 moments on AVX-512 or AVX2 (FO_Q8F_RUN) take the steps above on a thread's full
 * blocks as a pipeline: while the rule runs on block j, 64 elements at a time just after their
 * decoding, with the block's new absmax gathered on the way, the codes of block j - 1 (whose
 * absmax is known) are encoded in the same iterations, so the encoder's gathers overlap the
 * divisions instead of following them; the four streams are prefetched as in the bfloat16
 * loop. Adam at N=5e7: 0.85-0.89x the time of the three steps per block, 0.70x in cache (AVX2:
 * 0.86-0.88x, 0.80-0.99x).
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
#include "fastopt/instances.h"   /* FO_QSTATE_KERNELS, FO_MASK_, FO_CASES_, FO_COST_<opt> */
#include "fastopt/half.h"        /* bfloat16 conversions, stochastic-rounding noise */

#include "fastopt/parallel.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define FO_QI static inline

/* 64-byte alignment, the map cache's atomics and aligned allocation, per compiler (MSVC builds
 * run the scalar codecs: FO_HAS_CLONES is 0 there) */
#if defined(_MSC_VER)
#include <intrin.h>
#include <malloc.h>
#define FO_ALIGN64 __declspec(align(64))
typedef volatile long fo_q8_atomic;
#define FO_Q8_LOAD(p) (*(p))                                    /* /volatile:ms: acquire */
#define FO_Q8_STORE(p, v) (*(p) = (v))                          /* and release */
#define FO_Q8_LOCK(p) while (_InterlockedExchange((p), 1)) {}
#define FO_Q8_UNLOCK(p) _InterlockedExchange((p), 0)
#define fo_q8_alloc(size) _aligned_malloc((size), 64)
#define fo_q8_free(ptr) _aligned_free(ptr)
#else
#define FO_ALIGN64 __attribute__((aligned(64)))
typedef int fo_q8_atomic;
#define FO_Q8_LOAD(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define FO_Q8_STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define FO_Q8_LOCK(p) while (__atomic_exchange_n((p), 1, __ATOMIC_ACQUIRE)) {}
#define FO_Q8_UNLOCK(p) __atomic_store_n((p), 0, __ATOMIC_RELEASE)
#define fo_q8_alloc(size) aligned_alloc(64, (size))
#define fo_q8_free(ptr) free(ptr)
#endif

/* ------------------------------------------------------------------------------ int8 tables */
/*
 * The code of x = v * (1 / absmax) is j = #{ k < 255 : x >= t_k }, with t_k the smallest float32
 * above the exact midpoint (m_k + m_{k+1}) / 2 of two neighbouring map values. That is
 * bitsandbytes' rule (the largest j with m_j <= x, then j + 1 when |x - m_{j+1}| < |x - m_j|):
 * between two neighbouring codes both differences are exact (Sterbenz), so its comparison is
 * the exact one against the midpoint, ties to the lower code; NaN gets code 0.
 *
 * The count is read from a bucket table instead of being counted. The float32 bits of |x|,
 * shifted right by 23 - K, number the buckets: K mantissa bits, each octave cut into 2^K
 * equal intervals. K (4..8) is the smallest for which no bucket holds more than one
 * threshold, so a bucket's entry is the count below it plus at most one threshold, held as
 * the low mantissa bits it is reached at:
 *
 *     positive x:  j = base + (low(x) >= thr)          (thr = 2^(23-K): no threshold)
 *     negative x:  j = base' + !(low(|x|) >= thr)      (base' = count - 1 mod 256,
 *                                                       thr = low(|t|) + 1)
 *
 * one entry of 32 bits (base in the low byte, thr above it), so the code is the low byte of
 * entry + (hit XOR negative). |x| is clamped below to 2^e, the largest power of two whose
 * first bucket lies below every threshold (there x and 0 share a code), and above to 2, the
 * bucket that answers NaN (v * (1 / absmax) is below 2 in magnitude, or NaN). For the dynamic
 * maps that is K = 6 (signed) or 7 (unsigned), 1473 or 3073 entries per sign; a vector gather
 * (16 lanes with AVX-512, 8 with AVX2) reads them. A map for which no K works (unsorted,
 * thresholds too close or too near zero) is encoded by counting.
 *
 * Decoding is m[code] * absmax: a gather from the map, or, with AVX-512 VBMI, 64
 * codes at a time by byte tables: byte q of m[code] for every q by two 128-entry byte
 * permutes (vpermi2b) and a select on the code's top bit, the four bytes interleaved back into
 * floats (the codes are first permuted so the interleave yields the floats in order).
 *
 * A table is built once per distinct map and kept (fo_q8_get: a small process-wide cache,
 * keyed by the map's bits, built under a spin lock, read without one).
 */
#define FO_Q8_KMIN 4
#define FO_Q8_KMAX 8
#define FO_Q8_OCTAVES 30
#define FO_Q8_NB_MAX (((FO_Q8_OCTAVES + 1) << FO_Q8_KMAX) + 1)
#define FO_Q8_CACHE 16

typedef struct FO_ALIGN64 {
    float key[256];                  /* the map as given: the cache key */
    float t[256];                    /* t[k], k < 255; t[255] = +inf */
    float m[256];                    /* the map, 64-byte aligned for vector loads */
    uint8_t plane[4][256];           /* plane[q][c]: byte q of the bits of m[c] */
    uint8_t order[64];               /* the code permutation of the byte-table decoder */
    int fast;                        /* the bucket table below is valid */
    int shift;                       /* 23 - K */
    uint32_t abits, topbits;         /* clamp of |x|'s bits: 2^e, 2.0 */
    int32_t nb;                      /* buckets per sign */
    uint32_t ent[2 * FO_Q8_NB_MAX];  /* [negative * nb + ((bits - abits) >> shift)] */
} fo_q8_table;

/* #{ k < 255 : t_k <= x } (strict = 0) or #{ k < 255 : t_k < x } (strict = 1) of a sorted
 * threshold list */
static int fo_q8_count(const float *t, float x, int strict)
{
    int lo = 0, hi = 255;
    while (lo < hi) {
        const int mid = (lo + hi) / 2;
        if (strict ? t[mid] < x : t[mid] <= x) lo = mid + 1; else hi = mid;
    }
    return lo;
}
#define fo_q8_count_le(t, x) fo_q8_count((t), (x), 0)
#define fo_q8_count_lt(t, x) fo_q8_count((t), (x), 1)

/* the bucket table for K = k and lower clamp 2^(e - 127); 0 when a bucket holds two
 * thresholds or the lowest bucket is not below every threshold */
static int fo_q8_fill(fo_q8_table *T, int k, int e)
{
    const int shift = 23 - k;
    const uint32_t never = 1u << shift, lowmask = never - 1;
    const uint32_t abits = (uint32_t)e << 23, topbits = 0x40000000u;
    const int32_t ha = (int32_t)(abits >> shift), htop = (int32_t)(topbits >> shift);
    const int32_t nb = htop - ha + 1;
    if (nb > FO_Q8_NB_MAX) return 0;
    const float edge = fo_float((uint32_t)(ha + 1) << shift);
    if (fo_q8_count_lt(T->t, edge) != fo_q8_count_le(T->t, -edge)) return 0;
    for (int32_t h = ha; h < htop; ++h) {
        const float lo = fo_float((uint32_t)h << shift), hi = fo_float((uint32_t)(h + 1) << shift);
        const int base = fo_q8_count_le(T->t, lo);
        int inside = fo_q8_count_lt(T->t, hi) - base;
        if (inside > 1) return 0;
        uint32_t thr = inside ? (fo_bits(T->t[base]) & lowmask) : never;
        T->ent[h - ha] = (uint32_t)base | thr << 8;
        const int below = fo_q8_count_le(T->t, -lo);          /* x in (-hi, -lo] */
        inside = below - fo_q8_count_le(T->t, -hi);
        if (inside > 1) return 0;
        thr = inside ? (fo_bits(-T->t[below - 1]) & lowmask) + 1 : never;
        T->ent[nb + h - ha] = (uint32_t)((below + 255) & 255) | thr << 8;
    }
    T->ent[nb - 1] = never << 8;                  /* NaN: code 0 */
    T->ent[2 * nb - 1] = 255u | never << 8;       /* -NaN: 255 + 1 = code 0 */
    T->shift = shift;
    T->abits = abits;
    T->topbits = topbits;
    T->nb = nb;
    return 1;
}

static void fo_q8_prepare(fo_q8_table *T, const float *map)
{
    memcpy(T->key, map, sizeof T->key);
    int sorted = 1;
    for (int k = 0; k < 255; ++k) {
        const double mid = ((double)map[k] + (double)map[k + 1]) / 2.0;
        float f = (float)mid;
        if ((double)f <= mid)
            f = nextafterf(f, INFINITY);
        T->t[k] = f;
        if (k > 0 && !(T->t[k - 1] <= f)) sorted = 0;
    }
    T->t[255] = INFINITY;
    for (int c = 0; c < 256; ++c) {
        T->m[c] = map[c];
        const uint32_t u = fo_bits(map[c]);
        for (int q = 0; q < 4; ++q) T->plane[q][c] = (uint8_t)(u >> (8 * q));
    }
    /* the interleave of 4 byte planes yields, in 128-bit lane L of float vector j, the bytes
     * at 16 L + 4 j + r; element 16 j + 4 L + r must be there */
    for (int L = 0; L < 4; ++L)
        for (int j = 0; j < 4; ++j)
            for (int r = 0; r < 4; ++r)
                T->order[16 * L + 4 * j + r] = (uint8_t)(16 * j + 4 * L + r);
    T->fast = 0;
    if (!sorted) return;
    float least = INFINITY;
    for (int k = 0; k < 255; ++k) least = fabsf(T->t[k]) < least ? fabsf(T->t[k]) : least;
    if (!(least > 0.0f) || !(fabsf(T->t[0]) < 1.0f) || !(fabsf(T->t[254]) < 1.0f)) return;
    const int top_e = (int)(fo_bits(least) >> 23);
    for (int k = FO_Q8_KMIN; k <= FO_Q8_KMAX && !T->fast; ++k)
        for (int e = top_e; e >= 127 - FO_Q8_OCTAVES && e > 0 && !T->fast; --e)
            T->fast = fo_q8_fill(T, k, e);
}

static fo_q8_table fo_q8_cache[FO_Q8_CACHE];
static fo_q8_atomic fo_q8_cached;
static fo_q8_atomic fo_q8_lock;

/* The table of `map` from the cache (built on first use), or NULL when the cache is full. */
static const fo_q8_table *fo_q8_get(const float *map)
{
    int n = (int)FO_Q8_LOAD(&fo_q8_cached);
    for (int i = 0; i < n; ++i)
        if (memcmp(fo_q8_cache[i].key, map, sizeof fo_q8_cache[i].key) == 0)
            return &fo_q8_cache[i];
    FO_Q8_LOCK(&fo_q8_lock);
    const fo_q8_table *got = 0;
    const int now = (int)FO_Q8_LOAD(&fo_q8_cached);
    for (int i = n; i < now && !got; ++i)
        if (memcmp(fo_q8_cache[i].key, map, sizeof fo_q8_cache[i].key) == 0)
            got = &fo_q8_cache[i];
    if (!got && now < FO_Q8_CACHE) {
        fo_q8_prepare(&fo_q8_cache[now], map);
        got = &fo_q8_cache[now];
        FO_Q8_STORE(&fo_q8_cached, now + 1);
    }
    FO_Q8_UNLOCK(&fo_q8_lock);
    return got;
}

/* ------------------------------------------------------------------------------- codecs */
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

/* the code of x by counting (the definition; maps without a bucket table) */
FO_QI uint8_t fo_q8_code_count(float x, const fo_q8_table *T)
{
    int32_t j = 0;
    for (int k = 0; k < 255; ++k) j += x >= T->t[k];
    return (uint8_t)j;
}

/* The bucket table's constants as plain values: an encoder keeps them in registers (its
 * byte stores could alias the table, so read through T they would be reloaded per code). */
typedef struct {
    const uint32_t *ent;
    uint32_t abits, topbits, lowmask, nb;
    int shift;
} fo_q8_buckets;

FO_QI fo_q8_buckets fo_q8_buckets_of(const fo_q8_table *T)
{
    fo_q8_buckets B;
    B.ent = T->ent;
    B.abits = T->abits;
    B.topbits = T->topbits;
    B.lowmask = (1u << T->shift) - 1;
    B.nb = (uint32_t)T->nb;
    B.shift = T->shift;
    return B;
}

/* the code of x from the bucket table (no branch on the sign: it is random in a moment).
 * |x|'s bits are counted from the clamp 2^e, a multiple of 2^shift, so the bucket's entry is
 * (a - abits) >> shift and its low bits are those of a. */
FO_QI uint8_t fo_q8_code(float x, const fo_q8_buckets *B)
{
    const uint32_t b = fo_bits(x), neg = b >> 31;
    uint32_t a = b & 0x7fffffffu;
    a = a < B->abits ? B->abits : a;
    a = a > B->topbits ? B->topbits : a;
    a -= B->abits;
    const uint32_t e = B->ent[(a >> B->shift) + ((0u - neg) & B->nb)];
    const uint32_t hit = (a & B->lowmask) >= (e >> 8);
    return (uint8_t)(e + (hit ^ neg));
}

/* x = v * (1 / absmax): the reciprocal rounded once per block, as bitsandbytes' CUDA kernels
 * scale a block; where it overflows (absmax below 2^-128, not 0) the block divides instead. */
FO_QI int fo_q8_divides(float amax) { return amax != 0.0f && !(1.0f / amax <= FLT_MAX); }

static void fo_q8_encode_scalar(const float *FO_RESTRICT v, int64_t m, float amax,
                                const fo_q8_table *T, uint8_t *FO_RESTRICT out)
{
    const float r = 1.0f / amax;
    if (!T->fast) {
        const int divide = fo_q8_divides(amax);
        for (int64_t i = 0; i < m; ++i)
            out[i] = fo_q8_code_count(divide ? v[i] / amax : v[i] * r, T);
        return;
    }
    const fo_q8_buckets B = fo_q8_buckets_of(T);
    if (fo_q8_divides(amax))
        for (int64_t i = 0; i < m; ++i) out[i] = fo_q8_code(v[i] / amax, &B);
    else
        for (int64_t i = 0; i < m; ++i) out[i] = fo_q8_code(v[i] * r, &B);
}

static void fo_q8_decode_scalar(const uint8_t *FO_RESTRICT q, float absmax,
                                const fo_q8_table *T, float *FO_RESTRICT out, int64_t m)
{
    for (int64_t i = 0; i < m; ++i) out[i] = T->m[q[i]] * absmax;
}

FO_QI void fo_bf16_decode_scalar(const uint16_t *FO_RESTRICT s, float *FO_RESTRICT out, int64_t m)
{
    FO_PRAGMA(omp simd)
    for (int64_t i = 0; i < m; ++i) out[i] = fo_bf2f(s[i]);
}

FO_QI void fo_bf16_encode_scalar(const float *FO_RESTRICT v, uint16_t *FO_RESTRICT out, int64_t m)
{
    FO_PRAGMA(omp simd)
    for (int64_t i = 0; i < m; ++i) out[i] = fo_f2bf(v[i]);
}

/* codec levels: what fo_q8_level says runs */
#define FO_Q8_SCALAR 0
#define FO_Q8_AVX2 1         /* 8-lane gather encode and decode */
#define FO_Q8_AVX512F 2      /* 16-lane gather encode and decode */
#define FO_Q8_AVX512VBMI 3   /* gather encode, byte-table decode (AVX-512 VBMI) */

#if FO_HAS_CLONES
#include <immintrin.h>
#define FO_T512 __attribute__((target("avx512f")))
#define FO_TVBMI __attribute__((target("avx512f,avx512bw,avx512vbmi")))
#define FO_TAVX2 __attribute__((target("avx2")))
#define FO_TAVX2FMA __attribute__((target("avx2,fma")))   /* the rules' fmaf inline */

/* an int8 slot's encoder: the bucket table's constants in vector registers */
typedef struct {
    __m512i lo, top, nb, lowmask, shift;
    fo_q8_buckets B;
} fo_q8_coder;

FO_T512 static inline void fo_q8_coder_init(fo_q8_coder *E, const fo_q8_table *T)
{
    E->B = fo_q8_buckets_of(T);
    E->lo = _mm512_set1_epi32((int)E->B.abits);
    E->top = _mm512_set1_epi32((int)E->B.topbits);
    E->nb = _mm512_set1_epi32((int)E->B.nb);
    E->lowmask = _mm512_set1_epi32((int)E->B.lowmask);
    E->shift = _mm512_set1_epi32(E->B.shift);
}

/* 16 values of a block encoded, r = 1 / absmax (a block with fo_q8_divides(absmax) or a map
 * without a bucket table takes fo_q8_encode_scalar instead) */
FO_T512 static inline void fo_q8_enc16(const float *FO_RESTRICT v, __m512 r,
                                       const fo_q8_coder *E, uint8_t *FO_RESTRICT out)
{
    const __m512i b = _mm512_castps_si512(_mm512_mul_ps(_mm512_loadu_ps(v), r));
    const __m512i abs = _mm512_and_si512(b, _mm512_set1_epi32(0x7fffffff));
    const __m512i a = _mm512_sub_epi32(_mm512_min_epu32(_mm512_max_epu32(abs, E->lo), E->top),
                                       E->lo);                     /* as in fo_q8_code */
    const __mmask16 neg = _mm512_cmplt_epi32_mask(b, _mm512_setzero_si512());
    const __m512i h = _mm512_srlv_epi32(a, E->shift);
    const __m512i e = _mm512_i32gather_epi32(_mm512_mask_add_epi32(h, neg, h, E->nb),
                                              (const int *)E->B.ent, 4);
    const __mmask16 hit = _mm512_cmpge_epu32_mask(_mm512_and_si512(a, E->lowmask),
                                                  _mm512_srli_epi32(e, 8));
    const __m512i code = _mm512_mask_add_epi32(e, _kxor_mask16(hit, neg), e, _mm512_set1_epi32(1));
    _mm_storeu_si128((__m128i *)out, _mm512_cvtepi32_epi8(code));
}

FO_T512 static void fo_q8_encode_avx512(const float *FO_RESTRICT v, int64_t m, float amax,
                                        const fo_q8_table *T, uint8_t *FO_RESTRICT out)
{
    if (!T->fast || fo_q8_divides(amax)) {
        fo_q8_encode_scalar(v, m, amax, T, out);
        return;
    }
    const float r = 1.0f / amax;
    fo_q8_coder E;
    fo_q8_coder_init(&E, T);
    int64_t i = 0;
    for (; i + 16 <= m; i += 16) fo_q8_enc16(v + i, _mm512_set1_ps(r), &E, out + i);
    for (; i < m; ++i) out[i] = fo_q8_code(v[i] * r, &E.B);
}

/* 16 codes decoded by a gather from the map */
FO_T512 static inline void fo_q8_dec16(const uint8_t *FO_RESTRICT q, __m512 am,
                                       const fo_q8_table *T, float *FO_RESTRICT out)
{
    const __m512i c = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)q));
    _mm512_storeu_ps(out, _mm512_mul_ps(_mm512_i32gather_ps(c, T->m, 4), am));
}

FO_T512 static void fo_q8_decode_avx512(const uint8_t *FO_RESTRICT q, float absmax,
                                        const fo_q8_table *T, float *FO_RESTRICT out, int64_t m)
{
    const __m512 am = _mm512_set1_ps(absmax);
    int64_t i = 0;
    for (; i + 16 <= m; i += 16) fo_q8_dec16(q + i, am, T, out + i);
    for (; i < m; ++i) out[i] = T->m[q[i]] * absmax;
}

/* 64 codes decoded by the byte tables (64-byte aligned `out`) */
FO_TVBMI static inline void fo_q8_dec64(const uint8_t *FO_RESTRICT q, float amax,
                                        const fo_q8_table *T, float *FO_RESTRICT out)
{
    const __m512 am = _mm512_set1_ps(amax);
    const __m512i c = _mm512_permutexvar_epi8(_mm512_load_si512(T->order), _mm512_loadu_si512(q));
    const __mmask64 upper = _mm512_movepi8_mask(c);
    __m512i p[4];
    for (int k = 0; k < 4; ++k) {
        const uint8_t *pl = T->plane[k];
        const __m512i a = _mm512_permutex2var_epi8(_mm512_load_si512(pl), c,
                                                   _mm512_load_si512(pl + 64));
        const __m512i b = _mm512_permutex2var_epi8(_mm512_load_si512(pl + 128), c,
                                                   _mm512_load_si512(pl + 192));
        p[k] = _mm512_mask_blend_epi8(upper, a, b);
    }
    const __m512i w01l = _mm512_unpacklo_epi8(p[0], p[1]), w01h = _mm512_unpackhi_epi8(p[0], p[1]);
    const __m512i w23l = _mm512_unpacklo_epi8(p[2], p[3]), w23h = _mm512_unpackhi_epi8(p[2], p[3]);
    const __m512i f[4] = {_mm512_unpacklo_epi16(w01l, w23l), _mm512_unpackhi_epi16(w01l, w23l),
                          _mm512_unpacklo_epi16(w01h, w23h), _mm512_unpackhi_epi16(w01h, w23h)};
    for (int j = 0; j < 4; ++j)
        _mm512_store_ps(out + 16 * j, _mm512_mul_ps(_mm512_castsi512_ps(f[j]), am));
}

FO_TVBMI static void fo_q8_decode_vbmi(const uint8_t *FO_RESTRICT q, float absmax,
                                       const fo_q8_table *T, float *FO_RESTRICT out, int64_t m)
{
    int64_t i = 0;
    if (((uintptr_t)out & 63) == 0)
        for (; i + 64 <= m; i += 64) fo_q8_dec64(q + i, absmax, T, out + i);
    fo_q8_decode_avx512(q + i, absmax, T, out + i, m - i);
}

FO_T512 static inline void fo_bf16_dec16(const uint16_t *FO_RESTRICT s, float *FO_RESTRICT out)
{
    const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)s));
    _mm512_storeu_si512(out, _mm512_slli_epi32(w, 16));
}

FO_T512 static void fo_bf16_decode_avx512(const uint16_t *FO_RESTRICT s, float *FO_RESTRICT out,
                                          int64_t m)
{
    int64_t i = 0;
    for (; i + 16 <= m; i += 16) fo_bf16_dec16(s + i, out + i);
    for (; i < m; ++i) out[i] = fo_bf2f(s[i]);
}

/* fo_f2bf of half.h, 16 at a time */
FO_T512 static inline void fo_bf16_encode16(const float *FO_RESTRICT v, uint16_t *FO_RESTRICT out)
{
    const __m512 x = _mm512_loadu_ps(v);
    const __m512i b = _mm512_castps_si512(x), hi = _mm512_srli_epi32(b, 16);
    const __m512i rne = _mm512_srli_epi32(
        _mm512_add_epi32(_mm512_add_epi32(b, _mm512_set1_epi32(0x7fff)),
                         _mm512_and_si512(hi, _mm512_set1_epi32(1))), 16);
    const __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
    const __m512i r = _mm512_mask_or_epi32(rne, nan, hi, _mm512_set1_epi32(0x40));
    _mm256_storeu_si256((__m256i *)out, _mm512_cvtepi32_epi16(r));
}

FO_T512 static void fo_bf16_encode_avx512(const float *FO_RESTRICT v, uint16_t *FO_RESTRICT out,
                                          int64_t m)
{
    int64_t i = 0;
    for (; i + 16 <= m; i += 16) fo_bf16_encode16(v + i, out + i);
    for (; i < m; ++i) out[i] = fo_f2bf(v[i]);
}

/* The AVX2 codecs (CPUs without AVX-512): the AVX-512 ones on 8 lanes. AVX2 compares signed
 * only; the bucket test compares values below 2^24, and the sign comes as a lane mask. */
typedef struct {
    __m256i lo, top, nb, lowmask, shift;
    fo_q8_buckets B;
} fo_q8_coder8;

FO_TAVX2 static inline void fo_q8_coder8_init(fo_q8_coder8 *E, const fo_q8_table *T)
{
    E->B = fo_q8_buckets_of(T);
    E->lo = _mm256_set1_epi32((int)E->B.abits);
    E->top = _mm256_set1_epi32((int)E->B.topbits);
    E->nb = _mm256_set1_epi32((int)E->B.nb);
    E->lowmask = _mm256_set1_epi32((int)E->B.lowmask);
    E->shift = _mm256_set1_epi32(E->B.shift);
}

/* 8 values of a block encoded, r = 1 / absmax (as fo_q8_enc16) */
FO_TAVX2 static inline void fo_q8_enc8(const float *FO_RESTRICT v, __m256 r,
                                       const fo_q8_coder8 *E, uint8_t *FO_RESTRICT out)
{
    const __m256i b = _mm256_castps_si256(_mm256_mul_ps(_mm256_loadu_ps(v), r));
    const __m256i abs = _mm256_and_si256(b, _mm256_set1_epi32(0x7fffffff));
    const __m256i a = _mm256_sub_epi32(_mm256_min_epu32(_mm256_max_epu32(abs, E->lo), E->top),
                                       E->lo);
    const __m256i neg = _mm256_srai_epi32(b, 31);                     /* -1 where negative */
    const __m256i h = _mm256_add_epi32(_mm256_srlv_epi32(a, E->shift),
                                       _mm256_and_si256(neg, E->nb));
    const __m256i e = _mm256_i32gather_epi32((const int *)E->B.ent, h, 4);
    const __m256i miss = _mm256_cmpgt_epi32(_mm256_srli_epi32(e, 8),
                                            _mm256_and_si256(a, E->lowmask));
    /* code = e + (hit XOR negative) = e + 1 + (miss XOR neg): miss and neg are 0 or -1 */
    const __m256i code = _mm256_add_epi32(_mm256_add_epi32(e, _mm256_set1_epi32(1)),
                                          _mm256_xor_si256(miss, neg));
    const __m256i low = _mm256_shuffle_epi8(code, _mm256_setr_epi8(
        0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
        0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1));
    _mm_storel_epi64((__m128i *)out, _mm_unpacklo_epi32(_mm256_castsi256_si128(low),
                                                        _mm256_extracti128_si256(low, 1)));
}

FO_TAVX2 static void fo_q8_encode_avx2(const float *FO_RESTRICT v, int64_t m, float amax,
                                       const fo_q8_table *T, uint8_t *FO_RESTRICT out)
{
    if (!T->fast || fo_q8_divides(amax)) {
        fo_q8_encode_scalar(v, m, amax, T, out);
        return;
    }
    const float r = 1.0f / amax;
    fo_q8_coder8 E;
    fo_q8_coder8_init(&E, T);
    int64_t i = 0;
    for (; i + 8 <= m; i += 8) fo_q8_enc8(v + i, _mm256_set1_ps(r), &E, out + i);
    for (; i < m; ++i) out[i] = fo_q8_code(v[i] * r, &E.B);
}

/* 8 codes decoded by a gather from the map */
FO_TAVX2 static inline void fo_q8_dec8(const uint8_t *FO_RESTRICT q, __m256 am,
                                       const fo_q8_table *T, float *FO_RESTRICT out)
{
    const __m256i c = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)q));
    _mm256_storeu_ps(out, _mm256_mul_ps(_mm256_i32gather_ps(T->m, c, 4), am));
}

FO_TAVX2 static void fo_q8_decode_avx2(const uint8_t *FO_RESTRICT q, float absmax,
                                       const fo_q8_table *T, float *FO_RESTRICT out, int64_t m)
{
    const __m256 am = _mm256_set1_ps(absmax);
    int64_t i = 0;
    for (; i + 8 <= m; i += 8) fo_q8_dec8(q + i, am, T, out + i);
    for (; i < m; ++i) out[i] = T->m[q[i]] * absmax;
}

FO_TAVX2 static inline void fo_bf16_dec8(const uint16_t *FO_RESTRICT s, float *FO_RESTRICT out)
{
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)s));
    _mm256_storeu_si256((__m256i *)out, _mm256_slli_epi32(w, 16));
}

FO_TAVX2 static void fo_bf16_decode_avx2(const uint16_t *FO_RESTRICT s, float *FO_RESTRICT out,
                                         int64_t m)
{
    int64_t i = 0;
    for (; i + 8 <= m; i += 8) fo_bf16_dec8(s + i, out + i);
    for (; i < m; ++i) out[i] = fo_bf2f(s[i]);
}

/* fo_f2bf of half.h on 8 lanes, in two parts: rounded to nearest even (a NaN's bits may carry
 * out of it), and the quiet NaN (the top half, OR 0x40) put in where x is NaN */
FO_TAVX2 static inline __m256i fo_bf16_rne8(__m256i b)
{
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(1));
    return _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(b, _mm256_set1_epi32(0x7fff)),
                                              lsb), 16);
}

FO_TAVX2 static inline __m256i fo_bf16_quiet8(__m256i r, __m256 x)
{
    const __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(_mm256_castps_si256(x), 16),
                                          _mm256_set1_epi32(0x40));
    return _mm256_blendv_epi8(r, quiet, _mm256_castps_si256(_mm256_cmp_ps(x, x, _CMP_UNORD_Q)));
}

/* fo_f2bf of half.h, 8 at a time */
FO_TAVX2 static inline void fo_bf16_enc8(const float *FO_RESTRICT v, uint16_t *FO_RESTRICT out)
{
    const __m256 x = _mm256_loadu_ps(v);
    const __m256i r = fo_bf16_quiet8(fo_bf16_rne8(_mm256_castps_si256(x)), x);
    const __m256i w = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
    _mm_storeu_si128((__m128i *)out, _mm256_castsi256_si128(w));
}

FO_TAVX2 static void fo_bf16_encode_avx2(const float *FO_RESTRICT v, uint16_t *FO_RESTRICT out,
                                         int64_t m)
{
    int64_t i = 0;
    for (; i + 8 <= m; i += 8) fo_bf16_enc8(v + i, out + i);
    for (; i < m; ++i) out[i] = fo_f2bf(v[i]);
}

/* 16 values decoded by two 8-lane halves: the fused loop's decoder on AVX2 */
FO_TAVX2 static inline void fo_bf16_dec16_avx2(const uint16_t *FO_RESTRICT s,
                                              float *FO_RESTRICT out)
{
    fo_bf16_dec8(s, out);
    fo_bf16_dec8(s + 8, out + 8);
}

/* fo_f2bf of half.h, 16 at a time on AVX2: both halves rounded, then packed by one pack and
 * one permute; a NaN (rare: one compare of both halves and a branch) takes the quiet form */
FO_TAVX2 static inline void fo_bf16_enc16_avx2(const float *FO_RESTRICT v,
                                              uint16_t *FO_RESTRICT out)
{
    const __m256 x0 = _mm256_loadu_ps(v), x1 = _mm256_loadu_ps(v + 8);
    __m256i r0 = fo_bf16_rne8(_mm256_castps_si256(x0)), r1 = fo_bf16_rne8(_mm256_castps_si256(x1));
    if (_mm256_movemask_ps(_mm256_cmp_ps(x0, x1, _CMP_UNORD_Q))) {
        r0 = fo_bf16_quiet8(r0, x0);
        r1 = fo_bf16_quiet8(r1, x1);
    }
    _mm256_storeu_si256((__m256i *)out,
                        _mm256_permute4x64_epi64(_mm256_packus_epi32(r0, r1), 0xD8));
}

#if defined(__clang__) || __GNUC__ >= 10
#define FO_HAS_BF16_INSN 1
#define FO_TBF16 __attribute__((target("avx512f,avx512bw,avx512dq,avx512bf16")))
/* fo_f2bf by the AVX-512 BF16 conversion, 32 at a time. The instruction rounds to nearest even
 * and quiets a NaN as fo_f2bf does (the top half of its bits, OR 0x40), but flushes subnormal
 * inputs to zero: 32 values with a subnormal among them take fo_bf16_encode16. */
FO_TBF16 static void fo_bf16_encode_insn(const float *FO_RESTRICT v, uint16_t *FO_RESTRICT out,
                                         int64_t m)
{
    int64_t i = 0;
    for (; i + 32 <= m; i += 32) {
        const __m512 a = _mm512_loadu_ps(v + i), b = _mm512_loadu_ps(v + i + 16);
        if (_mm512_fpclass_ps_mask(a, 0x20) | _mm512_fpclass_ps_mask(b, 0x20)) {
            fo_bf16_encode16(v + i, out + i);
            fo_bf16_encode16(v + i + 16, out + i + 16);
        } else {
            _mm512_storeu_si512(out + i, (__m512i)_mm512_cvtne2ps_pbh(b, a));
        }
    }
    fo_bf16_encode_avx512(v + i, out + i, m - i);
}

/* 16 values by the instruction (64-byte aligned v), as fo_bf16_encode_insn: a subnormal among
 * them takes fo_bf16_encode16 */
FO_TBF16 static inline void fo_bf16_enc16_insn(const float *FO_RESTRICT v,
                                              uint16_t *FO_RESTRICT out)
{
    const __m512 x = _mm512_load_ps(v);
    if (_mm512_fpclass_ps_mask(x, 0x20))
        fo_bf16_encode16(v, out);
    else
        _mm256_storeu_si256((__m256i *)out, (__m256i)_mm512_cvtneps_pbh(x));
}
#else
#define FO_HAS_BF16_INSN 0
#endif

/* the level running now (-1: not decided yet) and the machine's best; fo_bf16_insn: the
 * bfloat16 encoder is the BF16 instruction (the best level, where the CPU has it) */
static int fo_q8_level = -1;
static int fo_bf16_insn = 0;
static int fo_fma = 0;          /* the CPU has FMA (the AVX2 fused loop is compiled with it) */
static int fo_bf16_insn_here(void)
{
#if FO_HAS_BF16_INSN
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq")
        && __builtin_cpu_supports("avx512bf16");
#else
    return 0;
#endif
}
static int fo_q8_best(void)
{
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512f"))
        return __builtin_cpu_supports("avx2") ? FO_Q8_AVX2 : FO_Q8_SCALAR;
    if (__builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vbmi"))
        return FO_Q8_AVX512VBMI;
    return FO_Q8_AVX512F;
}

static inline void fo_q8_encode(const float *v, int64_t m, float amax, const fo_q8_table *T,
                                uint8_t *out)
{
    if (fo_q8_level >= FO_Q8_AVX512F) fo_q8_encode_avx512(v, m, amax, T, out);
    else if (fo_q8_level == FO_Q8_AVX2) fo_q8_encode_avx2(v, m, amax, T, out);
    else fo_q8_encode_scalar(v, m, amax, T, out);
}

static inline void fo_q8_decode(const uint8_t *q, float amax, const fo_q8_table *T, float *out,
                                int64_t m)
{
    if (fo_q8_level == FO_Q8_AVX512VBMI) fo_q8_decode_vbmi(q, amax, T, out, m);
    else if (fo_q8_level == FO_Q8_AVX512F) fo_q8_decode_avx512(q, amax, T, out, m);
    else if (fo_q8_level == FO_Q8_AVX2) fo_q8_decode_avx2(q, amax, T, out, m);
    else fo_q8_decode_scalar(q, amax, T, out, m);
}

static inline void fo_bf16_decode(const uint16_t *s, float *out, int64_t m)
{
    if (fo_q8_level >= FO_Q8_AVX512F) fo_bf16_decode_avx512(s, out, m);
    else if (fo_q8_level == FO_Q8_AVX2) fo_bf16_decode_avx2(s, out, m);
    else fo_bf16_decode_scalar(s, out, m);
}

static inline void fo_bf16_encode_nearest(const float *v, uint16_t *out, int64_t m)
{
#if FO_HAS_BF16_INSN
    if (fo_bf16_insn) fo_bf16_encode_insn(v, out, m);
    else
#endif
    if (fo_q8_level >= FO_Q8_AVX512F) fo_bf16_encode_avx512(v, out, m);
    else if (fo_q8_level == FO_Q8_AVX2) fo_bf16_encode_avx2(v, out, m);
    else fo_bf16_encode_scalar(v, out, m);
}
#else
static int fo_q8_level = -1;
static int fo_bf16_insn = 0;
static int fo_bf16_insn_here(void) { return 0; }
static int fo_q8_best(void) { return FO_Q8_SCALAR; }
#define fo_q8_encode fo_q8_encode_scalar
#define fo_q8_decode fo_q8_decode_scalar
#define fo_bf16_decode fo_bf16_decode_scalar
#define fo_bf16_encode_nearest fo_bf16_encode_scalar
#endif

static void fo_q8_init(void)
{
    if (fo_q8_level < 0) {
#if FO_HAS_CLONES
        __builtin_cpu_init();
        fo_fma = __builtin_cpu_supports("fma");
#endif
        fo_bf16_insn = fo_bf16_insn_here();
        fo_q8_level = fo_q8_best();
    }
}

int fo_qstate_vector_codecs(int use)
{
    const int best = fo_q8_best();
    fo_q8_init();
    if (use == 0) fo_q8_level = FO_Q8_SCALAR;
    else if (use == 1) fo_q8_level = best;
    else if (use == 2) fo_q8_level = best < FO_Q8_AVX512F ? best : FO_Q8_AVX512F;
    else if (use >= 3) fo_q8_level = best < FO_Q8_AVX2 ? best : FO_Q8_AVX2;
    if (use >= 0) fo_bf16_insn = use == 1 && fo_bf16_insn_here();
    return fo_q8_level;
}

int fo_qstate_bf16_instruction(void)
{
    fo_q8_init();
    return fo_bf16_insn;
}

FO_QI void fo_bf16_encode(const float *FO_RESTRICT v, uint16_t *FO_RESTRICT out, int64_t m,
                          int stochastic, uint64_t key, int64_t c)
{
    if (stochastic) {
        FO_PRAGMA(omp simd)
        for (int64_t i = 0; i < m; ++i) out[i] = fo_f2bf_sr(v[i], fo_noise(key, c + i));
    } else {
        fo_bf16_encode_nearest(v, out, m);
    }
}

/* Slot k of the block at element c (m elements): its float32 values, decoded into buf if the
 * slot is low-bit; NULL for an unused slot. `T`: the slot's int8 table (fo_q_table). */
static inline float *fo_q_load(const fo_qstate_segment *sg, int k, int64_t c, int64_t m,
                               float *FO_RESTRICT buf, const fo_q8_table *T)
{
    if (!sg->state[k])
        return 0;
    switch (sg->format[k]) {
    case FO_SF_BF16:
        fo_bf16_decode((const uint16_t *)sg->state[k] + c, buf, m);
        return buf;
    case FO_SF_Q8:
        fo_q8_decode((const uint8_t *)sg->state[k] + c, sg->absmax[k][c / FO_QBLOCK], T, buf, m);
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
        fo_bf16_encode(buf, (uint16_t *)sg->state[k] + c, m, stochastic, key,
                       sg->noise_base + c);
    } else if (sg->format[k] == FO_SF_Q8) {
        const float amax = fo_q8_absmax(buf, m);
        sg->absmax[k][c / FO_QBLOCK] = amax;
        fo_q8_encode(buf, m, amax, T, (uint8_t *)sg->state[k] + c);
    }
}

/* The tables a step prepared for maps the cache could not hold (fo_q_step_tables): `n` of
 * them, searched by the map's values. */
typedef struct {
    fo_q8_table *t;
    int64_t n;
} fo_q8_extra;

static const fo_q8_table *fo_q8_find_extra(const fo_q8_extra *extra, const float *map)
{
    for (int64_t i = 0; extra && i < extra->n; ++i)
        if (memcmp(extra->t[i].key, map, sizeof extra->t[i].key) == 0)
            return &extra->t[i];
    return 0;
}

/* The tables of a segment's int8 slots: T[k] is kept while the map pointer stays `src[k]`;
 * a map the cache cannot hold is taken from `extra` (a step's, prepared before its threads
 * run) or prepared into own[k] (allocated once per call; own NULL: cached and extra tables
 * only). Returns 0, or -1 when a table is missing. */
static int fo_q_tables(const fo_qstate_segment *sg, const fo_q8_table *T[FO_MAX_STATE],
                       const float *src[FO_MAX_STATE], fo_q8_table *own[FO_MAX_STATE],
                       const fo_q8_extra *extra)
{
    for (int k = 0; k < FO_MAX_STATE; ++k) {
        if (!sg->state[k] || sg->format[k] != FO_SF_Q8 || src[k] == sg->qmap[k])
            continue;
        const fo_q8_table *got = fo_q8_get(sg->qmap[k]);
        if (!got)
            got = fo_q8_find_extra(extra, sg->qmap[k]);
        if (!got) {
            if (!own) return -1;
            if (!own[k] && !(own[k] = (fo_q8_table *)fo_q8_alloc(sizeof(fo_q8_table))))
                return -1;
            fo_q8_prepare(own[k], sg->qmap[k]);
            got = own[k];
        }
        T[k] = got;
        src[k] = sg->qmap[k];
    }
    return 0;
}

/* Every int8 map of the segments in the cache (built now, before any thread runs); the maps
 * it cannot hold (FO_Q8_CACHE distinct maps in the process) are prepared into `extra`
 * (allocated here, one table per distinct map; fo_q8_free(extra->t) after the step). 0, or
 * -1 when that allocation fails (nothing has been written). */
static int fo_q_step_tables(const fo_qstate_segment *segs, int64_t nseg, fo_q8_extra *extra)
{
    int64_t missing = 0;
    extra->t = 0;
    extra->n = 0;
    for (int64_t s = 0; s < nseg; ++s)
        for (int k = 0; k < FO_MAX_STATE; ++k)
            if (segs[s].n > 0 && segs[s].state[k] && segs[s].format[k] == FO_SF_Q8
                && !fo_q8_get(segs[s].qmap[k]))
                ++missing;
    if (missing == 0) return 0;
    extra->t = (fo_q8_table *)fo_q8_alloc((size_t)missing * sizeof(fo_q8_table));
    if (!extra->t) return -1;
    for (int64_t s = 0; s < nseg; ++s)
        for (int k = 0; k < FO_MAX_STATE; ++k) {
            const float *map = segs[s].qmap[k];
            if (segs[s].n > 0 && segs[s].state[k] && segs[s].format[k] == FO_SF_Q8
                && !fo_q8_get(map) && !fo_q8_find_extra(extra, map))
                fo_q8_prepare(&extra->t[extra->n++], map);
        }
    return 0;
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

/* one slot (state[0]) of a segment, decoded or encoded block by block */
static int fo_q_codec(fo_qstate_segment *sg, float *values, int encode)
{
    const fo_q8_table *T[FO_MAX_STATE] = {0};
    const float *src[FO_MAX_STATE] = {0};
    fo_q8_table *own[FO_MAX_STATE] = {0};
    fo_q8_init();
    if (fo_q_tables(sg, T, src, own, 0) != 0) return -1;
    for (int64_t c = 0; c < sg->n; c += FO_QBLOCK) {
        const int64_t m = sg->n - c < FO_QBLOCK ? sg->n - c : FO_QBLOCK;
        if (encode && sg->format[0] == FO_SF_F32) {
            memcpy((float *)sg->state[0] + c, values + c, (size_t)m * sizeof(float));
        } else if (encode) {
            fo_q_store(sg, 0, c, m, values + c, 0, 0, T[0]);
        } else {
            const float *v = fo_q_load(sg, 0, c, m, values + c, T[0]);
            if (v != values + c) memcpy(values + c, v, (size_t)m * sizeof(float));
        }
    }
    fo_q8_free(own[0]);
    return 0;
}

int fo_qstate_decode(int32_t format, const void *src, const float *absmax, const float *qmap,
                     float *dst, int64_t n)
{
    fo_qstate_segment sg = {0};
    if (n < 0 || (n > 0 && (src == 0 || dst == 0))) return -1;
    if (format < FO_SF_F32 || format > FO_SF_Q8) return -1;
    if (format == FO_SF_Q8 && n > 0 && (absmax == 0 || qmap == 0)) return -1;
    sg.state[0] = (void *)src;
    sg.absmax[0] = (float *)absmax;
    sg.qmap[0] = qmap;
    sg.format[0] = format;
    sg.n = n;
    return n > 0 ? fo_q_codec(&sg, dst, 0) : 0;
}

int fo_qstate_encode(int32_t format, const float *src, void *dst, float *absmax,
                     const float *qmap, int64_t n)
{
    fo_qstate_segment sg = {0};
    if (n < 0 || (n > 0 && (src == 0 || dst == 0))) return -1;
    if (format < FO_SF_F32 || format > FO_SF_Q8) return -1;
    if (format == FO_SF_Q8 && n > 0 && (absmax == 0 || qmap == 0)) return -1;
    sg.state[0] = dst;
    sg.absmax[0] = absmax;
    sg.qmap[0] = qmap;
    sg.format[0] = format;
    sg.n = n;
    return n > 0 ? fo_q_codec(&sg, (float *)src, 1) : 0;
}

/* ------------------------------------------------------------------------- the step loops */
#define FO_Q_RULE_LOOP(OPT, K)                                                                \
    do {                                                                                      \
        FO_PRAGMA(omp simd)                                                                   \
        for (int64_t i = 0; i < m; ++i)                                                       \
            fo_##OPT##_rule_f32(i, p, g, s0, s1, s2, (K));                                    \
    } while (0)

/* one FO_CASES_<opt> instance: the flags V fixed at compile time, run by LOOP(OPT, k) */
#define FO_Q_CASE(OPT, LOOP, V)                                                               \
    case (V): {                                                                               \
        fo_##OPT##_k_f32 kv = k;                                                              \
        kv.flags = (k.flags & ~FO_MASK_##OPT) | (V);                                          \
        LOOP(OPT, kv);                                                                        \
        break;                                                                                \
    }

/* LOOP(OPT, k) with the flags of k fixed by one of the FO_CASES_<opt> instances (or as given) */
#define FO_Q_SWITCH(OPT, LOOP)                                                                \
    switch (k.flags & FO_MASK_##OPT) {                                                        \
        FO_CASES_##OPT(FO_Q_CASE, OPT, LOOP)                                                  \
    default:                                                                                  \
        LOOP(OPT, k);                                                                         \
    }

/* Two bfloat16 moments (slots 0 and 1, no slot 2, nearest rounding) on AVX-512 or AVX2:
 * decoding, rule and encoding 16 elements at a time in registers and L1, so that the codecs' work
 * overlaps the rule's divisions (0.93-0.99x the time of three passes over the block);
 * the same rule, the same bits (tests/test_state_codecs.py compares it with the scalar level). */
#if FO_HAS_CLONES
/* The fused loop's four streams FO_QF_AHEAD elements ahead, into L1: the hardware prefetchers
 * alone leave this divider-bound loop waiting on memory (Adam at N=5e7: 0.84-0.94x the time
 * with, on 1 and 2 threads). A prefetch never faults, past the end of an array included. */
#define FO_QF_AHEAD 512
static inline void fo_qf_prefetch(const float *p, const float *g, const uint16_t *h0,
                                  const uint16_t *h1)
{
    _mm_prefetch((const char *)(p + FO_QF_AHEAD), _MM_HINT_T0);
    _mm_prefetch((const char *)(g + FO_QF_AHEAD), _MM_HINT_T0);
    _mm_prefetch((const char *)(h0 + FO_QF_AHEAD), _MM_HINT_T0);
    _mm_prefetch((const char *)(h1 + FO_QF_AHEAD), _MM_HINT_T0);
}
/* 16 elements decoded, run through the rule and encoded at a time (the codecs of the level) */
#define FO_QF_STRETCH(OPT, K, DECODE16, ENCODE16)                                             \
    do {                                                                                      \
        for (int64_t o = 0; o < m; o += 16) {                                                 \
            FO_ALIGN64 float a[16], b[16];                                                    \
            float *FO_RESTRICT pp = p + o;                                                    \
            const float *FO_RESTRICT gg = g + o;                                              \
            fo_qf_prefetch(pp, gg, h0 + o, h1 + o);                                           \
            DECODE16(h0 + o, a);                                                              \
            DECODE16(h1 + o, b);                                                              \
            FO_PRAGMA(omp simd)                                                               \
            for (int i = 0; i < 16; ++i) fo_##OPT##_rule_f32(i, pp, gg, a, b, 0, (K));       \
            ENCODE16(a, h0 + o);                                                              \
            ENCODE16(b, h1 + o);                                                              \
        }                                                                                     \
    } while (0)
/* FO_QF_STRETCH with the rule's common case (FO_PLAIN_<opt>, instances.h) as an instance of its
 * own, its branches folded */
#define FO_QF_LOOP_BY(OPT, K, DECODE16, ENCODE16)                                             \
    do {                                                                                      \
        fo_##OPT##_k_f32 kp;                                                                  \
        if (FO_PLAIN_##OPT((K), kp, f32))                                                     \
            FO_QF_STRETCH(OPT, kp, DECODE16, ENCODE16);                                       \
        else                                                                                  \
            FO_QF_STRETCH(OPT, (K), DECODE16, ENCODE16);                                      \
        (void)kp;                                                                             \
    } while (0)
#define FO_QF_LOOP(OPT, K) FO_QF_LOOP_BY(OPT, K, fo_bf16_dec16, fo_bf16_encode16)
/* the fused loop on AVX2 CPUs (8-lane codecs, compiled for AVX2 with FMA: every AVX2 CPU has
 * FMA, checked at run time). AMD EPYC (Zen 3), Adam, builds alternated: 0.90x the time of a
 * pipeline that ran the rule on a group of 64 while encoding the group before last (N=1e6, 1
 * thread, 16 rounds). */
#define FO_QF_LOOP_AVX2(OPT, K) FO_QF_LOOP_BY(OPT, K, fo_bf16_dec16_avx2, fo_bf16_enc16_avx2)
#define FO_QF_STAMP_BY(OPT, SFX, TARGET, LOOP)                                                \
    TARGET static void fo_qstate_##OPT##_fused_##SFX(float *FO_RESTRICT p,                    \
                                                     const float *FO_RESTRICT g,              \
                                                     uint16_t *FO_RESTRICT h0,                \
                                                     uint16_t *FO_RESTRICT h1, int64_t m,     \
                                                     fo_##OPT##_k_f32 k)                      \
    {                                                                                         \
        FO_Q_SWITCH(OPT, LOOP)                                                                \
    }
#if FO_HAS_BF16_INSN
/* the fused loop encoding by the AVX-512 BF16 instruction (fo_bf16_enc16_insn), compiled for
 * that instruction set: the CPUs of the best codec level */
#define FO_QF_LOOP_INSN(OPT, K) FO_QF_LOOP_BY(OPT, K, fo_bf16_dec16, fo_bf16_enc16_insn)
#define FO_QF_INSN_STAMP(OPT) FO_QF_STAMP_BY(OPT, insn, FO_TBF16, FO_QF_LOOP_INSN)
#define FO_QF_INSN_CALL(OPT, ARGS) if (fo_bf16_insn) fo_qstate_##OPT##_fused_insn ARGS; else
#else
#define FO_QF_INSN_STAMP(OPT)
#define FO_QF_INSN_CALL(OPT, ARGS)
#endif
#define FO_QF_STAMPS(OPT)                                                                     \
    FO_QF_INSN_STAMP(OPT)                                                                     \
    FO_QF_STAMP_BY(OPT, avx512, __attribute__((target("avx512f,fma"))), FO_QF_LOOP)          \
    FO_QF_STAMP_BY(OPT, avx2, FO_TAVX2FMA, FO_QF_LOOP_AVX2)
/* the blocks [ja, jb) of the segment by the fused loop, as one stretch of elements, when it
 * applies (the last block too where its length is a multiple of 16); ja = jb', the first
 * block left, after */
#define FO_QF_RUN(OPT)                                                                        \
    if (fo_q8_level >= FO_Q8_AVX2 && !stochastic && sg->state[0] && sg->state[1]             \
        && !sg->state[2] && sg->format[0] == FO_SF_BF16 && sg->format[1] == FO_SF_BF16        \
        && (fo_q8_level >= FO_Q8_AVX512F || fo_fma)) {                                        \
        const int64_t c = ja * FO_QBLOCK;                                                     \
        const int64_t end = jb * FO_QBLOCK < sg->n ? jb * FO_QBLOCK : sg->n;                  \
        const int64_t m = (end - c) % 16 ? (end - c) / FO_QBLOCK * FO_QBLOCK : end - c;       \
        if (m > 0) {                                                                          \
            float *p = sg->param + c;                                                         \
            const float *g = sg->grad + c;                                                    \
            uint16_t *h0 = (uint16_t *)sg->state[0] + c, *h1 = (uint16_t *)sg->state[1] + c;  \
            if (fo_q8_level == FO_Q8_AVX2)                                                    \
                fo_qstate_##OPT##_fused_avx2(p, g, h0, h1, m, k);                             \
            else                                                                              \
                FO_QF_INSN_CALL(OPT, (p, g, h0, h1, m, k))                                    \
                fo_qstate_##OPT##_fused_avx512(p, g, h0, h1, m, k);                           \
            ja = m == end - c ? jb : ja + m / FO_QBLOCK;                                      \
        }                                                                                     \
    }
#else
#define FO_QF_STAMPS(OPT)
#define FO_QF_RUN(OPT)
#endif

/* Two int8 moments (slots 0 and 1, no slot 2, both maps with a bucket table) on AVX-512 or
 * AVX2 (with FMA), the full blocks of a thread's share pipelined: while the rule runs on block
 * j, 64 elements at a time (decoded into L1 just before, its new absmax gathered on the way),
 * the codes of block j - 1, whose absmax is known, are encoded in the same iterations, so that
 * the encoder's gathers overlap the rule's divisions instead of following them. The same
 * decoders, rule and encoder as the block loop, in the same order per element: the same bits
 * (a block whose reciprocal overflows, fo_q8_divides, is encoded by fo_q8_encode_scalar after
 * its turn). */
#if FO_HAS_CLONES
#define FO_T512FMA __attribute__((target("avx512f,fma")))
#define FO_TVBMIFMA __attribute__((target("avx512f,avx512bw,avx512vbmi,fma")))

/* 64 codes decoded by gathers (the AVX512F level's decoder, 16 at a time) */
FO_T512FMA static inline void fo_q8_dec64_gather(const uint8_t *FO_RESTRICT q, float amax,
                                                  const fo_q8_table *T, float *FO_RESTRICT out)
{
    const __m512 am = _mm512_set1_ps(amax);
    for (int i = 0; i < 64; i += 16) fo_q8_dec16(q + i, am, T, out + i);
}

/* The pipeline's four streams FO_QF_AHEAD elements ahead, into L1, as the bfloat16 loop's
 * (64 elements: four lines of the parameter and of the gradient, one of each code array) */
static inline void fo_q8f_prefetch(const float *p, const float *g, const uint8_t *q0,
                                   const uint8_t *q1)
{
    for (int i = 0; i < 64; i += 16) {
        _mm_prefetch((const char *)(p + FO_QF_AHEAD + i), _MM_HINT_T0);
        _mm_prefetch((const char *)(g + FO_QF_AHEAD + i), _MM_HINT_T0);
    }
    _mm_prefetch((const char *)(q0 + FO_QF_AHEAD), _MM_HINT_T0);
    _mm_prefetch((const char *)(q1 + FO_QF_AHEAD), _MM_HINT_T0);
}

/* max(acc, |v_i|) over 64 values, a NaN skipped as fo_q8_absmax skips it (MAXPS returns its
 * second operand when either is NaN) */
FO_T512FMA static inline __m512 fo_q8_absmax64(const float *FO_RESTRICT v, __m512 acc)
{
    for (int i = 0; i < 64; i += 16)
        acc = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(v + i)), acc);
    return acc;
}

/* The pipeline's vector kits: AVX-512 (16 lanes) and AVX2 (8 lanes, compiled with FMA) */
#define FO_Q8F_V512_T __m512
#define FO_Q8F_V512_SET1(x) _mm512_set1_ps(x)
#define FO_Q8F_V512_ABSMAX64 fo_q8_absmax64
#define FO_Q8F_V512_REDUCE(v) _mm512_reduce_max_ps(v)
#define FO_Q8F_V512_ENC16 fo_q8_enc16

FO_TAVX2FMA static inline void fo_q8_dec64_avx2(const uint8_t *FO_RESTRICT q, float amax,
                                                 const fo_q8_table *T, float *FO_RESTRICT out)
{
    const __m256 am = _mm256_set1_ps(amax);
    for (int i = 0; i < 64; i += 8) fo_q8_dec8(q + i, am, T, out + i);
}

FO_TAVX2FMA static inline __m256 fo_q8_absmax64_avx2(const float *FO_RESTRICT v, __m256 acc)
{
    const __m256 magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    for (int i = 0; i < 64; i += 8)
        acc = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(v + i), magnitude), acc);
    return acc;
}

FO_TAVX2FMA static inline float fo_q8_reduce_max_avx2(__m256 v)
{
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
    return _mm_cvtss_f32(m);
}

FO_TAVX2FMA static inline void fo_q8_enc16_avx2(const float *FO_RESTRICT v, __m256 r,
                                                 const fo_q8_coder8 *E, uint8_t *FO_RESTRICT out)
{
    fo_q8_enc8(v, r, E, out);
    fo_q8_enc8(v + 8, r, E, out + 8);
}

#define FO_Q8F_V256_T __m256
#define FO_Q8F_V256_SET1(x) _mm256_set1_ps(x)
#define FO_Q8F_V256_ABSMAX64 fo_q8_absmax64_avx2
#define FO_Q8F_V256_REDUCE(v) fo_q8_reduce_max_avx2(v)
#define FO_Q8F_V256_ENC16 fo_q8_enc16_avx2

#define FO_Q8F_LOOP_BY(OPT, K, V, DECODE64)                                                   \
    do {                                                                                      \
        FO_ALIGN64 float buf[2][2][FO_QBLOCK];        /* [block parity][slot] */              \
        uint8_t *q0p = 0, *q1p = 0;                   /* the previous block's codes */        \
        FO_Q8F_##V##_T r0p = FO_Q8F_##V##_SET1(0.0f), r1p = r0p;   /* its 1 / absmax */       \
        int have = 0;                                                                         \
        for (int64_t j = ja; j < jb; ++j) {                                                   \
            const int64_t c = j * FO_QBLOCK;                                                  \
            float *FO_RESTRICT p = sg->param + c;                                             \
            const float *FO_RESTRICT g = sg->grad + c;                                        \
            uint8_t *q0 = (uint8_t *)sg->state[0] + c, *q1 = (uint8_t *)sg->state[1] + c;    \
            const float am0 = sg->absmax[0][j], am1 = sg->absmax[1][j];                       \
            float *FO_RESTRICT a = buf[j & 1][0], *FO_RESTRICT b = buf[j & 1][1];            \
            const float *FO_RESTRICT ap = buf[~j & 1][0], *FO_RESTRICT bp = buf[~j & 1][1];  \
            FO_Q8F_##V##_T x0 = FO_Q8F_##V##_SET1(0.0f), x1 = x0;                             \
            for (int o = 0; o < FO_QBLOCK; o += 64) {                                         \
                fo_q8f_prefetch(p + o, g + o, q0 + o, q1 + o);                                \
                DECODE64(q0 + o, am0, T0, a + o);                                             \
                DECODE64(q1 + o, am1, T1, b + o);                                             \
                float *FO_RESTRICT pp = p + o, *FO_RESTRICT ao = a + o, *FO_RESTRICT bo = b + o; \
                const float *FO_RESTRICT gg = g + o;                                          \
                FO_PRAGMA(omp simd)                                                           \
                for (int i = 0; i < 64; ++i) fo_##OPT##_rule_f32(i, pp, gg, ao, bo, 0, (K)); \
                x0 = FO_Q8F_##V##_ABSMAX64(ao, x0);                                           \
                x1 = FO_Q8F_##V##_ABSMAX64(bo, x1);                                           \
                if (have)                                                                     \
                    for (int i = o; i < o + 64; i += 16) {                                    \
                        FO_Q8F_##V##_ENC16(ap + i, r0p, &E0, q0p + i);                        \
                        FO_Q8F_##V##_ENC16(bp + i, r1p, &E1, q1p + i);                        \
                    }                                                                         \
            }                                                                                 \
            if (have) fo_q8f_finish(ap, bp, q0p, q1p, sg, j - 1, T0, T1);                     \
            const float n0 = FO_Q8F_##V##_REDUCE(x0), n1 = FO_Q8F_##V##_REDUCE(x1);           \
            sg->absmax[0][j] = n0;                                                            \
            sg->absmax[1][j] = n1;                                                            \
            r0p = FO_Q8F_##V##_SET1(1.0f / n0);                                               \
            r1p = FO_Q8F_##V##_SET1(1.0f / n1);                                               \
            q0p = q0; q1p = q1; have = 1;                                                     \
        }                                                                                     \
        if (have) {                                                                           \
            const float *FO_RESTRICT ap = buf[~jb & 1][0], *FO_RESTRICT bp = buf[~jb & 1][1]; \
            for (int i = 0; i < FO_QBLOCK; i += 16) {                                         \
                FO_Q8F_##V##_ENC16(ap + i, r0p, &E0, q0p + i);                                \
                FO_Q8F_##V##_ENC16(bp + i, r1p, &E1, q1p + i);                                \
            }                                                                                 \
            fo_q8f_finish(ap, bp, q0p, q1p, sg, jb - 1, T0, T1);                              \
        }                                                                                     \
    } while (0)

/* a block encoded by the pipeline with a reciprocal that overflowed: encoded again, dividing */
static inline void fo_q8f_finish(const float *a, const float *b, uint8_t *q0, uint8_t *q1,
                                 const fo_qstate_segment *sg, int64_t j, const fo_q8_table *T0,
                                 const fo_q8_table *T1)
{
    if (fo_q8_divides(sg->absmax[0][j]))
        fo_q8_encode_scalar(a, FO_QBLOCK, sg->absmax[0][j], T0, q0);
    if (fo_q8_divides(sg->absmax[1][j]))
        fo_q8_encode_scalar(b, FO_QBLOCK, sg->absmax[1][j], T1, q1);
}

#define FO_Q8F_LOOP_GATHER(OPT, K) FO_Q8F_LOOP_BY(OPT, K, V512, fo_q8_dec64_gather)
#define FO_Q8F_LOOP_VBMI(OPT, K) FO_Q8F_LOOP_BY(OPT, K, V512, fo_q8_dec64)
#define FO_Q8F_LOOP_AVX2(OPT, K) FO_Q8F_LOOP_BY(OPT, K, V256, fo_q8_dec64_avx2)
#define FO_Q8F_STAMP_BY(OPT, SFX, TARGET, LOOP, CODER)                                        \
    TARGET static void fo_qstate_##OPT##_q8f_##SFX(const fo_qstate_segment *sg, int64_t ja,   \
                                                   int64_t jb, fo_##OPT##_k_f32 k,            \
                                                   const fo_q8_table *T0,                     \
                                                   const fo_q8_table *T1)                     \
    {                                                                                         \
        CODER E0, E1;                                                                         \
        CODER##_init(&E0, T0);                                                                \
        CODER##_init(&E1, T1);                                                                \
        FO_Q_SWITCH(OPT, LOOP)                                                                \
    }
#define FO_Q8F_STAMPS(OPT)                                                                    \
    FO_Q8F_STAMP_BY(OPT, gather, FO_T512FMA, FO_Q8F_LOOP_GATHER, fo_q8_coder)                 \
    FO_Q8F_STAMP_BY(OPT, vbmi, FO_TVBMIFMA, FO_Q8F_LOOP_VBMI, fo_q8_coder)                    \
    FO_Q8F_STAMP_BY(OPT, avx2, FO_TAVX2FMA, FO_Q8F_LOOP_AVX2, fo_q8_coder8)
/* the full blocks [ja, jb') of the segment by the pipeline, when it applies; ja = jb' after */
#define FO_Q8F_RUN(OPT)                                                                       \
    if (fo_q8_level >= FO_Q8_AVX2 && sg->state[0] && sg->state[1] && !sg->state[2]            \
        && sg->format[0] == FO_SF_Q8 && sg->format[1] == FO_SF_Q8 && T[0]->fast               \
        && T[1]->fast && (fo_q8_level >= FO_Q8_AVX512F || fo_fma)) {                          \
        const int64_t full = sg->n / FO_QBLOCK, je = jb < full ? jb : full;                   \
        if (je > ja) {                                                                        \
            if (fo_q8_level == FO_Q8_AVX512VBMI)                                              \
                fo_qstate_##OPT##_q8f_vbmi(sg, ja, je, k, T[0], T[1]);                        \
            else if (fo_q8_level == FO_Q8_AVX512F)                                            \
                fo_qstate_##OPT##_q8f_gather(sg, ja, je, k, T[0], T[1]);                      \
            else                                                                              \
                fo_qstate_##OPT##_q8f_avx2(sg, ja, je, k, T[0], T[1]);                        \
            ja = je;                                                                          \
        }                                                                                     \
    }
#else
#define FO_Q8F_STAMPS(OPT)
#define FO_Q8F_RUN(OPT)
#endif

/* Blocks [blo, bhi) of the group (the tensors' blocks numbered in order), one at a time. */
#define FO_QSTATE_STAMP(OPT)                                                                  \
    FO_QF_STAMPS(OPT)                                                                         \
    FO_Q8F_STAMPS(OPT)                                                                        \
    FO_CLONES static void fo_qstate_##OPT##_block(const fo_qstate_segment *sg, int64_t c,     \
                                                  int64_t m, fo_##OPT##_k_f32 k,              \
                                                  const fo_q8_table *const *T, int stochastic,\
                                                  const uint64_t *key)                        \
    {                                                                                         \
        FO_ALIGN64 float buf[FO_MAX_STATE][FO_QBLOCK];                                        \
        float *FO_RESTRICT p = sg->param + c;                                                 \
        const float *FO_RESTRICT g = sg->grad + c;                                            \
        float *FO_RESTRICT s0 = fo_q_load(sg, 0, c, m, buf[0], T[0]);                         \
        float *FO_RESTRICT s1 = fo_q_load(sg, 1, c, m, buf[1], T[1]);                         \
        float *FO_RESTRICT s2 = fo_q_load(sg, 2, c, m, buf[2], T[2]);                         \
        FO_Q_SWITCH(OPT, FO_Q_RULE_LOOP)                                                      \
        fo_q_store(sg, 0, c, m, buf[0], stochastic, key[0], T[0]);                            \
        fo_q_store(sg, 1, c, m, buf[1], stochastic, key[1], T[1]);                            \
        fo_q_store(sg, 2, c, m, buf[2], stochastic, key[2], T[2]);                            \
    }                                                                                         \
    static void fo_qstate_##OPT##_range(const fo_qstate_segment *segs, int64_t nseg,          \
                                        int64_t blo, int64_t bhi, fo_##OPT##_k_f32 k,         \
                                        const fo_qstate_opts *o, const fo_q8_extra *extra)    \
    {                                                                                         \
        const fo_q8_table *T[FO_MAX_STATE] = {0};                                             \
        const float *src[FO_MAX_STATE] = {0};                                                 \
        const int stochastic = o->rounding == FO_ROUND_STOCHASTIC;                            \
        int64_t first = 0;                                                                    \
        for (int64_t s = 0; s < nseg && first < bhi; ++s) {                                   \
            fo_qstate_segment used = segs[s];      /* slots the rule does not use: absent */  \
            for (int q = 0; q < FO_MAX_STATE; ++q)                                            \
                if (!((o->used >> q) & 1u)) used.state[q] = 0;                                \
            const fo_qstate_segment *sg = &used;                                              \
            const int64_t nb = fo_q_blocks(sg->n), last = first + nb;                         \
            int64_t ja = blo > first ? blo - first : 0;                                       \
            const int64_t jb = bhi < last ? bhi - first : nb;                                 \
            uint64_t key[FO_MAX_STATE] = {0};                                                 \
            if (stochastic)                                                                   \
                for (int q = 0; q < FO_MAX_STATE; ++q)                                        \
                    key[q] = fo_stream_key(o->seed, o->counter, sg->stream * 4 + q);          \
            fo_q_tables(sg, T, src, 0, extra);     /* the step prepared them */               \
            FO_QF_RUN(OPT)                                                                    \
            FO_Q8F_RUN(OPT)                                                                   \
            for (int64_t j = ja; j < jb; ++j) {                                               \
                const int64_t c = j * FO_QBLOCK;                                              \
                const int64_t m = sg->n - c < FO_QBLOCK ? sg->n - c : FO_QBLOCK;              \
                fo_qstate_##OPT##_block(sg, c, m, k, T, stochastic, key);                     \
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
        fo_q8_extra extra_;                                                                   \
        if (fo_q_step_tables(segs, nseg, &extra_) != 0) return -1;                            \
        const fo_q8_extra *extra = &extra_;                                                   \
        const int nt = fo_team_cap(total * (FO_COST_##OPT), threshold, n_threads, blocks);    \
        FO_SHARE_REGION(nt, , blocks, 1, lo, hi,                                              \
                        fo_qstate_##OPT##_range(segs, nseg, lo, hi, k, o, extra););           \
        fo_q8_free(extra_.t);                                                                 \
        return 0;                                                                             \
    }

FO_QSTATE_KERNELS(FO_QSTATE_STAMP)
