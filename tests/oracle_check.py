"""Comparing a run of fastopt with the float64 oracle (tests/reference.py), element by element.

`OracleRun` steps a `ReferenceOptimizer` beside the code under test and then checks every
parameter and state buffer element against it. An element passes when

    |actual - oracle| <= TOL[dtype] * envelope + sensitivity

- envelope: the element's starting magnitude plus the magnitudes of all its changes along the
  oracle's trajectory (|x_0| + sum_t |x_t - x_(t-1)|). It bounds the size of every term that
  rounding met in this element, so it is the right yardstick even where the final value
  cancelled to almost nothing, and it is never floored at 1: a state of 1e-9 is held to 1e-9
  times the tolerance.
- sensitivity: how far the oracle itself moves when a step's effective gradient
  (g + weight_decay * p, which the code under test must form in its own precision, from a
  parameter that already carries its own allowed error) is moved up or down by that much: the
  oracle is rerun from the snapshot before each step with that step's gradient perturbed both
  ways, and the larger changes are summed over the steps. It is zero to first order where the
  result does not depend sensitively on its inputs, and large only where it does (a gradient
  that nearly cancels its weight-decay term), so eps-sized and constant-sized bugs stand out
  everywhere else. `check` computes it only for the elements that exceed the envelope part,
  on a run of the oracle over just those elements (the rules are elementwise).

TOL is a small multiple of the unit roundoff, with room for the few steps and the few
operations per step of a rule; tests/test_against_reference.py checks that it is not loose
(the worst error seen stays within a modest factor of it).
"""
import numpy as np

from fastopt._specs import SPECS
from reference import DEFAULTS, GROUP_KEYS, ReferenceOptimizer

UNIT = {np.dtype(np.float32): 2.0 ** -24, np.dtype(np.float64): 2.0 ** -53}
# error allowed per unit of envelope: 32 units of roundoff (float32: 1.9e-6, float64: 3.6e-15)
TOL = {dtype: 32 * u for dtype, u in UNIT.items()}
# size of the gradient perturbation, in units of roundoff of |g| + weight_decay |p|
PERTURB = 4


def _coupled_decay(name, group):
    if name == "adamw" or group.get("decoupled_weight_decay", False):
        return 0.0
    return group.get("weight_decay", 0.0)


