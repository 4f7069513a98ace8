"""Frozen features, computed once: a task's :class:`~epsweep.tasks.task.Features` applied to
every training and validation input, batched and jitted on the devices, before a sweep.

A frozen extractor's output never changes while the head trains, so computing it again for
every setting, step and epoch (under ``vmap``, once per setting) is wasted work: the sweep
trains an ordinary task on the arrays computed here instead. With ``f`` the extractor and ``h``
the head, the full model's loss on a minibatch B is ``L(h(f(x_B)))``; since ``f`` has no
trained parameters and no state, ``f(x_B)`` is row B of ``f(X)``, computed once.

The arrays are kept for the task object (a second sweep of the same task in this process
computes nothing) and, given a ``store``, under a key of everything they depend on
(:func:`cache_key`), so that a later process skips even the one pass. Nothing here touches
files: the store does (:class:`epsweep.results.cache.ArrayCache`).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
import math
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from epsweep.collector import while_tracing
from epsweep.data.dataset import Dataset
from epsweep.engine import xla_options
from epsweep.engine.devices import broadcast, callback_failure, is_primary
from epsweep.engine.exports import package_version
from epsweep.errors import UserError, first_line
from epsweep.tasks.task import Features, Task

log = logging.getLogger(__name__)

BATCH_AXIS = "batch"  # the mesh axis a batch of inputs is split across
MAX_PROGRAMS = 4  # feature programs kept compiled in this process
KEY_FORMAT = 2  # bump when what the stored arrays mean changes (2: an entry holds its key)
_VERSIONED = ("epsweep", "jax", "jaxlib", "flax")


class Store(Protocol):
    """Where feature arrays outlive the process: ``load`` gives back what ``save`` kept under
    ``key`` (or None), ``save`` may silently keep nothing."""

    def load(self, key: str) -> dict[str, np.ndarray] | None: ...

    def save(self, key: str, arrays: dict[str, np.ndarray]) -> None: ...


Progress = Callable[[int, int], None]  # (inputs done, inputs in all)

_realised: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # task -> (task on features, info)
_programs: collections.OrderedDict = collections.OrderedDict()
_lock = threading.Lock()


def _local(devices: Sequence[jax.Device] | None) -> list[jax.Device]:
    """This process's share of ``devices`` (default: its devices): each process computes the
    features on its own devices, with no collective, and process 0's are then shared."""
    devices = jax.devices() if devices is None else devices
    return [d for d in devices if d.process_index == jax.process_index()] or jax.local_devices()


def _program(features: Features, devices: list[jax.Device]) -> tuple[Callable, Mesh]:
    """``features.apply`` jitted with the batch split across ``devices``, kept per identity."""
    name = features.identity if features.identity is not None else ("function", id(features.apply))
    key = (name, tuple(d.id for d in devices))
    with _lock:
        if key in _programs:
            _programs.move_to_end(key)
            return _programs[key][:2]
    mesh = Mesh(np.array(devices), (BATCH_AXIS,))
    program = _jit(features, mesh, xla_options.cpu_options(devices))
    with _lock:
        _programs[key] = (program, mesh, features.apply)  # the function stays alive with its key
        while len(_programs) > MAX_PROGRAMS:
            _programs.popitem(last=False)
    return program, mesh


def _jit(features: Features, mesh: Mesh, options: dict) -> Callable:
    """``features.apply`` jitted with the batch split across the mesh, each device applying it to
    its own rows (``shard_map``: nothing communicated, so a host callback in the extractor that
    raises fails its call, where a partitioned program's other devices waited for it until XLA
    aborted the process), compiled with ``options`` (:mod:`.xla_options`); without them if XLA
    refuses them."""
    per_device = jax.shard_map(features.apply, mesh=mesh, in_specs=(P(), P(BATCH_AXIS)), out_specs=P(BATCH_AXIS),
                               check_vma=False)
    shardings = {"in_shardings": (NamedSharding(mesh, P()), NamedSharding(mesh, P(BATCH_AXIS))),
                 "out_shardings": NamedSharding(mesh, P(BATCH_AXIS))}
    program = jax.jit(per_device, compiler_options=options or None, **shardings)
    if not options:
        return program
    plain = jax.jit(per_device, **shardings)

    def without_options(constants: Any, x: Any) -> Any:
        nonlocal program
        program = plain
        return plain(constants, x)

    def call(constants: Any, x: Any) -> Any:
        return xla_options.or_without_options(lambda: program(constants, x), lambda: without_options(constants, x))

    return call


def batch_width(features: Features, devices: Sequence[jax.Device] | None = None, rows: int | None = None) -> int:
    """Inputs per compiled call: ``features.batch_size``, or ``rows`` (the most inputs one
    array holds) when fewer (a batch size of a million padded the digits' 1,797 images to a
    million zeros), rounded up to a multiple of the local device count."""
    n = len(_local(devices))
    size = features.batch_size if rows is None else max(1, min(features.batch_size, rows))
    return math.ceil(size / n) * n


