"""--freeze-base: Keras semantics (the base in inference mode), its features computed once and
kept, and the proof that sweeping the head on them is training the whole model, setting by
setting.

One small setup serves every test (module fixtures, programs shared): 12 random 75x75 images
of 3 classes, and random stand-in weights for 5 classes (so the 3-class head is fresh, drawn
from the run's key). The reference is the whole Inception-v3 trained by the engine with the
base's variables in its (never updated) model state and ``base_train=False``.
"""

import dataclasses
import functools
import io
import json
import os
import zipfile
from contextlib import redirect_stdout

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from safetensors.numpy import save_file

from epsweep.cli import main
from epsweep.config import RunConfig
from epsweep.data.images import load_image_dataset
from epsweep.engine.features import cache_key, on_features
from epsweep.errors import UserError
from epsweep.grid import Grid
from epsweep.models.inception import InceptionAux, InceptionV3, is_head_param
from epsweep.models.inception_weights import random_state
from epsweep.results.cache import ArrayCache
from epsweep.runner import sweep
from epsweep.tasks import Task
from epsweep.tasks.inception import InceptionOptions, inception_task

SIZE, IMAGES, CLASSES, FILE_CLASSES = 75, 12, 3, 5
GRID = Grid(eps=(1e-8, 1.0), lr=(1e-2,))
CONFIG = RunConfig(steps=3, batch_size=4)  # 9 training images: the third step starts a new epoch
CLI_ARGS = ["--image-size", str(SIZE), "--eps", "1e-8", "1", "--lr", "0.01", "--steps", "3", "--batch-size", "4",
            "--val-split", "0.25", "-f", "json", "-q"]


def abstract_variables(model, size=SIZE):
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("frozen")
    rng = np.random.default_rng(0)
    np.savez(root / "images.npz", x=rng.integers(0, 256, (IMAGES, SIZE, SIZE, 3), dtype=np.uint8),
             y=np.arange(IMAGES) % CLASSES)
    save_file(random_state(abstract_variables(InceptionV3(num_classes=FILE_CLASSES))), str(root / "w.safetensors"))
    return root


@pytest.fixture(scope="module")
def data(files):
    return load_image_dataset(str(files / "images.npz"), SIZE, 0.25)


def frozen_task(data, files, **options):
    return inception_task(data, InceptionOptions(weights=files / "w.safetensors", freeze_base=True, **options))


def full_frozen_task(data, files) -> Task:
    """The whole model, base frozen in inference mode: the reference. The base's variables are
    the model state (the engine differentiates params only, and the state comes back as it
    went in); the head is ``fc`` of ``model.init``, as a sweep of the full model draws it."""
    from epsweep.models.inception_weights import load_inception_safetensors

    model = InceptionV3(num_classes=CLASSES)
    sample = np.zeros((1, SIZE, SIZE, 3), np.float32)
    placeholders = jax.tree.map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), abstract_variables(model))
    loaded, _ = load_inception_safetensors(files / "w.safetensors", placeholders)
    base = {"params": {k: v for k, v in loaded["params"].items() if not is_head_param((k,))},
            "batch_stats": loaded["batch_stats"]}

    def init(key, base):
        return {"fc": model.init(key, sample, train=False)["params"]["fc"]}, base

    def logits(head, base, x, train, rng=None):
        variables = {"params": {**base["params"], **head}, "batch_stats": base["batch_stats"]}
        x = x.astype(jnp.float32) * (2.0 / 255.0) - 1.0
        return model.apply(variables, x, train=train, base_train=False, rngs={"dropout": rng} if train else None)

    def loss(head, base, x, y, rng):
        return optax.softmax_cross_entropy_with_integer_labels(logits(head, base, x, True, rng), y).mean(), base

    def evaluate(head, base, x, y):
        out = logits(head, base, x, False)
        return optax.softmax_cross_entropy_with_integer_labels(out, y), (out.argmax(-1) == y).astype(jnp.float32)

    return Task("inception-full-frozen", init, loss, evaluate, data, constants=base, default_batch_size=4,
                eval_batch_size=32, loop_free_on_cpu=True, settings_per_cpu_device=1)


@pytest.fixture(scope="module")
def cached(data, files):
    """The cached path, swept once, its features kept in a feature cache of its own:
    (task, the task on its features, the sweep's result, the cache directory)."""
    task = frozen_task(data, files)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EPSWEEP_FEATURE_CACHE", str(files / "features"))
        result = sweep(task, GRID, CONFIG)
    realised, info = on_features(task)
    assert info["source"] == "memory"
    return task, realised, result, files / "features"


