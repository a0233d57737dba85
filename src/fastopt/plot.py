r"""Figures: convergence curves and optimizer trajectories (matplotlib, optional).

matplotlib (and pillow, for the animated GIF) is imported only when a figure is drawn; without
it these functions raise ImportError naming the extra: ``pip install "fastopt[plot]"``. Figures
are built with matplotlib's object API on the Agg canvas (no pyplot, no window, no global
state), so they work on headless machines and inside other programs.

* :func:`convergence_figure`: :math:`f(w) - f^\star` (log scale) against gradient evaluations
  and against wall time, one curve per optimizer, from a
  :class:`fastopt.convergence.Comparison`.
* :func:`trajectory_figure` / :func:`trajectory_animation`: the paths of optimizers on 2-D
  functions drawn over contour plots, as a PNG and as an animated GIF (from
  :func:`fastopt.viz.trajectories`).
"""
import numpy as np

__all__ = ["require_matplotlib", "STYLES", "style", "save_png", "convergence_figure",
           "trajectory_figure", "trajectory_animation"]

PLOT_EXTRA = 'pip install "fastopt[plot]"'

#: Method name -> (colour, line style). Full-batch methods are solid, stochastic ones dashed,
#: adaptive ones dash-dotted; Newton is black.
STYLES = {
    "gd": ("tab:blue", "-"),
    "momentum": ("tab:cyan", "-"),
    "nesterov": ("tab:purple", "-"),
    "sgd": ("tab:orange", "--"),
    "minibatch_sgd": ("tab:brown", "--"),
    "svrg": ("tab:red", "--"),
    "adagrad": ("tab:olive", "-."),
    "rmsprop": ("tab:pink", "-."),
    "adam": ("tab:green", "-."),
    "adadelta": ("tab:gray", "-."),
    "adamax": ("goldenrod", "-."),
    "newton": ("black", "-"),
}
_EXTRA_COLOURS = ("navy", "teal", "maroon", "darkkhaki", "slateblue", "sienna")


def style(name, index=0):
    """(colour, line style) of method `name` (a fallback colour for names not in STYLES)."""
    return STYLES.get(name, (_EXTRA_COLOURS[index % len(_EXTRA_COLOURS)], ":"))


def _line_kwargs(name, index=0, lw=1.7):
    """Plot keywords of method `name`: heavy-ball momentum is drawn wide and translucent
    under Nesterov's thin line, since the two often coincide; Newton is thick with dots."""
    colour, ls = style(name, index)
    kw = dict(color=colour, ls=ls, lw=lw)
    if name == "momentum":
        kw.update(lw=lw + 2.2, alpha=0.5)
    elif name == "newton":
        kw.update(lw=lw + 0.7, marker="o", ms=4)
    return kw


def _row_major(handles, ncol):
    """Reorder legend handles so that matplotlib's column-by-column fill reads row by row."""
    rows = -(-len(handles) // ncol)
    grid = [handles[r * ncol:(r + 1) * ncol] for r in range(rows)]
    return [grid[r][c] for c in range(ncol) for r in range(rows) if c < len(grid[r])]


def require_matplotlib():
    """Import matplotlib (Agg canvas) or raise ImportError naming the [plot] extra."""
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
        from matplotlib.figure import Figure  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"fastopt's figures need matplotlib: {PLOT_EXTRA} "
                          f"({exc})") from None
    return matplotlib


def _figure(**kwargs):
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def _palette_for(img):
    """A (256, 3) uint8 palette for `img` (RGB): the exact colours of :data:`STYLES`, the
    markers and a grey ramp, then the image's most frequent other colours (median cut)."""
    from matplotlib.colors import to_rgb
    from PIL import Image
    named = [c for c, _ in STYLES.values()] + list(_EXTRA_COLOURS) + ["gold", "black", "white"]
    fixed = [tuple(round(255 * v) for v in to_rgb(c)) for c in named]
    fixed += [(g, g, g) for g in np.linspace(0, 255, 48).round().astype(int)]
    fixed = np.array(list(dict.fromkeys(fixed)), dtype=np.uint8)
    rest = img.quantize(colors=256 - len(fixed), method=Image.Quantize.MEDIANCUT,
                        dither=Image.Dither.NONE)
    extra = np.array(rest.getpalette()[:3 * (256 - len(fixed))], dtype=np.uint8).reshape(-1, 3)
    palette = np.zeros((256, 3), np.uint8)
    palette[:len(fixed)] = fixed
    palette[len(fixed):len(fixed) + len(extra)] = extra
    return palette


