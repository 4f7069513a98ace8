"""Programs kept on disk (jax.export beside the compilation cache) and the kernel layout inside
the training loop: a stored program is reused only by the same code, shapes and devices, and
a damaged file is a miss; the layout swap touches dense kernels only and undoes itself."""

import dataclasses
import json
import sys
import zipfile

import jax
import numpy as np
import pytest

from epsweep.engine import exports
from epsweep.engine.layout import swap_kernels as _swap_kernels
from epsweep.engine.spec import TrainSpec
from epsweep.tasks.own import flax_task

SPEC = TrainSpec(steps=4, batch_size=8, curve_points=2)
LOOPED = set(exports.PROGRAMS) - {"measure"}  # measure: loop-free programs only


@pytest.fixture
def export_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(exports, "export_dir", lambda: tmp_path)
    return tmp_path


def test_stored_programs_read_back_as_exported(mlp_task, export_folder):
    devices = jax.devices()[:1]
    fresh, loaded = exports.load_or_export(mlp_task, SPEC, devices, 2)
    assert not loaded and len(list(export_folder.glob("*.zip"))) == 1
    again, loaded = exports.load_or_export(mlp_task, SPEC, devices, 2)
    assert loaded and set(again) == set(fresh) == LOOPED
    for name in fresh:
        assert again[name].mlir_module() == fresh[name].mlir_module(), name


def test_evaluate_finish_and_measure_take_only_the_state_they_read(mlp_task, export_folder):
    """The compiled program has a parameter for every array it takes, read or not: evaluate
    takes the weights and model state, finish all of the runs but their model state, measure
    the optimizer state, the moving mask, the divergence step and the diagnostics' three
    values; none the epoch order. (The rest: the running sums, the batch and its mask, the
    example count.) A model with BatchNorm statistics, driven loop-free to have a measure."""
    import flax.linen as nn

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            x = nn.Dense(8)(x.reshape(len(x), -1))
            return nn.Dense(10)(nn.relu(nn.BatchNorm(use_running_average=not train)(x)))

    task = dataclasses.replace(flax_task(Net(), mlp_task.data), loop_free_on_cpu=True)
    programs, _ = exports.load_or_export(task, SPEC, jax.devices()[:1], 2)
    runs = jax.tree.unflatten(programs["init"].out_tree, programs["init"].out_avals).runs

    def count(*trees):
        return len(jax.tree.leaves(trees))

    assert count(runs.model_state) > 0
    assert len(programs["evaluate"].in_avals) == count(runs.params, runs.model_state) + 5
    assert len(programs["finish"].in_avals) == count(runs) - count(runs.model_state) + 3
    assert len(programs["measure"].in_avals) == count(runs.opt_state, runs.moving) + 4


def test_a_stored_program_is_keyed_by_the_code_that_traced_it(mlp_task, monkeypatch):
    devices = jax.devices()[:1]
    key = exports.stable_key(mlp_task, SPEC, devices, 2)
    assert key == exports.stable_key(mlp_task, SPEC, devices, 2)
    assert key != exports.stable_key(mlp_task, SPEC, devices, 4)  # another width
    installed = exports.versions()
    monkeypatch.setattr(exports, "versions", lambda: (*installed, "another NumPy"))
    assert key != exports.stable_key(mlp_task, SPEC, devices, 2)
    monkeypatch.undo()
    monkeypatch.setattr(exports, "source_digest", lambda: "an edited checkout")
    assert key != exports.stable_key(mlp_task, SPEC, devices, 2)


def test_a_damaged_stored_program_is_a_miss_and_replaced(mlp_task, export_folder):
    devices = jax.devices()[:1]
    exports.load_or_export(mlp_task, SPEC, devices, 2)
    (path,) = export_folder.glob("*.zip")
    path.write_bytes(b"not a zip")
    programs, loaded = exports.load_or_export(mlp_task, SPEC, devices, 2)
    assert not loaded and set(programs) == LOOPED
    assert exports.load_or_export(mlp_task, SPEC, devices, 2)[1]  # the rewritten file reads