def test_head_stage_initialises_and_reads_like_the_full_model():
    """Head leaves from ``stage="head"`` init equal the full model's for the same key (mlp head and
    aux fc; only the head's initialisers are compiled), and the aux classifier splits into
    features + head."""
    model = InceptionV3(num_classes=4, aux_logits=True, head="mlp")
    x = np.zeros((1, SIZE, SIZE, 3), np.float32)
    head_input = (np.zeros((1, 2048), np.float32), np.zeros((1, 768), np.float32))
    key = jax.random.key(7)

    def head_of(params):
        return {"head_hidden": params["head_hidden"], "head_out": params["head_out"],
                "AuxLogits": {"fc": params["AuxLogits"]["fc"]}}

    quick = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
    full = jax.jit(lambda k: head_of(model.init(k, x, train=False)["params"]), compiler_options=quick)(key)
    head = jax.jit(lambda k: model.init(k, head_input, train=False, stage="head")["params"],
                   compiler_options=quick)(key)
    assert jax.tree.structure(full) == jax.tree.structure(head)
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(head), strict=True):
        np.testing.assert_array_equal(a, b)

    aux = InceptionAux(4)
    mixed_6e = np.random.default_rng(1).normal(size=(2, 17, 17, 768)).astype(np.float32)

    @functools.partial(jax.jit, compiler_options=quick)
    def whole_and_split(key, x):
        variables = aux.init(key, x, train=False)
        pooled = aux.apply(variables, x, train=False, stage="features")
        return aux.apply(variables, x, train=False), aux.apply(variables, pooled, train=False, stage="head")

    whole, split = whole_and_split(key, mixed_6e)
    np.testing.assert_allclose(split, whole, rtol=1e-6, atol=1e-7)


def test_frozen_base_never_updates_batchnorm_statistics():
    """With ``base_train=False`` under a training head, every statistic the model returns is the
    variable it was given (read off the traced program: nothing is computed for it); in train
    mode they are new values."""
    model = InceptionV3(num_classes=CLASSES)
    variables = abstract_variables(model)

    def stats_out(base_train):
        def apply(v, x):
            return model.apply(v, x, train=True, base_train=base_train, rngs={"dropout": jax.random.key(0)},
                               mutable=["batch_stats"])[1]
        closed = jax.make_jaxpr(apply)(variables, jax.ShapeDtypeStruct((2, SIZE, SIZE, 3), jnp.float32))
        n_stats = len(jax.tree.leaves(variables["batch_stats"]))
        return closed.jaxpr.invars, closed.jaxpr.outvars[-n_stats:] if n_stats else []

    invars, outvars = stats_out(False)
    assert outvars and all(out in invars for out in outvars)
    invars, outvars = stats_out(True)
    assert not any(out in invars for out in outvars)


