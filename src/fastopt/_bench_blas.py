"""BLAS thread limits for `fastopt bench`'s sections (threadpoolctl, from the [bench] extra;
the limits are skipped without it)."""
import importlib.util

__all__ = ["available", "limit"]


def available():
    """Whether BLAS threads can be limited (threadpoolctl is installed)."""
    return importlib.util.find_spec("threadpoolctl") is not None


def limit(n):
    """A context holding BLAS to `n` threads from when it is made (threadpoolctl applies the
    limit at construction) until it exits; None without threadpoolctl."""
    if not available():
        return None
    from threadpoolctl import threadpool_limits
    return threadpool_limits(limits=n, user_api="blas")
