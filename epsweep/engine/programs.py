"""The training programs as pure functions: init, train, evaluate, finish.

Layout: hyperparameters ``h`` are arrays of shape (G,) (a chunk of the grid's settings), seeds
an array of shape (S,). Runs form an (S, G) block: the outer ``vmap`` is over seeds, the inner
over settings, a ``lax.fori_loop`` over steps. Everything that depends only on the seed
(initial weights, minibatch order, dropout keys) is computed once per seed and shared by that
seed's settings, so differences between them come from the hyperparameters alone; sharing the
minibatch also turns the first layer of every setting into one wide matrix product.

- ``init``: initial weights per seed, optimizer states per setting, the minibatch orders
  (every epoch's, or the first one's: :mod:`.orders`);
- ``train``: steps ``t0 .. t1 - 1`` of every run at once (its state donated, except
  loop-free, and returned);
- ``evaluate``: one validation batch, added to running sums;
- ``finish``: validation loss and metric, the loss curve and the diagnostics (the effective
  lr's median among them, from the final state and the last step's moving parameters);
- ``measure`` (loop-free only): the eps diagnostics of the step just taken, called by the
  host after the sampled steps.

A run whose loss becomes non-finite is reported as diverged at that step (``diverged_step``;
an update that overflows shows in the next step's loss, or for the last step in the final
parameters); from there its numbers are left out. The other runs are untouched (``vmap``
keeps them independent).
:mod:`epsweep.engine.compiled` jits and shards these; :mod:`epsweep.engine.driver` calls them.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from epsweep.engine import orders, products, trees
from epsweep.engine.draws import batched_draws
from epsweep.engine.layout import LoopLayout, loop_layout, vmap_or_call
from epsweep.engine.spec import RunOutputs, TrainSpec
from epsweep.engine.state import Carry, TrainState
from epsweep.optim import denominator_terms, effective_lr_median, eps_dominated_share, make_optimizer, moving_parameters
from epsweep.optim.diagnostics import moving_mask_size
from epsweep.tasks.task import Task

log = logging.getLogger(__name__)

# Between measured steps the loop sums the eps-dominated share of a model with at most this many
# weight arrays array by array: no concatenated copy of the gradient and the statistic, which in
# the loop's layout (engine.layout) are gathered across settings (the MLP: 0.6 ms a measurement
# for 32 settings against 0.1 ms). More arrays, one flat sum: compile time (Inception-v3 has 472).
PER_ARRAY_SHARE_UP_TO = 16


@dataclasses.dataclass(frozen=True, eq=False)
class _Plan:
    """What the programs close over: the task, the spec and what follows from them."""

    task: Task
    spec: TrainSpec
    loop_free: bool
    update_rule: Any
    trainable: Any  # pytree of Python bools, or None: every parameter trains
    n_train: int
    batches_per_epoch: int
    layout: LoopLayout = dataclasses.field(default_factory=LoopLayout)  # in the loop: see _train
    narrow_products: bool = False  # the loop takes narrow products transposed (products.narrow_product): on CPU

    @property
    def kernels_swapped(self) -> bool:
        """Whether a step sees its kernels as (out, in) (:mod:`epsweep.engine.layout`): inside the
        training loop, not in a loop-free program (one step per call: the swap would copy)."""
        return not self.loop_free

    def loss(self, params, model_state, xb, yb, rng):
        """The task's loss; in the loop, with its data products taken as the layout wants. A
        replay that fails (the model cannot do what the loop's ``vmap`` asks) calls the model
        itself, to fail as it fails (one line naming it) or to train as it traces."""
        if self.layout.found is not None:
            try:
                return products.evaluate(self.layout.found, params, model_state, xb, yb, rng)
            except Exception as error:  # noqa: BLE001 - the model's own call says what went wrong
                log.debug("replaying the traced loss failed (%s); tracing it under the loop instead", error)
        return self.task.loss(params, model_state, xb, yb, rng)

    @property
    def vmap(self) -> Callable:
        """How the programs map over seeds and settings: loop-free, a plain call over axes of
        size 1 (the default: one seed and one setting per device and call), else ``jax.vmap``.
        Unbatched traces faster (Inception-v3's train: 3.6 s instead of 5.5, a cold run about
        4 s shorter) and steps as fast now that train does not donate its state. ``train``'s
        numbers differ from the vmapped program's at float rounding, so a loop-free setting's
        numbers depend on the width (default or a chunk size), not on the grid
        (docs/performance.md, fifth and eighteenth stops)."""
        return vmap_or_call if self.loop_free else jax.vmap

    @property
    def has_data(self) -> bool:
        return self.task.data is not None

    @property
    def epochs(self) -> int:  # that a run starts (the last one perhaps in part)
        return -(-self.spec.steps // self.batches_per_epoch)

    @property
    def orders_ahead(self) -> bool:  # init draws every epoch's minibatch order (engine.orders)
        return self.has_data and orders.orders_ahead(self.epochs, self.n_train, self.loop_free)

    @property
    def has_denominator(self) -> bool:
        return self.spec.optimizer != "sgd"

    @property
    def measured_by_host(self) -> bool:
        """Loop-free with eps diagnostics: steps store their moving mask per array, ``measure`` measures."""
        return self.loop_free and self.has_denominator

    def optimizer(self, hc: dict) -> Any:
        spec = self.spec
        return make_optimizer(spec.optimizer, hc["lr"], hc["decay"], hc["eps"],
                              momentum=hc["momentum"] if spec.momentum else None,
                              convention=spec.convention, centered=spec.centered,
                              one_minus_decay=hc["one_minus_decay"])


def build_programs(task: Task, spec: TrainSpec, loop_free: bool = False,
                   narrow_products: bool = False) -> tuple[Callable, ...]:
    """The pure functions behind :class:`~epsweep.engine.compiled.Programs` (unjitted,
    unsharded): init, train, evaluate, finish and measure (None unless loop-free with a
    denominator), with the task and spec bound.

    Minibatches: each epoch visits the training examples in a fresh random order per seed;
    step t takes the ``t % (n_train // batch)``-th batch of epoch ``t // (n_train // batch)``
    (the remainder of an epoch is dropped).

    ``loop_free``: ``train`` takes the one step ``t0`` instead of looping over ``t0 .. t1 - 1``.
    XLA's CPU backend runs convolutions inside a loop several times slower than the same
    convolutions outside one (jax-ml/jax#12868; an Inception-v3 step here: 1.3 s alone, 7.4 s
    as the body of a one-iteration ``fori_loop``), so on CPU the engine drives models with
    convolutions one step per call (``Task.loop_free_on_cpu``), and measures the eps
    diagnostics with ``measure``. Everything else is the same program, and so are the numbers.

    ``narrow_products``: the training loop computes a dense layer with few outputs transposed
    (:func:`~epsweep.engine.products.narrow_product`), faster on CPU; its numbers differ at
    float rounding.
    """
    if task.features is not None:
        raise ValueError(f"task {task.name} has frozen features: train it on them (engine.features.on_features)")
    n_train = len(task.data.x_train) if task.data is not None else 1
    plan = _Plan(
        task=task, spec=spec, loop_free=loop_free, narrow_products=narrow_products,
        update_rule=make_optimizer(spec.optimizer, 0.0, 0.0, 0.0, momentum=0.0 if spec.momentum else None,
                                   convention=spec.convention, centered=spec.centered),
        trainable=task.trainable_mask(), n_train=n_train,
        batches_per_epoch=max(1, n_train // spec.batch_size),
    )
    measure = functools.partial(_measure_program, plan) if plan.measured_by_host else None
    return (*(functools.partial(f, plan) for f in (_init, _train, _evaluate, _finish)), measure)


def _init(plan: _Plan, h, seeds, constants=None) -> TrainState:
    """Initial weights per seed (shared by its settings; keys and draws made together: :mod:`.draws`),
    optimizer states per setting, and the minibatch orders per seed: every epoch's, (S, epochs,
    n_train), or (``plan.orders_ahead`` false) the first epoch's, (S, n_train)."""
    task, points = plan.task, plan.spec.points

    def init_run(seed, h, constants):
        init_key = jax.random.fold_in(jax.random.key(seed), 0)
        params, model_state = batched_draws(task.init)(init_key, *(() if constants is None else (constants,)))
        moving = (jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), bool), params) if plan.measured_by_host
                  else jnp.zeros(moving_mask_size(params, plan.spec.optimizer), bool))

        def init_config(hc):
            return Carry(params, model_state, plan.optimizer(hc).init(params), jnp.int32(-1), jnp.zeros(points),
                         jnp.float32(0), jnp.int32(0), jnp.float32(jnp.nan), moving)

        return plan.vmap(init_config)(h)

    runs = plan.vmap(init_run, in_axes=(0, None, None))(seeds, h, constants)
    if plan.orders_ahead:
        order = plan.vmap(orders.epoch_orders, in_axes=(0, None, None))(seeds, plan.epochs, plan.n_train)
    else:
        order = plan.vmap(orders.epoch_order, in_axes=(0, None, None))(seeds, jnp.int32(0), plan.n_train)
    return TrainState(runs, order)


