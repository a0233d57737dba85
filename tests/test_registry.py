"""Every generated or table-driven list covers every optimizer of the table (fastopt._table).

`missing_pieces` names, for one kernel of the table and the optimizers that use it, each place
that lacks it: the hand-written rule, the generated headers (hp.h, constants.h, instances.h),
the compiled C instances (CPU float32/float64, mixed precision), the Cython wrappers, the CUDA
kernels and wrappers, the functional runner, the flags, the registry (_specs), the classes,
the oracle, the test case lists and the benchmark tables. A new table entry that is not built
yet, or a list that forgets an optimizer, fails here with the missing piece in the message.
"""
import ctypes
import importlib.util
import inspect
import os
import re
import sys

import pytest

import fastopt as fo
from fastopt import _kernels, _mixed, _runners, _specs, _steps, _table, bench, cuda
from fastopt import functional as F
from cases import CASES
from cuda_cases import CASES as CUDA_CASES
from reference import NAMES, REFERENCES

# the benchmark contenders of the checkout (bench/impls.py; not shipped in the package)
_bench_impls = bench.load_impls(os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "bench", "impls.py"))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REBUILD = "rebuild: python setup.py build_ext --inplace"


def header(name):
    for base in (os.path.join(ROOT, "csrc", "fastopt"),
                 os.path.join(os.path.dirname(fo.__file__), "csrc", "fastopt")):
        path = os.path.join(base, name)
        if os.path.exists(path):
            with open(path) as f:
                return f.read()
    raise FileNotFoundError(name)


def _exports(module):
    """Whether the extension module's shared object exports a C symbol: name -> bool."""
    lib = ctypes.CDLL(module.__file__)
    return lambda name: hasattr(lib, name)


def _params(fn):
    try:
        return list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return None


def _k_fields(rules_impl, kernel):
    """The fields of the rule's constants struct fo_<kernel>_k in rules_impl.h, or None."""
    m = re.search(r"typedef\s+struct\s*\{([^{}]*)\}\s*FO_NAME\(fo_" + kernel + r"_k\)\s*;",
                  rules_impl)
    if m is None:
        return None
    names = []
    for decl in re.findall(r"FO_T\s+([^;]+);", m.group(1)):
        names += [n.strip() for n in decl.split(",")]
    return names


def _hp_fields(hp_h, kernel):
    m = re.search(r"typedef\s+struct\s*\{\s*double\s+([^;]+);\s*int\s+flags;\s*\}\s*fo_" + kernel
                  + r"_hp\s*;", hp_h)
    return None if m is None else [n.strip() for n in m.group(1).split(",")]


