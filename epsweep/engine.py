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
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from epsweep import memory, parallel
from epsweep.optim import (
    check_convention, check_optimizer, denominator_terms, eps_dominated_share, effective_lr_median, make_optimizer,
    moving_parameters,
)
from epsweep.tasks import Task

HPARAMS = ("eps", "decay", "lr", "momentum")
CONFIG_AXIS = "config"  # the mesh axis the configurations are split across
DIAGNOSTIC_POINTS = 50  # steps at which the eps-dominated share is measured (evenly spaced, last included)

# --- compile counting ---------------------------------------------------------------

_compile_count = 0
_compile_seconds = 0.0
_cache_loads = 0
_compile_lock = threading.Lock()
_cache_hit = threading.local()  # set between a persistent-cache hit and the end of its "compile"


def _note_cache_hit(event: str, **kwargs: Any) -> None:
    if event == "/jax/compilation_cache/cache_hits":
        _cache_hit.pending = True


def _count_compile(event: str, duration: float, **kwargs: Any) -> None:
    global _compile_count, _compile_seconds, _cache_loads
    if event == "/jax/core/compile/backend_compile_duration":  # also sent when the cache had the program
        with _compile_lock:
            if getattr(_cache_hit, "pending", False):
                _cache_hit.pending = False
                _cache_loads += 1
            else:
                _compile_count += 1
                _compile_seconds += duration


jax.monitoring.register_event_listener(_note_cache_hit)
jax.monitoring.register_event_duration_secs_listener(_count_compile)


def compile_count() -> int:
    """How many XLA programs this process has compiled so far (all of JAX, not just ours);
    programs loaded from the persistent compilation cache are not counted."""
    return _compile_count


def compile_seconds() -> float:
    """Seconds this process has spent compiling XLA programs so far."""
    return _compile_seconds


def cache_loads() -> int:
    """How many programs this process has loaded from the persistent compilation cache."""
    return _cache_loads


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
    optimizer: str = "rmsprop"  # rmsprop, adam, adagrad or sgd; convention and centered: rmsprop only

    def __post_init__(self) -> None:
        check_convention(self.convention)
        check_optimizer(self.optimizer)
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
    # what eps did (docs/conventions.md), over the parameters the gradient moves (g != 0); NaN for sgd:
    eps_dominated: np.ndarray  # share with eps term > gradient-statistics term after the last step
    eps_dominated_mean: np.ndarray  # that share averaged over the steps trained (before any divergence)
    effective_lr: np.ndarray  # median of lr / denominator after the last step


class _Carry(NamedTuple):
    params: Any
    model_state: Any
    opt_state: Any
    diverged_step: jax.Array
    curve_sum: jax.Array
    eps_dom_sum: jax.Array  # sum over kept steps of the eps-dominated share
    eps_dom_steps: jax.Array  # how many steps that sum holds
    eps_dom_last: jax.Array  # the share at the last kept step
    effective_lr: jax.Array  # median lr / denominator after the last step


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
    update_rule = make_optimizer(settings.optimizer, 0.0, 0.0, 0.0, convention=settings.convention,
                                 centered=settings.centered)
    has_denominator = settings.optimizer != "sgd"
    diagnostic_every = max(1, settings.steps // DIAGNOSTIC_POINTS)
    has_data = task.data is not None
    trainable = task.trainable_mask()

    def init_run(seed, h, constants):
        init_key = jax.random.fold_in(jax.random.key(seed), 0)
        params, model_state = task.init(init_key) if constants is None else task.init(init_key, constants)

        def init_config(hc):
            optimizer = make_optimizer(
                settings.optimizer, hc["lr"], hc["decay"], hc["eps"], momentum=hc["momentum"],
                convention=settings.convention, centered=settings.centered,
            )
            return _Carry(params, model_state, optimizer.init(params), jnp.int32(-1), jnp.zeros(points),
                          jnp.float32(0), jnp.int32(0), jnp.float32(jnp.nan), jnp.float32(jnp.nan))

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
        if trainable is not None:  # frozen parameters never move
            updates = jax.tree.map(lambda u, train: u if train else jnp.zeros_like(u), updates, trainable)
        params = optax.apply_updates(carry.params, updates)
        alive = carry.diverged_step < 0
        finite = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(updates))
        keep = alive & finite
        new = jax.tree.map(lambda a, b: jnp.where(keep, a, b), (params, model_state, opt_state),
                           (carry.params, carry.model_state, carry.opt_state))
        diverged_step = jnp.where(alive & ~finite, t, carry.diverged_step)
        curve_sum = carry.curve_sum.at[bucket_of_step[t]].add(jnp.where(keep, loss, jnp.nan))
        eps_dom = (carry.eps_dom_sum, carry.eps_dom_steps, carry.eps_dom_last, carry.effective_lr)
        if has_denominator:
            def measure(_):
                moving = moving_parameters(grads, trainable)
                terms = denominator_terms(opt_state, settings.optimizer, settings.convention)
                share = eps_dominated_share(terms, moving)
                counted = keep & jnp.isfinite(share)  # NaN when no parameter moved
                effective_lr = jax.lax.cond(  # a sort: only at the last step
                    t == settings.steps - 1,
                    lambda _: effective_lr_median(terms, opt_state.hyperparams["learning_rate"], moving),
                    lambda _: carry.effective_lr, None)
                return (carry.eps_dom_sum + jnp.where(counted, share, 0.0), carry.eps_dom_steps + counted,
                        jnp.where(keep, share, carry.eps_dom_last), jnp.where(keep, effective_lr, carry.effective_lr))

            # t is shared by every run, so under vmap this stays a branch: the cost is paid on
            # about DIAGNOSTIC_POINTS steps only, the last one always among them
            eps_dom = jax.lax.cond((settings.steps - 1 - t) % diagnostic_every == 0, measure, lambda _: eps_dom, None)
        return _Carry(*new, diverged_step, curve_sum, *eps_dom)

    def evaluate_run(params, model_state, x_val, y_val, val_mask):
        def batch_sums(batch):
            xb, yb, mb = batch
            losses, correct = task.evaluate(params, model_state, xb, yb)
            return jnp.sum(losses * mb), jnp.sum(correct * mb)

        loss_sum, correct_sum = jax.lax.map(batch_sums, (x_val, y_val, val_mask))
        count = jnp.sum(val_mask)
        return jnp.sum(loss_sum) / count, jnp.sum(correct_sum) / count

    def program(h, seeds, x_train, y_train, x_val, y_val, val_mask, constants=None):
        carry = jax.vmap(init_run, in_axes=(0, None, None))(seeds, h, constants)
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
        if has_denominator:
            effective_lr = carry.effective_lr
            eps_dominated = carry.eps_dom_last
            eps_dominated_mean = carry.eps_dom_sum / carry.eps_dom_steps
        else:
            eps_dominated = eps_dominated_mean = effective_lr = jnp.full(final_loss.shape, jnp.nan)
        return RunOutputs(final_loss, val_loss, val_accuracy, carry.diverged_step, curve,
                          eps_dominated, eps_dominated_mean, effective_lr)

    return program