def _learning_rate(plan: _Plan, hc, t):
    """lr * lr_decay_rate ** floor(t / lr_decay_steps) (TF's staircase decay), or lr."""
    spec = plan.spec
    if spec.lr_decay_rate is None:
        return hc["lr"]
    return hc["lr"] * spec.lr_decay_rate ** jnp.floor(t / spec.lr_decay_steps)


def _train_step(plan: _Plan, carry: Carry, hc, xb, yb, rng, t) -> tuple[Carry, Any]:
    """One step of one run: gradient (clipped), update, divergence and the loss curve; returns
    the new carry and the gradient. Loop-free it stores the parameters the step moved (the
    host then measures the eps diagnostics with :func:`_measure_program` after the sampled
    steps); in the loop, :func:`_train` measures them from the gradient it carries."""
    spec = plan.spec
    params = plan.layout.swap_kernels(carry.params) if plan.kernels_swapped else carry.params
    (loss, model_state), grads = jax.value_and_grad(plan.loss, has_aux=True)(params, carry.model_state, xb, yb, rng)
    if spec.clip_norm is not None:  # before the swap: the norm sums in the model's layout, as loop-free
        grad_norm = trees.global_norm(grads)
        factor = jnp.minimum(1.0, spec.clip_norm / jnp.maximum(grad_norm, 1e-30))
        grads = jax.tree.map(lambda g: g * factor, grads)
    if plan.kernels_swapped:
        grads = plan.layout.swap_kernels(grads)
    opt_state = carry.opt_state
    opt_state = opt_state._replace(hyperparams={**opt_state.hyperparams, "learning_rate": _learning_rate(plan, hc, t)})
    updates, opt_state = plan.update_rule.update(grads, opt_state, carry.params)
    if plan.trainable is not None:  # frozen parameters never move
        updates = jax.tree.map(lambda u, train: u if train else jnp.zeros_like(u), updates, plan.trainable)
    # A run diverges at the first step whose loss is not finite (an update that overflows shows
    # in the next step's loss, or at the end in _finish). Nothing is frozen or checked per
    # parameter: the update fuses with its application, and a diverged run's numbers are
    # never used again (its losses, metrics and diagnostics are left out from there on).
    alive = carry.diverged_step < 0
    finite = jnp.isfinite(loss)
    keep = alive & finite
    params = optax.apply_updates(carry.params, updates)
    diverged_step = jnp.where(alive & ~finite, t, carry.diverged_step)
    curve_sum = carry.curve_sum.at[t * spec.points // spec.steps].add(jnp.where(keep, loss, jnp.nan))
    moving = carry.moving
    if plan.measured_by_host:  # per array: a flat copy cost every step
        moving = moving_parameters(grads, plan.trainable)
    return Carry(params, model_state, opt_state, diverged_step, curve_sum, carry.eps_dom_sum, carry.eps_dom_steps,
                 carry.eps_dom_last, moving), grads


def _measured_after(plan: _Plan, carry: Carry, moving, flat: bool) -> Carry:
    """The carry after a step with its eps diagnostics, over ``moving`` (the parameters it moved,
    a pytree like the params) from the optimizer's statistics after it; the run kept the step
    exactly when it is still alive. ``flat``: the share sums one vector of each, else array by array."""
    spec = plan.spec
    opt_state = trees.flat_like(carry.opt_state, moving) if flat else carry.opt_state
    terms = denominator_terms(opt_state, spec.optimizer, spec.convention)
    if flat:
        moving, terms = trees.flat(moving), terms._replace(stat=trees.flat(terms.stat))
    eps_dom = _measure(carry, moving, terms, carry.diverged_step < 0)
    return carry._replace(eps_dom_sum=eps_dom[0], eps_dom_steps=eps_dom[1], eps_dom_last=eps_dom[2])


def _measure_program(plan: _Plan, runs: Carry) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Loop-free, called by the host after each sampled step (a branch in ``train`` slowed every
    step: docs/scale.md) with ``program_input("measure", state)``: every run's new eps_dom_sum,
    eps_dom_steps and eps_dom_last (S, G)."""
    def measured(carry):
        carry = _measured_after(plan, carry, carry.moving, flat=True)
        return carry.eps_dom_sum, carry.eps_dom_steps, carry.eps_dom_last
    return plan.vmap(plan.vmap(measured))(runs)


def _measure(carry: Carry, moving, terms, keep) -> tuple:
    """The eps-dominated share after this step over the ``moving`` parameters (flat; ``terms``
    with a flat statistic): summed for the mean, and the latest. (The effective lr's median is
    taken once, in _finish.)"""
    share = eps_dominated_share(terms, moving)
    counted = keep & jnp.isfinite(share)  # NaN when no parameter moved
    return (carry.eps_dom_sum + jnp.where(counted, share, 0.0), carry.eps_dom_steps + counted,
            jnp.where(keep, share, carry.eps_dom_last))


def _train(plan: _Plan, state: TrainState, h, seeds, t0, t1, x_train, y_train):
    """Steps ``t0 .. t1 - 1`` of every run (just ``t0`` when loop-free); returns the state and
    the step reached.

    Looping, the steps run in an inner loop with no branch in its body (a branch inside every
    step costs XLA's CPU backend about a tenth of the step time even when not taken) that
    carries the last step's gradient. It stops at each sampled step of the eps diagnostics
    (every ``diagnostic_every`` steps, the last step among them) and at each epoch's start;
    the diagnostics are then measured from the state and that gradient. The step's code
    appears once in the program: a second copy for the measured steps took about 40% of the
    train program's compile time.

    In the loop the runs' weights lie as :class:`~epsweep.engine.layout.LoopLayout` says (from
    the task's loss, traced once for it); ``vmap`` maps each over the axis of its settings."""
    if not plan.loop_free:
        batch = [jax.ShapeDtypeStruct((plan.spec.batch_size, *a.shape[1:]), a.dtype) if plan.has_data else None
                 for a in (x_train, y_train)]
        plan = dataclasses.replace(plan, layout=loop_layout(plan.task.loss, state.runs, *batch,
                                                            narrow=plan.narrow_products))
    spec, n_train, layout = plan.spec, plan.n_train, plan.layout
    grad_axes = layout.run_axes(state.runs.params)
    run_axes = jax.tree.map(lambda _: 0, state.runs)._replace(params=grad_axes,
                                                              opt_state=layout.run_axes(state.runs.opt_state))

    def new_order(t):
        return jax.vmap(orders.epoch_order, in_axes=(0, None, None))(seeds, t // plan.batches_per_epoch, n_train)

    def step(t, carry):
        """One step of every run; loop-free, with the diagnostics and, unless drawn ahead, the
        epoch's new order (branches on the shared step), which the loop below takes care of
        between steps."""
        (runs, order), _ = carry
        if plan.has_data:
            position = t % plan.batches_per_epoch
            if plan.loop_free and not plan.orders_ahead:  # a new epoch: a new order (shared predicate, a real branch)
                order = jax.lax.cond((position == 0) & (t > 0), lambda: new_order(t), lambda: order)
            order_now = orders.order_at(order, t // plan.batches_per_epoch, plan.orders_ahead)
            index = jax.lax.dynamic_slice_in_dim(order_now, position * spec.batch_size, spec.batch_size, 1)
        else:
            index = jnp.zeros((seeds.shape[0], 1), jnp.int32)

        def per_seed(runs_s, index_s, seed):
            xb = x_train[index_s] if plan.has_data else None
            yb = y_train[index_s] if plan.has_data else None
            rng = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 2), t)
            one_step = functools.partial(_train_step, plan)
            return plan.vmap(one_step, in_axes=(run_axes, 0, None, None, None, None),
                             out_axes=(run_axes, grad_axes))(runs_s, h, xb, yb, rng, t)

        runs, grads = plan.vmap(per_seed)(runs, index, seeds)
        return TrainState(runs, order), grads if plan.has_denominator else None  # sgd measures nothing

    if plan.loop_free:
        return step(t0, (state, None))[0], t0 + 1
    # the moving mask stays out of the loops (a step never reads it): set once, after them
    moving_before = state.runs.moving
    state = _in_layout(state, layout.to_loop)
    state = TrainState(state.runs._replace(moving=jnp.zeros((*moving_before.shape[:2], 0), bool)), state.order)
    per_epoch = plan.batches_per_epoch if plan.has_data else spec.steps + 1

    def measured_after(state, grads):
        flat = len(jax.tree.leaves(grads)) > PER_ARRAY_SHARE_UP_TO

        def one(carry, g):
            return _measured_after(plan, carry, moving_parameters(g, plan.trainable), flat)

        measure = jax.vmap(one, in_axes=(run_axes, grad_axes), out_axes=run_axes)
        return TrainState(jax.vmap(measure)(state.runs, grads), state.order)

    def block(carry):
        """Steps up to the next sampled step (included), epoch start or ``t1``, then the
        diagnostics if the sampled step was reached."""
        (state, grads), t = carry
        measured = spec.next_measured(t)
        epoch_end = (t // per_epoch + 1) * per_epoch
        stop = jnp.minimum(jnp.minimum(measured + 1, epoch_end), t1)
        if plan.has_data and not plan.orders_ahead:  # the block starts a new epoch: its order, once
            state = jax.lax.cond((t % per_epoch == 0) & (t > 0),
                                 lambda s: TrainState(s.runs, new_order(t)), lambda s: s, state)
        state, grads = jax.lax.fori_loop(t, stop, step, (state, grads))
        if plan.has_denominator:
            state = jax.lax.cond(stop == measured + 1, lambda s: measured_after(s, grads), lambda s: s, state)
        return (state, grads), stop

    # the last step's gradient, carried to the measured steps (sgd measures nothing)
    grads = jax.tree.map(jnp.zeros_like, state.runs.params) if plan.has_denominator else None
    (state, grads), _ = jax.lax.while_loop(lambda carry: carry[1] < t1, block, ((state, grads), t0))
    state = _in_layout(state, layout.from_loop)
    moving = moving_before
    if plan.has_denominator:  # the last step's moving parameters, for the effective lr (in _finish)
        last = jax.vmap(jax.vmap(lambda g: trees.flat(moving_parameters(g, plan.trainable))))(layout.from_loop(grads))
        moving = jnp.where(t1 > t0, last, moving)
    return TrainState(state.runs._replace(moving=moving), state.order), t1


def _in_layout(state: TrainState, convert) -> TrainState:
    """The state with its weights and their optimizer statistics converted by ``convert``
    (``LoopLayout.to_loop`` or ``LoopLayout.from_loop``)."""
    runs = state.runs
    return TrainState(runs._replace(params=convert(runs.params), opt_state=convert(runs.opt_state)), state.order)


def _evaluate(plan: _Plan, runs: Carry, loss_sum, metric_sum, xb, yb, mb):
    """One validation batch (mask ``mb`` for its padding) added to every run's running sums;
    ``runs``: ``program_input("evaluate", state)``."""
    def run_sums(params, model_state):
        losses, metric = plan.task.evaluate(params, model_state, xb, yb)
        return jnp.sum(losses * mb), jnp.sum(metric * mb)

    losses, metric = plan.vmap(plan.vmap(run_sums))(runs.params, runs.model_state)
    return loss_sum + losses, metric_sum + metric


def _effective_lr(plan: _Plan, params, opt_state, moving) -> jax.Array:
    """Median lr / denominator of one run over the ``moving`` parameters (flat, or a pytree
    like the params)."""
    spec = plan.spec
    terms = denominator_terms(trees.flat_like(opt_state, params), spec.optimizer, spec.convention)
    # kept apart from the division below, which XLA would otherwise rewrite as lr * rsqrt(...): a rounding more
    terms = terms._replace(denominator=jax.lax.optimization_barrier(trees.flat(terms.denominator)))
    return effective_lr_median(terms, opt_state.hyperparams["learning_rate"], trees.flat(moving))


def _finish(plan: _Plan, runs: Carry, loss_sum, metric_sum, count) -> RunOutputs:
    """Validation loss and metric (means over ``count`` examples), the loss curve (mean per
    segment of steps), and the eps diagnostics; NaN where a task has no such number.
    ``runs``: ``program_input("finish", state)``."""
    task, kept_last_step = plan.task, runs.diverged_step < 0  # before the final-parameters check below
    curve = runs.curve_sum / plan.spec.steps_per_point().astype(np.float32)
    # the last update's overflow shows in no loss: a run whose parameters end non-finite diverged there
    ended_finite = plan.vmap(plan.vmap(trees.all_finite))(runs.params)
    runs = runs._replace(diverged_step=jnp.where((runs.diverged_step < 0) & ~ended_finite, plan.spec.steps - 1,
                                                 runs.diverged_step))
    final_loss = curve[..., -1]
    if plan.has_data and task.evaluate is not None:  # count is 0 without validation data: NaN
        val_loss, val_accuracy = loss_sum / count, metric_sum / count
        if not task.has_metric:
            val_accuracy = jnp.full_like(val_loss, jnp.nan)
    else:
        val_loss = val_accuracy = jnp.full(final_loss.shape, jnp.nan)
    if plan.has_denominator:
        # the last step's median lr / denominator over the parameters it moved, for a run that kept
        # that step (its diverged_step, before the final-parameters check above, is still -1)
        effective_lr = jnp.where(kept_last_step, plan.vmap(plan.vmap(
            functools.partial(_effective_lr, plan)))(runs.params, runs.opt_state, runs.moving), jnp.nan)
        eps_dominated = runs.eps_dom_last
        eps_dominated_mean = runs.eps_dom_sum / runs.eps_dom_steps
    else:
        eps_dominated = eps_dominated_mean = effective_lr = jnp.full(final_loss.shape, jnp.nan)
    return RunOutputs(final_loss, val_loss, val_accuracy, runs.diverged_step, curve,
                      eps_dominated, eps_dominated_mean, effective_lr)
