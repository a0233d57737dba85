"""Shared test configuration: bounded hypothesis profiles and thread-count fixtures.

Profiles: ``ci`` (default; bounded so the suite fits CI), ``dev`` (more examples) and ``fuzz``
(long runs, scripts/fuzz.sh). Choose with HYPOTHESIS_PROFILE.
"""
import os

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
