/*
 * fastopt/half.h -- float16 / bfloat16 <-> float32 conversions and the stochastic-rounding
 * noise of the mixed-precision loops (mixed.c); internal, not part of the C API.
 *
 * Integer bit manipulations (no FPU mode or F16C needed), branch-free so that they vectorize;
 * rounding is to nearest even, NaN stays NaN (quiet), overflow goes to infinity, float16
 * subnormals are rounded exactly. The noise is a counter-based hash of (seed, call counter,
 * stream, element index), so results do not depend on the number of threads.
 * Everything is `static inline`: the loops inline it, and the test-only module fastopt._testing
 * (tests/_testing.pyx, built only for source checkouts) exposes the same functions to the tests.
 */
#ifndef FASTOPT_HALF_H
#define FASTOPT_HALF_H

#include <stdint.h>
#include <string.h>

/* ------------------------------------------------------------------------ bit conversions */
static inline uint32_t fo_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline float fo_float(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* float16 -> float32, exact. Subnormals: the integer mantissa times 2^-24 (exact in float). */
static inline float fo_h2f(uint16_t h)
{
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t em = h & 0x7fffu;
    const uint32_t normal = (em << 13) + 0x38000000u;           /* exponent bias 15 -> 127 */
    const uint32_t special = (em << 13) | 0x7f800000u;          /* inf, nan (payload kept) */
    const uint32_t sub = fo_bits((float)(int32_t)em * 5.9604644775390625e-8f);
    const uint32_t r = em >= 0x7c00u ? special : (em >= 0x0400u ? normal : sub);
    return fo_float(sign | r);
}

/* float32 -> float16, round to nearest even. Normal results: drop 13 mantissa bits with a
 * rounding bias of 0xfff plus the kept lowest bit (a carry moves into the exponent, and past
 * 65504 into infinity). Subnormal results: adding 0.5f rounds |x| at 2^-24, the float16
 * subnormal spacing, by the FPU's own round-to-nearest-even. */
static inline uint16_t fo_f2h(float f)
{
    const uint32_t x = fo_bits(f);
    const uint32_t sign = (x >> 16) & 0x8000u;
    const uint32_t ax = x & 0x7fffffffu;
    const uint32_t nan = 0x7e00u | ((ax >> 13) & 0x3ffu);
    const uint32_t normal = (ax - 0x38000000u + 0xfffu + ((ax >> 13) & 1u)) >> 13;
    const uint32_t sub = fo_bits(fo_float(ax) + 0.5f) - 0x3f000000u;
    const uint32_t h = ax > 0x7f800000u ? nan
                     : ax >= 0x477ff000u ? 0x7c00u              /* rounds to >= 65536: inf */
                     : ax >= 0x38800000u ? normal               /* >= 2^-14 */
                     : sub;
    return (uint16_t)(sign | h);
}

static inline float fo_bf2f(uint16_t b)
{
    return fo_float((uint32_t)b << 16);
}

/* float32 -> bfloat16, round to nearest even; NaN stays a quiet NaN. */
static inline uint16_t fo_f2bf(float f)
{
    const uint32_t x = fo_bits(f);
    const uint32_t rne = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
    const uint32_t nan = (x >> 16) | 0x40u;
    return (uint16_t)((x & 0x7fffffffu) > 0x7f800000u ? nan : rne);
}

/* float32 -> bfloat16, stochastic: the magnitude rounds up with probability (low 16 bits)/2^16,
 * so the expected result is x itself. `noise` is uniform in [0, 2^16). */
static inline uint16_t fo_f2bf_sr(float f, uint32_t noise)
{
    const uint32_t x = fo_bits(f);
    const uint32_t up = (x + noise) >> 16;
    const uint32_t nan = (x >> 16) | 0x40u;
    return (uint16_t)((x & 0x7fffffffu) > 0x7f800000u ? nan : up);
}

/* ------------------------------------------------------------------ stochastic-rounding noise */
static inline uint64_t fo_mix64(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline uint32_t fo_hash32(uint32_t x)
{
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    x ^= x >> 16;
    return x;
}

static inline uint64_t fo_stream_key(uint64_t seed, uint64_t counter, uint64_t stream)
{
    return fo_mix64(seed ^ fo_mix64(counter ^ fo_mix64(stream)));
}

/* 16 bits of noise for element i of the stream with this key. */
static inline uint32_t fo_noise(uint64_t key, int64_t i)
{
    const uint32_t lo = fo_hash32((uint32_t)i ^ (uint32_t)key);
    return fo_hash32(lo ^ (uint32_t)(key >> 32) ^ (uint32_t)((uint64_t)i >> 32)) & 0xffffu;
}

#endif /* FASTOPT_HALF_H */
