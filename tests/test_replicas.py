"""The single-device program run as one replica per CPU device (epsweep/engine/replicas.py):
the same numbers as that program on one device, settings split as the device mesh splits
them, the state donated where the mesh program donates it, and the mesh program where
replicas cannot run."""

import dataclasses
from types import SimpleNamespace

import jax
import numpy as np
import pytest
from test_engine import hparams

from epsweep import engine
from epsweep.engine import compiled, replicas
from epsweep.engine.driver import train_runs
from epsweep.engine.spec import TrainSpec, program_hyperparameters

CPU = jax.devices("cpu")
two_devices = pytest.mark.skipif(len(CPU) < 2, reason="one CPU device: nothing to replicate")


@two_devices
@pytest.mark.parametrize("optimizer", ["rmsprop", "sgd"])  # sgd: an empty mask of moving parameters
def test_each_device_runs_the_one_device_program_on_its_half(mlp_task, optimizer):
    """Four settings over two devices are, bit for bit, the one-device program's two calls of
    two settings: device 0 trains the first two, device 1 the last two."""
    spec = TrainSpec(steps=5, batch_size=8, curve_points=2, optimizer=optimizer)
    h = hparams([1e-8, 1e-4, 1e-2, 1.0], lr=[1e-3, 3e-3, 1e-2, 3e-2])
    programs = compiled.compiled_programs(mlp_task, spec, CPU[:2], 4)
    assert all(isinstance(p, replicas.Replicated) for p in (programs.init, programs.train, programs.finish))
    both = train_runs(mlp_task, spec, h, np.array([0]), devices=CPU[:2], chunk_size=4)
    one = train_runs(mlp_task, spec, h, np.array([0]), devices=CPU[:1], chunk_size=2)
    for field in engine.RunOutputs._fields:
        np.testing.assert_array_equal(getattr(both, field), getattr(one, field), err_msg=field)
    assert len(set(both.final_loss[0].tolist())) == 4  # four settings, four runs


@two_devices
def test_replicas_train_as_the_device_mesh_program(mlp_task, monkeypatch):
    """Without replicas (another JAX, several processes, a GPU) the SPMD program over the mesh
    runs: the same training, to the last bit or so (XLA may fuse the partitioned module a
    little differently)."""
    spec = TrainSpec(steps=5, batch_size=7, curve_points=2)
    h = hparams([1e-8, 1e-4, 1e-2, 1.0])
    assert isinstance(compiled.compiled_programs(mlp_task, spec, CPU[:2], 4).train, replicas.Replicated)
    replicated = train_runs(mlp_task, spec, h, np.array([0]), devices=CPU[:2], chunk_size=4)
    monkeypatch.setattr(replicas, "available", lambda devices: False)
    monkeypatch.setattr(compiled, "_programs", type(compiled._programs)())
    mesh = compiled.compiled_programs(mlp_task, spec, CPU[:2], 4)
    assert isinstance(mesh.train, compiled.CompiledAhead)
    sharded = train_runs(mlp_task, spec, h, np.array([0]), devices=CPU[:2], chunk_size=4)
    for field in engine.RunOutputs._fields:
        np.testing.assert_allclose(getattr(replicated, field), getattr(sharded, field), rtol=1e-6, atol=1e-7,
                                   err_msg=field)