def _keys(pixels):
    """One integer R + 256 G + 65536 B per pixel of an (..., 3) RGB or (..., 4) RGBA uint8
    array (for C-contiguous RGBA a single masked view, no arithmetic per channel)."""
    if pixels.shape[-1] == 4 and pixels.flags.c_contiguous:
        return pixels.view("<u4")[..., 0] & np.uint32(0xFFFFFF)
    p = pixels.astype(np.uint32)
    return p[..., 0] | (p[..., 1] << 8) | (p[..., 2] << 16)


def _nearest(keys, palette):
    """Palette index of each colour key (see :func:`_keys`): the nearest palette colour,
    Euclidean in RGB, exact (colours in the palette map to themselves)."""
    uniq, inverse = np.unique(keys.reshape(-1), return_inverse=True)
    colours = np.stack([uniq & 255, (uniq >> 8) & 255, uniq >> 16], axis=1).astype(np.float32)
    # |c - p|^2 = |p|^2 - 2 c.p + |c|^2 (|c|^2 is the same for every p); all terms are
    # integers below 2^24, exact in float32
    pal = palette.astype(np.float32)
    pal_sq = (pal * pal).sum(axis=1)
    nearest = np.empty(len(uniq), np.uint8)
    for start in range(0, len(uniq), 16384):
        c = colours[start:start + 16384]
        nearest[start:start + 16384] = (pal_sq - 2 * (c @ pal.T)).argmin(axis=1)
    return nearest[inverse.reshape(-1)]


def _palette_image(index, palette):
    """A "P" image from a (height, width) uint8 index array and a (256, 3) palette."""
    from PIL import Image
    index = np.ascontiguousarray(index, dtype=np.uint8)
    out = Image.frombytes("P", (index.shape[1], index.shape[0]), index.tobytes())
    out.putpalette(palette.ravel().tolist())
    return out


def _quantize(img, palette):
    """`img` (a PIL image) as a palette image, every pixel its nearest palette colour."""
    keys = _keys(np.asarray(img.convert("RGB")))
    return _palette_image(_nearest(keys, palette).reshape(keys.shape), palette)


def _quantize_frames(frames, palette):
    """Palette images of RGBA `frames` ((height, width, 4) uint8 arrays) that mostly equal
    the first one: only the pixels that differ from it are matched again."""
    base = _keys(frames[0])
    base_index = _nearest(base, palette).reshape(base.shape)
    out = []
    for frame in frames:
        keys = _keys(frame)
        changed = keys != base
        index = base_index.copy()
        index[changed] = _nearest(keys[changed], palette)
        out.append(_palette_image(index, palette))
    return out


def save_png(fig, path, dpi):
    """Save `fig` as an 8-bit palette PNG (pillow, which matplotlib requires).

    The palette (:func:`_palette_for`) keeps the curves' exact colours; no dithering. The file
    is about a third of the RGBA one.
    """
    from io import BytesIO

    from PIL import Image
    buf = BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    buf.seek(0)
    with Image.open(buf) as rgba:
        img = rgba.convert("RGB")
    _quantize(img, _palette_for(img)).save(path, optimize=True)


