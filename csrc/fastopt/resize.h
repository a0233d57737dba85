/*
 * fastopt/resize.h -- bilinear resizing of image batches (NCHW or NHWC), C99 + OpenMP.
 *
 * Semantics are those of torch.nn.functional.interpolate(mode="bilinear",
 * align_corners=False, antialias=False): output pixel o of an axis of length `out` resized
 * from length `in` samples the input at the source coordinate
 *
 *     s = max(0, (o + 0.5) * in / out - 0.5),   i0 = floor(s),   i1 = min(i0 + 1, in - 1),
 *     l1 = s - i0,   l0 = 1 - l1,
 *
 * (pixel centres aligned, the border pixel repeated beyond the edge), and the two axes combine
 * as   y = ly0 * (lx0 * x[i0y, i0x] + lx1 * x[i0y, i1x]) + ly1 * (lx0 * x[i1y, i0x] + lx1 * x[i1y, i1x]).
 *
 * The caller owns every buffer: it fills one axis table per axis with fo_resize_axis_<t>()
 * (the source indices i0, i1 and the weights l0, l1 in the compute type) and passes them to a
 * resize function. Compute types: float for float32 and uint8 inputs, double for float64.
 * uint8 results are rounded half away from zero (roundf) and clamped to [0, 255].
 *
 * Functions return 0, or -1 for invalid sizes (the bindings validate first, so -1 means a bug).
 * The work is split over OpenMP threads by output rows; below fo_resize_parallel_threshold
 * output elements it runs on the calling thread.
 */
#ifndef FASTOPT_RESIZE_H
#define FASTOPT_RESIZE_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

int fo_resize_axis_f32(int64_t in, int64_t out, int64_t *i0, int64_t *i1, float *l0, float *l1);
int fo_resize_axis_f64(int64_t in, int64_t out, int64_t *i0, int64_t *i1, double *l0, double *l1);

/* src: [planes][in_h][in_w] for NCHW (planes = N*C), or [n][in_h][in_w][channels] for NHWC.
 * ys, xs: the axis tables (length out_h, out_w) of fo_resize_axis_*. */
#define FO_RESIZE_DECLARE(suffix, T, W)                                                        \
    int fo_resize_nchw_##suffix(const T *src, T *dst, int64_t planes, int64_t in_h,           \
                                int64_t in_w, int64_t out_h, int64_t out_w,                   \
                                const int64_t *y0, const int64_t *y1, const W *ly0,          \
                                const W *ly1, const int64_t *x0, const int64_t *x1,          \
                                const W *lx0, const W *lx1, int n_threads);                   \
    int fo_resize_nhwc_##suffix(const T *src, T *dst, int64_t n, int64_t channels,            \
                                int64_t in_h, int64_t in_w, int64_t out_h, int64_t out_w,     \
                                const int64_t *y0, const int64_t *y1, const W *ly0,          \
                                const W *ly1, const int64_t *x0, const int64_t *x1,          \
                                const W *lx0, const W *lx1, int n_threads);

FO_RESIZE_DECLARE(f32, float, float)
FO_RESIZE_DECLARE(f64, double, double)
FO_RESIZE_DECLARE(u8, uint8_t, float)
#undef FO_RESIZE_DECLARE

/* One entry for all of the above: `type` FO_RESIZE_F32, _F64 or _U8 picks the element type (src,
 * dst: T; the weights: its compute type W), `nhwc` the layout (NCHW: n * channels planes). */
#define FO_RESIZE_F32 0
#define FO_RESIZE_F64 1
#define FO_RESIZE_U8 2
int fo_resize(int type, int nhwc, const void *src, void *dst, int64_t n, int64_t channels,
              int64_t in_h, int64_t in_w, int64_t out_h, int64_t out_w,
              const int64_t *y0, const int64_t *y1, const void *ly0, const void *ly1,
              const int64_t *x0, const int64_t *x1, const void *lx0, const void *lx1,
              int n_threads);

/* Output elements below which a resize runs on the calling thread. */
extern int64_t fo_resize_parallel_threshold;

/* OpenMP's max threads (respects OMP_NUM_THREADS), 1 without OpenMP. */
int fo_resize_max_threads(void);

#ifdef __cplusplus
}
#endif
#endif /* FASTOPT_RESIZE_H */
