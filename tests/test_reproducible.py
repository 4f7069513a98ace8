"""A setting's numbers do not depend on the rest of the grid: at a chaotic setting (MLP, eps
1e-8, lr 0.1, where a change in float rounding grows to a different final loss), the run is
bitwise the same in grids of 1, 3, 17 and 64 settings, next to another convention or a momentum,
among 5 seeds or alone, streamed or not."""

import numpy as np
import pytest

from epsweep.config import RunConfig
from epsweep.grid import Grid
from epsweep.results.writers import JsonlWriter
from epsweep.runner import run, sweep

STEPS = 100
TARGET = {"eps": 1e-8, "lr": 0.1, "momentum": 0.0, "convention": "optax"}


def target_of(result, seed=0):
    """The target setting's record and its seed-``seed`` run."""
    record = next(r for r in result.records if all(r[k] == v for k, v in TARGET.items()))
    runs = [r for r in result.runs if r["seed"] == seed and all(r[k] == v for k, v in TARGET.items())]
    return record, runs[0]


def numbers(result, seed=0):
    record, one = target_of(result, seed)
    return (one["final_loss"], one["val_loss"], one["val_accuracy"], one["eps_dominated"], one["effective_lr"],
            tuple(record["loss_curve"]) if record["seeds"] == 1 else None)


@pytest.fixture(scope="module")
def alone(mlp_task):
    return sweep(mlp_task, Grid(eps=(1e-8,), lr=(0.1,)), RunConfig(steps=STEPS))


@pytest.mark.parametrize("eps, lr", [
    ((1e-8, 1e-4, 1e-2), (0.1,)),  # 3 settings
    (tuple(np.geomspace(1e-8, 1.0, 17)), (0.1,)),  # 17
    (tuple(np.geomspace(1e-8, 1.0, 16)), (0.1, 0.01, 0.003, 0.001)),  # 64
], ids=["3", "17", "64"])
def test_the_grid_around_a_setting_never_changes_its_numbers(mlp_task, alone, eps, lr):
    result = sweep(mlp_task, Grid(eps=eps, lr=lr), RunConfig(steps=STEPS))
    assert len(result.records) == len(eps) * len(lr)
    assert numbers(result) == numbers(alone)


def test_other_conventions_seeds_and_streaming_never_change_them(mlp_task, alone, tmp_path):
    grid = Grid(eps=(1e-8, 1e-2), lr=(0.1,))
    two_conventions = sweep(mlp_task, grid, RunConfig(steps=STEPS, conventions=("pytorch", "optax")))
    assert numbers(two_conventions) == numbers(alone)
    with_momentum = sweep(mlp_task, Grid(eps=grid.eps, lr=grid.lr, momentum=(0.0, 0.9)), RunConfig(steps=STEPS))
    assert numbers(with_momentum) == numbers(alone)  # momentum 0 keeps its buffer-free program
    five_seeds = sweep(mlp_task, grid, RunConfig(steps=STEPS, seeds=5))
    assert numbers(five_seeds)[:5] == numbers(alone)[:5]  # seed 0's run, among four other seeds
    streamed = run(mlp_task, grid, RunConfig(steps=STEPS), writers=[JsonlWriter(tmp_path / "s.jsonl")])
    assert numbers(streamed) == numbers(alone)
    assert streamed.meta["layout"] == alone.meta["layout"]  # what the guarantee rests on, recorded


def test_the_check_can_fail_another_call_width_rounds_differently(mlp_task, alone):
    """The same setting in calls of another width (here forced with chunk_size) follows
    another trajectory: the equalities above are not true by accident."""
    narrow = sweep(mlp_task, Grid(eps=(1e-8,), lr=(0.1,)), RunConfig(steps=STEPS, chunk_size=2))
    assert narrow.meta["layout"]["settings_per_call"] != alone.meta["layout"]["settings_per_call"]
    assert numbers(narrow)[0] != numbers(alone)[0]
