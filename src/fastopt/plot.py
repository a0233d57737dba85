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

Every method has its own colour (:data:`STYLES`: eighteen that stay apart), its family's line
style (:data:`FAMILIES`: full batch solid, stochastic dashed, adaptive dash-dot) and its own
marker; the legend has one row per family. Lines are layered so that each path shows where
paths coincide: adaptive methods at the bottom, then gradient descent and heavy-ball momentum
as wide translucent bands, then the other thin lines and Newton on top; the start, minimum and
last-iterate marks (:data:`START`, :data:`MINIMUM`, :data:`LAST`) above all, the same in the
PNG and the GIF.
"""
import numpy as np

__all__ = ["require_matplotlib", "FAMILIES", "STYLES", "START", "MINIMUM", "LAST", "style",
           "spaced_marks", "save_png", "convergence_figure", "trajectory_figure",
           "trajectory_animation"]

PLOT_EXTRA = 'pip install "fastopt[plot]"'

#: Method families: (legend heading, line style). Within a family each method has its own
#: colour and marker, so every curve differs from the others in colour and in line style or
#: marker.
FAMILIES = {
    "full": ("full batch", "-"),
    "stochastic": ("stochastic (batch 1 or 32)", "--"),
    "adaptive": ("adaptive (batch 32)", "-."),
}

#: Method name -> (colour, family, marker). Eighteen colours that stay apart on white and on
#: the grey contour plots (a qualitative set after S. Trubetskoy's "20 distinct colours"; Rprop, NAdam and RAdam take
#: three darker web colours, since the set's remaining pastels vanish on the contours).
#: Gradient descent and heavy-ball momentum are drawn as wide translucent bands under the
#: thin lines, since stochastic methods and Nesterov often run along their paths.
STYLES = {
    "gd": ("#4363d8", "full", "h"),
    "momentum": ("#42d4f4", "full", None),
    "nesterov": ("#911eb4", "full", "^"),
    "newton": ("#000000", "full", "o"),
    "sgd": ("#f58231", "stochastic", "v"),
    "minibatch_sgd": ("#9a6324", "stochastic", "s"),
    "svrg": ("#e6194b", "stochastic", "D"),
    "adagrad": ("#469990", "adaptive", "<"),
    "rmsprop": ("#f032e6", "adaptive", ">"),
    "adam": ("#3cb44b", "adaptive", "P"),
    "adadelta": ("#808080", "adaptive", "X"),
    "adamax": ("#800000", "adaptive", "*"),
    "lion": ("#000075", "adaptive", "p"),
    "schedule_free_adamw": ("#bfef45", "adaptive", "d"),
    "lbfgs": ("#ffe119", "full", "8"),
    "rprop": ("#006400", "full", "s"),
    "nadam": ("#9370db", "adaptive", "v"),
    "radam": ("#ff7f7f", "adaptive", "s"),
}
_EXTRA_COLOURS = ("#808000", "#dcbeff", "#aaffc3")
_EXTRA_MARKERS = ("H", "1", "2")
#: methods drawn as wide translucent bands under the thin lines -> (extra width in points,
#: opacity, layer): heavy-ball momentum widest at the bottom, gradient descent on it
_BANDS = {"momentum": (7.0, 0.5, 2.4), "gd": (4.0, 0.9, 2.5)}

#: The marks of the trajectory plots (keywords of Axes.plot), the same in the PNG and the GIF.
START = dict(marker="o", ms=9, color="white", mec="black", mew=1.2, ls="none", zorder=8)
MINIMUM = dict(marker="*", ms=18, color="gold", mec="black", mew=0.9, ls="none", zorder=8)
LAST = dict(marker="o", ms=6, mec="black", mew=0.7, ls="none", zorder=7)


def style(name, index=0):
    """(colour, line style, marker) of method `name`; names not in STYLES get a fallback
    colour and marker from `index`, dotted."""
    if name in STYLES:
        colour, family, marker = STYLES[name]
        return colour, FAMILIES[family][1], marker
    return (_EXTRA_COLOURS[index % len(_EXTRA_COLOURS)], ":",
            _EXTRA_MARKERS[index % len(_EXTRA_MARKERS)])


def _line_kwargs(name, index=0, lw=1.7, markevery=None):
    """Plot keywords of method `name`: colour, family line style, the method's marker every
    `markevery` points (see Line2D.markevery; Newton: every iterate), and the layer, from
    the bottom: the adaptive methods (whose paths often oscillate across a valley), the
    wide translucent bands of :data:`_BANDS`, the other thin lines, Newton."""
    colour, ls, marker = style(name, index)
    family = STYLES[name][1] if name in STYLES else None
    kw = dict(color=colour, ls=ls, lw=lw, zorder=3, alpha=0.9)
    if name in _BANDS:
        extra, alpha, layer = _BANDS[name]
        kw.update(lw=lw + extra, alpha=alpha, zorder=layer, solid_capstyle="round")
    elif name == "newton":
        kw.update(zorder=4, marker="o", ms=4.5)
    elif ls != "-":
        kw.update(lw=0.8 * lw, zorder=2 if family == "adaptive" else 3)
    if marker is not None and name != "newton":
        kw.update(marker=marker, ms=6, mec="white", mew=0.5)
        if markevery is not None:
            kw["markevery"] = markevery
    return kw


def _make_room(fig, legend_rows):
    """Grow the figure by the height of a bottom legend of `legend_rows` rows, and lay the
    axes out above it."""
    legend_in = 0.3 + 0.24 * legend_rows
    width, height = fig.get_size_inches()
    fig.set_size_inches(width, height + legend_in)
    fig.tight_layout(rect=(0, legend_in / (height + legend_in), 1, 1))


def spaced_marks(xy, bounds, spacing=0.09):
    """Indices of the points of path `xy` ((k, 2)) that get a marker: the first point at
    least `spacing` (a fraction of the plotted box, per axis) from the previous marked point,
    starting from the path's start (not marked itself). Oscillation in place adds none."""
    (x0, x1), (y0, y1) = bounds
    uv = (np.asarray(xy, np.float64) - [x0, y0]) / [x1 - x0, y1 - y0]
    marks, last = [], uv[0]
    for i in range(1, len(uv)):
        if np.hypot(*(uv[i] - last)) >= spacing:
            marks.append(i)
            last = uv[i]
    return marks