def _rows(data: Dataset) -> int:
    return max(len(data.x_train), len(data.x_val))


@while_tracing  # the first batch traces the frozen base (the rest allocates little)
def extract(features: Features, inputs: Sequence[np.ndarray], devices: Sequence[jax.Device] | None = None,
            progress: Progress | None = None) -> list[np.ndarray]:
    """``features.apply(constants, x)`` for every row of every array in ``inputs``, as float
    NumPy arrays with the same leading length: batches of :func:`batch_width` (the last one
    padded with zeros, its padding dropped), each dispatched before the previous one is
    collected. ``progress(done, total)`` counts rows over all of ``inputs``."""
    local = _local(devices)
    program, mesh = _program(features, local)
    width = batch_width(features, local, max(len(x) for x in inputs))
    constants = jax.device_put(features.constants, NamedSharding(mesh, P()))
    batch_sharding = NamedSharding(mesh, P(BATCH_AXIS))
    total, done = sum(len(x) for x in inputs), 0
    results = []
    for x in inputs:
        if len(x) == 0:
            sample = jax.ShapeDtypeStruct((width, *x.shape[1:]), x.dtype)
            shape = jax.eval_shape(features.apply, features.constants, sample)
            results.append(np.zeros((0, *shape.shape[1:]), shape.dtype))
            continue
        parts, pending = [], None
        for start in range(0, len(x), width):
            batch = x[start:start + width]
            if len(batch) < width:
                batch = np.concatenate([batch, np.zeros((width - len(batch), *x.shape[1:]), x.dtype)])
            out = program(constants, jax.device_put(batch, batch_sharding))
            if out.shape[:1] != (width,):  # e.g. a reshape that fits two inputs but not a whole batch
                rows = out.shape[0] if out.ndim else 0
                raise UserError(f"the feature extractor returns {rows} row{'s' * (rows != 1)} for a batch of {width} "
                                f"inputs (output shape {out.shape}); it must return one row per input")
            if pending is not None:
                parts.append(np.asarray(pending))
            pending = out
            done += min(width, len(x) - start)
            if progress is not None:
                progress(done, total)
        parts.append(np.asarray(pending))
        results.append(np.concatenate(parts)[: len(x)])
    return results


def _digest_array(digest: Any, array: Any) -> None:
    array = np.ascontiguousarray(np.asarray(array))
    digest.update(f"{array.dtype.str}{array.shape}".encode())
    if array.size:  # an empty array (no validation set) is its shape and dtype alone: no view to cast
        digest.update(memoryview(array).cast("B"))  # every byte: a changed image must change the key


def cache_key(task: Task, devices: Sequence[jax.Device] | None = None) -> str | None:
    """A hex key of everything ``task``'s features depend on: the extractor's identity (the
    model, its options, the dtype), every byte of the training and validation inputs and of the
    constants (the weights), the batch per call, the device kind, the library versions and the
    XLA options (:mod:`.xla_options`). None when the extractor has no identity (then nothing is stored)."""
    features = task.features
    if features is None or features.identity is None or task.data is None:
        return None
    local = _local(devices)
    versions = [package_version(package) for package in _VERSIONED]
    digest = hashlib.blake2b(digest_size=16)
    described = (KEY_FORMAT, features.identity, batch_width(features, local, _rows(task.data)), len(local),
                 local[0].platform,
                 local[0].device_kind, versions)
    kernels = xla_options.in_effect(local)
    digest.update(repr(described if kernels is None else (*described, kernels)).encode())
    for array in (task.data.x_train, task.data.x_val, *jax.tree.leaves(features.constants)):
        _digest_array(digest, array)
    return digest.hexdigest()


def _storable(dtype: np.dtype) -> bool:
    """Whether NumPy's .npz files hold ``dtype`` as itself: not the ml_dtypes types (bfloat16,
    float8), which come back as raw bytes (``V2``); those are stored widened to float32 (exact)."""
    return np.dtype(dtype).isbuiltin == 1  # ml_dtypes' types are user-defined ones (2), kind V


