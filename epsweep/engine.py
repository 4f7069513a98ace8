"""The vmapped training engine: a whole grid of runs trained by one compiled program.

Layout: hyperparameters ``h`` are arrays of shape (G,) (a chunk of the grid), seeds an array
of shape (S,). Runs form an (S, G) block: the outer ``vmap`` is over seeds, the inner over
configurations, a ``lax.fori_loop`` over steps. Everything that depends only on the seed
(initial weights, minibatch order, dropout keys) is computed once per seed and shared by that
seed's configurations, so differences between them come from the hyperparameters alone;
sharing the minibatch also turns the first layer of every configuration into one wide matrix
product.

A chunk goes through three compiled programs, each compiled once per sweep and cached:

- ``init``: initial weights per seed, optimizer states per configuration, the first epoch's
  minibatch order;
- ``train``: steps ``t0 .. t1 - 1`` of every run at once (its state donated and returned). A
  sweep calls it once for all steps; with a progress display, for a few segments of steps,
  so that progress is read between calls and not by a host callback inside the program (JAX
  never caches programs with host callbacks on disk);
- ``finish``: validation loss and accuracy, the loss curve and the diagnostics.

A run whose loss or update becomes non-finite is frozen at that step and reported with
``diverged_step``; the other runs are untouched (``vmap`` keeps them independent).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import threading
from collections.abc import Callable, Sequence
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


# --- settings and outputs -------------------------------------------------------------

MAX_STEPS = 10_000_000  # step indices and curve buckets stay exact in int32 below this
MAX_CURVE_POINTS = 200
PROGRESS_UPDATES = 100  # with a progress display, about this many updates over a whole sweep


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
    optimizer: str = "rmsprop"  # rmsprop, adam, adagrad or sgd; convention and centered: rmsprop only

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

    def steps_per_point(self) -> np.ndarray:
        """How many steps each point of the loss curve averages: step t belongs to point
        ``t * points // steps``."""
        edges = -(-np.arange(self.points + 1) * self.steps // self.points)  # ceil(b * steps / points)
        return np.diff(edges)


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
    """One run's training state; in the programs every leaf has a leading (S, G) block."""

    params: Any
    model_state: Any
    opt_state: Any
    diverged_step: jax.Array
    curve_sum: jax.Array
    eps_dom_sum: jax.Array  # sum over measured steps of the eps-dominated share
    eps_dom_steps: jax.Array  # how many steps that sum holds
    eps_dom_last: jax.Array  # the share at the last measured step
    effective_lr: jax.Array  # median lr / denominator after the last step


class TrainState(NamedTuple):
    """What the ``train`` program carries from one call to the next."""

    runs: _Carry  # (S, G, ...)
    order: jax.Array  # (S, n_train): the current epoch's example order, per seed


class Programs(NamedTuple):
    """The jitted programs of a (task, settings, devices); see the module docstring."""

    init: Callable  # (h, seeds, constants) -> TrainState
    train: Callable  # (state, h, seeds, t0, t1, x_train, y_train) -> (state, t1)
    evaluate: Callable  # (state, loss sum, correct sum, x, y, mask of one validation batch) -> the sums + its
    finish: Callable  # (state, loss sum, correct sum, count) -> RunOutputs
    loop_free: bool  # train runs exactly one step per call (t0), the host looping; see build_programs


# --- the programs -----------------------------------------------------------------------


def _epoch_order(seed: jax.Array, epoch: jax.Array, n_train: int) -> jax.Array:
    """The order in which epoch ``epoch`` of seed ``seed`` visits the training examples."""
    key = jax.random.fold_in(jax.random.key(seed), 1)
    return jax.random.permutation(jax.random.fold_in(key, epoch), n_train).astype(jnp.int32)


def _flat(tree: Any) -> jax.Array:
    """Every element of a pytree in one vector. Whole-model reductions (norms, the eps
    diagnostics) then compile to a few fused loops instead of one per parameter array, which
    matters for compile time with hundreds of arrays (Inception-v3 has 472)."""
    return jnp.concatenate([jnp.ravel(leaf) for leaf in jax.tree.leaves(tree)])


def _global_norm(tree: Any) -> jax.Array:
    return jnp.sqrt(jnp.sum(jnp.square(_flat(tree))))


def build_programs(task: Task, settings: TrainSettings, loop_free: bool = False) -> tuple[Callable, ...]:
    """The pure functions behind :class:`Programs` (unjitted, unsharded): init, train,
    evaluate, finish.

    Minibatches: each epoch visits the training examples in a fresh random order per seed;
    step t takes the ``t % (n_train // batch)``-th batch of epoch ``t // (n_train // batch)``
    (the remainder of an epoch is dropped).

    ``loop_free``: ``train`` takes the one step ``t0`` instead of looping over ``t0 .. t1 - 1``.
    XLA's CPU backend runs convolutions inside a loop several times slower than the same
    convolutions outside one (jax-ml/jax#12868; an Inception-v3 step here: 1.3 s alone, 7.4 s
    as the body of a one-iteration ``fori_loop``), so on CPU the engine drives models with
    convolutions one step per call (``Task.loop_free_on_cpu``). Everything else is the same
    program, and so are the numbers.
    """
    points = settings.points
    steps = settings.steps
    steps_per_point = settings.steps_per_point().astype(np.float32)
    update_rule = make_optimizer(settings.optimizer, 0.0, 0.0, 0.0, convention=settings.convention,
                                 centered=settings.centered)
    has_denominator = settings.optimizer != "sgd"
    diagnostic_every = max(1, steps // DIAGNOSTIC_POINTS)
    has_data = task.data is not None
    n_train = len(task.data.x_train) if has_data else 1
    batches_per_epoch = max(1, n_train // settings.batch_size)
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

    def init(h, seeds, constants=None):
        runs = jax.vmap(init_run, in_axes=(0, None, None))(seeds, h, constants)
        order = jax.vmap(_epoch_order, in_axes=(0, None, None))(seeds, jnp.int32(0), n_train)
        return TrainState(runs, order)

    def learning_rate(hc, t):
        if settings.lr_decay_rate is None:
            return hc["lr"]
        return hc["lr"] * settings.lr_decay_rate ** jnp.floor(t / settings.lr_decay_steps)

    def train_step(carry: _Carry, hc, xb, yb, rng, t) -> _Carry:
        (loss, model_state), grads = jax.value_and_grad(task.loss, has_aux=True)(
            carry.params, carry.model_state, xb, yb, rng
        )
        if settings.clip_norm is not None:
            grad_norm = _global_norm(grads)
            factor = jnp.minimum(1.0, settings.clip_norm / jnp.maximum(grad_norm, 1e-30))
            grads = jax.tree.map(lambda g: g * factor, grads)
        opt_state = carry.opt_state
        opt_state = opt_state._replace(hyperparams={**opt_state.hyperparams, "learning_rate": learning_rate(hc, t)})
        updates, opt_state = update_rule.update(grads, opt_state, carry.params)
        if trainable is not None:  # frozen parameters never move
            updates = jax.tree.map(lambda u, train: u if train else jnp.zeros_like(u), updates, trainable)
        params = optax.apply_updates(carry.params, updates)
        alive = carry.diverged_step < 0
        finite = jnp.isfinite(loss) & jnp.isfinite(_global_norm(updates))
        keep = alive & finite
        new = jax.tree.map(lambda a, b: jnp.where(keep, a, b), (params, model_state, opt_state),
                           (carry.params, carry.model_state, carry.opt_state))
        diverged_step = jnp.where(alive & ~finite, t, carry.diverged_step)
        curve_sum = carry.curve_sum.at[t * points // steps].add(jnp.where(keep, loss, jnp.nan))
        eps_dom = (carry.eps_dom_sum, carry.eps_dom_steps, carry.eps_dom_last, carry.effective_lr)
        if has_denominator:
            def measure(_):
                moving = _flat(moving_parameters(grads, trainable))
                terms = denominator_terms(opt_state, settings.optimizer, settings.convention)
                terms = terms._replace(stat=_flat(terms.stat), denominator=_flat(terms.denominator))
                share = eps_dominated_share(terms, moving)
                counted = keep & jnp.isfinite(share)  # NaN when no parameter moved
                effective_lr = jax.lax.cond(  # a sort: only at the last step
                    t == steps - 1,
                    lambda _: effective_lr_median(terms, opt_state.hyperparams["learning_rate"], moving),
                    lambda _: carry.effective_lr, None)
                return (carry.eps_dom_sum + jnp.where(counted, share, 0.0), carry.eps_dom_steps + counted,
                        jnp.where(keep, share, carry.eps_dom_last), jnp.where(keep, effective_lr, carry.effective_lr))

            # t is shared by every run, so under vmap this stays a branch: the cost is paid on
            # about DIAGNOSTIC_POINTS steps only, the last one always among them
            eps_dom = jax.lax.cond((steps - 1 - t) % diagnostic_every == 0, measure, lambda _: eps_dom, None)
        return _Carry(*new, diverged_step, curve_sum, *eps_dom)

    def train(state: TrainState, h, seeds, t0, t1, x_train, y_train):
        def step(t, state):
            runs, order = state
            if has_data:
                epoch, position = t // batches_per_epoch, t % batches_per_epoch
                order = jax.lax.cond(  # a new epoch: a new order (shared predicate, a real branch)
                    (position == 0) & (t > 0),
                    lambda: jax.vmap(_epoch_order, in_axes=(0, None, None))(seeds, epoch, n_train),
                    lambda: order)
                index = jax.lax.dynamic_slice_in_dim(order, position * settings.batch_size, settings.batch_size, 1)
            else:
                index = jnp.zeros((seeds.shape[0], 1), jnp.int32)

            def per_seed(runs_s, index_s, seed):
                xb = x_train[index_s] if has_data else None
                yb = y_train[index_s] if has_data else None
                rng = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 2), t)
                return jax.vmap(train_step, in_axes=(0, 0, None, None, None, None))(runs_s, h, xb, yb, rng, t)

            return TrainState(jax.vmap(per_seed)(runs, index, seeds), order)

        if loop_free:
            return step(t0, state), t0 + 1
        return jax.lax.fori_loop(t0, t1, step, state), t1

    def evaluate(state: TrainState, loss_sum, correct_sum, xb, yb, mb):
        def run_sums(params, model_state):
            losses, correct = task.evaluate(params, model_state, xb, yb)
            return jnp.sum(losses * mb), jnp.sum(correct * mb)

        losses, correct = jax.vmap(jax.vmap(run_sums))(state.runs.params, state.runs.model_state)
        return loss_sum + losses, correct_sum + correct

    def finish(state: TrainState, loss_sum, correct_sum, count):
        runs = state.runs
        curve = runs.curve_sum / steps_per_point
        final_loss = curve[..., -1]
        if has_data and task.evaluate is not None:  # count is 0 without validation data: NaN
            val_loss, val_accuracy = loss_sum / count, correct_sum / count
            if not task.has_accuracy:
                val_accuracy = jnp.full_like(val_loss, jnp.nan)
        else:
            val_loss = val_accuracy = jnp.full(final_loss.shape, jnp.nan)
        if has_denominator:
            effective_lr = runs.effective_lr
            eps_dominated = runs.eps_dom_last
            eps_dominated_mean = runs.eps_dom_sum / runs.eps_dom_steps
        else:
            eps_dominated = eps_dominated_mean = effective_lr = jnp.full(final_loss.shape, jnp.nan)
        return RunOutputs(final_loss, val_loss, val_accuracy, runs.diverged_step, curve,
                          eps_dominated, eps_dominated_mean, effective_lr)

    return init, train, evaluate, finish


_programs: dict[tuple, Programs] = {}


def _init_compiler_options(devices: Sequence[jax.Device]) -> dict | None:
    """XLA options for the ``init`` program: on CPU, a quick compile at low optimisation. It
    runs once per chunk, but its random initialisers (one generator per parameter array)
    take XLA's CPU backend long to optimise: 25 s for Inception-v3 at the default level, 11 s
    at this one, for a run that takes 1.7 s instead of 0.3 s."""
    if devices[0].platform != "cpu":
        return None
    return {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def compiled_programs(task: Task, settings: TrainSettings, devices: Sequence[jax.Device] | None = None) -> Programs:
    """The jitted programs for (task, settings) on ``devices`` (default: the first device),
    shared by every sweep that matches.

    The configuration axis is split across the devices with ``shard_map`` over a one-axis
    mesh (``config``): each device trains its share of the chunk with the single-device
    program, with the data and seeds replicated, and nothing is communicated.
    """
    devices = tuple(devices) if devices is not None else (jax.devices()[0],)
    key = (task.key, settings, tuple(d.id for d in devices))
    if key not in _programs:
        mesh = Mesh(np.array(devices), (CONFIG_AXIS,))
        runs, config = P(None, CONFIG_AXIS), P(CONFIG_AXIS)  # (S, G, ...) blocks; (G,) hyperparameters
        state = TrainState(runs, P())  # the minibatch order is per seed: every device holds it

        def sharded(function, in_specs, out_specs):
            return jax.shard_map(function, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)

        loop_free = task.loop_free_on_cpu and devices[0].platform == "cpu"
        init, train, evaluate, finish = build_programs(task, settings, loop_free)
        _programs[key] = Programs(
            init=jax.jit(sharded(init, (config, P(), P()), state), compiler_options=_init_compiler_options(devices)),
            train=jax.jit(sharded(train, (state, config, P(), P(), P(), P(), P()), (state, P())),
                          donate_argnums=0),
            evaluate=jax.jit(sharded(evaluate, (state, runs, runs, P(), P(), P()), (runs, runs))),
            finish=jax.jit(sharded(finish, (state, runs, runs, P()), RunOutputs(*[runs] * len(RunOutputs._fields)))),
            loop_free=loop_free,
        )
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


def segment_bounds(steps: int, segments: int) -> list[tuple[int, int]]:
    """``segments`` (at most ``steps``) consecutive step ranges covering ``0 .. steps - 1``."""
    segments = max(1, min(segments, steps))
    edges = [round(i * steps / segments) for i in range(segments + 1)]
    return list(zip(edges[:-1], edges[1:]))


Progress = Callable[[int, int], None]  # (steps done, steps in all) over every chunk of a call


def train_runs(
    task: Task,
    settings: TrainSettings,
    hparams: dict[str, np.ndarray],
    seeds: np.ndarray,
    *,
    chunk_size: int | None = None,
    on_chunk: Callable[[int, int, RunOutputs], None] | None = None,
    devices: Sequence[jax.Device] | None = None,
    progress: Progress | None = None,
) -> RunOutputs:
    """Train every (seed, configuration) pair; returns arrays with a leading (S, G) block.

    Configurations go through the compiled programs a chunk at a time, split across
    ``devices`` (default: every device, in every process; no more than there are settings in
    a single process). The chunk size is ``chunk_size`` rounded up to a multiple of the device
    count, or else chosen from the memory one configuration needs (:mod:`epsweep.memory`).
    The last chunk is padded by repeating the final configuration so that every call has the
    same shapes and the programs compile once. Each chunk is dispatched before the previous
    one is collected, so the devices never wait for the host. ``on_chunk(start, stop,
    outputs)`` is called as each chunk finishes (in every process); ``progress(done, total)``
    as steps complete, counted over all chunks (``done`` is 0 until the first segment of
    steps has run, i.e. while the programs compile).
    """
    total = len(hparams["eps"])
    devices = parallel.config_devices(total, devices)
    chunk = memory.plan_chunk(total, len(seeds), devices, _estimate(task, settings), chunk_size,
                              task.settings_per_cpu_device)
    chunk = parallel.agree(chunk)  # several processes must run the same programs
    programs = compiled_programs(task, settings, devices)
    mesh = Mesh(np.array(devices), (CONFIG_AXIS,))
    by_config, replicated = NamedSharding(mesh, P(CONFIG_AXIS)), NamedSharding(mesh, P())
    if task.data is not None:
        x_train, y_train = task.data.x_train, task.data.y_train
    else:
        x_train, y_train = np.zeros((1, 1), np.float32), np.zeros((1,), np.int32)
    place = functools.partial(_global_array, sharding=replicated)
    seeds_array = place(np.asarray(seeds, np.uint32))
    train_data = (place(x_train), place(y_train))
    x_val, y_val, val_mask = _validation_batches(task, settings.eval_batch_size)
    val_batches = [tuple(place(a[i]) for a in (x_val, y_val, val_mask)) for i in range(len(x_val))]
    val_count = place(np.float32(val_mask.sum()))
    zeros = _global_array(np.zeros((len(seeds), chunk), np.float32), NamedSharding(mesh, P(None, CONFIG_AXIS)))
    constants = jax.tree.map(place, task.constants)
    starts = range(0, total, chunk)
    segments = (1 if progress is None
                else math.ceil(PROGRESS_UPDATES / len(starts)))  # about PROGRESS_UPDATES in all
    if programs.loop_free:  # one step per call (see build_programs)
        bounds = [(t, t + 1) for t in range(settings.steps)]
        report_every = max(1, math.ceil(settings.steps * len(starts) / PROGRESS_UPDATES))
    else:
        bounds = segment_bounds(settings.steps, segments)
        report_every = 1
    all_steps = settings.steps * len(starts)
    pieces: list[RunOutputs] = []

    def collect(start: int, stop: int, out: RunOutputs) -> None:
        out = RunOutputs(*(a[:, : stop - start] for a in parallel.gather(out)))
        pieces.append(out)
        if on_chunk is not None:
            on_chunk(start, stop, out)

    if progress is not None:
        progress(0, all_steps)
    pending = None
    for number, start in enumerate(starts):
        index = np.minimum(np.arange(start, start + chunk), total - 1)
        h = {name: _global_array(np.asarray(hparams[name], np.float32)[index], by_config) for name in HPARAMS}
        state = programs.init(h, seeds_array, constants)
        reached = None
        for call, (t0, t1) in enumerate(bounds):
            state, done = programs.train(state, h, seeds_array, place(np.int32(t0)), place(np.int32(t1)), *train_data)
            if progress is not None and (call + 1) % report_every == 0:
                if reached is not None:  # wait for the previous segment while this one runs
                    progress(number * settings.steps + int(reached), all_steps)
                reached = done
        sums = (zeros, zeros)
        for batch in val_batches:
            sums = programs.evaluate(state, *sums, *batch)
        out = programs.finish(state, *sums, val_count)
        if pending is not None:
            collect(*pending)
        if progress is not None:
            progress(number * settings.steps + int(done), all_steps)
        pending = (start, min(start + chunk, total), out)
    collect(*pending)
    return RunOutputs(*(np.concatenate(parts, axis=1) for parts in zip(*pieces, strict=True)))


def _global_array(value: Any, sharding: NamedSharding) -> jax.Array:
    """A host array placed on the mesh; every process holds the whole value and gives its part."""
    value = np.asarray(value)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


_estimates: dict[tuple, memory.Estimate] = {}


def estimate(task: Task, settings: TrainSettings) -> memory.Estimate:
    """:func:`epsweep.memory.estimate`, kept per (task, settings)."""
    return _estimate(task, settings)


def _estimate(task: Task, settings: TrainSettings) -> memory.Estimate:
    key = (task.key, settings)
    if key not in _estimates:
        _estimates[key] = memory.estimate(task, settings)
    return _estimates[key]
