"""The vmapped engine against independent paths: one-by-one runs, divergence isolation,
one compile per sweep, shared initial weights per seed."""

import jax
import numpy as np
import pytest

from epsweep import engine
from epsweep.config import RunConfig
from epsweep.engine.driver import train_runs
from epsweep.engine.spec import TrainSpec
from epsweep.grid import Grid
from epsweep.runner import sweep

SETTINGS = TrainSpec(steps=30, batch_size=16, curve_points=10)


def hparams(eps, lr=1e-2, decay=0.9, momentum=0.0):
    n = len(eps)
    return {"eps": np.array(eps, float), "lr": np.broadcast_to(lr, n).astype(float),
            "decay": np.full(n, decay), "momentum": np.full(n, momentum)}


@pytest.fixture(scope="module")
def batched(mlp_task):
    h = hparams([1e-8, 1e-3, 1.0], lr=[1e-2, 3e-3, 1e-2], momentum=0.5)
    return h, train_runs(mlp_task, SETTINGS, h, np.array([0, 7]))


def test_vmapped_equals_one_by_one(mlp_task, batched):
    h, together = batched
    for j in range(3):
        alone = train_runs(mlp_task, SETTINGS, {k: v[j:j + 1] for k, v in h.items()}, np.array([0, 7]),
                           chunk_size=1, devices=jax.devices()[:1])  # truly one at a time
        for name in ("final_loss", "val_loss", "val_accuracy", "eps_dominated", "eps_dominated_mean", "effective_lr"):
            np.testing.assert_allclose(getattr(alone, name)[:, 0], getattr(together, name)[:, j], rtol=2e-5, atol=1e-6)
        np.testing.assert_allclose(alone.curve[:, 0], together.curve[:, j], rtol=2e-5, atol=1e-6)


def test_chunked_equals_unchunked(mlp_task, batched):
    h, together = batched
    chunked = train_runs(mlp_task, SETTINGS, h, np.array([0, 7]), chunk_size=2)
    np.testing.assert_allclose(chunked.final_loss, together.final_loss, rtol=2e-5, atol=1e-6)


def test_outputs_have_run_block_shape_and_learn(batched):
    h, out = batched
    assert out.final_loss.shape == (2, 3) and out.curve.shape == (2, 3, 10)
    assert (out.diverged_step == -1).all()
    assert (out.curve[:, :, -1] < out.curve[:, :, 0]).all()  # every run learned something
    assert np.all((out.val_accuracy >= 0) & (out.val_accuracy <= 1))


def test_same_seed_same_start_different_seed_different_start(mlp_task):
    out = train_runs(mlp_task, SETTINGS, hparams([1e-3, 1e-3]), np.array([0, 1]))
    np.testing.assert_array_equal(out.curve[:, 0], out.curve[:, 1])  # identical config, identical run
    assert not np.allclose(out.curve[0, 0], out.curve[1, 0])  # seeds differ


def test_divergence_is_isolated_and_reported(quadratic_task):
    settings = TrainSpec(steps=40, batch_size=1, curve_points=8)
    h = hparams([1e-8, 1e-8], lr=[0.1, 1e30])
    out = train_runs(quadratic_task, settings, h, np.array([0]))
    alone = train_runs(quadratic_task, settings, hparams([1e-8], lr=[0.1]), np.array([0]))
    assert out.diverged_step[0, 0] == -1 and np.isfinite(out.final_loss[0, 0])
    assert out.diverged_step[0, 1] >= 0 and np.isnan(out.final_loss[0, 1])
    np.testing.assert_allclose(out.curve[0, 0], alone.curve[0, 0], rtol=1e-6)


def test_a_diverged_seeds_run_carries_no_numbers(mlp_task):
    """Its parameters went on with NaN: the validation numbers they give are no result."""
    result = sweep(mlp_task, Grid(eps=(1e-8,), lr=(1e-2, 1e30)), RunConfig(steps=5, batch_size=16))
    ok, gone = result.runs
    assert gone["diverged_step"] >= 0 and ok["diverged_step"] == -1
    assert all(np.isnan(gone[m]) for m in ("final_loss", "val_loss", "val_accuracy", "eps_dominated"))
    assert all(np.isfinite(ok[m]) for m in ("final_loss", "val_loss", "val_accuracy", "eps_dominated"))


