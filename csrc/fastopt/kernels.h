/*
 * fastopt/kernels.h -- the C API of the fused update loops.
 *
 * One call updates every tensor of a parameter group: the tensors go down as an array of
 * segments (parameter, gradient, up to three state buffers, length), and the work is split
 * across OpenMP threads over their total length. No allocation, no Python, no global state.
 *
 *     int fo_<opt>_step_<f32|f64>(const fo_segment_<f32|f64> *segments, int64_t n_segments,
 *                                 const fo_<opt>_hp *hp, int n_threads);
 *
 * `hp` holds the per-step scalars in double precision (see rules.h for their meaning); they are
 * converted to the element type once per call (fastopt/constants.h). Returns 0, or -1 for invalid arguments
 * (negative lengths or counts); the bindings check buffers before calling, so -1 means a bug.
 */
#ifndef FASTOPT_KERNELS_H
#define FASTOPT_KERNELS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FO_MAX_STATE 3

typedef struct {
    float *param;
    const float *grad;
    float *state[FO_MAX_STATE];
    int64_t n;
} fo_segment_f32;

typedef struct {
    double *param;
    const double *grad;
    double *state[FO_MAX_STATE];
    int64_t n;
} fo_segment_f64;

/* Per-step scalars fo_<opt>_hp, computed once per step by the caller (src/fastopt/functional.py),
 * and the list of compiled kernels; both generated from the optimizer table
 * (src/fastopt/_table.py). */
#include "hp.h"
#include "instances.h"

#define FO_DECLARE(opt)                                                                       \
    int fo_##opt##_step_f32(const fo_segment_f32 *segments, int64_t n_segments,              \
                            const fo_##opt##_hp *hp, int n_threads);                          \
    int fo_##opt##_step_f64(const fo_segment_f64 *segments, int64_t n_segments,              \
                            const fo_##opt##_hp *hp, int n_threads);

FO_CPU_KERNELS(FO_DECLARE)
#undef FO_DECLARE

/* Below this much work in a group (elements times the optimizer's relative cost per element,
 * 1 for SGD), a step runs on the calling thread. */
extern int64_t fo_parallel_threshold;

/* The OpenMP runtime's view: max threads (respects OMP_NUM_THREADS) and whether built with it. */
int fo_omp_max_threads(void);
int fo_has_openmp(void);

/* Whether the loops were compiled for several instruction sets (picked at load time), and the
 * one this machine runs ("avx512f", "avx2", "baseline"). */
int fo_has_clones(void);
const char *fo_vector_isa(void);

/* In-place update stream kernel b += s * c, the machine's update bandwidth yardstick. */
void fo_stream_axpy_f32(float *b, const float *c, float s, int64_t n, int n_threads);
void fo_stream_axpy_f64(double *b, const double *c, double s, int64_t n, int n_threads);

#ifdef __cplusplus
}
#endif
#endif /* FASTOPT_KERNELS_H */
