"""`fastopt viz`: trajectories on the 2-D test functions, the PNG and the animated GIF."""
import os
import sys

import numpy as np
import pytest

from fastopt import cli, viz
from fastopt.convergence import METHODS as COMPARED

METHODS = viz.METHODS
PATHS = list(METHODS)
from fastopt.problems import Beale, Rosenbrock


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    pytest.importorskip("matplotlib")
    out = tmp_path_factory.mktemp("viz")
    panels, written = viz.run(str(out), quick=True, stream=False)
    return panels, written, out


def test_writes_a_png_and_an_animated_gif(quick):
    from PIL import Image
    panels, written, out = quick
    assert [os.path.basename(p) for p in written] == ["trajectories.png", "trajectories.gif"]
    with Image.open(written[0]) as png:
        assert png.format == "PNG" and png.size[0] >= 1000
        assert len(png.convert("RGB").getcolors(maxcolors=1 << 16)) > 12
    with Image.open(written[1]) as gif:
        assert gif.format == "GIF" and gif.is_animated
        assert gif.n_frames >= 10
        gif.seek(1)
        first = np.asarray(gif.convert("RGB")).copy()
        gif.seek(gif.n_frames - 1)
        last = np.asarray(gif.convert("RGB"))
        assert np.any(first != last)                  # the paths grow
    for path in written:
        assert os.path.getsize(path) > 20_000


def test_every_optimizer_on_every_function(quick):
    panels, _, _ = quick
    assert [p.name for p in panels] == ["rosenbrock", "beale", "saddle", "quadratic"]
    for panel in panels:
        assert list(panel.paths) == PATHS
        for name, xy in panel.paths.items():
            assert xy.ndim == 2 and xy.shape[1] == 2 and len(xy) >= 2, (panel.name, name)
            np.testing.assert_array_equal(xy[0], panel.start)
            assert np.all(np.isfinite(xy))
            assert len(xy) - 1 <= viz.QUICK_STEPS


def test_the_paths_do_what_the_functions_say(quick):
    panels = {p.name: p for p in quick[0]}
    quad = panels["quadratic"]
    # Newton minimizes a quadratic in one step
    assert len(quad.paths["newton"]) == 2
    np.testing.assert_allclose(quad.paths["newton"][-1], 0, atol=1e-12)
    # Newton with line search follows the Rosenbrock valley to (1, 1) within the quick budget
    np.testing.assert_allclose(panels["rosenbrock"].paths["newton"][-1], [1, 1], atol=1e-8)
    np.testing.assert_allclose(panels["beale"].paths["newton"][-1], [3, 0.5], atol=1e-8)
    # every descent method lowers every function (on the saddle: leaves it downhill)
    for panel in panels.values():
        f0 = panel.problem.loss(np.array(panel.start))
        for name, xy in panel.paths.items():
            assert panel.problem.loss(xy[-1]) < f0, (panel.name, name)
    saddle = panels["saddle"]
    for name, xy in saddle.paths.items():
        assert abs(xy[-1, 1]) > abs(xy[0, 1]), name      # away from the saddle along y


def test_the_methods_drawn():
    """Every method of fastopt.convergence but L-BFGS (compared on logistic regression only),
    plus Rprop, NAdam and RAdam, which only viz draws."""
    assert set(PATHS) == (set(COMPARED) - {"lbfgs"}) | {"rprop", "nadam", "radam"}
    for name in ("lbfgs", "bfgs"):
        with pytest.raises(ValueError, match="unknown function or optimizer"):
            viz.trajectories(["beale"], [name], steps=2)
    assert METHODS["rprop"].batch_size is None                 # exact gradients: sign logic
    assert METHODS["nadam"].batch_size == METHODS["radam"].batch_size == 32


