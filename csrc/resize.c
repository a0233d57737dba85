/*
 * resize.c -- bilinear resize loops of fastopt/resize.h.
 *
 * Design note
 * -----------
 * Coordinates and weights are computed once per axis (fo_resize_axis_*, in double, then
 * rounded to the compute type) into caller-owned tables, so the pixel loop does only loads,
 * multiplies and adds. Every output pixel reads its four neighbours directly (a direct
 * 4-tap gather rather than two separable passes): no intermediate buffer, no allocation.
 * Parallel work unit: one output row (of one plane in NCHW, of one image in NHWC), statically
 * scheduled; rows are independent, so results do not depend on the thread count. One macro
 * stamps the loops for float, double and uint8 (uint8 computes in float, rounds half away from
 * zero, clamps to [0, 255]). The evaluation order of each pixel is fixed as in resize.h.
 */
#include <math.h>

#include "fastopt/resize.h"
#include "fastopt/parallel.h"   /* FO_PRAGMA, fo_max_threads, fo_team_cap */

int64_t fo_resize_parallel_threshold = 65536;

int fo_resize_max_threads(void) { return fo_max_threads(); }

/* Threads for a resize: serial below the threshold of output elements, at most one per row. */
static int fo_resize_team(int64_t out_elements, int64_t rows, int n_threads)
{
    return fo_team_cap(out_elements, fo_resize_parallel_threshold, n_threads, rows);
}

#define FO_AXIS(suffix, W)                                                                     \
    int fo_resize_axis_##suffix(int64_t in, int64_t out, int64_t *i0, int64_t *i1, W *l0,     \
                                W *l1)                                                         \
    {                                                                                          \
        if (in < 1 || out < 1) return -1;                                                      \
        const double scale = (double)in / (double)out;                                         \
        for (int64_t o = 0; o < out; ++o) {                                                    \
            double s = scale * ((double)o + 0.5) - 0.5;                                        \
            if (s < 0.0) s = 0.0;                                                              \
            int64_t lo = (int64_t)s;                                                           \
            if (lo > in - 1) lo = in - 1;                                                      \
            const double frac = s - (double)lo;                                                \
            i0[o] = lo;                                                                        \
            i1[o] = lo < in - 1 ? lo + 1 : lo;                                                 \
            l1[o] = (W)frac;                                                                   \
            l0[o] = (W)(1.0 - frac);                                                           \
        }                                                                                      \
        return 0;                                                                              \
    }

FO_AXIS(f32, float)
FO_AXIS(f64, double)

/* Store a computed value: identity for float types, round + clamp for uint8. */
static inline float fo_store_f32(float v) { return v; }
static inline double fo_store_f64(double v) { return v; }
static inline uint8_t fo_store_u8(float v)
{
    v = roundf(v);
    return (uint8_t)(v < 0.0f ? 0.0f : (v > 255.0f ? 255.0f : v));
}