_PER_ROW = 5      # methods per legend row (a row of the 12.5-inch figures holds 5 or 6)


def _family_legend(fig, names, handles_by_name, extra=(), **kwargs):
    """A legend with one row per method family, its heading first, then a row of the
    `extra` handles (start, minimum, last iterate) under "marks". Returns (legend, rows)."""
    from matplotlib.lines import Line2D
    groups = {}
    for name in names:
        family = STYLES[name][1] if name in STYLES else "other"
        groups.setdefault(family, []).append(handles_by_name[name])
    headings = {k: v[0] for k, v in FAMILIES.items()}
    rows = [(headings.get(f, "other"), hs) for f, hs in groups.items()]
    if extra:
        rows.append(("marks", list(extra)))
    # a family of more than _PER_ROW methods continues on the next row, under no heading
    rows = [(heading if k == 0 else "", hs[k:k + _PER_ROW])
            for heading, hs in rows for k in range(0, max(len(hs), 1), _PER_ROW)]
    ncol = 1 + max(len(hs) for _, hs in rows)
    grid = []
    for heading, hs in rows:
        cells = [Line2D([], [], ls="none", label=heading)] + hs
        grid.append(cells + [Line2D([], [], ls="none", label="")] * (ncol - len(cells)))
    # matplotlib fills a legend column by column
    handles = [grid[r][c] for c in range(ncol) for r in range(len(grid))]
    legend = fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize=9.5,
                        frameon=False, columnspacing=1.6, handlelength=2.6, **kwargs)
    for text in legend.get_texts()[:len(grid)]:          # the first column: the headings
        text.set_fontweight("bold")
    return legend, len(grid)
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
    markers and a grey ramp; each method's colour as drawn (at its opacity) over white and
    over the contour plots' grey; then the image's most frequent other colours (median cut)."""
    from matplotlib.colors import to_rgb
    from PIL import Image
    named = [c for c, _, _ in STYLES.values()] + list(_EXTRA_COLOURS) + ["gold", "black", "white"]
    fixed = [tuple(round(255 * v) for v in to_rgb(c)) for c in named]
    for name, (colour, _, _) in STYLES.items():
        alpha = _line_kwargs(name)["alpha"]
        for background in (1.0, 0.85):
            fixed.append(tuple(round(255 * (alpha * v + (1 - alpha) * background))
                               for v in to_rgb(colour)))
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
    fig = _figure(figsize=(12.5, 5.4), dpi=dpi)
    ax_evals, ax_time = fig.subplots(1, 2)
    n = comparison.n_samples
    top = floor
    handles = {}
    for i, (name, tr) in enumerate(comparison.traces.items()):
        sub = np.maximum(np.asarray(tr.subopt, dtype=np.float64), floor)
        every = max(1, len(sub) // 8)            # about 8 markers a curve, staggered
        kw = _line_kwargs(name, i, markevery=(i * every // 12 % every, every))
        top = max(top, float(np.nanmax(sub[np.isfinite(sub)], initial=floor)))
        (line,) = ax_evals.plot(np.asarray(tr.grad_evals) / n, sub, label=tr.label, **kw)
        handles[name] = line
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
    _, rows = _family_legend(fig, list(comparison.traces), handles)
    if title:
        fig.suptitle(title, fontsize=12)
    _make_room(fig, rows)
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
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_title(panel.title, fontsize=11)


def _trajectories(panels, dpi, lw, title=None, animated=False):
    """The figure of the trajectory plots: contours, then per panel one line per method
    (full path; empty when `animated`) with its marker at :func:`spaced_marks`, its last
    iterate (:data:`LAST`), the start (:data:`START`) and the minimum (:data:`MINIMUM`), and
    the legend. Returns ``(fig, moving)``: moving lists ``(ax, xy, line, last, marks)`` per
    path; with `animated` the lines, last iterates and marks are animated artists, for the
    caller to draw on each frame."""
    import math

    from matplotlib.lines import Line2D
    cols = 2 if len(panels) > 1 else 1
    rows = math.ceil(len(panels) / cols)
    fig = _figure(figsize=(max(6.4 * cols, 11.0), 5.4 * rows + 0.4), dpi=dpi)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    handles, moving = {}, []
    for ax, panel in zip(axes, panels):
        _contours(ax, panel)
        for i, (name, xy) in enumerate(panel.paths.items()):
            kw = _line_kwargs(name, i, lw=lw, markevery=spaced_marks(xy, panel.bounds))
            marks = kw.get("markevery", list(range(len(xy))))     # Newton: every iterate
            if animated:
                kw["markevery"] = []
            data = ([], []) if animated else (xy[:, 0], xy[:, 1])
            (line,) = ax.plot(*data, animated=animated, **kw)
            data = ([], []) if animated else (xy[-1:, 0], xy[-1:, 1])
            (last,) = ax.plot(*data, animated=animated, **{**LAST, "color": kw["color"]})
            moving.append((ax, xy, line, last, marks))
            handles[name] = Line2D([], [], label=panel.labels[name],
                                   **{k: v for k, v in kw.items() if k != "markevery"})
        if panel.minimizer is not None:
            ax.plot(*panel.minimizer, animated=animated, **MINIMUM)
        ax.plot(*panel.start, animated=animated, **START)
    marks = [Line2D([], [], label="start", **START),
             Line2D([], [], label="minimum", **MINIMUM),
             Line2D([], [], label="last iterate", **{**LAST, "color": "0.75"})]
    names = list(dict.fromkeys(n for p in panels for n in p.paths))
    _, legend_rows = _family_legend(fig, names, handles, extra=marks)
    if title:
        fig.suptitle(title, fontsize=12)
    _make_room(fig, legend_rows)
    return fig, moving


def trajectory_figure(panels, path=None, *, dpi=90, title=None):
    """The full paths of every optimizer over each panel's contour plot (one panel per
    function; `panels` from :func:`fastopt.viz.trajectories`). Saves a PNG to `path` when
    given; returns the Figure."""
    fig, _ = _trajectories(panels, dpi, lw=1.6, title=title)
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
    fig, moving = _trajectories(panels, dpi, lw=2.0, title=title or " ", animated=True)
    longest = max([1] + [len(m[1]) - 1 for m in moving])
    # every animated artist, in the order the PNG draws them (by zorder, stably)
    layers = sorted((a for ax in fig.axes for a in ax.get_children()
                     if getattr(a, "get_animated", lambda: False)()),
                    key=lambda a: a.get_zorder())
    counter = fig.text(0.985, 0.985, "", ha="right", va="top", fontsize=11, animated=True)
    canvas = fig.canvas
    canvas.draw()
    background = canvas.copy_from_bbox(fig.bbox)
    frames = max(2, int(frames))
    writer = _blit_gif_writer(fps, max(0, int(hold)))
    with writer.saving(fig, path, dpi):
        for k in range(frames):
            step = int(round(k * longest / (frames - 1)))
            canvas.restore_region(background)
            for ax, xy, line, last, marks in moving:
                j = min(step, len(xy) - 1)
                line.set_data(xy[:j + 1, 0], xy[:j + 1, 1])
                line.set_markevery([i for i in marks if i <= j])
                last.set_data(xy[j:j + 1, 0], xy[j:j + 1, 1])
            for artist in layers:
                artist.axes.draw_artist(artist)
            counter.set_text(f"step {step}")
            fig.draw_artist(counter)
            writer.grab_frame()
    return fig
