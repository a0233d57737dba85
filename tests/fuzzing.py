"""Building blocks of the fuzz suite (tests/test_fuzz.py).

An example lays its arrays out in byte arenas with guard gaps between them, so a write outside
an array's bounds shows up as a changed guard byte. Arrays come in every form the API must
accept or reject: the accepted one (float32/float64, native byte order, C-contiguous, aligned,
writable) and rejected ones (other dtypes, strided, Fortran-ordered, reversed, unaligned,
read-only, byte-swapped, not an array at all), placed fresh, right next to, inside or over
another array, or as the very same object. Values span many orders of magnitude (a magnitude
per array from 1e-6 to 10, times 1e-2..1 per element, random signs, some exact zeros), or, in
one example in four, sit on a dyadic grid (k/8, exact in both float types); either with optional
special values (NaN, +-Inf, huge, subnormal, -0.0) at drawn positions.

Drivers register with `entry_point` (tests/fuzz_*.py); `run` gives one a fresh Example. The
contract that decides whether a call must succeed (`layout_ok`, `overlapping`, the
invalid-hyperparameter table) is written here from DESIGN.md, independently of the bindings;
results of accepted calls are compared with tests/reference.py.
"""
import contextlib
import math

import numpy as np
from hypothesis import strategies as st

import fastopt as fo
from fastopt import _validate
from fastopt._specs import SPECS
from fastopt import _kernels

FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
TOL = {np.dtype(np.float32): 3e-5, np.dtype(np.float64): 1e-11}
HUGE = 1e6            # |value| above this (or a special) is excluded from value comparisons

# Rejected forms of an array that should be a float32/float64 array. "swapped" keeps the
# float type in the other byte order; "wrongdtype" is the other float type.
BAD_FORMS = ("float16", "int32", "int64", "bool", "complex64", "complex128", "object",
             "longdouble", "strided", "fortran", "reversed", "unaligned", "readonly", "swapped",
             "list", "scalar", "none", "wrongdtype", "wrongshape")
SPECIALS = ("nan", "inf", "-inf", "huge", "-huge", "tiny", "-tiny", "-0")

# Hyperparameter values that no optimizer accepts, by the kind of hyperparameter.
_NAN, _INF = float("nan"), float("inf")
INVALID = {
    "lr": [-0.1, _NAN, _INF, "0.1", None, True],
    "nonneg": [-1.0, -1e-300, _NAN, _INF, "x", None, True],
    "number": [_NAN, _INF, -_INF, "x", None],
    "unit": [1.0, 1.5, -0.1, _NAN, "x", None],
    "unit_closed": [1.5, -0.1, _NAN, "x", None],
    "open_unit": [0.0, 1.0, -0.1, _NAN, "x", None],
    "greater_than_one": [1.0, 0.5, _NAN, _INF, "x", None],
    "betas": [(1.0, 0.9), (0.9, 1.0), (-0.1, 0.9), (_NAN, 0.9), 0.9, (0.9,), "ab", None],
    "etas": [(1.0, 1.2), (0.0, 1.2), (0.5, 1.0), (0.5, _INF), 0.5, (0.5,), "ab", None],
    "step_sizes": [(-1.0, 50.0), (1e-6, _INF), (_NAN, 1.0), 1.0, (1e-6,), "ab", None],
    "bool": ["yes", 1, None, 0.0],
    "optional_bool": ["yes", 1, 0.0],
    "count": [-1, 1.5, _NAN, "x", None],
}
# the kind of each validation rule (fastopt._validate) of the table's hyperparameters
_KIND_OF_RULE = {
    _validate.learning_rate: "lr", _validate.nonneg: "nonneg", _validate.real: "number",
    _validate.unit_open: "unit", _validate.unit_closed: "unit_closed",
    _validate.open_unit: "open_unit", _validate.greater_than_one: "greater_than_one",
    _validate.betas: "betas", _validate.etas: "etas", _validate.step_sizes: "step_sizes",
    _validate.boolean: "bool",
    _validate.integer: "count", _validate.optional_boolean: "optional_bool",
}
# optimizer -> hyperparameter -> its kind (per optimizer: one name can have different rules,
# SGD's momentum >= 0 and Schedule-Free SGD's in (0, 1))
KIND = {name: {key: _KIND_OF_RULE[rule] for key, rule in spec.rules.items()}
        for name, spec in SPECS.items()}