@while_tracing  # the frozen base's trace, for its output's shape
def _stored_features(arrays: dict[str, np.ndarray] | None, features: Features, data: Dataset,
                     width: int) -> dict[str, np.ndarray] | None:
    """Stored arrays, if they fit ``data``: one row per input, each of the shape and dtype
    ``features`` gives a batch of ``width`` inputs (traced, not computed; an extractor that
    cannot be traced so, or gives no row per input, is computed as usual, and fails there),
    finite; a dtype stored widened (:func:`_storable`) narrowed back. None if they do not."""
    if arrays is None or set(arrays) != {"x_train", "x_val"}:
        return None
    sample = jax.ShapeDtypeStruct((width, *data.x_train.shape[1:]), data.x_train.dtype)
    try:
        rows = jax.eval_shape(features.apply, features.constants, sample)
    except Exception:  # noqa: BLE001 - computing the features says what is wrong, in one line
        return None
    if not isinstance(rows, jax.ShapeDtypeStruct) or rows.shape[:1] != (width,):
        return None
    stored_as = rows.dtype if _storable(rows.dtype) else np.dtype(np.float32)
    train, val = arrays["x_train"], arrays["x_val"]
    if not (train.shape == (len(data.x_train), *rows.shape[1:]) and val.shape == (len(data.x_val), *rows.shape[1:])
            and train.dtype == val.dtype == stored_as and np.isfinite(train).all() and np.isfinite(val).all()):
        return None
    return {"x_train": train.astype(rows.dtype, copy=False), "x_val": val.astype(rows.dtype, copy=False)}


def _not_finite(arrays: dict[str, np.ndarray], kept: bool) -> bool:
    """Whether some computed features are NaN or infinite, said in one warning: the head's
    loss then is too (every run reads as diverged), and a store would refuse them on every later
    run (:func:`_stored_features`), so they are not kept."""
    rows = sum(len(a) for a in arrays.values())
    bad = sum(int((~np.isfinite(a)).any(axis=tuple(range(1, a.ndim))).sum()) for a in arrays.values())
    if bad and is_primary():  # one warning, not one a process
        log.warning("the frozen features are not finite (NaN or infinity) for %d of %d inputs%s", bad, rows,
                    ": not kept in the feature store" if kept else "")
    return bool(bad)


def _extracted(task: Task, devices: Sequence[jax.Device] | None, progress: Progress | None) -> list[np.ndarray]:
    """The features of the training and validation inputs (:func:`extract`); a failure of the
    extractor's own (a callback that raises, an XLA error) is one UserError line: nothing has
    trained yet, so nothing is lost."""
    try:
        return extract(task.features, [task.data.x_train, task.data.x_val], devices, progress)
    except (UserError, KeyboardInterrupt, MemoryError):
        raise
    except Exception as error:  # noqa: BLE001 - whatever the user's extractor raises, said in one line
        said = callback_failure(error)  # a host callback's own exception, collected so it is said once
        raise UserError(f"computing the frozen features failed: {(said or first_line(error))[:300]}") from None


def on_features(task: Task, devices: Sequence[jax.Device] | None = None, store: Store | None = None,
                progress: Progress | None = None) -> tuple[Task, dict | None]:
    """``task`` as an ordinary task over its feature arrays, and what that cost.

    A task without :class:`~epsweep.tasks.task.Features` comes back as it is, with None.
    Otherwise the features of every training and validation input are taken from this
    process's memory (the same task object before), else from ``store`` (under
    :func:`cache_key`), else computed (:func:`extract`, on this process's share of
    ``devices``) and handed to ``store``. With several processes, process 0's arrays are used
    by all. The returned task has ``data`` = the features (labels, split and name unchanged)
    and no ``features``; its other fields are ``task``'s. The cost: ``{"source": "memory" |
    "store" | "computed", "seconds", "inputs", "shape"}`` (``shape``: one input's features).
    """
    if task.features is None:
        return task, None
    with _lock:
        known = _realised.get(task)
    if known is not None:
        return known[0], {**known[1], "source": "memory", "seconds": 0.0}
    if task.data is None:
        raise ValueError(f"task {task.name} has features but no data")
    started = time.perf_counter()
    key = cache_key(task, devices) if store is not None else None
    stored = store.load(key) if key is not None else None
    arrays = _stored_features(stored, task.features, task.data, batch_width(task.features, devices, _rows(task.data)))
    source = "computed" if arrays is None else "store"
    if arrays is None:
        arrays = dict(zip(("x_train", "x_val"), _extracted(task, devices, progress), strict=True))
    arrays = broadcast(arrays)  # every process trains on the same numbers (process 0's)
    if source == "computed" and not _not_finite(arrays, kept=key is not None) and key is not None and is_primary():
        store.save(key, {k: a if _storable(a.dtype) else a.astype(np.float32) for k, a in arrays.items()})
    data = dataclasses.replace(task.data, x_train=arrays["x_train"], x_val=arrays["x_val"])
    realised = dataclasses.replace(task, data=data, features=None)
    info = {"source": source, "seconds": round(time.perf_counter() - started, 3),
            "inputs": len(task.data.x_train) + len(task.data.x_val), "shape": list(arrays["x_train"].shape[1:])}
    with _lock:
        _realised[task] = (realised, info)
    return realised, info