def test_jax_nan_checks_are_off_while_training_and_restored_after(quadratic_task, caplog):
    """JAX_DEBUG_NANS would stop every sweep at epsweep's own NaN markers: a sweep with a
    diverging setting runs under it, says once that it is ignored, and leaves it set."""
    jax.config.update("jax_debug_nans", True)
    try:
        with caplog.at_level("WARNING"):
            result = sweep(quadratic_task, Grid(eps=(1e-8,), lr=(0.1, 1e30)), RunConfig(steps=20))
        assert jax.config.jax_debug_nans
    finally:
        jax.config.update("jax_debug_nans", False)
    assert [r["diverged"] for r in result.records] == [False, True]
    assert [r.getMessage().split(" ignored")[0] for r in caplog.records] == ["JAX_DEBUG_NANS"]


def test_one_compile_per_sweep_whatever_the_values(mlp_task):
    grid_a = Grid(eps=(1e-8, 1.0), lr=(1e-3,))
    grid_b = Grid(eps=(1e-6, 0.5), lr=(3e-2,), decay=(0.99,))
    config = RunConfig(steps=12, batch_size=8, seeds=1)
    first = sweep(mlp_task, grid_a, config)
    assert first.meta["compilations"] + first.meta["compile_cache_loads"] >= 4  # the counter does count
    before = engine.compile_count()
    result = sweep(mlp_task, grid_b, config)
    assert engine.compile_count() == before
    assert result.meta["compilations"] == 0
    assert [r["eps"] for r in result.records] == [1e-6, 0.5]


def test_a_sweep_of_many_chunks_compiles_each_program_once(mlp_task):
    """Chunks share shapes (the last one padded), so 7 settings in chunks of 2 compile (or
    load from the persistent cache) init, train, evaluate and finish once each, and nothing else."""
    grid = Grid(eps=(1e-8, 1e-6, 1e-4, 1e-3, 1e-2, 0.1, 1.0))
    result = sweep(mlp_task, grid, RunConfig(steps=13, batch_size=8, chunk_size=2))
    assert result.meta["compilations"] + result.meta["compile_cache_loads"] == 4
    assert len(result.records) == 7


def test_sweep_records_fold_seeds(mlp_task):
    result = sweep(mlp_task, Grid(eps=(1e-8, 1.0), lr=(1e-2,)), RunConfig(steps=30, batch_size=16, seeds=2,
                                                                           curve_points=10))
    assert len(result.records) == 2 and len(result.runs) == 4
    for record in result.records:
        runs = [r for r in result.runs if r["eps"] == record["eps"]]
        assert record["final_loss"] == pytest.approx(np.mean([r["final_loss"] for r in runs]), rel=1e-6)
        assert record["val_accuracy_std"] == pytest.approx(np.std([r["val_accuracy"] for r in runs], ddof=1), abs=1e-7)
        assert record["seeds"] == 2 and record["diverged"] is False and len(record["loss_curve"]) == 10
    # eps = 1 with a small learning rate damps the steps: it must train slower than eps = 1e-8
    assert result.records[0]["final_loss"] < result.records[1]["final_loss"]