#define FO_RESIZE(suffix, T, W)                                                                \
    int fo_resize_nchw_##suffix(const T *src, T *dst, int64_t planes, int64_t in_h,           \
                                int64_t in_w, int64_t out_h, int64_t out_w,                   \
                                const int64_t *y0, const int64_t *y1, const W *ly0,          \
                                const W *ly1, const int64_t *x0, const int64_t *x1,          \
                                const W *lx0, const W *lx1, int n_threads)                    \
    {                                                                                          \
        if (planes < 0 || in_h < 1 || in_w < 1 || out_h < 1 || out_w < 1) return -1;           \
        const int64_t rows = planes * out_h;                                                   \
        const int team = fo_resize_team(rows * out_w, rows, n_threads);                        \
        (void)team;                                                                            \
        FO_PRAGMA(omp parallel for schedule(static) num_threads(team) if (team > 1))           \
        for (int64_t r = 0; r < rows; ++r) {                                                   \
            const int64_t p = r / out_h, oy = r % out_h;                                       \
            const T *plane = src + p * in_h * in_w;                                            \
            const T *top = plane + y0[oy] * in_w;                                              \
            const T *bot = plane + y1[oy] * in_w;                                              \
            const W wt = ly0[oy], wb = ly1[oy];                                                \
            T *row = dst + r * out_w;                                                          \
            for (int64_t ox = 0; ox < out_w; ++ox) {                                           \
                const int64_t a = x0[ox], b = x1[ox];                                          \
                const W wl = lx0[ox], wr = lx1[ox];                                            \
                const W v = wt * (wl * (W)top[a] + wr * (W)top[b]) +                           \
                            wb * (wl * (W)bot[a] + wr * (W)bot[b]);                            \
                row[ox] = fo_store_##suffix(v);                                                \
            }                                                                                  \
        }                                                                                      \
        return 0;                                                                              \
    }                                                                                          \
                                                                                               \
    int fo_resize_nhwc_##suffix(const T *src, T *dst, int64_t n, int64_t channels,            \
                                int64_t in_h, int64_t in_w, int64_t out_h, int64_t out_w,     \
                                const int64_t *y0, const int64_t *y1, const W *ly0,          \
                                const W *ly1, const int64_t *x0, const int64_t *x1,          \
                                const W *lx0, const W *lx1, int n_threads)                    \
    {                                                                                          \
        if (n < 0 || channels < 1 || in_h < 1 || in_w < 1 || out_h < 1 || out_w < 1)          \
            return -1;                                                                         \
        const int64_t rows = n * out_h;                                                        \
        const int team = fo_resize_team(rows * out_w * channels, rows, n_threads);             \
        (void)team;                                                                            \
        FO_PRAGMA(omp parallel for schedule(static) num_threads(team) if (team > 1))           \
        for (int64_t r = 0; r < rows; ++r) {                                                   \
            const int64_t img = r / out_h, oy = r % out_h;                                     \
            const T *image = src + img * in_h * in_w * channels;                               \
            const T *top = image + y0[oy] * in_w * channels;                                   \
            const T *bot = image + y1[oy] * in_w * channels;                                   \
            const W wt = ly0[oy], wb = ly1[oy];                                                \
            T *row = dst + r * out_w * channels;                                               \
            for (int64_t ox = 0; ox < out_w; ++ox) {                                           \
                const T *ta = top + x0[ox] * channels, *tb = top + x1[ox] * channels;          \
                const T *ba = bot + x0[ox] * channels, *bb = bot + x1[ox] * channels;          \
                const W wl = lx0[ox], wr = lx1[ox];                                            \
                T *px = row + ox * channels;                                                   \
                for (int64_t c = 0; c < channels; ++c) {                                       \
                    const W v = wt * (wl * (W)ta[c] + wr * (W)tb[c]) +                         \
                                wb * (wl * (W)ba[c] + wr * (W)bb[c]);                          \
                    px[c] = fo_store_##suffix(v);                                              \
                }                                                                              \
            }                                                                                  \
        }                                                                                      \
        return 0;                                                                              \
    }

FO_RESIZE(f32, float, float)
FO_RESIZE(f64, double, double)
FO_RESIZE(u8, uint8_t, float)

#define FO_RESIZE_CALL(suffix, T, W)                                                           \
    return nhwc ? fo_resize_nhwc_##suffix((const T *)src, (T *)dst, n, channels, in_h, in_w,   \
                                          out_h, out_w, y0, y1, (const W *)ly0,               \
                                          (const W *)ly1, x0, x1, (const W *)lx0,             \
                                          (const W *)lx1, n_threads)                          \
                : fo_resize_nchw_##suffix((const T *)src, (T *)dst, n * channels, in_h, in_w,  \
                                          out_h, out_w, y0, y1, (const W *)ly0,               \
                                          (const W *)ly1, x0, x1, (const W *)lx0,             \
                                          (const W *)lx1, n_threads);

int fo_resize(int type, int nhwc, const void *src, void *dst, int64_t n, int64_t channels,
              int64_t in_h, int64_t in_w, int64_t out_h, int64_t out_w,
              const int64_t *y0, const int64_t *y1, const void *ly0, const void *ly1,
              const int64_t *x0, const int64_t *x1, const void *lx0, const void *lx1,
              int n_threads)
{
    switch (type) {
    case FO_RESIZE_F32: FO_RESIZE_CALL(f32, float, float)
    case FO_RESIZE_F64: FO_RESIZE_CALL(f64, double, double)
    case FO_RESIZE_U8: FO_RESIZE_CALL(u8, uint8_t, float)
    default: return -1;
    }
}
