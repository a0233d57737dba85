/*
 * fastopt/mixed.h -- the C API of the mixed-precision update loops (csrc/mixed.c).
 *
 * A parameter held in 16 bits (IEEE float16 or bfloat16) is updated through float32: the rule
 * of rules.h runs on float32 values (a float32 master copy, or a float32 copy of the 16-bit
 * value made in registers), with float32 optimizer state, and the 16-bit parameter is then
 * written back rounded, in the same pass over memory. Gradients may be float32, float16 or
 * bfloat16 and are divided by `grad_scale` (the loss scale) as they are read.
 *
 *     int fo_mixed_<opt>_step(const fo_mixed_segment *segments, int64_t n_segments,
 *                             const fo_<opt>_hp *hp, const fo_mixed_opts *opts,
 *                             int64_t parallel_threshold, int n_threads);
 *
 * `hp` is the struct of kernels.h, filled by the same runners (src/fastopt/_runners.py) as
 * for the float32 loops; both loops convert it with fastopt/constants.h, so the float32 master
 * follows exactly the trajectory of a float32 parameter given the same float32 gradients.
 * Returns 0, or -1 for invalid arguments (the bindings check everything first).
 */
#ifndef FASTOPT_MIXED_H
#define FASTOPT_MIXED_H

#include <stdint.h>

#include "kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Element types of a segment's 16-bit parameter and of its gradient. */
#define FO_DT_F32 0
#define FO_DT_F16 1
#define FO_DT_BF16 2

/* How a parameter without a master copy is written back (with a master: always nearest). */
#define FO_ROUND_NEAREST 0       /* round to nearest, ties to even */
#define FO_ROUND_STOCHASTIC 1    /* bfloat16 only: round up with probability = the remainder */

typedef struct {
    float *master;            /* float32 values the rule updates (the master copy, or the
                                 parameter itself when it is float32); NULL: no master, the
                                 rule runs on a float32 copy of `lowp` made in registers */
    void *lowp;               /* the 16-bit parameter, written rounded after the update; NULL
                                 when the parameter is float32 */
    const void *grad;         /* gradient, of type grad_dtype */
    float *state[FO_MAX_STATE];
    int64_t n;
    int32_t lowp_dtype;       /* FO_DT_F16 or FO_DT_BF16 when lowp != NULL */
    int32_t grad_dtype;       /* FO_DT_F32, FO_DT_F16 or FO_DT_BF16 */
    uint64_t stream;          /* stochastic rounding: the parameter's stream (its index) */
    int64_t noise_block;      /* stochastic rounding, a shard of a larger tensor: element i */
    int64_t noise_stride;     /* draws the noise of element noise_base + (i / noise_block) *   */
    int64_t noise_base;       /* noise_stride + i % noise_block of the whole; 0: element i's */
} fo_mixed_segment;

typedef struct {
    double grad_scale;        /* gradients are divided by this (1: not scaled) */
    int rounding;             /* FO_ROUND_NEAREST or FO_ROUND_STOCHASTIC */
    uint64_t seed;            /* stochastic rounding: the user's seed ... */
    uint64_t counter;         /* ... and the call count; noise = hash(seed, counter, stream, i) */
} fo_mixed_opts;

#define FO_MIXED_DECLARE(opt)                                                                 \
    int fo_mixed_##opt##_step(const fo_mixed_segment *segments, int64_t n_segments,            \
                              const fo_##opt##_hp *hp, const fo_mixed_opts *opts,              \
                              int64_t parallel_threshold, int n_threads);

FO_MIXED_KERNELS(FO_MIXED_DECLARE)
#undef FO_MIXED_DECLARE

/* 1 if every gradient divided by grad_scale is finite, 0 if not, -1 for invalid arguments.
 * Reads the gradients only (a pre-pass: a step that would see inf/nan is skipped untouched). */
int fo_mixed_all_finite(const fo_mixed_segment *segments, int64_t n_segments, double grad_scale,
                        int64_t parallel_threshold, int n_threads);

#ifdef __cplusplus
}
#endif
#endif /* FASTOPT_MIXED_H */
