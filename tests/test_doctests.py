"""The docstring examples of the installed package run and give what they show.

Every example written in a module's source (each line starting with ``>>>``) must be found and
run, unless marked ``# doctest: +SKIP`` (those need mpiexec or a GPU and have their own tests):
a module whose examples doctest cannot see (a lazy attribute, a wrapped function, a docstring
built at run time) fails here instead of passing with nothing run.
"""
import doctest
import importlib
import inspect
import pkgutil
import re

import pytest

import fastopt

MODULES = sorted(m.name for m in pkgutil.walk_packages(fastopt.__path__, "fastopt.")
                 if not m.name.split(".")[-1].startswith("_")
                 and m.name not in ("fastopt.cuda", "fastopt.torch", "fastopt.distributed",
                                    "fastopt.__main__"))


def written_examples(module):
    """The number of examples in the module's source: lines that start with >>>; for the
    classes made from the optimizer table, the lines of the table's docstrings."""
    source = inspect.getsource(module)
    if module.__name__ == "fastopt.optim.first_order":
        from fastopt import _table
        source += "".join(opt.doc for opt in _table.OPTIMIZERS.values())
    return len(re.findall(r"^\s*>>>", source, re.M))


@pytest.mark.parametrize("name", ["fastopt"] + MODULES)
def test_doctests(name):
    module = importlib.import_module(name)
    found = [ex for test in doctest.DocTestFinder().find(module) for ex in test.examples]
    assert len(found) == written_examples(module), (
        f"{name}: {written_examples(module)} examples in the source, doctest sees {len(found)}")
    skipped = sum(bool(ex.options.get(doctest.SKIP)) for ex in found)   # e.g. need mpiexec
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    assert result.attempted == len(found) - skipped


def test_the_package_has_examples_to_run():
    assert written_examples(fastopt) > 0
    assert sum(written_examples(importlib.import_module(m)) for m in MODULES) >= 10
