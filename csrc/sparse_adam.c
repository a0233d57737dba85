/*
 * sparse_adam.c -- the coalescing sort and the lazy SparseAdam update of fastopt/sparse_adam.h.
 *
 * Design note
 * -----------
 * torch.optim.SparseAdam sums duplicate indices by coalescing the COO gradient, and a sum of
 * three or more floats depends on its order; torch's order is the permutation its CPU sort
 * gives the (flattened) indices. Below 32768 entries that sort is libstdc++'s std::sort
 * (introsort: median-of-three quicksort down to runs of 16, heap sort past a depth of
 * 2 log2 n, then insertion sort) on (index, position) pairs compared by index only, which is
 * not stable; from 32768 on it is a stable radix sort. fo_sparse_sort replays std::sort step
 * by step (the same comparisons and moves, so the same permutation), and for the stable case
 * runs the same algorithm with ties broken by position, which makes the order unique.
 * Already ascending, distinct indices (a coalesced gradient) skip the sort: every sort leaves
 * them in place.
 *
 * The update is one pass over the distinct rows, split in equal shares over OpenMP threads
 * (one parallel region, FO_SHARE_REGION): a row's gradient is summed in chunks of FO_CHUNK
 * elements into a stack buffer (the first duplicate copied, the others added in order), then
 * the row's moments and parameter are updated in place by an `omp simd` loop. The row loop is
 * compiled for AVX-512F, AVX2 and the baseline ISA (FO_CLONES, as kernels.c), since a square
 * root and a division per element make it compute-bound on rows that are in cache. Scalars are converted to the element type once per call, as torch converts a Python
 * scalar for a float32 tensor. setup.py's -ffp-contract=off keeps every product and sum
 * rounded on its own, as torch's separate tensor operations round them.
 */
#include <math.h>
#include <string.h>

#include "fastopt/sparse_adam.h"
#include "fastopt/parallel.h"   /* FO_PRAGMA, fo_team_cap */

int64_t fo_sparse_parallel_threshold = 32768;

typedef struct { int64_t key, pos; } fo_pair;

#define FO_THRESHOLD 16     /* libstdc++'s _S_threshold */

static inline int fo_lt(const fo_pair *a, const fo_pair *b, int ties)
{
    return a->key < b->key || (ties && a->key == b->key && a->pos < b->pos);
}

static inline void fo_swap(fo_pair *a, fo_pair *b)
{
    fo_pair t = *a;
    *a = *b;
    *b = t;
}

/* std::__move_median_to_first */
static void fo_median_to_first(fo_pair *result, fo_pair *a, fo_pair *b, fo_pair *c, int ties)
{
    if (fo_lt(a, b, ties)) {
        if (fo_lt(b, c, ties)) fo_swap(result, b);
        else if (fo_lt(a, c, ties)) fo_swap(result, c);
        else fo_swap(result, a);
    } else if (fo_lt(a, c, ties)) fo_swap(result, a);
    else if (fo_lt(b, c, ties)) fo_swap(result, c);
    else fo_swap(result, b);
}

/* std::__unguarded_partition */
static fo_pair *fo_partition(fo_pair *first, fo_pair *last, const fo_pair *pivot, int ties)
{
    for (;;) {
        while (fo_lt(first, pivot, ties)) ++first;
        --last;
        while (fo_lt(pivot, last, ties)) --last;
        if (!(first < last)) return first;
        fo_swap(first, last);
        ++first;
    }
}

/* std::__push_heap, std::__adjust_heap, std::__make_heap, std::__sort_heap */
static void fo_push_heap(fo_pair *first, int64_t hole, int64_t top, fo_pair value, int ties)
{
    int64_t parent = (hole - 1) / 2;
    while (hole > top && fo_lt(first + parent, &value, ties)) {
        first[hole] = first[parent];
        hole = parent;
        parent = (hole - 1) / 2;
    }
    first[hole] = value;
}

static void fo_adjust_heap(fo_pair *first, int64_t hole, int64_t len, fo_pair value, int ties)
{
    const int64_t top = hole;
    int64_t child = hole;
    while (child < (len - 1) / 2) {
        child = 2 * (child + 1);
        if (fo_lt(first + child, first + (child - 1), ties)) child--;
        first[hole] = first[child];
        hole = child;
    }
    if ((len & 1) == 0 && child == (len - 2) / 2) {
        child = 2 * (child + 1);
        first[hole] = first[child - 1];
        hole = child - 1;
    }
    fo_push_heap(first, hole, top, value, ties);
}

