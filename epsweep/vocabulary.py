"""The words every layer shares: axis names, update-rule names, record fields and their labels.

A *setting* is one point of the grid: values of the numeric axes (eps, decay, lr, momentum)
plus the update rule that trains it (optimizer and, for RMSProp, convention). A *run* is one
setting trained with one seed. Nothing here imports JAX, so the command line can check names
before it starts anything heavy.
"""

from __future__ import annotations

import math
import struct
from typing import Any, NamedTuple

from epsweep.errors import UserError, param, quoted

# The engine trains in float32 and flushes subnormal numbers to zero (XLA on CPU does).
FLOAT32_TINY = 1.1754943508222875e-38  # 2**-126, the smallest normal float32 (np.finfo(np.float32).tiny)
FLOAT32_MAX = 3.4028234663852886e38  # (2 - 2**-23) * 2**127, the largest (np.finfo(np.float32).max)

GRID_AXES = ("eps", "decay", "lr", "momentum")
"""The numeric axes of a grid, in record order."""

RULE_AXES = ("optimizer", "convention")
"""The update rule of a setting: which optimizer, and (RMSProp) which framework's convention."""

SETTING_AXES = GRID_AXES + RULE_AXES
"""What identifies a setting within a sweep."""

SETTING_DEFAULTS = {"momentum": 0.0, "optimizer": "rmsprop", "convention": "optax"}
"""Values a record from an older or foreign file may leave out."""

CONVENTION_NAMES = ("optax", "pytorch", "tf1", "keras")
OPTIMIZER_NAMES = ("rmsprop", "adam", "adagrad", "sgd")

AXIS_ROLES = {
    "rmsprop": {"eps": "eps", "decay": "decay", "lr": "lr", "momentum": "momentum"},
    "adam": {"eps": "eps", "decay": "b2", "lr": "lr"},
    "adagrad": {"eps": "eps", "lr": "lr"},
    "sgd": {"lr": "lr", "momentum": "momentum"},
}
"""Which grid axes each optimizer uses, and what each means for it (Adam's decay is its b2).
An axis an optimizer does not use is ``None`` in its records and never multiplies its rows."""

AXIS_DEFAULTS = {
    "eps": {"rmsprop": (1e-8, 1.0), "adam": (1e-8, 1.0), "adagrad": (1e-8, 1.0)},
    "decay": {"rmsprop": (0.9,), "adam": (0.999,)},  # optax's rmsprop decay; Adam's b2 in every framework
    "lr": {"rmsprop": (1e-3,), "adam": (1e-3,), "adagrad": (1e-3,), "sgd": (1e-3,)},
    "momentum": {"rmsprop": (0.0,), "sgd": (0.0,)},
}
"""The values an axis takes for an optimizer when the grid does not give it."""

DIAGNOSTICS = ("eps_dominated", "eps_dominated_mean", "effective_lr")
"""What eps did (docs/conventions.md): share of moving parameters whose eps term exceeds the
gradient-statistics term at the end of training, that share averaged over training, and the
median effective step lr / denominator at the end. None for sgd (no denominator)."""

METRICS = ("final_loss", "val_loss", "val_accuracy", *DIAGNOSTICS)
"""Per-run numbers, each folded over seeds into a mean and a ``*_std``."""

HIGHER_IS_BETTER = frozenset({"val_accuracy"})

LABELS = {
    "final_loss": "final loss", "val_loss": "val loss", "val_accuracy": "val acc",
    "eps_dominated": "eps-dom end", "eps_dominated_mean": "eps-dom", "effective_lr": "effective lr",
}

SHARES = frozenset({"eps_dominated", "eps_dominated_mean"})
"""Fields that are shares from 0 to 1 (shown with 3 decimals)."""

EPS_DOM_DEFINITION = ("eps-dom: the share (0 to 1) of moving parameters whose denominator eps dominates, "
                      "averaged over training (record field eps_dominated_mean)")
"""What the "eps-dom" column of a table shows, as ``--help`` and the docs define it."""

OPTIMIZER_TITLES = {"rmsprop": "RMSProp", "adam": "Adam", "adagrad": "Adagrad", "sgd": "SGD"}
"""How titles name each optimizer."""

def uses_axis(optimizer: str, axis: str) -> bool:
    """Whether ``optimizer``'s update reads grid ``axis`` (an unknown optimizer: yes).

    Example:
        >>> uses_axis("sgd", "eps"), uses_axis("adam", "decay"), uses_axis("rmsprop", "momentum")
        (False, True, True)
    """
    return axis in AXIS_ROLES.get(optimizer, GRID_AXES)


