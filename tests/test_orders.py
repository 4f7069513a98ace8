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


@pytest.fixture(scope="module")
def toy():
    return build_task("toy")  # 80 training examples: 5 batches of 16 an epoch


@pytest.mark.parametrize("loop_free", [False, True])
def test_a_sweep_draws_its_orders_ahead_or_as_epochs_start_to_the_same_numbers(toy, loop_free, monkeypatch):
    """17 steps of 16 (four epochs, the last in part; the epoch's starts within and between the
    calls of a progress-reporting run), two seeds: ``init`` drawing every order, and ``train``
    drawing each as its epoch starts (the bound at 0), give the same numbers."""
    task = dataclasses.replace(toy, loop_free_on_cpu=loop_free, settings_per_cpu_device=1 if loop_free else None)
    spec = TrainSpec(steps=17, batch_size=16, curve_points=17, eval_batch_size=7)
    h = {"eps": np.array([1e-8, 1.0]), "lr": np.array([0.3, 0.1]), "decay": np.full(2, 0.9), "momentum": np.zeros(2)}
    monkeypatch.setattr(exports, "export_dir", lambda: None)  # traced here, not read back from an earlier test
    drawn = []
    monkeypatch.setattr(orders, "epoch_orders", lambda *args, draw=orders.epoch_orders: drawn.append(1) or draw(*args))
    runs = {}
    for bound in (orders.ORDERS_AHEAD_BYTES, 0):
        monkeypatch.setattr(orders, "ORDERS_AHEAD_BYTES", bound)
        monkeypatch.setattr(compiled, "_programs", type(compiled._programs)())
        drawn.clear()
        runs[bound] = train_runs(task, spec, h, np.array([0, 3]), progress=lambda done, total: None)
        assert bool(drawn) == (bound > 0)
    ahead, in_train = runs.values()
    for name in ahead._fields:
        np.testing.assert_array_equal(getattr(ahead, name), getattr(in_train, name), err_msg=name)
    assert not np.array_equal(ahead.curve[0], ahead.curve[1])  # the seeds' orders differ