static void fo_heap_sort(fo_pair *first, fo_pair *last, int ties)
{
    const int64_t len = last - first;
    if (len >= 2) {
        for (int64_t parent = (len - 2) / 2;; --parent) {
            fo_adjust_heap(first, parent, len, first[parent], ties);
            if (parent == 0) break;
        }
    }
    while (last - first > 1) {
        --last;
        fo_pair value = *last;
        *last = *first;
        fo_adjust_heap(first, 0, last - first, value, ties);
    }
}

/* std::__introsort_loop */
static void fo_introsort(fo_pair *first, fo_pair *last, int64_t depth, int ties)
{
    while (last - first > FO_THRESHOLD) {
        if (depth == 0) {
            fo_heap_sort(first, last, ties);
            return;
        }
        --depth;
        fo_pair *mid = first + (last - first) / 2;
        fo_median_to_first(first, first + 1, mid, last - 1, ties);
        fo_pair *cut = fo_partition(first + 1, last, first, ties);
        fo_introsort(cut, last, depth, ties);
        last = cut;
    }
}

/* std::__unguarded_linear_insert */
static void fo_linear_insert(fo_pair *last, int ties)
{
    fo_pair value = *last;
    fo_pair *next = last - 1;
    while (fo_lt(&value, next, ties)) {
        *last = *next;
        last = next;
        --next;
    }
    *last = value;
}

/* std::__insertion_sort */
static void fo_insertion_sort(fo_pair *first, fo_pair *last, int ties)
{
    if (first == last) return;
    for (fo_pair *i = first + 1; i != last; ++i) {
        if (fo_lt(i, first, ties)) {
            fo_pair value = *i;
            memmove(first + 1, first, (size_t)(i - first) * sizeof(fo_pair));
            *first = value;
        } else {
            fo_linear_insert(i, ties);
        }
    }
}

/* std::sort (std::__sort: introsort, then std::__final_insertion_sort) */
static void fo_sparse_sort(fo_pair *first, int64_t n, int ties)
{
    if (n <= 0) return;
    int64_t lg = 0;
    for (int64_t m = n; m > 1; m >>= 1) ++lg;
    fo_introsort(first, first + n, 2 * lg, ties);
    if (n > FO_THRESHOLD) {
        fo_insertion_sort(first, first + FO_THRESHOLD, ties);
        for (fo_pair *i = first + FO_THRESHOLD; i != first + n; ++i) fo_linear_insert(i, ties);
    } else {
        fo_insertion_sort(first, first + n, ties);
    }
}

/* Sort into `pairs` (nnz of them) and mark the runs in `starts`; returns the distinct count. */
static int64_t fo_order(const int64_t *idx, int64_t nnz, fo_pair *pairs, int64_t *starts)
{
    int sorted = 1;
    for (int64_t k = 0; k < nnz; ++k) {
        pairs[k].key = idx[k];
        pairs[k].pos = k;
        if (k > 0 && idx[k] <= idx[k - 1]) sorted = 0;
    }
    if (!sorted && nnz >= 2) fo_sparse_sort(pairs, nnz, nnz >= FO_SPARSE_STABLE_FROM);
    int64_t u = 0;
    for (int64_t k = 0; k < nnz; ++k)
        if (k == 0 || pairs[k].key != pairs[k - 1].key) starts[u++] = k;
    starts[u] = nnz;
    return u;
}

int64_t fo_sparse_coalesce_order(const int64_t *idx, int64_t nnz, int64_t *scratch,
                                 int64_t *order)
{
    if (nnz < 0 || !scratch || (nnz > 0 && (!idx || !order))) return -1;
    fo_pair *pairs = (fo_pair *)(void *)scratch;
    const int64_t n_unique = fo_order(idx, nnz, pairs, scratch + 2 * nnz);
    for (int64_t k = 0; k < nnz; ++k) order[k] = pairs[k].pos;
    return n_unique;
}

#define FO_CHUNK 256

/* The update of the distinct rows [u0, u1): compiled per instruction set (FO_CLONES), called
 * by each thread on its share of the rows. */
