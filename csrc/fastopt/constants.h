/*
 * fastopt/constants.h -- the per-call conversion of a step's scalars to the element type.
 *
 * The callers (src/fastopt/functional.py) compute a step's scalars once, in double precision,
 * into the fo_<opt>_hp structs of kernels.h. Every loop over the rules of rules.h (the float
 * and double loops of kernels.c, the mixed-precision loops of mixed.c) converts them here,
 * once per call, into the rule's constant struct fo_<opt>_k_<f32|f64>, so that all loops use
 * bit-identical constants.
 */
#ifndef FASTOPT_CONSTANTS_H
#define FASTOPT_CONSTANTS_H

#include "kernels.h"
#include "rules.h"

/* Per-call conversion of the double-precision step scalars to the element type. */
#define FO_CONSTANTS(SFX, T)                                                                  \
    static inline fo_sgd_k_##SFX fo_sgd_constants_##SFX(const fo_sgd_hp *h)                   \
    {                                                                                         \
        fo_sgd_k_##SFX k = {(T)h->lr, (T)h->momentum, (T)(1.0 - h->dampening),                \
                            (T)h->weight_decay, h->flags};                                    \
        return k;                                                                             \
    }                                                                                         \
    static inline fo_adagrad_k_##SFX fo_adagrad_constants_##SFX(const fo_adagrad_hp *h)       \
    {                                                                                         \
        fo_adagrad_k_##SFX k = {(T)h->clr, (T)h->eps, (T)h->weight_decay, h->flags};          \
        return k;                                                                             \
    }                                                                                         \
    static inline fo_rmsprop_k_##SFX fo_rmsprop_constants_##SFX(const fo_rmsprop_hp *h)       \
    {                                                                                         \
        fo_rmsprop_k_##SFX k = {(T)h->lr, (T)h->alpha, (T)(1.0 - h->alpha), (T)h->eps,        \
                                (T)h->weight_decay, (T)h->momentum, h->flags};                \
        return k;                                                                             \
    }                                                                                         \
    static inline fo_adam_k_##SFX fo_adam_constants_##SFX(const fo_adam_hp *h)                \
    {                                                                                         \
        fo_adam_k_##SFX k = {(T)h->step_size, (T)h->beta1, (T)(1.0 - h->beta1), (T)h->beta2,  \
                             (T)(1.0 - h->beta2), (T)h->bc2_sqrt, (T)h->eps,                  \
                             (T)h->weight_decay, (T)h->decay_factor, h->flags};               \
        return k;                                                                             \
    }                                                                                         \
    static inline fo_adadelta_k_##SFX fo_adadelta_constants_##SFX(const fo_adadelta_hp *h)    \
    {                                                                                         \
        fo_adadelta_k_##SFX k = {(T)h->lr, (T)h->rho, (T)(1.0 - h->rho), (T)h->eps,           \
                                 (T)h->weight_decay, h->flags};                               \
        return k;                                                                             \
    }                                                                                         \
    static inline fo_adamax_k_##SFX fo_adamax_constants_##SFX(const fo_adamax_hp *h)          \
    {                                                                                         \
        fo_adamax_k_##SFX k = {(T)h->clr, (T)h->beta1, (T)(1.0 - h->beta1), (T)h->beta2,      \
                               (T)h->eps, (T)h->weight_decay, h->flags};                      \
        return k;                                                                             \
    }

FO_CONSTANTS(f32, float)
FO_CONSTANTS(f64, double)

#endif /* FASTOPT_CONSTANTS_H */
