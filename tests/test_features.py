"""The frozen-features store without Inception: a tiny extractor (tanh(x W)) over a few rows,
its features keyed (engine.features) and kept in an ArrayCache (results.cache)."""

import dataclasses
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from epsweep.data.dataset import Dataset
from epsweep.engine.features import cache_key, on_features
from epsweep.errors import UserError
from epsweep.results.cache import ArrayCache
from epsweep.tasks.task import Features, Task

WEIGHTS = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)


def tiny_task(n_train=6, n_val=2, weights=WEIGHTS) -> Task:
    """Features (N, 4) of inputs (N, 3); nothing here trains, so no loss or model."""
    x = np.arange((n_train + n_val) * 3, dtype=np.float32).reshape(-1, 3) / 10
    y = np.arange(n_train + n_val) % 2
    data = Dataset("tiny", x[:n_train], y[:n_train], x[n_train:], y[n_train:], 2)
    features = Features(lambda w, x: jnp.tanh(x @ w), weights, identity=("tanh", "test"), batch_size=4)
    return Task("tiny", None, None, None, data, features=features)


def test_the_key_of_inputs_without_a_validation_set_still_tells_their_shapes(tmp_path):
    """--val-split 0: an empty validation array (memoryview cannot cast it) is keyed by its
    shape and dtype, and its features are kept and found again."""
    task = tiny_task(n_val=0)
    store = ArrayCache(tmp_path)
    assert [on_features(tiny_task(n_val=0), store=store)[1]["source"] for _ in range(2)] == ["computed", "store"]
    key = cache_key(task)
    assert key == cache_key(tiny_task(n_val=0)) and len(key) == 32
    wider = dataclasses.replace(task.data, x_val=np.zeros((0, 5), np.float32))
    assert cache_key(dataclasses.replace(task, data=wider)) != key


def save_npy(store, key, arrays):
    with open(store.path(key), "wb") as f:
        np.save(f, arrays["x_train"])


DAMAGED = {  # how an entry is damaged: (store, key, the right arrays) -> None
    "one .npy array": save_npy,
    "features too narrow": lambda store, key, a: store.save(key, {k: v[:, :3] for k, v in a.items()}),
    "1-D": lambda store, key, a: store.save(key, {k: v[:, 0] for k, v in a.items()}),
    "(N, 4, 1)": lambda store, key, a: store.save(key, {k: v[..., None] for k, v in a.items()}),
    "float16": lambda store, key, a: store.save(key, {k: v.astype(np.float16) for k, v in a.items()}),
}


@pytest.mark.parametrize("damage", DAMAGED.values(), ids=DAMAGED.keys())
def test_a_damaged_entry_is_computed_again_and_replaced(tmp_path, caplog, damage):
    """docs/inception.md: an unreadable entry, or one that does not fit the data, is a miss
    (at most one warning), computed again and replaced."""
    store = ArrayCache(tmp_path)
    computed, info = on_features(tiny_task(), store=store)
    assert info["source"] == "computed"
    damage(store, cache_key(tiny_task()), {"x_train": computed.data.x_train, "x_val": computed.data.x_val})
    with caplog.at_level(logging.WARNING):
        again, info = on_features(tiny_task(), store=store)
    assert info["source"] == "computed" and len(caplog.records) <= 1, caplog.records
    np.testing.assert_array_equal(again.data.x_train, computed.data.x_train)
    assert on_features(tiny_task(), store=store)[1]["source"] == "store"


def test_an_entry_copied_over_another_keys_file_is_not_read_as_that_keys(tmp_path, caplog):
    """Another weights' entry (same inputs, same shapes) copied under this key's name holds its
    own key: a miss, one warning, computed again (it was read as this key's, wrong numbers)."""
    store = ArrayCache(tmp_path)
    other = tiny_task(weights=WEIGHTS[::-1].copy())
    on_features(other, store=store)
    key = cache_key(tiny_task())
    store.path(cache_key(other)).rename(store.path(key))
    with caplog.at_level(logging.WARNING):
        realised, info = on_features(tiny_task(), store=store)
    assert info["source"] == "computed" and len(caplog.records) == 1
    assert "not saved under this key" in caplog.records[0].getMessage()
    np.testing.assert_allclose(realised.data.x_train, np.tanh(tiny_task().data.x_train @ WEIGHTS), rtol=1e-6)
    assert on_features(tiny_task(), store=store)[1]["source"] == "store"


def test_features_that_are_not_finite_are_not_kept(tmp_path, caplog):
    """Weights holding NaN: one warning, nothing written (every later run refused the entry and
    wrote it again)."""
    weights = WEIGHTS.copy()
    weights[0, 0] = np.nan
    with caplog.at_level(logging.WARNING):
        _, info = on_features(tiny_task(weights=weights), store=ArrayCache(tmp_path))
    assert info["source"] == "computed" and list(tmp_path.iterdir()) == []
    assert [r.getMessage() for r in caplog.records] == [
        "the frozen features are not finite (NaN or infinity) for 8 of 8 inputs: not kept in the feature store"]
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # no store: still said (every run would read as diverged)
        on_features(tiny_task(weights=weights))
    assert [r.getMessage() for r in caplog.records] == [
        "the frozen features are not finite (NaN or infinity) for 8 of 8 inputs"]