@two_devices
def test_the_looped_state_is_donated_and_a_call_of_other_shapes_is_refused(mlp_task):
    """``train`` updates the looped state in place on each device (XLA aliases it, and the
    arrays passed in are consumed), as the mesh program does; a call of another width or
    dtype is refused by name before anything runs (XLA would read a float's bits as a seed)."""
    spec = TrainSpec(steps=3, batch_size=8, curve_points=2)
    programs = compiled.compiled_programs(mlp_task, spec, CPU[:2], 2)
    assert not programs.loop_free and programs.train.memory_stats().alias_size_in_bytes > 0
    mesh = jax.sharding.Mesh(np.array(CPU[:2]), (compiled.CONFIG_AXIS,))
    split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(compiled.CONFIG_AXIS))
    every = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    h = {k: jax.device_put(v.astype(np.float32), split)
         for k, v in program_hyperparameters(hparams([1e-8, 1.0])).items()}
    seed = jax.device_put(np.zeros(1, np.uint32), every)
    state = programs.init(h, seed, None)
    data = (jax.device_put(mlp_task.data.x_train, every), jax.device_put(mlp_task.data.y_train, every))
    leaf = jax.tree.leaves(state.runs)[0]
    new, reached = programs.train(state, h, seed, np.int32(0), np.int32(3), *data)
    assert leaf.is_deleted() and int(reached) == 3
    assert jax.tree.leaves(new.runs)[0].sharding == leaf.sharding
    wide = {k: jax.device_put(np.zeros(4, np.float32), split) for k in h}
    with pytest.raises(TypeError, match=r"epsweep_train: argument \d+ has shape \(4,\), compiled for \(2,\)"):
        programs.train(new, wide, seed, np.int32(0), np.int32(3), *data)
    with pytest.raises(TypeError, match="epsweep_train: argument .* has dtype float32, compiled for uint32"):
        programs.train(new, h, seed.astype(np.float32), np.int32(0), np.int32(3), *data)
    again, _ = programs.train(new, h, seed, 0, 3, *data)  # Python ints are int32 to JAX, as the step numbers
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(again.runs.params))


@two_devices
def test_a_program_that_calls_back_to_python_and_those_after_it_run_on_the_mesh(mlp_task):
    """A loss that calls back to Python cannot be exported: ``train`` and the programs traced
    after it compile for the device mesh, ``init`` (exported, compiling already) stays a
    replica, nothing is compiled twice, and the numbers are the plain loss's."""
    def loss(*args):
        jax.debug.callback(lambda: None)
        return mlp_task.loss(*args)

    calling = dataclasses.replace(mlp_task, loss=loss)
    spec = TrainSpec(steps=4, batch_size=9, curve_points=2)
    def built():  # compiled, or loaded from the persistent cache (init's module is another test's)
        return compiled.compile_count() + compiled.cache_loads()

    before = built()
    programs = compiled.compiled_programs(calling, spec, CPU[:2], 2)
    assert isinstance(programs.init, replicas.Replicated)
    assert all(isinstance(p, compiled.CompiledAhead) for p in (programs.train, programs.evaluate, programs.finish))
    h = hparams([1e-8, 1.0])
    called = train_runs(calling, spec, h, np.array([0]), devices=CPU[:2], chunk_size=2)
    assert built() - before == 4  # init, train, evaluate, finish: once each
    plain = train_runs(mlp_task, spec, h, np.array([0]), devices=CPU[:2], chunk_size=2)
    for field in engine.RunOutputs._fields:
        np.testing.assert_allclose(getattr(called, field), getattr(plain, field), rtol=1e-6, atol=1e-7, err_msg=field)


def test_replicas_only_for_several_cpu_devices_of_this_process_with_a_tested_jax():
    def device(platform="cpu", process=0):
        return SimpleNamespace(platform=platform, process_index=process)

    assert replicas.available([device(), device()]) == replicas._INTERNALS
    assert not replicas.available([device()])  # one device: its own program already
    assert not replicas.available([device("gpu"), device("gpu")])  # not measured there: the mesh program
    assert not replicas.available([device(), device(process=1)])  # another process's device
    assert replicas._release(jax.__version__) in replicas.TESTED_JAX  # else this suite tests the mesh alone
    assert replicas._release("0.11.0") not in replicas.TESTED_JAX and replicas._release("1.0rc1") == ()


def test_global_shapes_follow_the_split():
    P = jax.sharding.PartitionSpec
    block = jax.ShapeDtypeStruct((1, 3, 5), np.float32)
    assert replicas.global_aval(block, P(None, "config"), 2).shape == (1, 6, 5)
    assert replicas.global_aval(block, P("config"), 4).shape == (4, 3, 5)
    assert replicas.global_aval(block, P(), 2).shape == (1, 3, 5)
    tree = {"a": block, "b": [block, block]}
    assert replicas.leaf_specs({"a": P("c"), "b": P(None, "c")}, tree) == [P("c"), P(None, "c"), P(None, "c")]
    with pytest.raises(ValueError, match="does not split"):
        replicas.call_width(3, 2)
