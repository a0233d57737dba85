/*
 * fastopt/rules.h -- the per-element update rules, written once.
 *
 * Design note
 * -----------
 * Every optimizer's arithmetic lives here and nowhere else. A rule updates element `i` of one
 * parameter tensor and its state buffers in place, given the gradient and a small struct `k`
 * of scalars that depend only on the hyperparameters and the step (bias corrections, the
 * scheduled learning rate, ...). Those scalars are computed once per step by the caller
 * (src/fastopt/functional.py) and converted to the element type by fastopt/constants.h, once
 * per call on the CPU (kernels.c) and once per thread on the GPU (src/fastopt/cuda.py),
 * never inside the element loop.
 *
 * All rules share one signature,
 *
 *     rule(i, p, g, s0, s1, s2, k)
 *
 * with `p` the parameter, `g` the gradient and s0..s2 the optimizer's state buffers in the
 * order its entry in the optimizer table (src/fastopt/_table.py) lists them. Unused buffers are
 * never read.
 * The one signature lets the CPU loop (kernels.c) and the CUDA kernel (src/fastopt/cuda.py)
 * be written once for all optimizers.
 *
 * The header is plain C99 and also valid CUDA C++: FO_DEVICE becomes `__device__` under nvcc
 * and NVRTC. The bodies are written once, generically over the element type, in
 * rules_impl.h, which this header includes twice (float -> *_f32, double -> *_f64).
 *
 * The arithmetic follows torch.optim's single-tensor implementations operation by operation
 * (same order, same lerp, same placement of eps), so float64 trajectories agree to rounding.
 * Where torch's operation is a fused multiply-add whose terms can cancel, the rule writes
 * FO_FMA (fmaf/fma: one rounding, no intermediate overflow; see rules_impl.h). The build
 * turns implicit contraction off, so these are the only fused operations; CUDA's fmaf/fma
 * round the same way, so CPU and GPU stay bit-identical.
 */
#ifndef FASTOPT_RULES_H
#define FASTOPT_RULES_H

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define FO_DEVICE __device__ __forceinline__ static
#define FO_RESTRICT __restrict__
typedef long long fo_index;
#else
#include <math.h>
#include <stdint.h>
/* Forced inline: every loop instance must hold the rule's body, never a per-element call. */
#if defined(__GNUC__)
#define FO_DEVICE static inline __attribute__((always_inline))
#elif defined(_MSC_VER)
#define FO_DEVICE static __forceinline
#else
#define FO_DEVICE static inline
#endif
#define FO_RESTRICT restrict
typedef int64_t fo_index;
#endif

/* Flags shared by the rules (bit set in k.flags), generated from the optimizer table. */
#include "flags.h"

/* NaN-propagating max, like torch.maximum (fmax would drop a NaN). */
#define FO_MAX(a, b) (((a) > (b) || (a) != (a)) ? (a) : (b))

#define FO_T float
#define FO_NAME(name) name##_f32
#define FO_SQRT sqrtf
#define FO_FABS fabsf
#define FO_FMA fmaf
#include "rules_impl.h"
#undef FO_T
#undef FO_NAME
#undef FO_SQRT
#undef FO_FABS
#undef FO_FMA

#define FO_T double
#define FO_NAME(name) name##_f64
#define FO_SQRT sqrt
#define FO_FABS fabs
#define FO_FMA fma
#include "rules_impl.h"
#undef FO_T
#undef FO_NAME
#undef FO_SQRT
#undef FO_FABS
#undef FO_FMA

/* FO_PLAIN_X(kv, kp, SFX): whether a loop over a rule with constants kv (type fo_<opt>_k_SFX)
 * takes the rule's common case X; if so, kp is set to kv written so that the branches on
 * conditions that hold for the whole call fold away, and the loop runs kp as an instance of
 * its own (as the FO_CASES_<opt> instances fold their flags). The table's `plain` names the X
 * of each rule that has one (FO_PLAIN_<opt> in instances.h). MOMENTS (Adam, RAdam, NAdam):
 * fo_moments_plain (no maximize, no coupled weight decay, beta1 > 1/2), with weight_decay 0
 * and no maximize bit in kp. */
#define FO_PLAIN_MOMENTS(kv, kp, SFX)                                                         \
    (fo_moments_plain_##SFX((kv).flags, (kv).weight_decay, (kv).one_minus_beta1)             \
     && ((kp) = (kv), (kp).weight_decay = 0, (kp).flags &= ~FO_MAXIMIZE, 1))

#endif /* FASTOPT_RULES_H */