#define FO_SPARSE_ROWS(suffix, T, SQRT)                                                        \
    FO_CLONES static void fo_sparse_rows_##suffix(                                             \
        T *param, T *exp_avg, T *exp_avg_sq, int64_t row_len, const T *values,                 \
        const fo_pair *pairs, const int64_t *starts, int64_t u0, int64_t u1, T c1, T c2,       \
        T eps, T nss, int maximize)                                                            \
    {                                                                                          \
        T g[FO_CHUNK];                                                                         \
        for (int64_t u = u0; u < u1; ++u) {                                                    \
            const int64_t s = starts[u], e = starts[u + 1];                                    \
            const int64_t off = pairs[s].key * row_len;                                        \
            T *p = param + off, *m = exp_avg + off, *v = exp_avg_sq + off;                     \
            for (int64_t j0 = 0; j0 < row_len; j0 += FO_CHUNK) {                               \
                const int64_t len = row_len - j0 < FO_CHUNK ? row_len - j0 : FO_CHUNK;         \
                const T *first = values + pairs[s].pos * row_len + j0;                         \
                for (int64_t j = 0; j < len; ++j) g[j] = first[j];                             \
                for (int64_t k = s + 1; k < e; ++k) {                                          \
                    const T *more = values + pairs[k].pos * row_len + j0;                      \
                    for (int64_t j = 0; j < len; ++j) g[j] = g[j] + more[j];                   \
                }                                                                              \
                T *pj = p + j0, *mj = m + j0, *vj = v + j0;                                    \
                FO_PRAGMA(omp simd)                                                            \
                for (int64_t j = 0; j < len; ++j) {                                            \
                    const T gj = maximize ? -g[j] : g[j];                                      \
                    const T m0 = mj[j], v0 = vj[j];                                            \
                    const T um = (gj - m0) * c1;                                               \
                    const T uv = (gj * gj - v0) * c2;                                          \
                    mj[j] = m0 + um;                                                           \
                    vj[j] = v0 + uv;                                                           \
                    const T denom = SQRT(uv + v0) + eps;                                       \
                    pj[j] = pj[j] + nss * ((um + m0) / denom);                                 \
                }                                                                              \
            }                                                                                  \
        }                                                                                      \
    }

FO_SPARSE_ROWS(f32, float, sqrtf)
FO_SPARSE_ROWS(f64, double, sqrt)

#define FO_SPARSE_ADAM(suffix, T)                                                              \
    int fo_sparse_adam_step_##suffix(T *param, T *exp_avg, T *exp_avg_sq, int64_t n_rows,      \
                                     int64_t row_len, const int64_t *indices, const T *values, \
                                     int64_t nnz, int64_t *scratch,                            \
                                     const fo_sparse_adam_hp *hp, int n_threads, int64_t *bad) \
    {                                                                                          \
        if (n_rows < 0 || row_len < 0 || nnz < 0 || !hp || !bad) return FO_SPARSE_BAD_ARGS;    \
        if (nnz == 0 || row_len == 0) return FO_SPARSE_OK;                                     \
        if (!param || !exp_avg || !exp_avg_sq || !indices || !values || !scratch)              \
            return FO_SPARSE_BAD_ARGS;                                                         \
        for (int64_t k = 0; k < nnz; ++k)                                                      \
            if (indices[k] < 0 || indices[k] >= n_rows) {                                      \
                *bad = k;                                                                      \
                return FO_SPARSE_BAD_INDEX;                                                    \
            }                                                                                  \
        fo_pair *pairs = (fo_pair *)(void *)scratch;                                           \
        int64_t *starts = scratch + 2 * nnz;                                                   \
        const int64_t n_unique = fo_order(indices, nnz, pairs, starts);                        \
        const T c1 = (T)hp->one_minus_beta1, c2 = (T)hp->one_minus_beta2;                      \
        const T eps = (T)hp->eps, nss = (T)hp->neg_step_size;                                  \
        const int maximize = hp->maximize;                                                     \
        const int team = fo_team_cap(n_unique * row_len, fo_sparse_parallel_threshold,        \
                                     n_threads, n_unique);                                     \
        FO_SHARE_REGION(team, , n_unique, 1, lo, hi,                                           \
                        fo_sparse_rows_##suffix(param, exp_avg, exp_avg_sq, row_len, values,   \
                                                pairs, starts, lo, hi, c1, c2, eps, nss,       \
                                                maximize););                                   \
        return FO_SPARSE_OK;                                                                   \
    }

FO_SPARSE_ADAM(f32, float)
FO_SPARSE_ADAM(f64, double)
