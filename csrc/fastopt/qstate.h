/*
 * fastopt/qstate.h -- the C API of the low-bit state loops (csrc/qstate.c): float32 parameters
 * whose optimizer state is held in float32, bfloat16 or blockwise int8, slot by slot.
 *
 *     int fo_qstate_<opt>_step(const fo_qstate_segment *segments, int64_t n_segments,
 *                              const fo_<opt>_hp *hp, const fo_qstate_opts *opts,
 *                              int64_t parallel_threshold, int n_threads);
 *
 * A state slot of a segment is one of
 *   FO_SF_F32   float32 values (as kernels.h);
 *   FO_SF_BF16  bfloat16 bits (uint16), written rounded to nearest even or stochastically;
 *   FO_SF_Q8    int8 blockwise dynamic quantization, the format of bitsandbytes' blockwise
 *               8-bit optimizers: uint8 codes, one float32 absmax per block of FO_QBLOCK
 *               elements (block j: elements [j*FO_QBLOCK, (j+1)*FO_QBLOCK) of the tensor),
 *               value = qmap[code] * absmax with `qmap` 256 sorted float32 values in [-1, 1];
 *               a block is written with absmax = max |v| and each code the nearest qmap entry
 *               to v * (1 / absmax), the reciprocal rounded once per block (ties to the lower code).
 * `hp` is the struct of kernels.h, filled by the same runners, converted by
 * fastopt/constants.h: the rule of rules.h is the float32 one. Returns 0, or -1 for invalid
 * arguments (the bindings check everything first).
 */
#ifndef FASTOPT_QSTATE_H
#define FASTOPT_QSTATE_H

#include <stdint.h>

#include "kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

#define FO_SF_F32 0
#define FO_SF_BF16 1
#define FO_SF_Q8 2

#define FO_QBLOCK 256

typedef struct {
    float *param;
    const float *grad;
    void *state[FO_MAX_STATE];          /* float *, uint16_t * (bfloat16) or uint8_t * codes */
    float *absmax[FO_MAX_STATE];        /* FO_SF_Q8: ceil(n / FO_QBLOCK) block maxima */
    const float *qmap[FO_MAX_STATE];    /* FO_SF_Q8: the 256 sorted map values */
    int32_t format[FO_MAX_STATE];       /* FO_SF_* of each slot */
    int64_t n;
    uint64_t stream;                    /* stochastic rounding: the parameter's index ... */
    int64_t noise_base;                 /* ... and its first element's index in the tensor
                                         * it is a part of (0: the whole tensor) */
} fo_qstate_segment;

/* bfloat16 state rounding (FO_ROUND_* of mixed.h: 0 nearest even, 1 stochastic) */
typedef struct {
    int rounding;
    uint64_t seed;            /* stochastic rounding: the user's seed ... */
    uint64_t counter;         /* ... and the group's step count; noise = hash(seed, counter,
                               * stream*4+slot, noise_base + i) */
    uint32_t used;            /* bit k: the rule uses slot k under these flags; another attached
                               * slot is left as it is (neither decoded nor written back) */
} fo_qstate_opts;

#define FO_QSTATE_DECLARE(opt)                                                                \
    int fo_qstate_##opt##_step(const fo_qstate_segment *segments, int64_t n_segments,          \
                               const fo_##opt##_hp *hp, const fo_qstate_opts *opts,            \
                               int64_t parallel_threshold, int n_threads);

FO_QSTATE_KERNELS(FO_QSTATE_DECLARE)
#undef FO_QSTATE_DECLARE

/* The codecs alone (tests and checkpoint conversion): decode n values of a slot format into
 * float32, or encode n float32 values (int8: blockwise, absmax written). 0, or -1. */
int fo_qstate_decode(int32_t format, const void *src, const float *absmax, const float *qmap,
                     float *dst, int64_t n);
int fo_qstate_encode(int32_t format, const float *src, void *dst, float *absmax,
                     const float *qmap, int64_t n);

/* The codec level running (0 scalar, 1 AVX2, 2 AVX-512F, 3 AVX-512 VBMI); use = 0 switches to
 * the scalar code, 1 back to the machine's best, 2 to at most AVX-512F, 3 to at most AVX2, -1
 * only asks (every level writes the same codes and bits). */
int fo_qstate_vector_codecs(int use);

/* Whether bfloat16 state is rounded to nearest by the AVX-512 BF16 instruction now (the best
 * level on a CPU that has it; same bits as the other levels). */
int fo_qstate_bf16_instruction(void);

#ifdef __cplusplus
}
#endif
#endif /* FASTOPT_QSTATE_H */