def missing_pieces(kernel, optimizers):
    """One line per place that lacks `kernel` (a _table.Kernel) or one of `optimizers`."""
    name, miss = kernel.name, []
    fields = [f for f, _ in kernel.scalars]
    binding = ["plan", "grads", *fields, "flags", "name"]

    # the hand-written rule and the headers generated from the table
    rules_impl = header("rules_impl.h")
    if f"FO_NAME(fo_{name}_rule)" not in rules_impl:
        miss.append(f"{name}: rules_impl.h has no rule fo_{name}_rule")
    k_fields = _k_fields(rules_impl, name)
    if k_fields != [c for c, _ in kernel.consts]:
        miss.append(f"{name}: rules_impl.h's struct fo_{name}_k has fields {k_fields}, the "
                    f"table's consts are {[c for c, _ in kernel.consts]}")
    if _hp_fields(header("hp.h"), name) != fields:
        miss.append(f"{name}: generated hp.h has no fo_{name}_hp with fields {fields}; {REBUILD}")
    constants = header("constants.h")
    for sfx in ("f32", "f64"):
        if f"fo_{name}_constants_{sfx}(" not in constants:
            miss.append(f"{name}: generated constants.h has no fo_{name}_constants_{sfx}; "
                        f"{REBUILD}")
    instances = header("instances.h")
    for macro in (f"FO_MASK_{name}", f"FO_CASES_{name}", f"FO_COST_{name}", f"FO_PLAIN_{name}"):
        if f"#define {macro}" not in instances:
            miss.append(f"{name}: generated instances.h has no {macro}; {REBUILD}")
    if kernel.plain and f"#define FO_PLAIN_{kernel.plain}(" not in header("rules.h"):
        miss.append(f"{name}: its common case `plain` FO_PLAIN_{kernel.plain} is not defined "
                    f"in rules.h")
    lists = dict(re.findall(r"#define FO_(CPU|MIXED)_KERNELS\(X\) (.*)", instances))
    for backend, key in (("cpu", "CPU"), ("mixed", "MIXED")):
        if backend in kernel.backends and f"X({name})" not in lists.get(key, ""):
            miss.append(f"{name}: FO_{key}_KERNELS in generated instances.h lacks it; {REBUILD}")

    # the runner (fastopt._runners)
    if _params(getattr(_runners, name, None)) != ["mod", "plan", "grads", *kernel.inputs, "name"]:
        miss.append(f"{name}: fastopt._runners.{name} is not the table's runner "
                    f"(mod, plan, grads, {', '.join(kernel.inputs)}, name)")

    # CPU: compiled instances and Cython wrappers
    if "cpu" in kernel.backends:
        exported = _exports(_kernels)
        for sfx in ("f32", "f64"):
            if not exported(f"fo_{name}_step_{sfx}"):
                miss.append(f"{name}: C instance fo_{name}_step_{sfx} is not in "
                            f"fastopt._kernels; {REBUILD}")
        if _params(getattr(_kernels, name, None)) != binding:
            miss.append(f"{name}: Cython wrapper fastopt._kernels.{name}{tuple(binding)} is "
                        f"missing; {REBUILD}")

    # mixed precision
    if "mixed" in kernel.backends:
        if not _exports(_mixed)(f"fo_mixed_{name}_step"):
            miss.append(f"{name}: mixed-precision instance fo_mixed_{name}_step is not in "
                        f"fastopt._mixed; {REBUILD}")
        if _params(getattr(_mixed, name, None)) != binding or name not in _mixed.__all__:
            miss.append(f"{name}: mixed-precision wrapper fastopt._mixed.{name}"
                        f"{tuple(binding)} is missing; {REBUILD}")

    # CUDA: kernels in the generated source, wrappers, the GPU test cases
    if "cuda" in kernel.backends:
        src = cuda.generate_cuda_source()
        for sfx in ("f32", "f64"):
            if f"\nfo_{name}_multi_{sfx}(" not in src:
                miss.append(f"{name}: CUDA kernel fo_{name}_multi_{sfx} is not in "
                            f"fastopt.cuda.generate_cuda_source()")
        if _params(getattr(cuda, name, None)) != binding or name not in cuda.__all__:
            miss.append(f"{name}: CUDA wrapper fastopt.cuda.{name}{tuple(binding)} is missing")
        if name not in {binding_name for binding_name, _ in CUDA_CASES.values()}:
            miss.append(f"{name}: tests/cuda_cases.py CASES has no case for it")

    # the optimizers that use the kernel: registry, classes, oracle, test and bench lists
    for opt in optimizers:
        o = opt.name
        spec = _specs.SPECS.get(o)
        if spec is None:
            miss.append(f"{o}: fastopt._specs.SPECS has no entry")
        else:
            defaults = {h.name: h.default for h in opt.hyper}
            if spec.kernel_name != name or spec.class_name != opt.class_name:
                miss.append(f"{o}: fastopt._specs entry names kernel {spec.kernel_name!r} and "
                            f"class {spec.class_name!r}, the table {name!r}, {opt.class_name!r}")
            if spec.defaults != defaults or list(spec.defaults) != list(defaults):
                miss.append(f"{o}: fastopt._specs defaults {spec.defaults} differ from the "
                            f"table's {defaults}")
            rules = {k: r.__name__.lstrip("_") for k, r in spec.rules.items()}
            if rules != {h.name: h.rule for h in opt.hyper}:
                miss.append(f"{o}: fastopt._specs rules {rules} differ from the table's")
            if spec.state != tuple(s.name for s in kernel.state):
                miss.append(f"{o}: fastopt._specs state {spec.state} differs from the table's "
                            f"{tuple(s.name for s in kernel.state)}")
        if spec is None or getattr(getattr(fo, opt.class_name, None), "spec", None) is not spec:
            miss.append(f"{o}: no class fastopt.{opt.class_name} with .spec = "
                        f"fastopt._specs.SPECS[{o!r}]")
        if not hasattr(F, f"{o}_"):
            miss.append(f"{o}: fastopt.functional.{o}_ is missing")
        if o not in REFERENCES or o not in NAMES:
            miss.append(f"{o}: tests/reference.py has no reference (NAMES, REFERENCES)")
        if o not in CASES:
            miss.append(f"{o}: tests/cases.py CASES has no option grid")
        for table in ("OPTIMIZERS", "TRAFFIC", "HYPER"):
            if o not in getattr(_bench_impls, table):
                miss.append(f"{o}: benchmark table bench/impls.py {table} lacks it")
        group_state = {g.name: g.init for g in opt.group_state}
        if opt.modes is not None:
            group_state[opt.modes.key] = opt.modes.initial
            cls = getattr(fo, opt.class_name, None)
            if not (callable(getattr(cls, "train", None)) and callable(getattr(cls, "eval", None))):
                miss.append(f"{o}: fastopt.{opt.class_name} lacks train()/eval() for its modes")
        if spec is not None and spec.group_state != group_state:
            miss.append(f"{o}: fastopt._specs group_state {spec.group_state} differs from the "
                        f"table's {group_state}")
        if "torch" in opt.adapters and importlib.util.find_spec("torch") is not None:
            import fastopt.torch as fo_torch
            if not hasattr(fo_torch, opt.class_name) or opt.class_name not in fo_torch.__all__:
                miss.append(f"{o}: torch adapter fastopt.torch.{opt.class_name} is missing")
    return miss