def batchnorm_dropout_task(data):
    """A tiny model with what Inception-v3 carries besides weights: BatchNorm statistics
    (``model_state``) and dropout (keys from the engine), built the way inception_task is."""
    import flax.linen as nn
    import jax.numpy as jnp
    import optax

    from epsweep.tasks import Task

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train):
            x = nn.Dense(16)(x.reshape(len(x), -1))
            x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
            x = nn.Dropout(0.3, deterministic=not train)(x)
            return nn.Dense(data.num_classes)(x)

    model, sample = Net(), jnp.zeros((1, *data.input_shape))

    def init(rng):
        variables = model.init(rng, sample, train=False)
        return variables["params"], variables["batch_stats"]

    def loss(params, stats, x, y, rng):
        logits, updated = model.apply({"params": params, "batch_stats": stats}, x, train=True,
                                      rngs={"dropout": rng}, mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), updated["batch_stats"]

    def evaluate(params, stats, x, y):
        logits = model.apply({"params": params, "batch_stats": stats}, x, train=False)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y), (logits.argmax(-1) == y).astype(float)

    return Task("bn-dropout", init, loss, evaluate, data)


def test_batchnorm_and_dropout_runs_are_independent_per_configuration(mlp_task):
    """Each configuration keeps its own BatchNorm statistics and draws its own dropout masks
    inside its vmapped step: trained in a grid it gives what it gives alone."""
    task = batchnorm_dropout_task(mlp_task.data)
    settings = TrainSpec(steps=12, batch_size=16, curve_points=4)
    h = hparams([1e-8, 1.0, 1e-4], lr=[1e-2, 1e-1, 3e-3])
    together = train_runs(task, settings, h, np.array([3]))
    for j in range(3):
        alone = train_runs(task, settings, {k: v[j:j + 1] for k, v in h.items()}, np.array([3]))
        np.testing.assert_allclose(alone.curve[:, 0], together.curve[:, j], rtol=2e-5, atol=1e-6)
        np.testing.assert_allclose(alone.val_loss[:, 0], together.val_loss[:, j], rtol=2e-5, atol=1e-6)
    assert len({round(float(v), 6) for v in together.val_loss[0]}) == 3  # the statistics differ per run


@pytest.mark.parametrize("name", ["toy", "quadratic"])  # data of its own, and none
def test_loop_free_sgd_trains_like_the_looped_program(name, caplog):
    """sgd measures no eps diagnostics: a loop-free step returns no gradient to measure. One
    setting per device, every loop-free program is a plain call; the numbers must be the
    looped program's. Its empty mask of moving parameters, which XLA returns replicated, is
    taken as such: every call goes to the program compiled ahead (an empty array declared
    split across the devices made train and finish compile twice)."""
    import dataclasses
    import logging

    caplog.set_level(logging.DEBUG, logger="epsweep.engine.compiled")

    from epsweep.tasks import build_task

    task = build_task(name)
    one_each = dataclasses.replace(task, loop_free_on_cpu=True, settings_per_cpu_device=1)
    looped = dataclasses.replace(task, loop_free_on_cpu=False)
    settings = TrainSpec(steps=6, batch_size=2, curve_points=3, optimizer="sgd")
    if jax.devices()[0].platform == "cpu":
        assert engine.compiled_programs(one_each, settings).loop_free
    h = hparams([1e-8, 1.0], lr=[1e-2, 1e-1])
    plain, loop = (train_runs(t, settings, h, np.array([0, 1])) for t in (one_each, looped))
    for field in engine.RunOutputs._fields:
        np.testing.assert_allclose(getattr(plain, field), getattr(loop, field), rtol=1e-5, atol=1e-6, err_msg=field)
    assert np.all(np.isfinite(plain.final_loss)) and plain.final_loss[0, 0] != plain.final_loss[0, 1]  # lr differs
    assert "through jit" not in caplog.text