class OracleRun:
    """The oracle's trajectory of one optimizer, and the check of a run against it.

    `groups`: torch-style groups (dicts with "params" and hyperparameters) holding the initial
    parameters (any float dtype; they are copied). `dtype` is the precision of the code under
    test (float32 or float64), which sets the tolerance and the perturbation.
    """

    def __init__(self, name, groups, dtype, states=None, steps=None):
        self.name = name
        self.dtype = np.dtype(dtype)
        self.groups = [dict(g, params=[np.array(p, np.float64) for p in g["params"]])
                       for g in groups]
        # optional starting point: state dicts per param (in parameter order) and step counts
        # per group, as left by earlier steps
        self.start = ([g["params"] for g in self.groups],
                      [{k: np.array(v, np.float64) for k, v in s.items()} for s in states]
                      if states else [{} for g in self.groups for _ in g["params"]],
                      list(steps) if steps is not None else [0] * len(self.groups))
        self.grads = []

    def step(self, grads):
        """One step of the oracle on (float64 copies of) `grads`, in parameter order."""
        self.grads.append([np.array(g, np.float64) for g in grads])

    # ------------------------------------------------------------------ the trajectories
    def _run(self, point, grads):
        """Snapshots (params per group, flat state dicts, step counts) after each of `grads`,
        starting from the snapshot `point`."""
        params, states, steps = point[:3]
        groups = []
        for g, ps in zip(self.groups, params):
            groups.append(dict(g, params=[p.copy() for p in ps]))
        ref = ReferenceOptimizer(self.name, groups)
        k = 0
        for group in ref.states:
            for j in range(len(group)):
                group[j] = {n: v.copy() for n, v in states[k].items()}
                k += 1
        ref.steps = list(steps)
        for g, scalars in zip(ref.groups, point[3] if len(point) > 3 else ()):
            g.update(scalars)                   # group-level state (Schedule-Free's k, ...)
        out = []
        for step in grads:
            ref.step(step)
            out.append(([list(g["params"]) for g in ref.groups],
                        [dict(s) for g in ref.states for s in g], list(ref.steps),
                        [{key: g[key] for key in GROUP_KEYS if key in g} for g in ref.groups]))
        return out

    def _perturbation(self, traj, t):
        """What the code under test may get wrong in step t's effective gradient g + wd p:
        PERTURB units of roundoff of |g| + wd |p|, plus wd times the error its parameter is
        allowed to have at that point (TOL * envelope)."""
        u = PERTURB * UNIT[self.dtype]
        tol = TOL[self.dtype]
        out, k = [], 0
        for gi, group in enumerate(self.groups):
            wd = _coupled_decay(self.name, {**DEFAULTS.get(self.name, {}), **group})
            for j in range(len(group["params"])):
                g, p = self.grads[t][k], traj[t][0][gi][j]
                delta = u * np.abs(g)
                if wd:
                    env = _envelope([x[0][gi][j] for x in traj[:t + 1]])
                    delta = delta + wd * (u * np.abs(p) + tol * env)
                out.append(delta)
                k += 1
        return out

    def _base(self):
        """The trajectory, the final params and flat state dicts, and the envelope part of
        the allowances."""
        traj = [self.start] + self._run(self.start, self.grads)
        flat = [[p for ps in x[0] for p in ps] for x in traj]
        final_p, final_s = flat[-1], traj[-1][1]
        tol = TOL[self.dtype]
        allow_p = [tol * _envelope([x[i] for x in flat]) for i in range(len(final_p))]
        # a buffer that starts as a copy of its parameter (Schedule-Free's z) was the
        # parameter before it existed
        copies = SPECS[self.name].copies if self.name in SPECS else ()
        allow_s = [{key: tol * _envelope([x[1][i].get(key, f[i] if key in copies else None)
                                          for x, f in zip(traj, flat)])
                    for key in final_s[i]} for i in range(len(final_p))]
        return traj, final_p, final_s, allow_p, allow_s

    def _sensitivity(self, traj, final_p, final_s):
        """Per element of the final params and states: the sum over steps t of the larger
        change when step t's gradients move up or down by the perturbation (both directions:
        a result such as g^2 may not move for one of them). Reruns the oracle from the
        snapshot before step t."""
        sens_p = [np.zeros_like(p) for p in final_p]
        sens_s = [{key: np.zeros_like(v) for key, v in s.items()} for s in final_s]
        for t in range(len(self.grads)):
            delta = self._perturbation(traj, t)
            moved = []
            for sign in (1.0, -1.0):
                step = [g + sign * d for g, d in zip(self.grads[t], delta)]
                moved.append(self._run(traj[t], [step] + self.grads[t + 1:])[-1])
            for i in range(len(final_p)):
                sens_p[i] = sens_p[i] + np.maximum(
                    *(np.abs([p for ps in m[0] for p in ps][i] - final_p[i]) for m in moved))
                for key in final_s[i]:
                    sens_s[i][key] = sens_s[i][key] + np.maximum(
                        *(np.abs(m[1][i][key] - final_s[i][key]) for m in moved))
        return sens_p, sens_s

    def expected(self):
        """(params, states, allowances): the oracle's final params and flattened state dicts
        after the steps, and the allowed error per element of each (same structure)."""
        traj, final_p, final_s, allow_p, allow_s = self._base()
        sens_p, sens_s = self._sensitivity(traj, final_p, final_s)
        allow_p = [a + b for a, b in zip(allow_p, sens_p)]
        allow_s = [{key: a[key] + b[key] for key in a} for a, b in zip(allow_s, sens_s)]
        return final_p, final_s, allow_p, allow_s

    def _subset(self, idx):
        """The same run restricted to elements idx[i] (flat indices) of each parameter: the
        rules are elementwise, so its results are those elements of this run's."""
        def cut(arrays, offset=0):
            return [np.asarray(a).reshape(-1)[idx[offset + j]] for j, a in enumerate(arrays)]

        sub = OracleRun.__new__(OracleRun)
        sub.name, sub.dtype = self.name, self.dtype
        groups, start_params, k = [], [], 0
        for g, ps in zip(self.groups, self.start[0]):
            groups.append(dict(g, params=cut(g["params"], k)))
            start_params.append(cut(ps, k))
            k += len(ps)
        sub.groups = groups
        sub.start = (start_params,
                     [{n: np.asarray(v) if np.ndim(v) == 0 else np.asarray(v).reshape(-1)[idx[i]]
                       for n, v in st.items()}     # 0-d: a per-parameter scalar (NAdam's)
                      for i, st in enumerate(self.start[1])], list(self.start[2]))
        sub.grads = [cut(step) for step in self.grads]
        return sub

    # -------------------------------------------------------------------------- checking
    def check(self, params, states, what="", param_slack=None):
        """Assert that `params` (list of arrays) and `states` (list of dicts name -> array,
        one per parameter, e.g. [opt.state.get(i, {}) ...]) follow the oracle; returns the
        worst error as a fraction of its allowance (<= 1 when passing).

        `param_slack(expected)`, if given, is added to the params' allowance (e.g. the
        rounding of a 16-bit result). The sensitivity part of the allowance is computed only
        for the elements that exceed the rest (on a run of the oracle over just those
        elements)."""
        traj, final_p, final_s, allow_p, allow_s = self._base()
        if param_slack is not None:
            allow_p = [a + param_slack(e) for a, e in zip(allow_p, final_p)]
        assert len(params) == len(final_p)
        for i, (mine, theirs) in enumerate(zip(states, final_s)):
            assert set(mine) == set(theirs), (
                f"{what} state of param {i}: buffers {sorted(mine)} != oracle's {sorted(theirs)}")
        over = []
        for i, (a, e) in enumerate(zip(params, final_p)):
            out = _exceeds(a, e, allow_p[i])
            for key, v in final_s[i].items():
                out = out | _exceeds(states[i][key], v, allow_s[i][key])
            over.append(np.flatnonzero(out))
        if any(len(ix) for ix in over):
            sub = self._subset(over)
            sub_traj, sub_p, sub_s, _, _ = sub._base()
            sens_p, sens_s = sub._sensitivity(sub_traj, sub_p, sub_s)
            for i, ix in enumerate(over):
                allow_p[i].reshape(-1)[ix] += sens_p[i]
                for key in final_s[i]:
                    if np.ndim(allow_s[i][key]) == 0:     # a per-parameter scalar
                        allow_s[i][key] = allow_s[i][key] + sens_s[i][key]
                    else:
                        allow_s[i][key].reshape(-1)[ix] += sens_s[i][key]
        worst = 0.0
        for i, (a, e, allow) in enumerate(zip(params, final_p, allow_p)):
            worst = max(worst, _compare(a, e, allow, f"{what} param {i}"))
        for i, theirs in enumerate(final_s):
            for key, e in theirs.items():
                worst = max(worst, _compare(states[i][key], e, allow_s[i][key],
                                            f"{what} state {key!r} of param {i}"))
        return worst