def _rewrite(path, members=None, meta=None):
    """The zip at ``path`` with its meta.json updated by ``meta`` and only ``members`` kept."""
    with zipfile.ZipFile(path) as archive:
        contents = {name: archive.read(name) for name in archive.namelist()}
    stored = {**json.loads(contents.pop("meta.json")), **(meta or {})}
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("meta.json", json.dumps(stored))
        for name, data in contents.items():
            if members is None or name in members:
                archive.writestr(name, data)


@pytest.mark.parametrize("damage", ["another width's file", "another key's meta", "no train", "train is finish",
                                    "imports a module", "imports a lazy submodule"])
def test_a_foreign_or_incomplete_stored_file_is_a_miss_and_replaced(mlp_task, export_folder, damage):
    """A file that reads but is not this key's whole set of programs is never used: not a
    file copied from another key, nor one missing a program or holding another in its place,
    nor one naming a type from a module this process has not imported (reading a file never
    imports anything)."""
    devices = jax.devices()[:1]
    exports.load_or_export(mlp_task, SPEC, devices, 2)
    (path,) = export_folder.glob("*.zip")
    if damage == "another width's file":
        exports.load_or_export(mlp_task, SPEC, devices, 4)
        (other,) = set(export_folder.glob("*.zip")) - {path}
        path.write_bytes(other.read_bytes())
    elif damage == "another key's meta":
        _rewrite(path, meta={"key": "0" * 40})
    elif damage == "no train":
        _rewrite(path, members=set(exports.PROGRAMS) - {"train"})
    elif damage == "train is finish":
        with zipfile.ZipFile(path) as archive:
            finish = archive.read("finish")
        _rewrite(path, members=set(exports.PROGRAMS) - {"train"})
        with zipfile.ZipFile(path, "a") as archive:
            archive.writestr("train", finish)
    elif damage == "imports a module":
        sys.modules.pop("this", None)
        _rewrite(path, meta={"types": ["this.nothing"]})
    else:  # numpy imports numpy.f2py when its attribute is first asked for (a module __getattr__)
        for name in [m for m in sys.modules if m.startswith("numpy.f2py")]:
            sys.modules.pop(name)
        _rewrite(path, meta={"types": ["numpy.f2py.Nothing"]})
    programs, loaded = exports.load_or_export(mlp_task, SPEC, devices, 2)
    assert not loaded and set(programs) == LOOPED
    if damage == "imports a module":  # only what this case removed: other tests may import either
        assert "this" not in sys.modules
    if damage == "imports a lazy submodule":
        assert "numpy.f2py" not in sys.modules
    again, loaded = exports.load_or_export(mlp_task, SPEC, devices, 2)  # the file was replaced
    assert loaded and all(again[n].mlir_module() == programs[n].mlir_module() for n in programs)


def test_data_of_a_wider_dtype_than_jax_computes_in_reads_back(mlp_task, export_folder):
    """Float64 inputs and int64 labels are called as JAX narrows them (float32, int32), as
    the stored programs record them: the second sweep reads them back."""
    data = mlp_task.data
    wide = dataclasses.replace(mlp_task, data=dataclasses.replace(
        data, x_train=data.x_train.astype(np.float64), y_train=data.y_train.astype(np.int64),
        x_val=data.x_val.astype(np.float64), y_val=data.y_val.astype(np.int64)))
    devices = jax.devices()[:1]
    assert not exports.load_or_export(wide, SPEC, devices, 2)[1]
    assert exports.load_or_export(wide, SPEC, devices, 2)[1]


@pytest.mark.parametrize("stored", ['{"per_config": 0, "state": 0, "fixed": 0}',
                                    '{"per_config": Infinity, "state": 1, "fixed": 1}',
                                    '{"per_config": true, "state": true, "fixed": true}',
                                    '{"per_config": 1e30, "state": 1, "fixed": 1}',
                                    '{"per_config": -5, "state": 1, "fixed": 1}',
                                    '{"per_config": 7, "state": 1, "fixed": 1}',  # no key: not this one's
                                    '[1, 2, 3]'])