# ------------------------------------------------------------------------------ convergence
def convergence_figure(comparison, path=None, *, title=None, floor=1e-15, dpi=100):
    """Suboptimality against gradient evaluations (left) and wall time (right), log scale.

    `comparison` is a :class:`fastopt.convergence.Comparison`. The x axis of the left panel
    is gradient evaluations divided by n (passes over the data; Newton's Hessians are not
    counted there, the right panel shows what they cost); the right panel has a log time
    axis and starts at each method's first timed record. Values below `floor` (Newton
    reaches 0 to rounding) are drawn at `floor`. Saves a PNG to `path` when given; returns
    the matplotlib Figure.
    """
    fig = _figure(figsize=(12.5, 5.6), dpi=dpi)
    ax_evals, ax_time = fig.subplots(1, 2)
    n = comparison.n_samples
    lines = []
    top = floor
    for i, (name, tr) in enumerate(comparison.traces.items()):
        kw = _line_kwargs(name, i)
        sub = np.maximum(np.asarray(tr.subopt, dtype=np.float64), floor)
        top = max(top, float(np.nanmax(sub[np.isfinite(sub)], initial=floor)))
        (line,) = ax_evals.plot(np.asarray(tr.grad_evals) / n, sub, label=tr.label, **kw)
        lines.append(line)
        t = np.asarray(tr.time)
        keep = t > 0
        ax_time.plot(t[keep], sub[keep], **kw)
    for ax in (ax_evals, ax_time):
        ax.set_yscale("log")
        ax.set_ylim(floor / 3, top * 3)
        ax.grid(True, which="major", alpha=0.35)
        ax.grid(True, which="minor", axis="y", alpha=0.12)
        ax.set_ylabel(r"suboptimality $f(w) - f^\star$ (log scale)")
    ax_time.set_xscale("log")
    ax_evals.text(0.99, 0.01, f"values below {floor:.0e} are drawn at {floor:.0e}",
                  transform=ax_evals.transAxes, ha="right", va="bottom", fontsize=8,
                  color="0.4")
    ax_evals.set_xlabel(f"gradient evaluations / n  (passes over the n = {n} training samples)")
    ax_time.set_xlabel("wall time of the optimization [s] (log scale)")
    ax_evals.set_title("convergence per gradient evaluation")
    ax_time.set_title("convergence per second")
    fig.legend(handles=_row_major(lines, 6), loc="lower center", ncol=6, fontsize=9.5,
               frameon=False)
    if title:
        fig.suptitle(title, fontsize=12)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    if path is not None:
        save_png(fig, path, dpi)
    return fig


# ------------------------------------------------------------------------------ trajectories
def _contours(ax, panel, levels=24):
    """Filled log-spaced contours of the panel's function over its bounds."""
    from matplotlib import colors
    (x0, x1), (y0, y1) = panel.bounds
    xs, ys = np.linspace(x0, x1, 300), np.linspace(y0, y1, 300)
    X, Y = np.meshgrid(xs, ys)
    Z = panel.values(X, Y)
    lo = float(Z.min())
    shifted = Z - lo + 1e-3 * max(1.0, float(np.ptp(Z)))
    lv = np.geomspace(shifted.min(), shifted.max(), levels)
    ax.contourf(X, Y, shifted, levels=lv, norm=colors.LogNorm(), cmap="Greys_r", alpha=0.3)
    ax.contour(X, Y, shifted, levels=lv, norm=colors.LogNorm(), colors="0.35",
               linewidths=0.45, alpha=0.7)
    if panel.minimizer is not None:
        ax.plot(*panel.minimizer, marker="*", ms=15, color="gold", mec="black", zorder=5)
    ax.plot(*panel.start, marker="o", ms=7, color="white", mec="black", zorder=5)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_title(panel.title, fontsize=11)


def _trajectory_axes(panels, dpi):
    import math
    cols = 2 if len(panels) > 1 else 1
    rows = math.ceil(len(panels) / cols)
    fig = _figure(figsize=(6.4 * cols, 5.4 * rows + 1.0), dpi=dpi)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    return fig, axes


def _legend(fig, panels, handles_by_name):
    names = [n for p in panels for n in p.paths]
    names = list(dict.fromkeys(names))
    handles = [handles_by_name[n] for n in names]
    fig.legend(handles=_row_major(handles, 6), loc="lower center", ncol=6, fontsize=9.5,
               frameon=False)