def _exceeds(actual, expected, allowance):
    """Flat mask of the elements whose error exceeds the allowance (shapes must agree)."""
    a = np.asarray(actual, np.float64)
    assert a.shape == expected.shape, f"shape {a.shape} != {expected.shape}"
    return (np.abs(a - expected) > allowance).reshape(-1)


def _envelope(values):
    """|x_0| + sum_t |x_t - x_(t-1)| over a trajectory (None: the buffer did not exist yet)."""
    env = np.abs(values[0]) if values[0] is not None else 0.0
    for a, b in zip(values, values[1:]):
        env = env + np.abs(b - (0.0 if a is None else a))
    return env


def _compare(actual, expected, allowance, what):
    a = np.asarray(actual, np.float64)
    assert a.shape == expected.shape, f"{what}: shape {a.shape} != {expected.shape}"
    if a.size == 0:
        return 0.0
    err = np.abs(a - expected)
    ratio = np.where(err == 0, 0.0, err / np.where(allowance > 0, allowance, np.inf))
    ratio = np.where(np.isfinite(ratio), ratio, np.where(err == 0, 0.0, np.inf))
    i = int(np.argmax(ratio))
    worst = float(ratio.flat[i])
    assert worst <= 1.0, (
        f"{what}: element {np.unravel_index(i, a.shape)} is {a.flat[i]!r}, the oracle says "
        f"{expected.flat[i]!r} (error {err.flat[i]:.3g}, allowed {allowance.flat[i]:.3g})")
    return worst