def test_a_stored_memory_estimate_that_is_not_byte_counts_of_this_key_is_computed_again(mlp_task, export_folder,
                                                                                         stored):
    """The estimate sets the call width, and with it the numbers: only this key's own whole
    byte counts are reused."""
    from epsweep.engine.memory import Estimate

    computed = []

    def compute():
        computed.append(1)
        return Estimate(per_config=1000, state=500, fixed=100)

    assert exports.cached_estimate(mlp_task, SPEC, compute) == Estimate(1000, 500, 100)
    (path,) = export_folder.glob("*.estimate.json")
    assert exports.cached_estimate(mlp_task, SPEC, compute) == Estimate(1000, 500, 100) and len(computed) == 1
    path.write_text(stored)
    assert exports.cached_estimate(mlp_task, SPEC, compute) == Estimate(1000, 500, 100) and len(computed) == 2
    assert exports.cached_estimate(mlp_task, SPEC, compute) == Estimate(1000, 500, 100) and len(computed) == 2


def test_a_store_whose_name_the_system_refuses_is_no_store(mlp_task, tmp_path, monkeypatch):
    """A folder name longer than the system allows (``<cache>-exports`` past 255 bytes) stores
    nothing, and costs nothing."""
    monkeypatch.setattr(exports, "export_dir", lambda: tmp_path / ("m" * 300))
    programs, loaded = exports.load_or_export(mlp_task, SPEC, jax.devices()[:1], 2)
    assert not loaded and set(programs) == LOOPED
    from epsweep.engine.memory import Estimate
    assert exports.cached_estimate(mlp_task, SPEC, lambda: Estimate(1, 2, 3)) == Estimate(1, 2, 3)


def test_kernel_swap_touches_dense_kernels_only_and_undoes_itself():
    runs = (1, 3)  # (S, G)
    tree = {"Dense_0": {"kernel": np.zeros((*runs, 4, 5)), "bias": np.zeros((*runs, 5))},
            "Embed_0": {"embedding": np.zeros((*runs, 6, 2))},
            "Conv_0": {"kernel": np.zeros((*runs, 3, 3, 1, 2))}}
    swapped = _swap_kernels(tree, lead=2)
    assert swapped["Dense_0"]["kernel"].shape == (*runs, 5, 4)
    assert swapped["Dense_0"]["bias"].shape == (*runs, 5)
    assert swapped["Embed_0"]["embedding"].shape == (*runs, 6, 2)
    assert swapped["Conv_0"]["kernel"].shape == (*runs, 3, 3, 1, 2)
    values = np.arange(3 * 4 * 5.0).reshape(*runs, 4, 5)
    np.testing.assert_array_equal(_swap_kernels({"kernel": values}, lead=2)["kernel"], values.swapaxes(-1, -2))
    back = _swap_kernels(_swap_kernels({"kernel": values}, lead=2), lead=2)["kernel"]
    np.testing.assert_array_equal(back, values)


def test_kernel_swap_reaches_optimizer_statistics_and_nnx_parameters():
    """The optimizer's statistics mirror the parameters inside optax's NamedTuple states
    (attribute keys), and NNX parameters sit under a ``value`` attribute: both are swapped."""
    import optax
    from flax import nnx

    params = {"Dense_0": {"kernel": np.ones((4, 5)), "bias": np.ones(5)}}
    state = optax.rmsprop(1e-3).init(params)
    swapped = _swap_kernels(state)
    shapes = [leaf.shape for leaf in jax.tree.leaves(swapped) if np.ndim(leaf) == 2]
    assert shapes == [(5, 4)]  # the second moment of the kernel
    _, nnx_params, _ = nnx.split(nnx.Linear(4, 5, rngs=nnx.Rngs(0)), nnx.Param, ...)
    assert sorted(leaf.shape for leaf in jax.tree.leaves(_swap_kernels(nnx_params))) == [(5,), (5, 4)]
