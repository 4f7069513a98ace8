"""The vmapped training engine: a whole grid of runs trained by one compiled program.

Layout of one program call: hyperparameters ``h`` are arrays of shape (G,) (a chunk of the
grid), seeds an array of shape (S,). Runs form an (S, G) block: the outer ``vmap`` is over
seeds, the inner over configurations, ``lax.scan`` over steps. Everything that depends only
on the seed (initial weights, minibatch order, dropout keys) is computed once per seed and
shared by that seed's configurations, so differences between them come from the
hyperparameters alone; sharing the minibatch also turns the first layer of every
configuration into one wide matrix product.

A run whose loss or update becomes non-finite is frozen at that step and reported with
``diverged_step``; the other runs are untouched (``vmap`` keeps them independent).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import threading
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from epsweep.optim import check_convention, rmsprop
from epsweep.tasks import Task

HPARAMS = ("eps", "decay", "lr", "momentum")

# --- compile counting ---------------------------------------------------------------

_compile_count = 0
_compile_lock = threading.Lock()


def _count_compile(event: str, duration: float, **kwargs: Any) -> None:
    global _compile_count
    if event == "/jax/core/compile/backend_compile_duration":
        with _compile_lock:
            _compile_count += 1


jax.monitoring.register_event_duration_secs_listener(_count_compile)


def compile_count() -> int:
    """How many XLA programs this process has compiled so far (all of JAX, not just ours)."""
    return _compile_count


# --- progress -------------------------------------------------------------------------

_progress_hook: Callable[[int], None] | None = None


def _report_progress(step: jax.Array) -> None:
    if _progress_hook is not None:
        _progress_hook(int(step))


@contextlib.contextmanager
def progress_hook(hook: Callable[[int], None] | None) -> Iterator[None]:
    """Call ``hook(step)`` from inside the running program every few steps."""
    global _progress_hook
    previous, _progress_hook = _progress_hook, hook
    try:
        yield
    finally:
        _progress_hook = previous


# --- settings and outputs -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """Everything about training that is fixed for a whole sweep (static in the program).

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
    progress_every: int = 0

    def __post_init__(self) -> None:
        check_convention(self.convention)
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be positive")

    @property
    def points(self) -> int:
        return max(1, min(self.curve_points, self.steps))


class RunOutputs(NamedTuple):
    """Per-run results, arrays with a leading (S, G) run block."""

    final_loss: np.ndarray  # mean training loss over the last curve segment; NaN if diverged
    val_loss: np.ndarray  # NaN when the task has no validation data
    val_accuracy: np.ndarray  # NaN when the task has no accuracy
    diverged_step: np.ndarray  # int, -1 when the run never diverged
    curve: np.ndarray  # (S, G, points): mean training loss per segment of steps


class _Carry(NamedTuple):
    params: Any
    model_state: Any
    opt_state: Any
    diverged_step: jax.Array
    curve_sum: jax.Array


# --- the program ----------------------------------------------------------------------


def _minibatch_order(seed: jax.Array, n_train: int, batch_size: int, steps: int) -> jax.Array:
    """(steps, batch) example indices: a fresh permutation each epoch, remainder dropped."""
    key = jax.random.fold_in(jax.random.key(seed), 1)
    per_epoch = n_train // batch_size
    epochs = math.ceil(steps / per_epoch)
    perms = jax.vmap(lambda e: jax.random.permutation(jax.random.fold_in(key, e), n_train))(jnp.arange(epochs))
    return perms[:, : per_epoch * batch_size].reshape(epochs * per_epoch, batch_size)[:steps]


