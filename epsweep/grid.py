"""Hyperparameter grids: parsing value lists and expanding them into runs.

Value syntax (each token of the eps, decay, lr and momentum axes):

- a number: ``1e-8``
- a comma list: ``1e-8,1e-4,1``
- a log-spaced range, ends included: ``log:START:STOP:COUNT`` (``log:1e-10:1:11``)
- a linear range, ends included: ``lin:START:STOP:COUNT`` (``lin:0.8:0.99:5``)
- a random sample, seeded and reproducible: ``rand:log:START:STOP:COUNT[:SEED]`` draws COUNT
  values log-uniformly between START and STOP (``rand:log:1e-10:1:64``), ``rand:lin:...``
  uniformly; sorted ascending; the same token always gives the same values (SEED defaults to
  0; NumPy's PCG64 stream)
- ``-``: whitespace- or comma-separated values read from standard input
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import numbers
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from epsweep.errors import UserError, param, quoted
from epsweep.vocabulary import (
    AXIS_DEFAULTS,
    AXIS_ROLES,
    FLOAT32_MAX,
    FLOAT32_TINY,
    GRID_AXES,
    NARROW_FLOATS,
    as_float32,
    float32_change,
    plain_scalar,
)

MAX_RANGE_COUNT = 100_000
MAX_GRID_SIZE = 1_000_000
BELOW_ONE = float(np.nextafter(np.float32(1), np.float32(0)))  # 0.99999994, the largest float32 < 1


def _parse_number(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"{param(name)}: {quoted(text)} is not a number") from None
    if not math.isfinite(value):
        raise UserError(f"{param(name)}: {quoted(text)} is not a finite number")
    return value


def _whole(text: str, what: str, token: str, name: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise UserError(f"{param(name)}: {what} {quoted(text)} in {quoted(token)} is not an integer") from None


def _parse_range(token: str, name: str) -> list[float]:
    """``log:``/``lin:`` ranges, ends included, and ``rand:log:``/``rand:lin:`` samples."""
    kind, _, rest = token.partition(":")
    sample = kind == "rand"
    if sample:
        kind, _, rest = rest.partition(":")
        if kind not in ("log", "lin"):
            raise UserError(f"{param(name)}: {quoted(token)} must look like rand:log:START:STOP:COUNT[:SEED] "
                            f"or rand:lin:START:STOP:COUNT[:SEED]")
    parts = rest.split(":")
    if len(parts) != 3 and not (sample and len(parts) == 4):
        form = f"rand:{kind}:START:STOP:COUNT[:SEED]" if sample else f"{kind}:START:STOP:COUNT"
        raise UserError(f"{param(name)}: {quoted(token)} must look like {form}")
    start, stop = (_parse_number(p, name) for p in parts[:2])
    count = _whole(parts[2], "count", token, name)
    if not 1 <= count <= MAX_RANGE_COUNT:
        raise UserError(f"{param(name)}: count in {quoted(token)} must be between 1 and {MAX_RANGE_COUNT}")
    if kind == "log" and (start <= 0 or stop <= 0):
        raise UserError(f"{param(name)}: log range {quoted(token)} needs positive ends")
    if sample:
        seed = _whole(parts[3], "seed", token, name) if len(parts) == 4 else 0
        if not 0 <= seed < 2**63:
            raise UserError(f"{param(name)}: seed in {quoted(token)} must be a whole number >= 0")
        unit = np.random.Generator(np.random.PCG64(seed)).random(count)
        if kind == "log":
            low, high = math.log10(start), math.log10(stop)
            values = np.sort(10.0 ** (low + (high - low) * unit))
        else:
            values = np.sort(start + (stop - start) * unit)
    elif kind == "log":
        values = np.geomspace(start, stop, count)
    else:
        values = np.linspace(start, stop, count)
    return [float(v) for v in values]


def parse_values(tokens: Iterable[str], name: str, read_stdin: Callable[[], str] | None = None) -> list[float]:
    """Expand value tokens (numbers, comma lists, ``log:``/``lin:`` ranges, ``rand:`` samples,
    ``-``) into floats.

    Duplicates are dropped, first occurrence kept, so the grid never trains one setting twice.

    Args:
        tokens: the tokens as typed, e.g. ``["1e-8,1e-4", "log:1e-2:1:3"]``; one string is one token.
        name: the parameter they are for (``"eps"``), named in errors.
        read_stdin: returns standard input's text, for the token ``-``.

    Returns:
        The values, in order, without duplicates.

    Example:
        >>> parse_values(["1e-8,1", "log:1e-4:1e-2:3", "1"], "eps")
        [1e-08, 1.0, 0.0001, 0.001, 0.01]
    """
    values: list[float] = []
    for token in [tokens] if isinstance(tokens, str) else tokens:
        token = token.strip()
        if token == "-":
            if read_stdin is None:
                raise UserError(f"{param(name)}: '-' (read from stdin) is not available here")
            text = read_stdin().replace(",", " ").split()
            if not text:
                raise UserError(f"{param(name)}: no values on standard input")
            values.extend(parse_values(text, name))
            continue
        for piece in token.split(","):
            piece = piece.strip()
            if not piece:
                raise UserError(f"{param(name)}: empty value in {quoted(token)}")
            if piece.startswith(("log:", "lin:", "rand:")):
                values.extend(_parse_range(piece, name))
            else:
                values.append(_parse_number(piece, name))
    unique = list(dict.fromkeys(values))
    if not unique:
        raise UserError(f"{param(name)}: no values given")
    return unique


def _check(name: str, values: Sequence[float], ok: Callable[[float], bool], rule: str) -> None:
    for value in values:
        if not ok(value):
            raise UserError(f"{param(name)}: {repr(value).removesuffix('.0')} is out of range ({rule})")


def _check_float32(name: str, values: Sequence[float], below_one: bool = False) -> None:
    """The engine sees each value as a float32: refuse one that would silently change there
    (overflow to inf, a non-zero value flushed to 0, a value just below 1 rounded to 1)."""
    for value in values:
        change = float32_change(value)
        if change == "overflow":
            raise UserError(f"{param(name)}: {value!r} overflows float32, which the engine trains in; "
                            f"use at most {FLOAT32_MAX:.8g}")
        if change is not None:
            least = f"at least {FLOAT32_TINY:.8g}" if name == "lr" else f"0 or at least {FLOAT32_TINY:.8g}"
            what = ("becomes 0 in float32, which the engine trains in" if change == "zero" else
                    "is a subnormal float32, which the engine flushes to 0")
            raise UserError(f"{param(name)}: {value!r} {what}; use {least}")
        if below_one and as_float32(value) >= 1:
            raise UserError(f"{param(name)}: {value!r} rounds to 1 in float32, which the engine trains in; "
                            f"use at most {BELOW_ONE:.8g}")


def _axis_values(axis: str, given: object) -> tuple[float, ...]:
    """An axis as floats: a sequence (or 1-d array) of real numbers, or one number alone; not
    text (``parse_values`` reads ``"1e-8,1"`` and ``"log:1e-8:1:5"``), not True/False."""
    if isinstance(given, (str, bytes)):
        raise UserError(f"{param(axis)}: {quoted(given)} is text; give numbers, e.g. (1e-8, 1.0) "
                        "(parse_values reads text)")
    if hasattr(given, "__iter__") and not hasattr(given, "__array__"):  # a generator, a range: its items
        given = list(given)
    elif str(getattr(given, "dtype", "")) in NARROW_FLOATS and getattr(given, "ndim", 2) <= 1:
        given = [plain_scalar(value) for value in np.asarray(given).reshape(-1)]  # as typed (an object
        # array of them would hold their float64 expansions: np.float32(1e-8) is 1e-08, not 9.99999993922529e-09)
    array = np.asarray(given, dtype=object)
    if array.ndim > 1:
        raise UserError(f"{param(axis)}: a flat sequence of numbers, not an array of shape {array.shape}")
    values = []
    for value in map(plain_scalar, array.reshape(-1)):  # NumPy and JAX scalars as Python numbers
        if isinstance(value, str):
            raise UserError(f"{param(axis)}: {quoted(value)} is text; give numbers (parse_values reads text)")
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise UserError(f"{param(axis)}: {value!r} is not a real number")
        if isinstance(value, numbers.Integral) and abs(value) > FLOAT32_MAX:  # 10**400 has no float
            raise UserError(f"{param(axis)}: {quoted(str(value))} overflows float32, which the engine trains in; "
                            f"use at most {FLOAT32_MAX:.8g}")
        values.append(float(value) + 0.0)  # + 0.0: -0.0 is 0.0
    return tuple(values)


def _unique_in_float32(values: tuple[float, ...]) -> tuple[float, ...]:
    """``values`` without those that are the same float32 as an earlier one (``1e-5`` after
    ``log:1e-10:1e-2:9``'s 9.999999999999999e-06): the engine trains in float32, so they
    would be one setting trained twice under two names. The first is kept."""
    first: dict[float, float] = {}
    for value in values:
        first.setdefault(as_float32(value), value)
    return tuple(first.values())


@dataclasses.dataclass(frozen=True)
class Grid:
    """The hyperparameter axes of a sweep; every combination is one setting.

    An axis left ``None`` takes each optimizer's own default (:data:`AXIS_DEFAULTS`: eps 1e-8
    and 1, lr 1e-3, momentum 0, decay 0.9 for RMSProp and b2 = 0.999 for Adam); an axis an
    optimizer does not use (:data:`AXIS_ROLES`: decay for Adagrad, eps and decay for SGD,
    momentum for Adam and Adagrad) is ``None`` in its settings and does not multiply them.

    Example:
        >>> grid = Grid(eps=(1e-8, 1.0), lr=(1e-3, 1e-2))
        >>> grid.size(), grid.settings()[1]
        (4, {'eps': 1.0, 'decay': 0.9, 'lr': 0.001, 'momentum': 0.0})
        >>> grid.settings("adam")[0], grid.size("sgd")
        ({'eps': 1e-08, 'decay': 0.999, 'lr': 0.001, 'momentum': None}, 2)
    """

    eps: tuple[float, ...] | None = None
    decay: tuple[float, ...] | None = None
    lr: tuple[float, ...] | None = None
    momentum: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        for axis in GRID_AXES:
            given = getattr(self, axis)
            if given is None:
                continue
            values = _axis_values(axis, given)
            if not values:
                raise UserError(f"{param(axis)}: the grid is empty")
            _check(axis, values, *_RANGES[axis])
            _check_float32(axis, values, below_one=axis in ("decay", "momentum"))
            object.__setattr__(self, axis, _unique_in_float32(values))
        if self.size() > MAX_GRID_SIZE:
            raise UserError(f"the grid has {self.size():,} settings; the limit is {MAX_GRID_SIZE:,}")

    def values(self, axis: str, optimizer: str = "rmsprop") -> tuple[float | None, ...]:
        """The values ``axis`` takes for ``optimizer``: given, its default, or ``(None,)``
        when the optimizer does not use it."""
        if axis not in AXIS_ROLES[optimizer]:
            return (None,)
        given = getattr(self, axis)
        return given if given is not None else AXIS_DEFAULTS[axis][optimizer]

    def size(self, optimizer: str = "rmsprop") -> int:
        """How many settings ``optimizer`` trains (RMSProp uses every axis, so its count is the
        largest): the product of the axis lengths, a Python int that never overflows."""
        return math.prod(len(self.values(axis, optimizer)) for axis in GRID_AXES)

    def settings(self, optimizer: str = "rmsprop") -> list[dict[str, float | None]]:
        """Every combination for ``optimizer`` in table order: eps varies fastest, so rows
        that differ only in eps sit together."""
        v = {axis: self.values(axis, optimizer) for axis in GRID_AXES}
        return [
            {"eps": e, "decay": d, "lr": lr, "momentum": m}
            for lr, d, m, e in itertools.product(v["lr"], v["decay"], v["momentum"], v["eps"])
        ]


_RANGES = {
    "eps": (lambda v: v >= 0, "eps >= 0"),
    "decay": (lambda v: 0 <= v < 1, "0 <= decay < 1"),
    "lr": (lambda v: v > 0, "lr > 0"),
    "momentum": (lambda v: 0 <= v < 1, "0 <= momentum < 1"),
}