def with_apply(apply, identity=("tanh", "test")) -> Task:
    task = tiny_task()
    return dataclasses.replace(task, features=dataclasses.replace(task.features, apply=apply, identity=identity))


def test_bfloat16_features_are_stored_widened_and_read_back_as_they_were(tmp_path):
    store = ArrayCache(tmp_path)
    task = with_apply(lambda w, x: jnp.tanh(x @ w).astype(jnp.bfloat16), ("tanh", "bfloat16"))
    computed, info = on_features(task, store=store)
    again, info_again = on_features(with_apply(task.features.apply, ("tanh", "bfloat16")), store=store)
    assert (info["source"], info_again["source"]) == ("computed", "store")  # npz holds bfloat16 as raw bytes
    assert again.data.x_train.dtype == computed.data.x_train.dtype == jnp.bfloat16
    assert np.array_equal(again.data.x_train.astype(np.float32), computed.data.x_train.astype(np.float32))


FAILING = {  # extractors that fail on a batch (each device applies it to its rows), or as they run
    "one row for any batch": (lambda w, x: jnp.tanh(x[:1] @ w), r"returns [12] rows? for a batch of 4 inputs"),
    "a callback that raises": (
        lambda w, x: jax.pure_callback(lambda a: 1 / 0 * a, jax.ShapeDtypeStruct((len(x), 4), jnp.float32), x @ w),
        "computing the frozen features failed: ZeroDivisionError: division by zero"),
}


@pytest.mark.parametrize("case", FAILING.values(), ids=FAILING.keys())
def test_an_extractor_that_fails_on_a_batch_is_one_line(case):
    apply, message = case
    with pytest.raises(UserError, match=message) as raised:
        on_features(with_apply(apply, None))
    assert "\n" not in str(raised.value)


def test_a_batch_size_beyond_the_data_is_cut_to_it():
    """A billion inputs a call would be 12 GB of padding for 6 images (a million took 0.9 GB)."""
    task = tiny_task()
    huge = dataclasses.replace(task, features=dataclasses.replace(task.features, batch_size=10**9))
    realised = on_features(huge)[0]
    np.testing.assert_allclose(realised.data.x_train, np.tanh(task.data.x_train @ WEIGHTS), rtol=1e-6)


def test_an_entry_is_read_back_for_an_extractor_that_traces_only_at_its_batch_width(tmp_path):
    """The store's check traces the extractor at the batch it runs at, not on one input (a
    squeeze that needs more than one row failed there with a traceback on every later run)."""
    def squeezed(w, x):
        f = jnp.squeeze(jnp.tanh(x @ w))
        return f.reshape(f.shape[0], 4)

    store = ArrayCache(tmp_path)
    assert [on_features(with_apply(squeezed), store=store)[1]["source"] for _ in range(2)] == ["computed", "store"]


def test_a_store_that_cannot_keep_features_names_what_is_in_the_way(tmp_path, caplog):
    """The folder being a file, or a folder in an entry's place: the warning names it (it named
    the folder, with 'File exists' or 'Is a directory')."""
    (tmp_path / "file").write_bytes(b"")
    blocked = ArrayCache(tmp_path / "blocked")
    blocked.path("bb" * 8).mkdir(parents=True)
    with caplog.at_level(logging.WARNING):
        ArrayCache(tmp_path / "file").save("aa" * 8, {"x": np.zeros(2)})
        blocked.save("bb" * 8, {"x": np.zeros(2)})
    assert [r.getMessage() for r in caplog.records] == [
        f"cannot keep features in {tmp_path / 'file'}: it is a file, not a folder",
        f"cannot keep features in {blocked.path('bb' * 8)}: a folder is in the entry's place"]


def test_eviction_skips_what_is_not_a_file(tmp_path):
    """A dangling link named like an entry turned eviction off for good (the first failed stat
    gave up); a folder so named is neither counted nor removed."""
    store = ArrayCache(tmp_path, max_bytes=3000)  # two entries of about 1.4 kB
    (tmp_path / f"{'00' * 8}.npz").symlink_to(tmp_path / "gone")
    (tmp_path / f"{'01' * 8}.npz").mkdir()
    for when, key in enumerate(("aa", "bb", "cc"), start=1):
        store.save(key * 8, {"x": np.zeros(200, np.float32)})  # the third one evicts the first
        os.utime(store.path(key * 8), (when, when))
    assert sorted(p.name[:2] for p in tmp_path.iterdir()) == ["00", "01", "bb", "cc"]
