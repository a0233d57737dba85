"""Small real datasets shipped with fastopt, for examples, tests and `fastopt demo`.

Both loaders return ``(X, y)``: ``X`` a C-contiguous float64 array, standardized column by
column (``X[:, j] = (raw[:, j] - mean_j) / std_j`` with the population standard deviation,
ddof=0; a constant column is only centered, so it becomes all zeros), and ``y`` an int64 array
of class labels. ``standardize=False`` returns the raw values (as float64);
``intercept=True`` appends a column of ones after standardizing (so a model without a
separate intercept term, like :class:`fastopt.problems.LogisticRegression`, gets one).
Sources, citations and licences: ``fastopt/data/README.md``.
"""
from importlib import resources

import numpy as np

__all__ = ["load_breast_cancer", "load_digits", "standardize", "BREAST_CANCER_FEATURES"]

_MEASURES = ("radius", "texture", "perimeter", "area", "smoothness", "compactness",
             "concavity", "concave points", "symmetry", "fractal dimension")
#: Column names of the breast-cancer features: 10 measures x (mean, standard error, worst).
BREAST_CANCER_FEATURES = tuple(f"{stat} {m}" for stat in ("mean", "se", "worst")
                               for m in _MEASURES)


def standardize(X):
    """Columns centered to mean 0 and scaled to unit (ddof=0) standard deviation, as float64.

    `X` is a 2-D real array (samples by features). A constant column is only centered: it
    becomes exactly 0, never divided by zero (nor by the rounding error of its mean).
    """
    X = np.asarray(X)
    if X.dtype.kind not in "biufOSU":
        raise TypeError(f"X must be a real array, got dtype {X.dtype}")
    try:
        X = X.astype(np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"X must hold real numbers; its {X.dtype} values do not convert to "
                        "float64") from None
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (samples, features), got shape {X.shape}")
    mean = X.mean(axis=0)
    std = X.std(axis=0)
    if X.shape[0]:
        # the mean of n copies of c need not round to c: center constant columns on c itself
        constant = np.all(X == X[:1], axis=0)
        mean[constant] = X[0, constant]
        std[constant] = 1.0
    std[std == 0] = 1.0
    return np.ascontiguousarray((X - mean) / std)


def _flag(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _load(name, standardize_, intercept):
    standardize_ = _flag("standardize", standardize_)
    intercept = _flag("intercept", intercept)
    with resources.files("fastopt").joinpath("data", name).open("rb") as fh:
        with np.load(fh) as data:
            X, y = data["X"].astype(np.float64), data["y"].astype(np.int64)
    if standardize_:
        X = standardize(X)
    if intercept:
        X = np.hstack([X, np.ones((X.shape[0], 1))])
    return np.ascontiguousarray(X), y


def load_breast_cancer(*, standardize=True, intercept=False):
    """Breast Cancer Wisconsin (Diagnostic): 569 samples, 30 features, 2 classes.

    Features describe cell nuclei in a digitized image of a fine needle aspirate of a breast
    mass (names in ``BREAST_CANCER_FEATURES``). Labels: 0 = malignant (212), 1 = benign (357).
    """
    return _load("breast_cancer.npz", standardize, intercept)


def load_digits(*, standardize=True, intercept=False):
    """Optical recognition of handwritten digits: 1797 8x8 images (64 features), 10 classes.

    Raw features are pixel counts 0..16 (row-major 8x8 image); labels are the digits 0..9.
    """
    return _load("digits.npz", standardize, intercept)
