"""The hyperparameter rules: one check per kind of scalar, used by every entry point.

The optimizer classes (through the registry, fastopt._specs), the functional forms
(fastopt.functional), Newton and SVRG, fastopt.mixed, the distributed wrappers and
fastopt.torch all check their scalar arguments here, so the same value is accepted or refused
alike everywhere, with the same error class.

What is accepted as a number: any real number, i.e. ``numbers.Real`` (int, float,
fractions.Fraction, ...), NumPy scalars (np.float32, np.int64, ...) and 0-d NumPy arrays of
such a value (fastopt.torch also accepts one-element tensors; it converts them before calling
these rules). A rule returns the value as a plain Python ``float`` (``int`` where an integer is
meant, ``bool`` for a flag, a tuple of floats for a pair such as ``betas``), so the kernels,
the scalar math around them and ``state_dict`` only ever see plain numbers: a NumPy scalar
gives results bit-identical to the Python float of the same value.

Error classes (the same mistake raises the same class everywhere):

``TypeError`` -- the value is of the wrong kind:
    a bool (or np.bool_) where a number is meant; anything that is not a real number where
    one is meant (str, None, complex, a list, an array with more than one element ...); a
    non-integer type (float included) where an integer is meant; anything but a bool where a
    flag is meant; not a pair where a pair (``betas``, ``etas``, ``step_sizes``) is meant;
    neither a number nor a callable
    where a learning rate (or schedule) is meant.
``ValueError`` -- a number of the right kind but not an allowed value:
    NaN or +-inf, a value outside the argument's range, a number too large to be a float
    (``10**400``: ValueError, not OverflowError), a step count that is not a whole number.

Messages name the argument and what was expected; range errors read
``Invalid <name>: <value> (must be <what>)``.
"""
import numbers

import numpy as np

__all__ = ["real", "nonneg", "positive", "unit_open", "unit_closed", "open_unit", "boolean",
           "optional_boolean", "integer", "seed", "whole", "learning_rate", "scheduled_lr", "betas",
           "greater_than_one", "etas", "step_sizes", "PAIRS", "MAX_STEP"]

MAX_STEP = 2 ** 53      # step counts stay exact as float64 (state_dict stores them as floats)
_TOO_LARGE = object()   # a real number with no float value (int/Fraction beyond 1.8e308)


def _show(value):
    """repr(value), shortened (10**400 has 401 digits)."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}...{text[-8:]} ({len(text)} chars)"


def _kind(value):
    """What a rejected value is, for a TypeError message."""
    return f"{type(value).__name__} {_show(value)}"


def _unwrap(value):
    """A 0-d NumPy array as its element; anything else unchanged."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return value[()]
    return value


def _number(value):
    """`value` as a Python int or float, or None when it is no real number (bools are not)."""
    if type(value) is float or type(value) is int:     # the common case, without ABC checks
        return value
    value = _unwrap(value)
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, numbers.Integral):            # int, np.integer
        return int(value)
    if isinstance(value, numbers.Real):                # float, np.floating, Fraction, ...
        try:
            return float(value)
        except OverflowError:                          # a Fraction beyond the float range
            return _TOO_LARGE
    return None


def _float(number):
    """A `_number` result as float, or _TOO_LARGE (an int beyond the float range); None
    stays None."""
    if number is _TOO_LARGE or number is None:
        return number
    try:
        return float(number)
    except OverflowError:
        return _TOO_LARGE


def _expected_real(low, high, low_open, high_open):
    """'a finite number' with its bounds, for messages."""
    if low is not None and high is not None:
        bounds = f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        bounds = f" {'>' if low_open else '>='} {low:g}"
    elif high is not None:
        bounds = f" {'<' if high_open else '<='} {high:g}"
    else:
        bounds = ""
    return "a finite number" + bounds


def _fail_range(name, value, expected, label=None):
    shown = _show(value)
    if _float(_number(value)) is _TOO_LARGE:
        shown += ", too large for a float"
    if label is None:
        raise ValueError(f"Invalid {name}: {shown} (must be {expected})")
    raise ValueError(f"Invalid {label}: {name} must be {expected}, got {shown}")


_INF = float("inf")


def real(name, value, *, low=None, high=None, low_open=False, high_open=False, label=None):
    """A finite real number within the bounds, as a Python float.

    TypeError if `value` is not a real number (or is a bool); ValueError if it is NaN, +-inf,
    too large for a float or out of bounds. `label` replaces `name` after "Invalid" in
    ValueError messages (e.g. "learning rate").
    """
    number = value if type(value) is float else _float(_number(value))
    if number is not None:
        if number is not _TOO_LARGE and -_INF < number < _INF \
                and (low is None or number > low or (number == low and not low_open)) \
                and (high is None or number < high or (number == high and not high_open)):
            return number                      # the common case: nothing to format
    expected = _expected_real(low, high, low_open, high_open)
    if number is None:
        raise TypeError(f"{name} must be {expected}, got {_kind(value)}")
    _fail_range(name, value, expected, label)


def nonneg(name, value):
    """A finite number >= 0, as float."""
    return real(name, value, low=0.0)


def positive(name, value):
    """A finite number > 0, as float."""
    return real(name, value, low=0.0, low_open=True)


def unit_open(name, value):
    """A number in [0, 1) (momentum-like coefficients, each beta), as float."""
    return real(name, value, low=0.0, high=1.0, high_open=True)