def build_program(task: Task, settings: TrainSettings) -> Callable:
    """The pure function (h, seeds, data...) -> RunOutputs arrays, ready for ``jax.jit``."""
    points = settings.points
    bucket_of_step = jnp.asarray(np.arange(settings.steps) * points // settings.steps, jnp.int32)
    steps_per_bucket = np.bincount(np.arange(settings.steps) * points // settings.steps, minlength=points)
    update_rule = rmsprop(0.0, 0.0, 0.0, convention=settings.convention, centered=settings.centered)
    has_data = task.data is not None

    def init_run(seed, h):
        params, model_state = task.init(jax.random.fold_in(jax.random.key(seed), 0))

        def init_config(hc):
            optimizer = rmsprop(
                hc["lr"], hc["decay"], hc["eps"], momentum=hc["momentum"],
                convention=settings.convention, centered=settings.centered,
            )
            return _Carry(params, model_state, optimizer.init(params), jnp.int32(-1), jnp.zeros(points))

        return jax.vmap(init_config)(h)

    def learning_rate(hc, t):
        if settings.lr_decay_rate is None:
            return hc["lr"]
        return hc["lr"] * settings.lr_decay_rate ** jnp.floor(t / settings.lr_decay_steps)

    def train_step(carry: _Carry, hc, xb, yb, rng, t) -> _Carry:
        (loss, model_state), grads = jax.value_and_grad(task.loss, has_aux=True)(
            carry.params, carry.model_state, xb, yb, rng
        )
        if settings.clip_norm is not None:
            grad_norm = optax.tree.norm(grads)
            factor = jnp.minimum(1.0, settings.clip_norm / jnp.maximum(grad_norm, 1e-30))
            grads = jax.tree.map(lambda g: g * factor, grads)
        opt_state = carry.opt_state
        opt_state = opt_state._replace(hyperparams={**opt_state.hyperparams, "learning_rate": learning_rate(hc, t)})
        updates, opt_state = update_rule.update(grads, opt_state, carry.params)
        params = optax.apply_updates(carry.params, updates)
        alive = carry.diverged_step < 0
        finite = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(updates))
        keep = alive & finite
        new = jax.tree.map(lambda a, b: jnp.where(keep, a, b), (params, model_state, opt_state),
                           (carry.params, carry.model_state, carry.opt_state))
        diverged_step = jnp.where(alive & ~finite, t, carry.diverged_step)
        curve_sum = carry.curve_sum.at[bucket_of_step[t]].add(jnp.where(keep, loss, jnp.nan))
        return _Carry(*new, diverged_step, curve_sum)

    def evaluate_run(params, model_state, x_val, y_val, val_mask):
        def batch_sums(batch):
            xb, yb, mb = batch
            losses, correct = task.evaluate(params, model_state, xb, yb)
            return jnp.sum(losses * mb), jnp.sum(correct * mb)

        loss_sum, correct_sum = jax.lax.map(batch_sums, (x_val, y_val, val_mask))
        count = jnp.sum(val_mask)
        return jnp.sum(loss_sum) / count, jnp.sum(correct_sum) / count

    def program(h, seeds, x_train, y_train, x_val, y_val, val_mask):
        carry = jax.vmap(init_run, in_axes=(0, None))(seeds, h)
        steps = jnp.arange(settings.steps)
        if has_data:
            n_train = x_train.shape[0]
            order = jax.vmap(lambda s: _minibatch_order(s, n_train, settings.batch_size, settings.steps))(seeds)
            scan_inputs = (steps, jnp.swapaxes(order, 0, 1))
        else:
            scan_inputs = (steps, jnp.zeros((settings.steps, seeds.shape[0]), jnp.int32))

        def body(carry, inputs):
            t, index_by_seed = inputs

            def per_seed(carry_s, index, seed):
                xb = x_train[index] if has_data else None
                yb = y_train[index] if has_data else None
                rng = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 2), t)
                return jax.vmap(train_step, in_axes=(0, 0, None, None, None, None))(carry_s, h, xb, yb, rng, t)

            carry = jax.vmap(per_seed)(carry, index_by_seed, seeds)
            if settings.progress_every:
                jax.lax.cond(
                    (t + 1) % settings.progress_every == 0,
                    lambda: jax.debug.callback(_report_progress, t + 1),
                    lambda: None,
                )
            return carry, None

        carry, _ = jax.lax.scan(body, carry, scan_inputs)
        curve = carry.curve_sum / jnp.asarray(steps_per_bucket, jnp.float32)
        final_loss = curve[..., -1]
        if has_data and task.evaluate is not None and x_val.shape[0] > 0:
            run_eval = jax.vmap(jax.vmap(evaluate_run, in_axes=(0, 0, None, None, None)),
                                in_axes=(0, 0, None, None, None))
            val_loss, val_accuracy = run_eval(carry.params, carry.model_state, x_val, y_val, val_mask)
            if not task.has_accuracy:
                val_accuracy = jnp.full_like(val_loss, jnp.nan)
        else:
            val_loss = val_accuracy = jnp.full(final_loss.shape, jnp.nan)
        return RunOutputs(final_loss, val_loss, val_accuracy, carry.diverged_step, curve)

    return program