def trajectory_figure(panels, path=None, *, dpi=90, title=None):
    """The full paths of every optimizer over each panel's contour plot (one panel per
    function; `panels` from :func:`fastopt.viz.trajectories`). Saves a PNG to `path` when
    given; returns the Figure."""
    from matplotlib.lines import Line2D
    fig, axes = _trajectory_axes(panels, dpi)
    handles = {}
    for ax, panel in zip(axes, panels):
        _contours(ax, panel)
        for i, (name, xy) in enumerate(panel.paths.items()):
            kw = _line_kwargs(name, i, lw=1.6)
            ax.plot(xy[:, 0], xy[:, 1], **kw)
            ax.plot(xy[-1, 0], xy[-1, 1], marker="o", ms=4, color=kw["color"])
            handles[name] = Line2D([], [], label=panel.labels[name],
                                   **{**kw, "lw": max(kw["lw"], 2.6)})
    _legend(fig, panels, handles)
    if title:
        fig.suptitle(title, fontsize=12)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    if path is not None:
        save_png(fig, path, dpi)
    return fig


def _blit_gif_writer(fps, hold):
    """matplotlib's PillowWriter, changed in two ways: a frame is the canvas as last drawn
    (the caller blits the moving artists onto a cached background, so nothing is redrawn
    in full), and all frames share one palette (smaller files, stable colours), the last
    one shown for `hold` extra frames."""
    from matplotlib.animation import PillowWriter
    from PIL import Image

    class BlitPaletteWriter(PillowWriter):
        def grab_frame(self, **savefig_kwargs):
            self._frames.append(np.array(self.fig.canvas.buffer_rgba()))

        def finish(self):
            last = np.ascontiguousarray(self._frames[-1][..., :3])
            palette = _palette_for(Image.fromarray(last))
            frames = _quantize_frames(self._frames, palette)
            frames += [frames[-1]] * hold
            frames[0].save(self.outfile, save_all=True, append_images=frames[1:],
                           duration=int(1000 / self.fps), loop=0, optimize=True)

    return BlitPaletteWriter(fps=fps)


def trajectory_animation(panels, path, *, frames=60, fps=12, dpi=72, title=None, hold=18):
    """An animated GIF of the paths growing step by step (matplotlib's PillowWriter).

    In frame k every path is drawn up to step ``round(k * steps / (frames - 1))``, so all
    optimizers advance together; the last frame holds the full paths for `hold` more
    frames. The contour plots are drawn once and the paths blitted onto them. Needs
    matplotlib and pillow (both in the [plot] extra).
    """
    require_matplotlib()
    try:
        import PIL  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"the animated GIF needs pillow: {PLOT_EXTRA} ({exc})") from None
    from matplotlib.lines import Line2D
    fig, axes = _trajectory_axes(panels, dpi)
    artists, handles = [], {}
    longest = 1
    for ax, panel in zip(axes, panels):
        _contours(ax, panel)
        for i, (name, xy) in enumerate(panel.paths.items()):
            kw = _line_kwargs(name, i, lw=2.0)
            (line,) = ax.plot([], [], animated=True, **kw)
            (head,) = ax.plot([], [], marker="o", ms=5, color=kw["color"], animated=True)
            artists.append((ax, xy, line, head))
            longest = max(longest, len(xy) - 1)
            handles[name] = Line2D([], [], label=panel.labels[name],
                                   **{**kw, "lw": max(kw["lw"], 2.6)})
    _legend(fig, panels, handles)
    fig.suptitle(title or "", fontsize=12)
    counter = fig.text(0.985, 0.985, "", ha="right", va="top", fontsize=11, animated=True)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    canvas = fig.canvas
    canvas.draw()
    background = canvas.copy_from_bbox(fig.bbox)
    frames = max(2, int(frames))
    writer = _blit_gif_writer(fps, max(0, int(hold)))
    with writer.saving(fig, path, dpi):
        for k in range(frames):
            step = int(round(k * longest / (frames - 1)))
            canvas.restore_region(background)
            for ax, xy, line, head in artists:
                j = min(step, len(xy) - 1)
                line.set_data(xy[:j + 1, 0], xy[:j + 1, 1])
                head.set_data(xy[j:j + 1, 0], xy[j:j + 1, 1])
                ax.draw_artist(line)
                ax.draw_artist(head)
            counter.set_text(f"step {step}")
            fig.draw_artist(counter)
            writer.grab_frame()
    return fig
