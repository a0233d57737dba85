"""What `import fastopt` loads, what it makes reachable, and the import graph of the package.

- `import fastopt` loads the core only: no scipy, matplotlib, tqdm, mpi4py, cupy, torch, and
  none of the submodules that need them (problems, demo, viz, ...); Newton loads scipy's
  LAPACK (fastopt._linalg) at its first solve;
- every public submodule is an attribute of `fastopt` (PEP 562 ``__getattr__``), listed by
  ``dir(fastopt)``; ``fastopt.__all__`` resolves; ``from fastopt import *`` binds no ``torch``;
- the imports between fastopt's modules (module level and inside functions) form no cycle, and
  the layers below the API never import it: API -> functional -> runners/registry -> bindings.
"""
import ast
import importlib.util
import json
import os
import subprocess
import sys

import pytest

import fastopt

PKG = os.path.dirname(os.path.abspath(fastopt.__file__))
HEAVY = ("scipy", "matplotlib", "tqdm", "mpi4py", "cupy", "torch", "sklearn", "ml_dtypes")
LAZY = ("fastopt.problems", "fastopt.demo", "fastopt.viz", "fastopt.plot", "fastopt.cuda",
        "fastopt.torch", "fastopt.distributed", "fastopt.datasets", "fastopt.train",
        "fastopt.convergence", "fastopt.bench", "fastopt.cli", "fastopt.checkpoint",
        "fastopt._linalg")


def run_python(code):
    """Run `code` in a fresh interpreter (same sys.path); returns what it prints as JSON."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def public_submodules():
    """Public submodules of fastopt found on disk (.py files, packages, compiled modules)."""
    names = set()
    for entry in os.listdir(PKG):
        stem = entry.split(".")[0]
        if stem.startswith("_"):
            continue
        if entry.endswith(".py") or os.path.isfile(os.path.join(PKG, entry, "__init__.py")):
            names.add(stem)
    return names


def test_import_fastopt_loads_only_the_core():
    loaded = run_python(
        "import sys, json; import fastopt; print(json.dumps(sorted(sys.modules)))")
    heavy = [m for m in loaded if m.split(".")[0] in HEAVY]
    assert heavy == [], heavy
    assert [m for m in LAZY if m in loaded] == []
    assert "fastopt.optim" in loaded and "fastopt.functional" in loaded


def test_newton_loads_lapack_at_its_first_solve():
    before, after = run_python(
        "import sys, json; import numpy as np; import fastopt as fo\n"
        "w = np.array([1.0, -2.0]); opt = fo.Newton([w])\n"
        "before = 'scipy' in sys.modules or 'fastopt._linalg' in sys.modules\n"
        "opt.step([w.copy()], [np.eye(2)])\n"
        "print(json.dumps([before, 'fastopt._linalg' in sys.modules]))")
    assert (before, after) == (False, True)


def test_every_submodule_is_an_attribute():
    names = public_submodules()
    assert names == set(fastopt._SUBMODULES), "fastopt._SUBMODULES is out of date"
    assert names <= set(dir(fastopt))
    has_torch = importlib.util.find_spec("torch") is not None
    result = run_python(
        "import json, types; import fastopt\n"
        "out = {}\n"
        f"for name in {sorted(names)!r}:\n"
        "    try:\n"
        "        out[name] = isinstance(getattr(fastopt, name), types.ModuleType)\n"
        "    except ImportError as e:\n"
        "        out[name] = str(e)\n"
        "print(json.dumps(out))")
    for name, ok in result.items():
        if name == "torch" and not has_torch:
            assert "fastopt[torch]" in ok
        else:
            assert ok is True, (name, ok)


def test_all_resolves_and_star_import_binds_no_torch():
    for name in fastopt.__all__:
        assert getattr(fastopt, name) is not None, name
    assert "torch" not in fastopt.__all__ and "cuda" not in fastopt.__all__
    assert fastopt.save.__module__ == "fastopt.checkpoint"
    with pytest.raises(AttributeError, match="no_such_name"):
        fastopt.no_such_name
    bound = run_python(
        "import json, sys\n"
        "torch = 'mine'\n"
        "from fastopt import *\n"
        "print(json.dumps([torch, 'torch' in sys.modules, 'cupy' in sys.modules]))")
    assert bound == ["mine", False, False]


# --------------------------------------------------------------------------- import graph
def module_files():
    """fastopt module name -> (path, is_package) for every .py file of the package."""
    mods = {}
    for dirpath, _, files in os.walk(PKG):
        for f in files:
            if not f.endswith(".py"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, f), os.path.dirname(PKG))
            parts = rel[:-3].split(os.sep)
            is_pkg = parts[-1] == "__init__"
            mods[".".join(parts[:-1] if is_pkg else parts)] = (os.path.join(dirpath, f), is_pkg)
    return mods


def import_graph():
    """module -> set of fastopt modules it imports, at module level or inside functions.

    ``from . import x`` counts as an import of the submodule x when there is one, else of the
    package; the package's own lazy ``__getattr__`` (importlib by name) is not an edge."""
    mods = module_files()
    known = set(mods) | {f"fastopt.{f.split('.')[0]}" for f in os.listdir(PKG)
                         if f.endswith((".so", ".pyd", ".pyx"))}
    graph = {}
    for name, (path, is_pkg) in mods.items():
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        package = name.split(".") if is_pkg else name.split(".")[:-1]
        edges = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name.split(".")[0] == "fastopt"}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[:len(package) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.split(".")[0] != "fastopt":
                    continue
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    edges.add(sub if sub in known else target)
        edges.discard(name)
        graph[name] = edges
    return graph


def find_cycle(graph):
    """One import cycle as a list of modules, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert "fastopt.functional" in graph and graph["fastopt.optim.base"]
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_cycle_finder_finds_a_cycle():
    graph = import_graph()
    graph["fastopt._specs"] = graph["fastopt._specs"] | {"fastopt.functional"}
    assert find_cycle(graph) is not None


def test_lower_layers_never_import_the_api():
    graph = import_graph()

    def reach(start):
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    api = {m for m in graph if m.startswith(("fastopt.optim", "fastopt.mixed", "fastopt.torch",
                                             "fastopt.distributed"))} | {"fastopt"}
    for low in ("fastopt.functional", "fastopt._runners", "fastopt._specs", "fastopt._newton",
                "fastopt.cuda", "fastopt.flat"):
        assert not reach(low) & api, (low, sorted(reach(low) & api))
    assert "fastopt._specs" not in reach("fastopt._runners")