def _optimizers_of(kernel):
    return [o for o in _table.OPTIMIZERS.values() if o.kernel == kernel]


@pytest.mark.parametrize("kernel", list(_table.KERNELS))
def test_every_list_covers_the_tables_optimizers(kernel):
    miss = missing_pieces(_table.KERNELS[kernel], _optimizers_of(kernel))
    assert not miss, "\n".join(miss)


def test_every_optimizer_has_a_kernel_and_every_kernel_an_optimizer():
    assert {o.kernel for o in _table.OPTIMIZERS.values()} == set(_table.KERNELS)
    assert set(_table.OPTIMIZERS) == set(_specs.SPECS) == set(NAMES)
    assert tuple(_table.OPTIMIZERS) == _bench_impls.OPTIMIZERS


def test_a_missing_piece_is_named():
    """A table entry that nothing was generated or written for is reported piece by piece."""
    toy = _table.KERNELS["adamax"]._replace(name="toy", plain="TOY")
    miss = "\n".join(missing_pieces(toy, [_table.OPTIMIZERS["adamax"]._replace(name="toy",
                                                                               kernel="toy")]))
    for piece in ("rules_impl.h has no rule fo_toy_rule", "generated hp.h has no fo_toy_hp",
                  "fo_toy_constants_f32", "FO_CASES_toy", "FO_PLAIN_toy", "FO_PLAIN_TOY",
                  "FO_CPU_KERNELS",
                  "FO_MIXED_KERNELS", "fastopt._runners.toy",
                  "C instance fo_toy_step_f32", "C instance fo_toy_step_f64",
                  "Cython wrapper fastopt._kernels.toy", "fo_mixed_toy_step",
                  "wrapper fastopt._mixed.toy", "CUDA kernel fo_toy_multi_f32",
                  "CUDA wrapper fastopt.cuda.toy", "tests/cuda_cases.py",
                  "fastopt._specs.SPECS has no entry", "fastopt.functional.toy_",
                  "tests/reference.py", "tests/cases.py", "bench/impls.py OPTIMIZERS"):
        assert piece in miss, piece


