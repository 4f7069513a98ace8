"""How every setting of a sweep is trained: :class:`RunConfig`, checked when it is made.

Nothing here imports JAX: a configuration can be built and checked before anything starts.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Sequence

from epsweep.errors import UserError, param, quoted
from epsweep.vocabulary import (
    FLOAT32_MAX,
    FLOAT32_TINY,
    UpdateRule,
    check_convention,
    check_optimizer,
    float32_change,
    plain_scalar,
)

MAX_SEEDS = 10_000
MAX_STEPS = 10_000_000  # step indices and curve buckets stay exact in int32 below this (engine.spec)
MAX_CURVE_POINTS = 200
MAX_CHUNK_SIZE = 1_000_000


def _real(name: str, value: object, in_float32: bool = True) -> float | None:
    """A real-number option as a Python float (NumPy and JAX scalars as typed), or None; one the
    engine takes ``in_float32`` must stay itself there (not overflow, not flush to 0)."""
    value = plain_scalar(value)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise UserError(f"{param(name)}: {value!r} is not a finite number")
    try:
        number = float(value)
    except OverflowError:  # an int past float64's range
        number = math.inf
    if not math.isfinite(number):
        shown = quoted(str(value)) if isinstance(value, numbers.Integral) else repr(value)  # an int may be 10**400
        raise UserError(f"{param(name)}: {shown} is not a finite number")
    change = float32_change(number) if in_float32 else None
    if change == "overflow":
        raise UserError(f"{param(name)}: {number!r} overflows float32, which the engine trains in; "
                        f"use at most {FLOAT32_MAX:.8g}")
    if change is not None:
        what = "becomes 0 in float32" if change == "zero" else "is a subnormal float32, which the engine flushes to 0"
        raise UserError(f"{param(name)}: {number!r} {what}; use at least {FLOAT32_TINY:.8g}")
    return number


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """How every setting of a sweep is trained.

    Give ``steps`` or ``epochs`` (not both); with neither, the task's default applies. Seeds
    are ``first_seed, first_seed + 1, ...``; every setting is trained once per seed and update
    rule: ``optimizers`` times ``conventions`` (RMSProp only; other optimizers follow optax).
    ``curve_points``: the loss curve's points, each the mean loss over its 1/curve_points of
    training; the final loss is the last point's (so it depends on them: 50 by default, as the
    command line's "last 1/50").

    Example:
        >>> RunConfig(steps=100, seeds=3, conventions=("optax", "tf1")).update_rules()
        [UpdateRule(optimizer='rmsprop', convention='optax'), UpdateRule(optimizer='rmsprop', convention='tf1')]
    """

    steps: int | None = None
    epochs: int | None = None
    batch_size: int | None = None
    seeds: int = 1
    first_seed: int = 0
    conventions: Sequence[str] = ("optax",)
    centered: bool = False
    curve_points: int = 50
    chunk_size: int | None = None
    clip_norm: float | None = None
    lr_decay_rate: float | None = None
    lr_decay_epochs: float | None = None
    optimizers: Sequence[str] = ("rmsprop",)  # rmsprop, adam, adagrad, sgd

    def __post_init__(self) -> None:
        for name in ("conventions", "optimizers"):  # one name alone is one name, not its letters
            given = getattr(self, name)
            object.__setattr__(self, name, (given,) if isinstance(given, str) else tuple(given))
        centered = plain_scalar(self.centered)
        if not (isinstance(centered, bool) or isinstance(centered, int) and centered in (0, 1)):
            raise UserError(f"{param('centered')}: {self.centered!r} must be True or False")
        object.__setattr__(self, "centered", bool(centered))
        if self.steps is not None and self.epochs is not None:
            raise UserError(f"give {param('steps')} or {param('epochs')}, not both")
        for name in ("steps", "epochs", "batch_size", "seeds", "curve_points", "chunk_size", "first_seed"):
            value = plain_scalar(getattr(self, name))
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):  # NumPy's integers too
                raise UserError(f"{param(name)}: {value!r} must be a whole number")
            object.__setattr__(self, name, int(value))
            if name != "first_seed" and value < 1:
                raise UserError(f"{param(name)}: {value!r} must be a positive integer")
        if self.seeds > MAX_SEEDS:
            raise UserError(f"{param('seeds')}: {self.seeds} is more than {MAX_SEEDS:,} seeds")
        if self.first_seed < 0 or self.first_seed + self.seeds > 2**32:
            raise UserError(f"{param('first_seed')}: {self.first_seed} must lie in [0, 2^32 - {self.seeds}] "
                            f"(the seeds are first_seed, first_seed + 1, ...)")
        if self.steps is not None and self.steps > MAX_STEPS:
            raise UserError(f"{param('steps')}: {self.steps} is more than {MAX_STEPS:,}")
        if self.batch_size is not None and self.batch_size > MAX_STEPS:
            raise UserError(f"{param('batch_size')}: {self.batch_size} is more than {MAX_STEPS:,}")
        if self.chunk_size is not None and self.chunk_size > MAX_CHUNK_SIZE:
            raise UserError(f"{param('chunk_size')}: {self.chunk_size} is more than {MAX_CHUNK_SIZE:,}")
        if not self.curve_points <= MAX_CURVE_POINTS:
            raise UserError(f"{param('curve_points')}: {self.curve_points} is more than {MAX_CURVE_POINTS}")
        for name in ("clip_norm", "lr_decay_rate", "lr_decay_epochs"):  # the epochs become a whole step count
            object.__setattr__(self, name, _real(name, getattr(self, name), in_float32=name != "lr_decay_epochs"))
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise UserError(f"{param('clip_norm')}: {self.clip_norm:g} must be > 0")
        if self.lr_decay_rate is not None and not 0 < self.lr_decay_rate <= 1:
            raise UserError(f"{param('lr_decay_rate')}: {self.lr_decay_rate:g} must lie in (0, 1]")
        if self.lr_decay_epochs is not None and not 0 < self.lr_decay_epochs <= MAX_STEPS:
            raise UserError(f"{param('lr_decay_epochs')}: {self.lr_decay_epochs:g} must lie in (0, {MAX_STEPS:,}]")
        if self.lr_decay_epochs is not None and self.lr_decay_rate is None:
            raise UserError(f"{param('lr_decay_epochs')} needs {param('lr_decay_rate')}")
        if not self.conventions:
            raise UserError(f"{param('conventions')}: no convention given")
        for convention in self.conventions:
            check_convention(convention)
        if not self.optimizers:
            raise UserError(f"{param('optimizers')}: no optimizer given")
        for optimizer in self.optimizers:
            check_optimizer(optimizer)

    def update_rules(self) -> list[UpdateRule]:
        """One :class:`~epsweep.vocabulary.UpdateRule` per compiled program: rmsprop once per
        convention, every other optimizer once (conventions are RMSProp's; the baselines
        follow optax's rules)."""
        rules = []
        for optimizer in dict.fromkeys(self.optimizers):
            conventions = dict.fromkeys(self.conventions) if optimizer == "rmsprop" else ("optax",)
            rules.extend(UpdateRule(optimizer, c) for c in conventions)
        return rules

    @property
    def seed_list(self) -> list[int]:
        """The seeds every setting is trained with."""
        return list(range(self.first_seed, self.first_seed + self.seeds))
