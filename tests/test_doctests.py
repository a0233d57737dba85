"""The docstring examples of the installed package run and give what they show."""
import doctest
import importlib
import pkgutil

import pytest

import fastopt

MODULES = sorted(m.name for m in pkgutil.walk_packages(fastopt.__path__, "fastopt.")
                 if not m.name.split(".")[-1].startswith("_")
                 and m.name not in ("fastopt.cuda", "fastopt.torch", "fastopt.distributed",
                                    "fastopt.__main__"))


@pytest.mark.parametrize("name", ["fastopt"] + MODULES)
def test_doctests(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
