"""Shared test configuration: bounded hypothesis profiles and thread-count fixtures.

Profiles: ``ci`` (default; bounded so the suite fits CI), ``dev`` (more examples) and ``fuzz``
(long runs, scripts/fuzz.sh). Choose with HYPOTHESIS_PROFILE.
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


# FASTOPT_REQUIRE_TORCH=1 (set by .ci/run): torch must be importable, and a test skipped for
# want of torch fails instead, so the live torch tests cannot drop out of CI unnoticed.
REQUIRE_TORCH = os.environ.get("FASTOPT_REQUIRE_TORCH") == "1"


def pytest_configure(config):
    if REQUIRE_TORCH:
        try:
            import torch  # noqa: F401
        except Exception as exc:  # noqa: BLE001 - any failure to import counts
            raise pytest.UsageError(
                f"FASTOPT_REQUIRE_TORCH=1 but torch cannot be imported: {exc!r}") from None


def _torch_skip_to_failure(report):
    if REQUIRE_TORCH and report.skipped and "torch" in str(report.longrepr).lower():
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"FASTOPT_REQUIRE_TORCH=1, but this was skipped: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    if item.get_closest_marker("gpu") is None:      # GPU tests skip for want of a GPU
        _torch_skip_to_failure(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _torch_skip_to_failure(outcome.get_result())