def test_new_methods_follow_their_rules():
    """Rprop's path on the quadratic, recomputed: step sizes grow by 1.2 while the gradient
    keeps its sign (w_{k+1} = w_k - step_k sign(g_k)); with the full budget Rprop reaches
    Beale's minimum and RAdam (its lr set so its unrectified first steps stay in the plot)
    the quadratic's."""
    panel = viz.trajectories(["quadratic"], ["rprop"], steps=3)[0]
    f = panel.problem
    w, step = np.array(panel.start, np.float64), np.full(2, 1e-2)
    g_prev = np.zeros(2)
    expected = [w.copy()]
    for _ in range(3):
        g = f.grad(w)
        step = np.where(g * g_prev > 0, np.minimum(step * 1.2, 50), step)
        w = w - step * np.sign(g)
        g_prev = g
        expected.append(w.copy())
    np.testing.assert_allclose(panel.paths["rprop"], np.array(expected), rtol=1e-12)
    panels = {p.name: p for p in viz.trajectories(["beale", "quadratic"], ["rprop", "radam"])}
    np.testing.assert_allclose(panels["beale"].paths["rprop"][-1], [3, 0.5], atol=1e-4)
    assert panels["quadratic"].problem.loss(panels["quadratic"].paths["radam"][-1]) < 0.1


def test_recorded_paths_are_the_optimizer_iterates():
    """Gradient descent's path is w_{k+1} = w_k - lr grad f(w_k), recomputed here."""
    panel = viz.trajectories(["beale"], ["gd"], steps=15)[0]
    lr = viz.SETTINGS["beale"]["gd"]["lr"]
    f = Beale()
    w = np.array(f.start, dtype=np.float64)
    expected = [w.copy()]
    for _ in range(15):
        w = w - lr * f.grad(w)
        expected.append(w.copy())
    np.testing.assert_allclose(panel.paths["gd"], np.array(expected), rtol=1e-12)


def test_noisy_sum_averages_to_the_function():
    f = Rosenbrock()
    noisy = viz.NoisySum(f, sigma=3.0, n=8, seed=5)
    rng = np.random.default_rng(0)
    for _ in range(5):
        w = rng.uniform(-2, 2, 2)
        losses = [noisy.loss(w, np.array([i])) for i in range(8)]
        grads = [noisy.grad(w, np.array([i])) for i in range(8)]
        assert np.mean(losses) == pytest.approx(f.loss(w), rel=1e-12, abs=1e-12)
        np.testing.assert_allclose(np.mean(grads, axis=0), f.grad(w), rtol=1e-12, atol=1e-10)
        assert np.std(grads, axis=0).min() > 0.1           # the samples do differ
        h = 1e-6                                            # gradient of the i-th sample
        i = np.array([3])
        fd = [(noisy.loss(w + h * e, i) - noisy.loss(w - h * e, i)) / (2 * h) for e in np.eye(2)]
        np.testing.assert_allclose(noisy.grad(w, i), fd, rtol=1e-6, atol=1e-4)


def test_without_matplotlib_names_the_extra(monkeypatch, tmp_path, capsys):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"fastopt\[plot\]"):
        viz.run(str(tmp_path / "v"), quick=True, stream=False)
    assert cli.main(["viz", "--quick", "--out", str(tmp_path / "v")]) == 1
    assert "fastopt[plot]" in capsys.readouterr().err
    assert not (tmp_path / "v").exists()


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="unknown function or optimizer"):
        viz.trajectories(["himmelblau"])
    with pytest.raises(ValueError, match="unknown function or optimizer"):
        viz.trajectories(optimizers=["bfgs"])
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        viz.trajectories(steps=0)


# ---------------------------------------------------------------------------- the figures
def _panel_pixels(fig, image, ax):
    """The RGB pixels of axes `ax` in `image` (the figure saved at its own dpi or scaled)."""
    scale = image.shape[1] / (fig.get_figwidth() * fig.dpi)
    x0, y0, x1, y1 = (np.array(ax.get_window_extent().extents) * scale).round().astype(int)
    height = image.shape[0]
    return image[height - y1:height - y0, x0:x1, :3].astype(int)