def test_generated_files_match_the_table():
    """The generated sources in the checkout are what tools/generate.py makes of the table."""
    tools = os.path.join(ROOT, "tools")
    if not os.path.exists(os.path.join(tools, "generate.py")):
        pytest.skip("not a source checkout")
    sys.path.insert(0, tools)
    try:
        import generate
    finally:
        sys.path.remove(tools)
    stale = generate.generate(ROOT, check=True)
    assert not stale, f"stale generated files {[str(p) for p in stale]}; {REBUILD}"


def test_flags_are_the_tables():
    flags_h = dict(re.findall(r"#define FO_([A-Z_]+) (\d+)\b", header("flags.h")))
    assert '#include "flags.h"' in header("rules.h")
    assert len({f.bit for f in _table.FLAGS}) == len(_table.FLAGS)
    assert all(f.bit & (f.bit - 1) == 0 for f in _table.FLAGS)     # one bit each
    for f in _table.FLAGS:
        for where, value in (("flags.h", int(flags_h.get(f.name, -1))),
                             ("fastopt._kernels", getattr(_kernels, f.name, None)),
                             ("fastopt._mixed", getattr(_mixed, f.name, None)),
                             ("fastopt.cuda", getattr(cuda, f.name, None))):
            assert value == f.bit, f"flag {f.name}: {where} has {value}, the table {f.bit}"


class _Recorder:
    """A kernel backend that records the binding calls instead of running them."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda plan, grads, *args: self.calls.append((name, args[:-1]))


@pytest.mark.parametrize("name", list(_table.OPTIMIZERS))
def test_hp_values_from_a_group_are_what_the_classes_send(name):
    """_steps.hp_values(optimizer, group, step, lr) maps torch's hyperparameter names to the
    kernel's inputs as the registry's runners do (betas split, first step, flags)."""
    spec = _specs.SPECS[name]
    for i, case in enumerate(CASES[name]):
        group = {**spec.defaults, **spec.group_state, **case}
        for step, fresh in ((1, True), (4, False)):
            rec = _Recorder()
            spec.run(rec, None, [], group, step, 0.3, (fresh,) * len(spec.state), "grads")
            (kernel, args), = rec.calls
            scalars, flags = _steps.hp_values(name, group, step, 0.3, first=fresh)
            assert kernel == spec.kernel_name
            assert args == (*scalars, flags), (name, i, step)
            uses = spec.uses(group)
            assert _steps.state_mask(kernel, flags) == sum(1 << j for j in range(len(uses))
                                                           if uses[j]), (name, i)


def test_class_signatures_carry_the_registry_defaults():
    for spec in _specs.SPECS.values():
        cls = getattr(fo, spec.class_name)
        sig = inspect.signature(cls.__init__)
        for key, default in spec.defaults.items():
            if key == "decoupled_weight_decay" and spec.name == "adamw":
                assert key not in sig.parameters
                continue
            assert key in sig.parameters, (spec.name, key)
            assert sig.parameters[key].default == default, (spec.name, key)


def test_classes_document_their_equations():
    for spec in _specs.SPECS.values():
        doc = getattr(fo, spec.class_name).__doc__
        assert ".. math::" in doc or ":math:" in doc
        assert "Defaults" in doc and ">>>" in doc


def test_threads_api_and_threadpoolctl():
    old = fo.get_num_threads()
    try:
        fo.set_num_threads(1)
        assert fo.get_num_threads() == 1
    finally:
        fo.set_num_threads(0)
    assert fo.get_num_threads() == old
    threadpoolctl = __import__("pytest").importorskip("threadpoolctl")
    if fo.has_openmp():
        info = threadpoolctl.threadpool_info()
        assert any(i["user_api"] == "openmp" for i in info)
        with threadpoolctl.threadpool_limits(1, user_api="openmp"):
            assert fo.get_num_threads() == 1