def test_cached_features_train_like_the_full_frozen_model(cached, data, files):
    """The proof: head on cached features == full model with the base frozen in inference mode,
    setting by setting (loss curve and final loss), to 1e-5 relative. The reference trains on
    the same 9 images (same minibatches, dropout keys, initial head) without validation, which
    would cost another compilation of the whole model: the validation features are checked
    against training features of the same images instead (one program computes both)."""
    task, realised, fast, _ = cached
    info = fast.meta["features"]
    assert info["source"] == "computed" and info["shape"] == [2048] and info["inputs"] == IMAGES
    assert realised.data.x_train.shape == (9, 2048) and realised.data.x_val.shape == (3, 2048)
    no_val = dataclasses.replace(data, x_val=data.x_val[:0], y_val=data.y_val[:0])
    full = sweep(full_frozen_task(no_val, files), GRID, dataclasses.replace(CONFIG, chunk_size=2))
    assert [r["eps"] for r in fast.records] == [r["eps"] for r in full.records] == [1e-8, 1.0]
    for mine, theirs in zip(fast.records, full.records, strict=True):
        np.testing.assert_allclose(mine["final_loss"], theirs["final_loss"], rtol=1e-5)
        np.testing.assert_allclose(mine["loss_curve"], theirs["loss_curve"], rtol=1e-5)
        assert len(mine["loss_curve"]) == 3 and np.isfinite(mine["val_loss"])
    assert fast.records[0]["loss_curve"] != fast.records[1]["loss_curve"]  # eps mattered: not vacuous
    assert fast.meta["layout"]["settings_per_device"] > 1  # the head alone: several settings per core

    # validation rows are the features of the validation images, in order
    swapped = dataclasses.replace(data, x_train=data.x_val, y_train=data.y_val, x_val=data.x_train[:2],
                                  y_val=data.y_train[:2])
    again, _ = on_features(dataclasses.replace(task, data=swapped))
    np.testing.assert_allclose(again.data.x_train, realised.data.x_val, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(again.data.x_val, realised.data.x_train[:2], rtol=1e-6, atol=1e-6)


def test_features_are_kept_on_disk_and_found_again(cached, files, monkeypatch):
    """The library sweep stored its features under their key; the CLI (another task object,
    nothing in memory) finds them there and reaches the same numbers."""
    task, _, library, store = cached
    assert [p.name for p in store.glob("*.npz")] == [f"{cache_key(task)}.npz"]
    monkeypatch.setenv("EPSWEEP_FEATURE_CACHE", str(store))
    out = io.StringIO()
    with redirect_stdout(out):
        code = main(["inception", "--dataset", str(files / "images.npz"), "--weights", str(files / "w.safetensors"),
                     "--freeze-base", *CLI_ARGS])
    assert code in (0, None)
    result = json.loads(out.getvalue())
    assert result["meta"]["features"]["source"] == "store" and result["meta"]["freeze_base"] is True
    for cli_record, lib_record in zip(result["results"], library.records, strict=True):
        assert cli_record["final_loss"] == pytest.approx(lib_record["final_loss"], rel=1e-6)
        assert cli_record["val_loss"] == pytest.approx(lib_record["val_loss"], rel=1e-6)


def test_stored_features_that_do_not_fit_are_computed_again(cached):
    task, realised, _, _ = cached

    class Store:
        saved: dict = {}

        def load(self, key):
            return {"x_train": realised.data.x_train[:-1], "x_val": realised.data.x_val}  # a row short

        def save(self, key, arrays):
            self.saved[key] = arrays

    store = Store()
    again, info = on_features(dataclasses.replace(task), store=store)  # a new task object: nothing in memory
    assert info["source"] == "computed" and list(store.saved) == [cache_key(task)]
    np.testing.assert_array_equal(again.data.x_train, realised.data.x_train)


def test_cache_key_follows_everything_the_features_depend_on(cached, data, files):
    """Head options leave the key alone; images, weights and the dtype change it."""
    task = cached[0]
    key = cache_key(task)
    assert key == cache_key(frozen_task(data, files, head="mlp", dropout_rate=0.1, label_smoothing=0.1))
    other_images = dataclasses.replace(data, x_val=data.x_val[::-1].copy())
    weights = jax.tree.map(np.copy, task.features.constants)
    weights["batch_stats"]["Mixed_7c"]["branch_pool"]["bn"]["var"][0] += 1.0
    others = [frozen_task(data, files, dtype="bfloat16"), dataclasses.replace(task, data=other_images),
              dataclasses.replace(task, features=dataclasses.replace(task.features, constants=weights))]
    assert len({key, *(cache_key(t) for t in others)}) == 4


def test_array_cache_evicts_least_recently_used_and_ignores_bad_files(tmp_path):
    cache = ArrayCache(tmp_path, max_bytes=3000)
    block = {"x": np.zeros(200, np.float32)}  # about 1.4 kB on disk, with its key
    cache.save("aa" * 8, block)
    cache.save("bb" * 8, block)
    os.utime(tmp_path / f"{'aa' * 8}.npz", (1, 1))
    os.utime(tmp_path / f"{'bb' * 8}.npz", (2, 2))
    assert cache.load("aa" * 8) is not None  # used: now the newest
    cache.save("cc" * 8, block)  # over the limit: the least recently used goes
    assert sorted(p.stem for p in tmp_path.glob("*.npz")) == ["aa" * 8, "cc" * 8]
    np.save(tmp_path / "objects.npy", np.array([{}], dtype=object), allow_pickle=True)
    (tmp_path / "objects.npy").rename(tmp_path / f"{'dd' * 8}.npz")
    (tmp_path / f"{'ee' * 8}.npz").write_bytes(b"PK not a zip")
    assert cache.load("dd" * 8) is None and cache.load("ee" * 8) is None
    with pytest.raises(ValueError, match="not a hex key"):
        cache.load("../escape")


def test_array_cache_misses_a_file_claiming_an_impossible_shape_and_says_one_line_for_a_bad_store(tmp_path,
                                                                                                   monkeypatch):
    """An entry whose header claims more than memory can hold is a miss, not a crash; a store
    that is a file, or an entry that is a directory, costs one line in all (the failed save)."""
    cache = ArrayCache(tmp_path / "store")
    cache.save("aa" * 8, {"x_train": np.zeros((3, 4), np.float32)})
    path = cache.path("aa" * 8)
    with zipfile.ZipFile(path) as archive:
        member = archive.read("x_train.npy")
    header_end = member.index(b"\n") + 1
    header = member[:header_end].replace(b"(3, 4)", b"(9000000000000, 2048)")
    header = header[:-1].ljust(header_end - 1 + 64 - (len(header) % 64 or 64), b" ") + b"\n"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x_train.npy", header + member[header_end:])
    assert cache.load("aa" * 8) is None  # a 65 PiB claim: unreadable
    import epsweep.results.cache as store_module

    warned = []
    monkeypatch.setattr(store_module.log, "warning", lambda *args: warned.append(args))
    for store in (tmp_path / "a file", tmp_path / "dirs"):
        if store.name == "a file":
            store.write_bytes(b"")
        else:
            (store / f"{'bb' * 8}.npz").mkdir(parents=True)
        warned.clear()
        bad = ArrayCache(store)
        assert bad.load("bb" * 8) is None
        bad.save("bb" * 8, {"x": np.zeros(2)})
        assert len(warned) == 1 and warned[0][0].startswith("cannot keep features"), warned


def test_frozen_aux_needs_the_aux_convolutions_in_the_file(files):
    images = np.zeros((4, 299, 299, 3), np.uint8)
    from epsweep.data import split

    data = split("aux", images, np.array([0, 1, 0, 1]), 0.0)
    with pytest.raises(UserError, match=r"freeze_base with aux needs .*\(AuxLogits.conv0"):
        frozen_task(data, files, aux_logits=True)
