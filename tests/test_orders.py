"""Minibatch orders (epsweep/engine/orders.py): every epoch's order drawn in ``init`` is the one
drawn as the epoch starts, bit for bit, and a sweep trains to the same numbers either way,
looped and loop-free, over several epochs and seeds."""

import dataclasses

import jax
import numpy as np
import pytest

from epsweep.engine import compiled, exports, orders
from epsweep.engine.driver import train_runs
from epsweep.engine.spec import TrainSpec
from epsweep.tasks import build_task


@pytest.mark.parametrize("n_train", [1, 37, 1438])
def test_every_epochs_order_drawn_ahead_is_the_one_drawn_as_it_starts(n_train):
    for seed in (0, 7):
        ahead = np.asarray(jax.jit(orders.epoch_orders, static_argnums=(1, 2))(np.uint32(seed), 5, n_train))
        assert ahead.shape == (5, n_train)
        for epoch in range(5):
            np.testing.assert_array_equal(ahead[epoch], orders.epoch_order(np.uint32(seed), np.int32(epoch), n_train))
            assert sorted(ahead[epoch]) == list(range(n_train))  # a permutation
        assert n_train == 1 or len({tuple(row) for row in ahead}) > 1  # epochs differ


def test_orders_ahead_up_to_their_bound():
    per_seed = orders.ORDERS_AHEAD_BYTES // 4
    assert orders.orders_ahead(1, per_seed) and orders.orders_ahead(per_seed, 1)
    assert not orders.orders_ahead(1, per_seed + 1) and not orders.orders_ahead(2, per_seed // 2 + 1)
    loop_free = orders.ORDERS_AHEAD_LOOP_FREE_BYTES // 4  # copied at every loop-free step: a lower bound
    assert orders.orders_ahead(1, loop_free, loop_free=True) and not orders.orders_ahead(1, loop_free + 1, True)


@pytest.fixture(scope="module")
def toy():
    return build_task("toy")  # 80 training examples: 5 batches of 16 an epoch


@pytest.mark.parametrize("loop_free", [False, True])
def test_a_sweep_draws_its_orders_ahead_or_as_epochs_start_to_the_same_numbers(toy, loop_free, monkeypatch):
    """17 steps of 16 (four epochs, the last in part), two seeds, in one call of ``train`` and in
    a call a step (a progress-reporting run): ``init`` drawing every order (and ``train`` none),
    and ``train`` drawing each as its epoch starts (the bounds at 0), give the same numbers."""
    task = dataclasses.replace(toy, loop_free_on_cpu=loop_free, settings_per_cpu_device=1 if loop_free else None)
    spec = TrainSpec(steps=17, batch_size=16, curve_points=17, eval_batch_size=7)
    h = {"eps": np.array([1e-8, 1.0]), "lr": np.array([0.3, 0.1]), "decay": np.full(2, 0.9), "momentum": np.zeros(2)}
    monkeypatch.setattr(exports, "export_dir", lambda: None)  # traced here, not read back from an earlier test
    drawn = []  # "ahead": every epoch's orders, then "one" for the vmapped draw inside; "one" alone: an epoch's
    for name, mark in (("epoch_orders", "ahead"), ("epoch_order", "one")):
        draw = getattr(orders, name)
        monkeypatch.setattr(orders, name, lambda *args, draw=draw, mark=mark: drawn.append(mark) or draw(*args))
    runs = {}
    for ahead in (True, False):
        if not ahead:
            monkeypatch.setattr(orders, "ORDERS_AHEAD_BYTES", 0)
            monkeypatch.setattr(orders, "ORDERS_AHEAD_LOOP_FREE_BYTES", 0)
        for progress in (None, lambda done, total: None):
            monkeypatch.setattr(compiled, "_programs", type(compiled._programs)())
            drawn.clear()
            runs[ahead, progress is None] = train_runs(task, spec, h, np.array([0, 3]), progress=progress)
            # ahead: init's draw alone; else init's first epoch and train's epochs (traced once or more)
            assert drawn == ["ahead", "one"] if ahead else (drawn.count("ahead") == 0 and drawn.count("one") >= 2)
    reference = runs[True, True]
    for key, run in runs.items():
        for name in reference._fields:
            np.testing.assert_array_equal(getattr(run, name), getattr(reference, name), err_msg=f"{key} {name}")
    assert np.all(np.isfinite(reference.final_loss))


def test_the_orders_never_move_inits_options(mlp_task, monkeypatch):
    """``init``'s options follow the size of the runs' state, not of the orders it also draws
    (which grow with the steps): the options, and so the initial weights, do not depend on them."""
    specs = (TrainSpec(steps=steps, batch_size=8, curve_points=2) for steps in (3, 30_000))
    short, long = (exports.load_or_export(mlp_task, spec, jax.devices()[:1], 1)[0]["init"] for spec in specs)
    state = jax.tree.unflatten(long.out_tree, long.out_avals)
    assert state.order.shape[1] > 100  # every epoch's orders: 168 epochs of 1438
    monkeypatch.setattr(compiled, "LARGE_INIT_BYTES", compiled.tree_bytes(state.runs) + 1)  # the orders would cross it
    assert compiled.tree_bytes(state) >= compiled.LARGE_INIT_BYTES
    options = [compiled._compile_options("init", program, jax.devices()[:1], False)[0] for program in (short, long)]
    assert options[0] == options[1] and "xla_backend_optimization_level" in options[0]
