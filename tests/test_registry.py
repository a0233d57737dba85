"""The registry, the classes, the oracle and the C symbols cover the same optimizers."""
import inspect
import os
import re

import fastopt as fo
from fastopt import _kernels, _specs
from reference import NAMES, REFERENCES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def header(name):
    for base in (os.path.join(ROOT, "csrc", "fastopt"),
                 os.path.join(os.path.dirname(fo.__file__), "csrc", "fastopt")):
        path = os.path.join(base, name)
        if os.path.exists(path):
            with open(path) as f:
                return f.read()
    raise FileNotFoundError(name)


def test_specs_classes_references_and_kernels_cover_the_same_names():
    spec_names = set(_specs.SPECS)
    assert spec_names == set(NAMES) == set(REFERENCES)
    kernels_h = header("kernels.h")
    rules_h = header("rules_impl.h")
    for name, spec in _specs.SPECS.items():
        cls = getattr(fo, spec.class_name)
        assert cls.spec is spec
        assert hasattr(fo.functional, f"{name}_") or name == "adamw" and hasattr(fo.functional, "adamw_")
        assert hasattr(_kernels, spec.kernel_name)
        assert f"FO_DECLARE({spec.kernel_name})" in kernels_h
        assert f"fo_{spec.kernel_name}_rule" in rules_h


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


def test_flags_match_rules_header():
    text = header("rules.h")
    flags = dict(re.findall(r"#define FO_([A-Z_]+) (\d+)\b", text))
    for name in ("MAXIMIZE", "NESTEROV", "FIRST", "SUTSKEVER", "AMSGRAD", "CENTERED",
                 "EPS_IN_SQRT", "MOMENTUM", "DECOUPLED"):
        assert int(flags[name]) == getattr(_kernels, name), name


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