def axis_title(axis: str, optimizers) -> str:
    """A column name for grid ``axis`` over rows of these ``optimizers``: what it means for
    the ones that use it (``b2`` for Adam's decay, ``decay/b2`` for RMSProp and Adam).

    Example:
        >>> axis_title("decay", ["adam"]), axis_title("decay", ["rmsprop", "adam"]), axis_title("lr", ["sgd"])
        ('b2', 'decay/b2', 'lr')
    """
    names = [AXIS_ROLES.get(o, {}).get(axis, axis) for o in canonical_order(optimizers) if uses_axis(o, axis)]
    return "/".join(dict.fromkeys(names)) or axis


def canonical_order(optimizers) -> list:
    """Distinct optimizer names in :data:`OPTIMIZER_NAMES` order (unknown names last, as given)."""
    distinct = list(dict.fromkeys(optimizers))
    rank = {name: i for i, name in enumerate(OPTIMIZER_NAMES)}
    return sorted(distinct, key=lambda name: rank.get(name, len(rank)))


def optimizer_title(name: str) -> str:
    """``RMSProp`` for ``rmsprop``; an unknown name as it is."""
    return OPTIMIZER_TITLES.get(name, name)


class UpdateRule(NamedTuple):
    """An optimizer and, for RMSProp, the framework convention of its update: one compiled
    program trains every setting that shares it."""

    optimizer: str
    convention: str

    def describe(self) -> str:
        """``"tf1"`` for RMSProp conventions, the optimizer's name otherwise."""
        return self.convention if self.optimizer == "rmsprop" else self.optimizer


def label(field: str) -> str:
    """How a table or plot names a record field (``val_accuracy`` -> ``val acc``).

    Args:
        field: a record field name.

    Returns:
        The short label, or the name with spaces for underscores.

    Example:
        >>> label("val_accuracy"), label("diverged_step")
        ('val acc', 'diverged step')
    """
    return LABELS.get(field, field.replace("_", " "))


NARROW_FLOATS = ("float32", "float16", "bfloat16")


def as_float32(value: float) -> float:
    """``value`` rounded to the nearest float32 (as the engine takes it), inf beyond its range.

    Example:
        >>> as_float32(0.1), as_float32(1e39)
        (0.10000000149011612, inf)
    """
    try:
        single = struct.unpack("f", struct.pack("f", value))[0]
    except OverflowError:  # where a Python raises rather than rounding to inf
        return math.copysign(math.inf, value)
    return single


def float32_change(value: float) -> str | None:
    """How the engine's float32 changes a finite ``value``: "overflow" (to inf), "zero" (it
    rounds to 0), "subnormal" (which XLA on CPU flushes to 0), or None (it holds it).

    Example:
        >>> float32_change(1e39), float32_change(1e-50), float32_change(1e-40), float32_change(0.1)
        ('overflow', 'zero', 'subnormal', None)
    """
    single = as_float32(value)
    if math.isinf(single):
        return "overflow"
    if value != 0 and abs(single) < FLOAT32_TINY:
        return "zero" if single == 0 else "subnormal"
    return None


def plain_scalar(value: Any) -> Any:
    """A NumPy or JAX scalar (a 0-d array) as its Python value, and one of a narrower float
    type (:data:`NARROW_FLOATS`) as the shortest decimal that is the same number in its own
    type: ``np.float32(0.1)`` is 0.1, the value as typed, not its float64 expansion
    0.10000000149011612 (which would name another setting than a plain 0.1); anything else as
    it is.

    Example:
        >>> import numpy as np
        >>> plain_scalar(np.int64(3)), plain_scalar(np.array(0.5)), plain_scalar([1]), plain_scalar(np.float32(0.1))
        (3, 0.5, [1], 0.1)
    """
    if not (hasattr(value, "__array__") and getattr(value, "ndim", None) == 0):
        return value
    if str(value.dtype) not in NARROW_FLOATS:
        return value.item()
    import numpy as np

    value = np.asarray(value)
    exact = float(value)
    with np.errstate(over="ignore"):  # a rounded-up candidate past the type's largest reads back as inf
        for digits in range(1, 10):  # 9 significant digits tell every float32 apart
            shortest = float(f"{exact:.{digits - 1}e}")
            if np.asarray(shortest).astype(value.dtype) == value:  # the type reads it back as the same number
                return shortest
    return exact  # NaN, which equals nothing


def is_number(value: Any) -> bool:
    """A real number: an int or float, but not a bool.

    Example:
        >>> is_number(1e-8), is_number(True), is_number("1")
        (True, False, False)
    """
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_convention(convention: str) -> str:
    """``convention`` if it names an RMSProp convention, else a :class:`UserError`."""
    if convention not in CONVENTION_NAMES:
        raise UserError(f"{param('convention')}: unknown convention {quoted(convention)}; "
                        f"choose from {', '.join(CONVENTION_NAMES)}")
    return convention


def check_optimizer(name: str) -> str:
    """``name`` if it names an optimizer, else a :class:`UserError`."""
    if name not in OPTIMIZER_NAMES:
        raise UserError(f"{param('optimizer')}: unknown optimizer {quoted(name)}; "
                        f"choose from {', '.join(OPTIMIZER_NAMES)}")
    return name
