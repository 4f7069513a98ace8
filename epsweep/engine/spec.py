"""What the compiled programs are built for: the training specification fixed for a whole sweep,
and the per-run outputs they return."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np

from epsweep.config import RunConfig
from epsweep.errors import UserError, param
from epsweep.tasks.task import Task
from epsweep.vocabulary import GRID_AXES, UpdateRule, check_convention, check_optimizer

HPARAMS = (*GRID_AXES, "one_minus_decay")  # the traced hyperparameters, one value per setting
MAX_STEPS = 10_000_000  # step indices and curve buckets stay exact in int32 below this
MAX_CURVE_POINTS = 200
DIAGNOSTIC_POINTS = 50  # steps at which the eps-dominated share is measured (evenly spaced, last included)


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    """Everything about training that is fixed for a whole sweep (static in the programs).

    The learning rate at step t is ``lr * lr_decay_rate ** floor(t / lr_decay_steps)`` when
    a decay is set (TF's staircase ``exponential_decay``). ``clip_norm`` clips the gradient's
    global norm before the optimizer sees it.
    """

    steps: int
    batch_size: int
    convention: str = "optax"
    centered: bool = False
    curve_points: int = 50
    eval_batch_size: int = 512
    clip_norm: float | None = None
    lr_decay_rate: float | None = None
    lr_decay_steps: int | None = None
    optimizer: str = "rmsprop"  # rmsprop, adam, adagrad or sgd; convention and centered: rmsprop only
    momentum: bool = True  # False: every momentum is 0, so no momentum buffer (the same numbers, less work)

    def __post_init__(self) -> None:
        check_convention(self.convention)
        check_optimizer(self.optimizer)
        if not 1 <= self.steps <= MAX_STEPS:
            raise ValueError(f"steps must lie in [1, {MAX_STEPS}]")
        if self.batch_size < 1 or not 1 <= self.curve_points <= MAX_CURVE_POINTS:
            raise ValueError(f"batch_size must be positive and curve_points in [1, {MAX_CURVE_POINTS}]")

    @property
    def points(self) -> int:
        return max(1, min(self.curve_points, self.steps))

    @property
    def diagnostic_every(self) -> int:
        """Steps between two measurements of the eps diagnostics."""
        return max(1, self.steps // DIAGNOSTIC_POINTS)

    def next_measured(self, t):
        """The first step from ``t`` on (an int or a traced array) after which the eps diagnostics
        are measured: every ``diagnostic_every`` steps counted back from the last, which is
        always among them."""
        return t + (self.steps - 1 - t) % self.diagnostic_every

    def measured(self, t: int) -> bool:
        """Whether the eps diagnostics are measured after step ``t``."""
        return self.next_measured(t) == t

    def steps_per_point(self) -> np.ndarray:
        """How many steps each point of the loss curve averages: step t belongs to point
        ``t * points // steps``."""
        edges = -(-np.arange(self.points + 1) * self.steps // self.points)  # ceil(b * steps / points)
        return np.diff(edges)


class RunOutputs(NamedTuple):
    """Per-run results, arrays with a leading (S, G) block: seeds by settings."""

    final_loss: np.ndarray  # mean training loss over the last curve segment; NaN if diverged
    val_loss: np.ndarray  # NaN when the task has no validation data
    val_accuracy: np.ndarray  # the task's metric on the validation data; NaN when it has none
    diverged_step: np.ndarray  # int, -1 when the run never diverged
    curve: np.ndarray  # (S, G, points): mean training loss per segment of steps
    # what eps did (docs/conventions.md), over the parameters the gradient moves (g != 0); NaN for sgd:
    eps_dominated: np.ndarray  # share with eps term > gradient-statistics term after the last step
    eps_dominated_mean: np.ndarray  # that share averaged over the steps trained (before any divergence)
    effective_lr: np.ndarray  # median of lr / denominator after the last step


def program_hyperparameters(hparams: dict) -> dict[str, np.ndarray]:
    """The programs' float32 :data:`HPARAMS` from the grid's values (float64 arrays by axis):
    each rounded to float32, and 1 - decay taken in double first, as optax, PyTorch and Keras
    take it from a Python float (from float32 decay it is 1.3e-5 off at 0.999)."""
    values = {name: np.asarray(hparams[name], np.float64) for name in GRID_AXES}
    values["one_minus_decay"] = 1.0 - values["decay"]
    return {name: value.astype(np.float32) for name, value in values.items()}


def program_shape(task: Task, spec: TrainSpec) -> tuple:
    """What a task's compiled programs depend on besides its functions and the devices: the
    data's shapes and dtypes, how it is trained on CPU, its metric and the training spec. One
    tuple, so the in-memory program key and the on-disk export key never list different things."""
    return (task.data_signature(), task.loop_free_on_cpu, task.settings_per_cpu_device, task.metric_name, spec)


def resolve_spec(task: Task, config: RunConfig, rule: UpdateRule, momentum: bool = True) -> TrainSpec:
    """The engine's static :class:`~epsweep.engine.spec.TrainSpec` for ``rule``: the config's
    steps/epochs/batch size resolved against the task's data and defaults; ``momentum``: whether
    any setting has a non-zero momentum."""
    batch_size = config.batch_size or task.default_batch_size
    n_train = len(task.data.x_train) if task.data is not None else None
    if n_train is not None:
        batch_size = min(batch_size, n_train)
    steps_per_epoch = n_train // batch_size if n_train is not None else 1
    if config.steps is not None:
        steps = config.steps
    elif config.epochs is not None:
        if task.data is None:
            raise UserError(f"task {task.name} has no data, so no epochs; use {param('steps')}")
        steps = config.epochs * steps_per_epoch
        if steps > MAX_STEPS:
            raise UserError(f"{param('epochs')}: {config.epochs} epochs of {steps_per_epoch} steps is more than "
                            f"{MAX_STEPS:,} steps")
    else:
        steps = task.default_steps or (task.default_epochs or 1) * steps_per_epoch
    decay_steps = None
    if config.lr_decay_rate is not None:
        epochs = config.lr_decay_epochs if config.lr_decay_epochs is not None else 1.0
        decay_steps = max(1, min(MAX_STEPS, round(epochs * steps_per_epoch)))
    return TrainSpec(
        steps=steps, batch_size=batch_size, convention=rule.convention,
        centered=config.centered and rule.optimizer == "rmsprop", optimizer=rule.optimizer,
        curve_points=config.curve_points, clip_norm=config.clip_norm, lr_decay_rate=config.lr_decay_rate,
        eval_batch_size=task.eval_batch_size, lr_decay_steps=decay_steps, momentum=momentum,
    )


def by_program(todo: dict, specs: dict) -> list[tuple]:
    """(rule, spec, settings) per program: a rule's settings with momentum 0 train without a
    momentum buffer even when others of the sweep have one, so that their numbers are bitwise
    those of a sweep without momentum (m = 0*m + u is u, but XLA rounds the two programs
    differently)."""
    groups = []
    for rule, chosen in todo.items():
        spec = specs[rule]
        if spec.momentum:
            zero = [s for s in chosen if not s["momentum"]]
            groups.append((rule, dataclasses.replace(spec, momentum=False), zero))
            chosen = [s for s in chosen if s["momentum"]]
        groups.append((rule, spec, chosen))
    return [group for group in groups if group[2]]