def _gold(px):
    """Pixels of the minimum's star (gold, 255/215/0)."""
    r, g, b = px[..., 0], px[..., 1], px[..., 2]
    return (r > 230) & (g > 185) & (g < 235) & (b < 70)


def _changed(a, b):
    return np.abs(a - b).sum(axis=-1) > 60


def test_styles_tell_every_method_apart():
    from matplotlib.colors import to_rgb

    from fastopt import plot
    looks = {name: plot.style(name) for name in METHODS}
    colours = [np.array(to_rgb(c)) * 255 for c, _, _ in looks.values()]
    assert len({tuple(c) for c in colours}) == len(METHODS) >= 12
    for i in range(len(colours)):
        for j in range(i):
            assert np.linalg.norm(colours[i] - colours[j]) > 60, (list(METHODS)[i],
                                                                  list(METHODS)[j])
    # within a family (one line style), no two methods share a marker
    by_style = {}
    for name, (_, ls, marker) in looks.items():
        assert marker not in by_style.setdefault(ls, set()) or marker is None, name
        by_style[ls].add(marker)
    assert len(by_style) >= 3


def test_figure_legend_names_the_marks(quick):
    from fastopt import plot
    panels, _, _ = quick
    fig = plot.trajectory_figure(panels)
    texts = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    for label in ("start", "minimum", "last iterate", "full batch", "gradient descent"):
        assert label in texts
    assert len([t for t in texts if t.strip()]) == len(PATHS) + 3 + 4   # + marks, headings


def test_gradient_descent_shows_in_every_panel(quick):
    """Gradient descent runs under the stochastic methods' paths (same step) and others: at
    least an eighth of what its path covers when drawn alone still shows with all drawn."""
    from matplotlib.colors import to_hex

    from fastopt import plot
    panels, _, _ = quick
    fig = plot.trajectory_figure(panels)
    gd = to_hex(plot.style("gd")[0])
    lines = [ln for ax in fig.axes for ln in ax.get_lines() if len(ln.get_xdata()) > 1
             or to_hex(ln.get_color()) == gd]

    def render(show):
        for ln in lines:
            ln.set_visible(show(to_hex(ln.get_color()) == gd))
        fig.canvas.draw()
        return np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int).copy()

    everything, without_gd = render(lambda is_gd: True), render(lambda is_gd: not is_gd)
    gd_alone, nothing = render(lambda is_gd: is_gd), render(lambda is_gd: False)
    for ax, panel in zip(fig.axes, panels):
        def px(image):
            return _panel_pixels(fig, image, ax)
        shown = _changed(px(everything), px(without_gd)).sum()
        alone = _changed(px(gd_alone), px(nothing)).sum()
        assert alone > 50 and shown > alone / 8, (panel.name, shown, alone)


def test_the_gif_has_the_png_marks(quick, tmp_path):
    """The minimum's star is as filled (gold) in the GIF's last frame as in the PNG."""
    from PIL import Image

    from fastopt import plot
    panels, _, _ = quick
    png, gif = tmp_path / "t.png", tmp_path / "t.gif"
    fig = plot.trajectory_figure(panels, str(png))
    plot.trajectory_animation(panels, str(gif), frames=3, hold=0)
    with Image.open(png) as im:
        png_px = np.asarray(im.convert("RGB"))
    with Image.open(gif) as im:
        im.seek(im.n_frames - 1)
        gif_px = np.asarray(im.convert("RGB"))
    area = (gif_px.shape[1] / png_px.shape[1]) ** 2
    for ax, panel in zip(fig.axes, panels):
        if panel.minimizer is None:
            continue
        in_png = _gold(_panel_pixels(fig, png_px, ax)).sum()
        in_gif = _gold(_panel_pixels(fig, gif_px, ax)).sum()
        assert in_png > 40, panel.name
        assert 0.6 < in_gif / (in_png * area) < 1.6, (panel.name, in_png, in_gif)
