/*
 * fastopt/finite.h -- a read-only check that gradients hold no NaN or Inf.
 *
 *     int fo_all_finite_<f32|f64>(const fo_segment_<f32|f64> *segments, int64_t n_segments,
 *                                 int n_threads);
 *
 * Returns 1 when every element of every segment's `grad` is finite, 0 when one is NaN or
 * +-Inf, and -1 for invalid arguments (negative counts or lengths). Only `grad` is read;
 * nothing is written, so a step can run it before touching any parameter or state buffer and
 * skip the whole update when it returns 0 (`step(grads, nonfinite="skip" | "raise")`).
 */
#ifndef FASTOPT_FINITE_H
#define FASTOPT_FINITE_H

#include "fastopt/kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

int fo_all_finite_f32(const fo_segment_f32 *segments, int64_t n_segments, int n_threads);
int fo_all_finite_f64(const fo_segment_f64 *segments, int64_t n_segments, int n_threads);

#ifdef __cplusplus
}
#endif
#endif /* FASTOPT_FINITE_H */