_programs: dict[tuple, Callable] = {}


def compiled_program(task: Task, settings: TrainSettings) -> Callable:
    """The jitted program for (task, settings), shared by every sweep that matches."""
    key = (task.key, settings)
    if key not in _programs:
        _programs[key] = jax.jit(build_program(task, settings))
    return _programs[key]


# --- driver -----------------------------------------------------------------------------


def _validation_batches(task: Task, eval_batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validation data padded to whole batches: (batches, batch, ...) plus a 0/1 mask."""
    if task.data is None or len(task.data.x_val) == 0:
        return np.zeros((0, 1)), np.zeros((0, 1), np.int32), np.zeros((0, 1), np.float32)
    x, y = task.data.x_val, task.data.y_val
    batch = min(eval_batch_size, len(x))
    batches = math.ceil(len(x) / batch)
    pad = batches * batch - len(x)
    mask = np.concatenate([np.ones(len(x), np.float32), np.zeros(pad, np.float32)])
    x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
    y = np.concatenate([y, np.zeros(pad, y.dtype)])
    return (x.reshape(batches, batch, *x.shape[1:]), y.reshape(batches, batch), mask.reshape(batches, batch))


def train_runs(
    task: Task,
    settings: TrainSettings,
    hparams: dict[str, np.ndarray],
    seeds: np.ndarray,
    *,
    chunk_size: int | None = None,
    on_chunk: Callable[[int, int, RunOutputs], None] | None = None,
) -> RunOutputs:
    """Train every (seed, configuration) pair; returns arrays with a leading (S, G) block.

    Configurations go through the compiled program ``chunk_size`` at a time (all of them by
    default); the last chunk is padded by repeating its final configuration so that every
    call has the same shapes and the program compiles once. ``on_chunk(start, stop, outputs)``
    is called as each chunk finishes.
    """
    total = len(hparams["eps"])
    chunk = min(chunk_size or total, total)
    program = compiled_program(task, settings)
    if task.data is not None:
        x_train, y_train = jnp.asarray(task.data.x_train), jnp.asarray(task.data.y_train)
    else:
        x_train, y_train = jnp.zeros((1, 1)), jnp.zeros((1,), jnp.int32)
    x_val, y_val, val_mask = (jnp.asarray(a) for a in _validation_batches(task, settings.eval_batch_size))
    seeds_array = jnp.asarray(np.asarray(seeds, np.uint32))
    pieces: list[RunOutputs] = []
    for start in range(0, total, chunk):
        stop = min(start + chunk, total)
        index = np.minimum(np.arange(start, start + chunk), total - 1)
        h = {name: jnp.asarray(np.asarray(hparams[name], np.float32)[index]) for name in HPARAMS}
        out = program(h, seeds_array, x_train, y_train, x_val, y_val, val_mask)
        out = RunOutputs(*(np.asarray(a)[:, : stop - start] for a in out))
        pieces.append(out)
        if on_chunk is not None:
            on_chunk(start, stop, out)
    return RunOutputs(*(np.concatenate(parts, axis=1) for parts in zip(*pieces)))
