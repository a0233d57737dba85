/*
 * fastopt/sparse_adam.h -- SparseAdam on row-sparse gradients (torch.optim.SparseAdam), C99 + OpenMP.
 *
 * A parameter is viewed as `n_rows` rows of `row_len` elements (its first axis, the rest
 * flattened). A row-sparse gradient is `nnz` row indices and `nnz` rows of values; an index may
 * repeat. A step does what torch.optim.SparseAdam does with the COO gradient:
 *
 * 1. coalesce: order the entries as torch's coalesce does (fo_sparse_coalesce_order: the
 *    permutation of at::sort(indices), which is libstdc++'s std::sort below 32768 entries and a
 *    stable radix sort from 32768 on), then sum the values of each distinct row in that order
 *    ((v0 + v1) + v2 ...); with `maximize` the sum is negated (torch negates before it sums,
 *    which rounds alike);
 * 2. on the touched rows only (the moments of other rows stay as they are: lazy), per element
 *    with g the summed gradient, in the element type T, in torch's order of operations:
 *        um = (g - m) * (T)(1 - beta1);   m = m + um;
 *        uv = (g * g - v) * (T)(1 - beta2);   v = v + uv;
 *        p = p + (T)(-step_size) * ((um + m_old) / (sqrt(uv + v_old) + (T)eps))
 *    with step_size = lr * sqrt(1 - beta2^t) / (1 - beta1^t) computed by the caller (double).
 *
 * The caller owns every buffer. `scratch` holds 3 * nnz + 1 int64 (the sorted keys, the
 * permutation and the run starts). Nothing is written to param/exp_avg/exp_avg_sq before every
 * index has been checked to lie in [0, n_rows): an index out of range returns
 * FO_SPARSE_BAD_INDEX with its position in *bad. Rows are split over OpenMP threads
 * (static schedule) when the touched elements reach fo_sparse_parallel_threshold; each row is
 * computed by one thread, so results do not depend on the thread count.
 */
#ifndef FASTOPT_SPARSE_ADAM_H
#define FASTOPT_SPARSE_ADAM_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FO_SPARSE_OK 0
#define FO_SPARSE_BAD_ARGS (-1)
#define FO_SPARSE_BAD_INDEX (-2)

/* torch's coalesce order of `nnz` indices: order[k] is the position of the k-th entry after
 * at::sort (indices ascending); `scratch` as for a step (3 * nnz + 1). Returns the number of
 * distinct indices, or -1 on bad arguments. */
int64_t fo_sparse_coalesce_order(const int64_t *idx, int64_t nnz, int64_t *scratch,
                                 int64_t *order);

typedef struct {
    double one_minus_beta1, one_minus_beta2, eps;
    double neg_step_size;          /* -(lr * sqrt(1 - beta2^t) / (1 - beta1^t)) */
    int maximize;
} fo_sparse_adam_hp;

int fo_sparse_adam_step_f32(float *param, float *exp_avg, float *exp_avg_sq, int64_t n_rows,
                            int64_t row_len, const int64_t *indices, const float *values,
                            int64_t nnz, int64_t *scratch, const fo_sparse_adam_hp *hp,
                            int n_threads, int64_t *bad);
int fo_sparse_adam_step_f64(double *param, double *exp_avg, double *exp_avg_sq, int64_t n_rows,
                            int64_t row_len, const int64_t *indices, const double *values,
                            int64_t nnz, int64_t *scratch, const fo_sparse_adam_hp *hp,
                            int n_threads, int64_t *bad);

/* Touched elements below which a step runs on the calling thread. */
extern int64_t fo_sparse_parallel_threshold;

/* The entry count from which torch's sort is a stable radix sort (at::internal::GRAIN_SIZE). */
#define FO_SPARSE_STABLE_FROM 32768

#ifdef __cplusplus
}
#endif
#endif /* FASTOPT_SPARSE_ADAM_H */