def unit_closed(name, value):
    """A number in [0, 1], as float."""
    return real(name, value, low=0.0, high=1.0)


def open_unit(name, value):
    """A number in (0, 1), as float."""
    return real(name, value, low=0.0, high=1.0, low_open=True, high_open=True)


def boolean(name, value):
    """A flag: bool or np.bool_ (or a 0-d bool array), as bool; TypeError otherwise (1, 0.0,
    "yes" and None are refused)."""
    if value is True or value is False:
        return value
    value = _unwrap(value)
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool (True or False), got {_kind(value)}")
    return bool(value)


def optional_boolean(name, value):
    """None or a flag (see `boolean`)."""
    return None if value is None else boolean(name, value)


def integer(name, value, *, low=0, high=None):
    """An integer in [low, high] (int, NumPy integer or 0-d integer array), as int.

    TypeError for any other type (a float such as 2.0 included, and bools); ValueError out
    of range.
    """
    raw = _unwrap(value)
    ok_type = isinstance(raw, numbers.Integral) and not isinstance(raw, (bool, np.bool_))
    if ok_type and low <= raw and (high is None or raw <= high):
        return int(raw)
    bounds = f"in [{low}, {high}]" if high is not None else f">= {low}"
    if not ok_type:
        raise TypeError(f"{name} must be an integer {bounds}, got {_kind(value)}")
    _fail_range(name, value, f"an integer {bounds}")


def seed(name, value):
    """A random seed: an integer in [0, 2^64 - 1], as int (the noise hashes take 64 bits; a
    larger seed is an error, not a seed taken modulo 2^64)."""
    return integer(name, value, high=2 ** 64 - 1)


def whole(name, value, *, low=0, high=MAX_STEP):
    """A count that may be stored as a float (a step): a real number with a whole value in
    [low, high], as int. TypeError if it is not a real number; ValueError if it is NaN,
    +-inf, not whole or out of range."""
    if type(value) is int and low <= value <= high:         # the common case
        return value
    number = _number(value)
    if number is not None and number is not _TOO_LARGE and low <= number <= high \
            and number == int(number):             # NaN fails the range test, inf too
        return int(number)
    expected = f"a whole number in [{low}, {high}]"
    if number is None:
        raise TypeError(f"{name} must be {expected}, got {_kind(value)}")
    _fail_range(name, value, expected)


def learning_rate(name, value, *, schedule=True):
    """A learning rate: a finite number >= 0 (as float) or, when `schedule`, a callable
    ``step -> lr`` (returned as it is; its values are checked by `scheduled_lr`)."""
    if type(value) is float and 0.0 <= value < _INF:        # the common case
        return value
    if callable(value):
        if schedule:
            return value
        raise TypeError(f"{name} must be a number here, got the callable {_show(value)} "
                        "(schedules belong to the optimizer classes)")
    if _number(value) is None:
        what = "a number or a schedule (a callable step -> lr)" if schedule else "a number"
        raise TypeError(f"{name} must be {what}, got {_kind(value)}")
    return real(name, value, low=0.0, label="learning rate")


def scheduled_lr(value, step):
    """The value a learning-rate schedule returned for `step`, as float (same rules as a
    number `lr`: TypeError for a non-number, ValueError for NaN, inf or < 0)."""
    number = _number(value)
    if number is None:
        raise TypeError(f"the lr schedule returned {_kind(value)} at step {step}; expected a "
                        "finite number >= 0")
    number = _float(number)
    if number is _TOO_LARGE or not 0 <= number < float("inf"):
        raise ValueError(f"the lr schedule returned {_show(value)} at step {step}; expected a "
                         "finite number >= 0")
    return float(number)


def greater_than_one(name, value):
    """A finite number > 1 (a growth factor), as float."""
    return real(name, value, low=1.0, low_open=True)


def _pair(name, value, what, rules):
    """A tuple or list of two values, each checked by its rule (as ``name[i]``), as a tuple;
    TypeError naming `what` when it is no pair."""
    if isinstance(value, np.ndarray) or not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{name} must be a pair {what}, got {_kind(value)}")
    return tuple(rule(f"{name}[{i}]", v) for i, (rule, v) in enumerate(zip(rules, value)))


def betas(name, value):
    """A pair (beta1, beta2) of numbers in [0, 1), as a tuple of floats."""
    return _pair(name, value, "(beta1, beta2) of numbers in [0, 1)", PAIRS[betas])


def etas(name, value):
    """A pair (etaminus, etaplus) with 0 < etaminus < 1 < etaplus (Rprop's step size factors),
    as a tuple of floats."""
    return _pair(name, value, "(etaminus, etaplus) of numbers with 0 < etaminus < 1 < etaplus",
                 PAIRS[etas])


def step_sizes(name, value):
    """A pair (min, max) of finite numbers >= 0 (Rprop's step size limits), as a tuple of
    floats; min > max is allowed, as in torch (the step sizes are then max)."""
    return _pair(name, value, "(min, max) of finite numbers >= 0", PAIRS[step_sizes])


#: pair rule -> the rules of its two elements (the functional forms take the elements as
#: separate arguments: beta1, beta2; etaminus, etaplus; step_size_min, step_size_max)
PAIRS = {betas: (unit_open, unit_open), etas: (open_unit, greater_than_one),
         step_sizes: (nonneg, nonneg)}
