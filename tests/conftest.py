"""Shared test configuration: bounded hypothesis profiles and thread-count fixtures.

Profiles: ``ci`` (default; bounded so the suite fits CI), ``dev`` (more examples) and ``fuzz``
(long runs, scripts/fuzz.sh). Choose with HYPOTHESIS_PROFILE.

Tests marked ``slow`` are skipped unless selected with ``-m slow`` or FASTOPT_RUN_SLOW=1
(scripts/run_slow_tests.sh does both).
"""
import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=40, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "dev", max_examples=200, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "fuzz", max_examples=20000, deadline=None,
    suppress_health_check=list(HealthCheck),
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_collection_modifyitems(config, items):
    if os.environ.get("FASTOPT_RUN_SLOW", "") not in ("", "0") or "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow: run by scripts/run_slow_tests.sh (or FASTOPT_RUN_SLOW=1)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