_programs: dict[tuple, Callable] = {}


def compiled_program(task: Task, settings: TrainSettings, devices: Sequence[jax.Device] | None = None) -> Callable:
    """The jitted program for (task, settings) on ``devices`` (default: the first device),
    shared by every sweep that matches.

    The configuration axis is split across the devices with ``shard_map`` over a one-axis
    mesh (``config``): each device trains its share of the chunk with the single-device
    program, with the data and seeds replicated, and nothing is communicated.
    """
    devices = tuple(devices) if devices is not None else (jax.devices()[0],)
    key = (task.key, settings, tuple(d.id for d in devices))
    if key not in _programs:
        mesh = Mesh(np.array(devices), (CONFIG_AXIS,))
        in_specs = (P(CONFIG_AXIS),) + (P(),) * 7  # h; seeds, data, constants
        out_specs = RunOutputs(*[P(None, CONFIG_AXIS)] * len(RunOutputs._fields))  # (S, G, ...)
        sharded = jax.shard_map(build_program(task, settings), mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                                check_vma=False)
        _programs[key] = jax.jit(sharded)
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
    devices: Sequence[jax.Device] | None = None,
) -> RunOutputs:
    """Train every (seed, configuration) pair; returns arrays with a leading (S, G) block.

    Configurations go through the compiled program a chunk at a time, split across
    ``devices`` (default: every device, in every process; no more than there are settings in
    a single process). The chunk size is ``chunk_size`` rounded up to a multiple of the device
    count, or else chosen from the memory one configuration needs (:mod:`epsweep.memory`).
    The last chunk is padded by repeating the final configuration so that every call has the
    same shapes and the program compiles once. Each chunk is dispatched before the previous
    one is collected, so the devices never wait for the host. ``on_chunk(start, stop,
    outputs)`` is called as each chunk finishes (in every process).
    """
    total = len(hparams["eps"])
    devices = parallel.config_devices(total, devices)
    chunk = memory.plan_chunk(total, len(seeds), devices, _estimate(task, settings), chunk_size)
    program = compiled_program(task, settings, devices)
    mesh = Mesh(np.array(devices), (CONFIG_AXIS,))
    by_config, replicated = NamedSharding(mesh, P(CONFIG_AXIS)), NamedSharding(mesh, P())
    if task.data is not None:
        x_train, y_train = task.data.x_train, task.data.y_train
    else:
        x_train, y_train = np.zeros((1, 1), np.float32), np.zeros((1,), np.int32)
    data = (np.asarray(seeds, np.uint32), x_train, y_train, *_validation_batches(task, settings.eval_batch_size))
    data = tuple(_global_array(a, replicated) for a in data)
    constants = jax.tree.map(lambda a: _global_array(a, replicated), task.constants)
    pieces: list[RunOutputs] = []

    def collect(start: int, stop: int, out: RunOutputs) -> None:
        out = RunOutputs(*(a[:, : stop - start] for a in parallel.gather(out)))
        pieces.append(out)
        if on_chunk is not None:
            on_chunk(start, stop, out)

    pending = None
    for start in range(0, total, chunk):
        index = np.minimum(np.arange(start, start + chunk), total - 1)
        h = {name: _global_array(np.asarray(hparams[name], np.float32)[index], by_config) for name in HPARAMS}
        out = program(h, *data, constants)
        if pending is not None:
            collect(*pending)
        pending = (start, min(start + chunk, total), out)
    collect(*pending)
    return RunOutputs(*(np.concatenate(parts, axis=1) for parts in zip(*pieces, strict=True)))


def _global_array(value: Any, sharding: NamedSharding) -> jax.Array:
    """A host array placed on the mesh; every process holds the whole value and gives its part."""
    value = np.asarray(value)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


_estimates: dict[tuple, memory.Estimate] = {}


def _estimate(task: Task, settings: TrainSettings) -> memory.Estimate:
    key = (task.key, settings)
    if key not in _estimates:
        _estimates[key] = memory.estimate(task, settings)
    return _estimates[key]