# ------------------------------------------------------------------------------ the contract
def layout_ok(a):
    """An array the kernels accept: float32/float64, native order, C-contiguous, aligned."""
    return (isinstance(a, np.ndarray) and a.dtype in FLOATS and a.dtype.isnative
            and a.flags.c_contiguous and a.flags.aligned)


def param_ok(a):
    """A parameter or state buffer: also writable (it is updated in place)."""
    return layout_ok(a) and a.flags.writeable


def like(a, p):
    """`a` has the dtype and shape of parameter `p`."""
    return isinstance(a, np.ndarray) and a.dtype == p.dtype and a.shape == p.shape


def span(a):
    start = a.__array_interface__["data"][0]
    return start, start + a.nbytes


def overlapping(a, b):
    """Whether two (contiguous) arrays share at least one byte."""
    if a.nbytes == 0 or b.nbytes == 0:
        return False
    (s0, e0), (s1, e1) = span(a), span(b)
    return s0 < e1 and s1 < e0


def disjoint(arrays):
    return not any(overlapping(a, b) for i, a in enumerate(arrays) for b in arrays[:i])


def step_ok(step):
    return (not isinstance(step, bool) and isinstance(step, (int, float))
            and math.isfinite(step) and step >= 1 and step == int(step))


# ------------------------------------------------------------------------------ the arenas
class _Chunk:
    SIZE = 1 << 16
    GUARD = 0x5A

    def __init__(self, size):
        raw = np.empty(size + 128, np.uint8)
        lead = (-raw.ctypes.data) % 64
        self.buf = raw[lead:lead + size]
        self.buf[:] = self.GUARD
        self.base = self.buf.ctypes.data
        self.top = 16