def test_a_program_compiled_ahead_takes_an_empty_array_however_it_is_placed():
    """An empty array has nothing to place: given split where the program takes it replicated
    (or the other way round), the call still goes to the program compiled ahead, not to a
    second compile through jit; any other array placed otherwise still does."""
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    from epsweep.engine.compiled import CompiledAhead

    devices = jax.devices()[:2]
    if len(devices) < 2:
        pytest.skip("one device: every placement is the same")
    mesh = Mesh(np.array(devices), ("config",))
    split, replicated = NamedSharding(mesh, P(None, "config")), NamedSharding(mesh, P())
    through_jit = []

    class Recorded:
        def __init__(self):
            self.jitted = jax.jit(lambda mask, x: (mask, x * 2))

        def lower(self, *args):
            return self.jitted.lower(*args)

        def __call__(self, *args):
            through_jit.append(args)
            return self.jitted(*args)

    def abstract(shape, dtype, sharding):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)

    x = jax.device_put(np.arange(2, dtype=np.float32).reshape(1, 2), split)
    for declared, given in ((split, replicated), (replicated, split)):
        ahead = CompiledAhead(Recorded(), (abstract((1, 2, 0), bool, declared), abstract((1, 2), np.float32, split)))
        mask, doubled = ahead(jax.device_put(np.zeros((1, 2, 0), bool), given), x)
        assert mask.shape == (1, 2, 0) and doubled.tolist() == [[0.0, 2.0]]
        assert not through_jit, (declared, given)
    ahead(jax.device_put(np.zeros((1, 2, 0), bool), replicated), jax.device_put(np.asarray(x), replicated))
    assert len(through_jit) == 1  # a non-empty array placed otherwise: the program of its placement


def test_loop_free_programs_train_like_the_looped_one(mlp_task):
    """On CPU, convolutional tasks take one step per compiled call (XLA runs convolutions in
    loops slowly), their eps diagnostics measured by a program of their own after the sampled
    steps (every second step of 102 here); the numbers must be those of the program that loops
    over steps."""
    import dataclasses

    from epsweep.tasks import build_task

    cnn = build_task("cnn", "digits", 0.2)
    assert cnn.loop_free_on_cpu
    looped = dataclasses.replace(cnn, loop_free_on_cpu=False)
    settings = TrainSpec(steps=102, batch_size=8, curve_points=3)
    assert settings.diagnostic_every == 2 and settings.measured(101) and not settings.measured(100)
    h = hparams([1e-8, 1.0], lr=[1e-2, 1e-1])
    loop_free = engine.compiled_programs(cnn, settings)
    assert loop_free.loop_free and loop_free.measure is not None
    assert not engine.compiled_programs(looped, settings).loop_free
    assert engine.compiled_programs(looped, settings).measure is None
    # one setting per device: XLA's CPU backend runs vmapped convolutions in a loop very slowly
    one_step_calls = train_runs(cnn, settings, h, np.array([0]), chunk_size=2)
    one_loop = train_runs(looped, settings, h, np.array([0]), chunk_size=2)
    for name in engine.RunOutputs._fields:
        np.testing.assert_allclose(getattr(one_step_calls, name), getattr(one_loop, name), rtol=1e-5, atol=1e-6,
                                   err_msg=name)


@pytest.mark.parametrize("size", [1, 3])
def test_the_loop_free_programs_mapping_equals_vmap(size):
    """Over axes of size 1 the loop-free programs (init, train, evaluate, finish, measure) call
    the function unbatched (it traces faster); any size, any prefix of axes, the result is vmap's."""
    import jax.numpy as jnp

    from epsweep.engine.layout import vmap_or_call as _vmap_or_call

    def f(tree, scale, shared):
        return {"sum": tree["w"].sum() * scale + shared, "w": tree["w"] * scale, "b": tree["b"]}, scale

    rng = np.random.default_rng(0)
    tree = {"w": rng.normal(size=(4, size, 2)), "b": rng.normal(size=(size, 3))}
    args = (tree, jnp.arange(1.0, size + 1), 0.5)
    in_axes = ({"w": 1, "b": 0}, 0, None)
    out_axes = ({"sum": 0, "w": 2, "b": 0}, 0)
    ours = _vmap_or_call(f, in_axes, out_axes)(*args)
    theirs = jax.vmap(f, in_axes, out_axes)(*args)
    assert jax.tree.structure(ours) == jax.tree.structure(theirs)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6) or a.shape == b.shape, ours, theirs)
    assert [a.shape for a in jax.tree.leaves(ours)] == [b.shape for b in jax.tree.leaves(theirs)]