class Example:
    """One fuzz example: hypothesis draws, a seeded RNG for bulk values, and the arenas."""

    def __init__(self, data):
        self.data = data
        self.rng = np.random.default_rng(self.draw(st.integers(0, 2**32 - 1), "seed"))
        self.bad_pct = self.draw(st.sampled_from([0, 0, 3, 20]), "bad %")
        self.alias_pct = self.draw(st.sampled_from([0, 5, 25]), "alias %")
        self.special = self.draw(st.booleans(), "specials")
        self.grid = self.draw(st.sampled_from([False, False, False, True]), "grid values")
        self.chunks = []

    # -------------------------------------------------------------------------- draws
    def draw(self, strategy, label=None):
        return self.data.draw(strategy, label=label)

    def chance(self, pct, label=None):
        return pct > 0 and self.draw(st.integers(0, 99), label) < pct

    def shape(self):
        if self.draw(st.booleans(), "1-d"):
            return (self.draw(st.integers(0, 300), "length"),)
        return tuple(self.draw(st.lists(st.integers(0, 4), max_size=3), "shape"))

    def dtype(self):
        return np.dtype(self.draw(st.sampled_from([np.float32, np.float64]), "dtype"))

    def pick(self, label, good, bad, pct=8):
        """A value drawn from `good`, or, with chance `pct` percent, from `bad`."""
        if self.chance(pct, f"bad {label}"):
            return self.draw(st.sampled_from(bad), label)
        return self.draw(good if isinstance(good, st.SearchStrategy) else st.sampled_from(good), label)

    def invalid_value(self, name, key):
        """A value of optimizer `name`'s hyperparameter `key` that its rule refuses."""
        return self.draw(st.sampled_from(INVALID[KIND[name][key]]), f"invalid {key}")

    # -------------------------------------------------------------------------- placement
    def _place(self, nbytes, gap):
        """(chunk, offset) of `nbytes` fresh bytes, 16-aligned, `gap` bytes after the last."""
        need = nbytes + 32
        chunk = self.chunks[-1] if self.chunks else None
        if chunk is None or chunk.top + gap + need + 16 > chunk.buf.size:
            chunk = _Chunk(max(_Chunk.SIZE, 2 * need))
            self.chunks.append(chunk)
        off = chunk.top + gap
        off += (-off) % 16
        chunk.top = off + nbytes
        return chunk, off

    def _locate(self, a):
        """(chunk, offset) of an arena array, or None."""
        if not isinstance(a, np.ndarray) or a.dtype.hasobject:
            return None
        ptr = a.__array_interface__["data"][0]
        for chunk in self.chunks:
            if chunk.base <= ptr < chunk.base + chunk.buf.size:
                return chunk, ptr - chunk.base
        return None

    def array(self, shape, dtype, role, targets=(), nonneg=False, zeros=False):
        """An argument meant to be a `dtype` array of `shape` (maybe a rejected form).

        role: "param", "grad" or "state" (which rejected forms apply). `targets`: arrays this
        one may alias (the same object, or a view that overlaps one, or sits right behind it).
        """
        form = "good"
        if self.chance(self.bad_pct, f"bad {role}"):
            forms = [f for f in BAD_FORMS if not (role == "param" and f in ("wrongdtype", "wrongshape"))]
            form = self.draw(st.sampled_from(forms), f"{role} form")
        if form == "wrongdtype":
            dtype, form = FLOATS[1] if dtype == FLOATS[0] else FLOATS[0], "good"
        if form == "wrongshape":
            n = int(np.prod(shape))
            shape = (n + 1,) if len(shape) != 1 or n == 0 else (n, 1)
            form = "good"
        targets = [t for t in targets if isinstance(t, np.ndarray)]
        if targets and self.chance(self.alias_pct, f"alias {role}"):
            target = self.draw(st.sampled_from(targets), "target")
            if self.draw(st.booleans(), "same object"):
                return target
            view = self._over(target, shape, dtype)
            if view is not None:
                return view
        return self._make(shape, dtype, form, nonneg, zeros)

    def _over(self, target, shape, dtype):
        """A C-contiguous view of `shape` that starts inside `target`.

        In an arena it may run on past the target's end; elsewhere (an optimizer's own state)
        it must fit inside. The view is not filled: it shows the bytes already there.
        """
        n = int(np.prod(shape))
        item = dtype.itemsize
        if target.nbytes < item or target.dtype.hasobject or dtype.hasobject:
            return None
        at = item * self.draw(st.integers(0, target.nbytes // item - 1), "at")
        loc = self._locate(target)
        if loc is None:
            if not target.flags.c_contiguous or at + n * item > target.nbytes:
                return None
            return target.reshape(-1).view(np.uint8)[at:at + n * item].view(dtype).reshape(shape)
        chunk, off = loc
        start = off + at
        if start + n * item + 16 > chunk.buf.size:
            return None
        chunk.top = max(chunk.top, start + n * item)
        return chunk.buf[start:start + n * item].view(dtype).reshape(shape)

    def _make(self, shape, dtype, form, nonneg, zeros):
        n = int(np.prod(shape))
        if dtype.hasobject:
            form = "object"
        if form in ("list", "scalar", "none", "object"):
            values = self._values(n, nonneg).reshape(shape)
            if form == "list":
                return values.tolist()
            if form == "scalar":
                return float(values.flat[0]) if n else 1.0
            if form == "none":
                return None
            return values.astype(object)
        if form in ("float16", "int32", "int64", "bool", "complex64", "complex128", "longdouble"):
            dtype = np.dtype(form)
        item = dtype.itemsize
        factor = 2 if form == "strided" else 1
        gap = self.draw(st.sampled_from([0, 8, 16, 40]), "gap")
        chunk, off = self._place(n * item * factor + 1, gap)
        start = off + (1 if form == "unaligned" and item > 1 else 0)
        flat = chunk.buf[start:start + n * item * factor].view(dtype)
        if form == "strided":
            a = flat[::2].reshape(shape)
        elif form == "fortran":
            a = flat.reshape(shape[::-1]).T
        elif form == "reversed":
            a = flat[::-1].reshape(shape)
        else:
            a = flat.reshape(shape)
        self._fill(a, nonneg, zeros)
        if form == "swapped":
            a = a.view(a.dtype.newbyteorder())
        if form == "readonly":
            a.flags.writeable = False
        return a

    # -------------------------------------------------------------------------- values
    def _values(self, n, nonneg):
        if self.grid:
            v = self.rng.integers(-80, 81, n) / 8.0
        else:
            v = spread_values(self.rng, n)
        return np.abs(v) if nonneg else v

    def _fill(self, a, nonneg, zeros):
        if a.size == 0:
            return
        v = np.zeros(a.size) if zeros else self._values(a.size, nonneg)
        if a.dtype.kind in "iu":
            a[...] = (v * 8).astype(np.int64).reshape(a.shape)
        elif a.dtype.kind == "b":
            a[...] = (v > 0).reshape(a.shape)
        else:
            a[...] = v.reshape(a.shape)
            if self.special and a.dtype.kind == "f" and not zeros and not nonneg:
                for _ in range(self.draw(st.integers(0, 2), "n specials")):
                    i = self.draw(st.integers(0, a.size - 1), "special at")
                    a.flat[i] = special_value(self.draw(st.sampled_from(SPECIALS), "special"),
                                              a.dtype)

    # -------------------------------------------------------------------------- checks
    def snapshot(self):
        return [c.buf.copy() for c in self.chunks]

    def changed_bytes(self, before, allowed=()):
        """Arena bytes that differ from `before`, outside the arrays in `allowed`."""
        bad = []
        for chunk, old in zip(self.chunks, before):
            diff = chunk.buf != old
            for a in allowed:
                loc = self._locate(a)
                if loc is not None and loc[0] is chunk:
                    diff[loc[1]:loc[1] + a.nbytes] = False
            if diff.any():
                bad.append(int(np.flatnonzero(diff)[0]))
        return bad


def spread_values(rng, n, low=-6, high=1):
    """n values with random signs: a magnitude 10**U(low, high) for the array times 10**U(-2, 0)
    per element, and about 5% exact zeros."""
    v = 10.0 ** rng.uniform(low, high) * 10.0 ** rng.uniform(-2, 0, n) * rng.choice([-1.0, 1.0], n)
    return np.where(rng.random(n) < 0.05, 0.0, v)


def special_value(kind, dtype):
    fi = np.finfo(dtype)
    return {"nan": np.nan, "inf": np.inf, "-inf": -np.inf, "huge": fi.max / 2,
            "-huge": -fi.max / 2, "tiny": fi.smallest_subnormal * 3,
            "-tiny": -fi.smallest_subnormal * 3, "-0": -0.0}[kind]


# ------------------------------------------------------------------------------ comparison
def _subnormal(a):
    """Where `a` holds a number that is subnormal in the type it is computed in (flat): its
    own for float32/float64, float32 for the 16-bit types (updated through float32)."""
    a = np.asarray(a)
    if a.dtype.kind != "f" and not (a.dtype.kind == "V" and a.dtype.itemsize == 2):
        return np.zeros(a.size, bool)
    flat = np.abs(np.asarray(a, np.float64).reshape(-1))
    tiny = float(np.finfo(a.dtype if a.dtype.itemsize >= 4 and a.dtype.kind == "f" else np.float32).tiny)
    return (flat > 0) & (flat < tiny)


class Masks:
    """Per-element record of where a parameter met values that leave the compared range:
    NaN/Inf (`nonfinite`), and huge or subnormal values (`huge`: float32 and float64 overflow
    and underflow at different places)."""

    def __init__(self, p):
        flat = np.asarray(p, np.float64).reshape(-1)
        self.nonfinite = ~np.isfinite(flat)
        self.huge = (np.isfinite(flat) & (np.abs(flat) > HUGE)) | _subnormal(p)

    def add(self, a):
        flat = np.asarray(a, np.float64).reshape(-1)
        self.nonfinite |= ~np.isfinite(flat)
        self.huge |= (np.isfinite(flat) & (np.abs(flat) > HUGE)) | _subnormal(a)

    def add_decay(self, g, p, weight_decay, maximize=False):
        """Mark elements whose effective gradient (+-g + wd p) cancels to under 1% of its terms:
        the code under test forms it in its own precision, so there the result is
        ill-conditioned (a relative error of the terms grows 100x and more) and is compared
        for finiteness only, like a huge value."""
        if not weight_decay:
            return
        g = np.asarray(g, np.float64).reshape(-1)
        wp = weight_decay * np.asarray(p, np.float64).reshape(-1)
        with np.errstate(all="ignore"):
            ill = np.abs((-g if maximize else g) + wp) * 100 < np.abs(g) + np.abs(wp)
        self.huge |= ill & np.isfinite(g) & np.isfinite(wp)

    def add_cancel(self, a, b):
        """Mark elements where a + b cancels to under 1e-4 of |a| + |b|, for a result that
        takes the sign of that sum (Lion's update): the code under test forms it in its own
        precision, so near a tie the sign follows its rounding; compared for finiteness only."""
        a = np.asarray(a, np.float64).reshape(-1)
        b = np.asarray(b, np.float64).reshape(-1)
        with np.errstate(all="ignore"):
            ill = np.abs(a + b) * 1e4 < np.abs(a) + np.abs(b)
        self.huge |= ill & np.isfinite(a) & np.isfinite(b)


def assert_close(actual, expected, masks, what, scale_from=None):
    """`actual` (the kernel's) against `expected` (the float64 reference).

    Elements that only met moderate values agree within TOL[dtype] relative to a scale with no
    floor: the largest such reference value, or, where larger, the largest such value of
    `scale_from`, the magnitudes of the terms the result was computed from (for an optimizer
    step, the values before the step; for a sum that may cancel, the sum of |terms|). So an
    array of small values is held to its own scale, and a result that cancels keeps the scale
    of its terms. Elements that met a NaN/Inf agree on being finite or not; elements that met
    a huge or subnormal value are not compared (float32 and float64 overflow and underflow at
    different places).
    """
    a = np.asarray(actual, np.float64).reshape(-1)
    e = np.asarray(expected, np.float64).reshape(-1)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != {e.shape}"
    plain = ~(masks.nonfinite | masks.huge)
    if plain.any():
        scale = float(np.max(np.abs(e[plain])))
        if scale_from is not None:
            terms = np.abs(np.asarray(scale_from, np.float64).reshape(-1)[plain])
            scale = max(scale, float(np.max(terms, initial=0.0, where=np.isfinite(terms))))
        scale = max(scale, float(np.finfo(np.asarray(actual).dtype).tiny))
        err = float(np.max(np.abs(a[plain] - e[plain]))) / scale
        assert err <= TOL[np.asarray(actual).dtype], (
            f"{what}: max relative error {err:.3g} at element "
            f"{int(np.nanargmax(np.abs(a[plain] - e[plain])))}: {a[plain]} vs {e[plain]}")
    odd = masks.nonfinite & ~masks.huge
    if odd.any():
        assert (np.isfinite(a[odd]) == np.isfinite(e[odd])).all(), (
            f"{what}: finiteness differs from the reference: {a[odd]} vs {e[odd]}")


def same_state_dict(a, b):
    """Two state_dicts hold the same groups and bit-identical buffers."""
    if a["param_groups"] != b["param_groups"] or set(a["state"]) != set(b["state"]):
        return False
    for i, entry in a["state"].items():
        other = b["state"][i]
        if set(entry) != set(other):
            return False
        for k, v in entry.items():
            w = other[k]
            if isinstance(v, np.ndarray):
                if not (isinstance(w, np.ndarray) and v.dtype == w.dtype and v.shape == w.shape
                        and v.tobytes() == w.tobytes()):
                    return False
            elif v != w:
                return False
    return True


# ------------------------------------------------------------------------------ the registry
ENTRY_POINTS = {}    # "entry:name" -> (driver, name)
COUNTS = {}          # examples run per key (reported by scripts/fuzz.sh)
ERRORS = (TypeError, ValueError)


def checked_step(ex, ok, step):
    """Run step(): when it raises one of ERRORS the arguments must have been invalid (`ok`
    False) and no byte of the inputs may have changed; when it returns they must have been
    valid. Returns whether the step ran."""
    snap = ex.snapshot()
    try:
        step()
    except ERRORS as err:
        assert not ok, f"step rejected valid gradients: {err!r}"
        assert not ex.changed_bytes(snap)
        return False
    assert ok, "step accepted invalid gradients"
    return True


def entry_point(*names, entry=None):
    """Register `fuzz_x(ex, name)` as the driver of entry point x (or `entry`), once per name
    in `names`; its keys are "x:name"."""
    def register(fn):
        for name in names:
            ENTRY_POINTS[f"{entry or fn.__name__[len('fuzz_'):]}:{name}"] = (fn, name)
        return fn
    return register


@contextlib.contextmanager
def kernel_config(ex):
    """Run with 1 or 2 threads and a parallel threshold low enough to split small arrays."""
    threads = ex.draw(st.sampled_from([1, 2]), "threads")
    threshold = ex.draw(st.sampled_from([32768, 16, 1]), "parallel threshold")
    old = _kernels.get_parallel_threshold()
    fo.set_num_threads(threads)
    _kernels.set_parallel_threshold(threshold)
    try:
        yield
    finally:
        fo.set_num_threads(0)
        _kernels.set_parallel_threshold(old)


def run(key, data):
    """One example of the driver registered under `key`."""
    fn, name = ENTRY_POINTS[key]
    ex = Example(data)
    with kernel_config(ex):
        fn(ex, name)
    COUNTS[key] = COUNTS.get(key, 0) + 1
