"""Lowered programs kept on disk, so that a warm start traces nothing.

Tracing a large model is the cost of starting a sweep once XLA's persistent cache holds the
compiled programs (Inception-v3: several seconds per program). Each program is therefore
exported (``jax.export``: the lowered StableHLO module with its shardings) and, when the
compilation cache is on, saved in a directory beside it (``<cache>-exports``) under a hash of
everything the module depends on; a later sweep with the same key reads the module back and
compiles (or loads) it without tracing the model. Only tasks with an ``identity`` whose text
is the same in every process are saved; the others are exported in memory only. Anything
unreadable in the directory is ignored and replaced.

A file is a zip (no pickle): ``meta.json`` (format, the key it was saved under, the programs it
holds, the names of the NamedTuple types in the programs' pytrees, registered for serialization
before reading, from modules already imported) and one member per program.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import io
import json
import logging
import os
import platform
import re
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import export
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from epsweep.collector import while_tracing
from epsweep.engine.spec import HPARAMS, TrainSpec, program_shape
from epsweep.engine.state import program_input
from epsweep.tasks.task import Task

log = logging.getLogger(__name__)

FORMAT = 1
PROGRAMS = ("init", "train", "evaluate", "finish", "measure")  # measure: loop-free only
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")  # an object's address: its text differs between processes


def export_dir() -> Path | None:
    """Where exported programs go: beside the compilation cache (None when it is off)."""
    from epsweep.engine.devices import compile_cache_dir

    cache = compile_cache_dir()
    return None if cache is None else exports_beside(cache)


def exports_beside(cache: Path) -> Path:
    """The directory of exported programs that goes with the compilation cache ``cache``."""
    return cache.parent / f"{cache.name}-exports"


@functools.cache
def package_version(package: str) -> str:
    """An installed package's version ("unknown" when it has no metadata), looked up once."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@functools.cache
def versions() -> tuple[str, ...]:
    """What else traces a program, part of every stored program's key: Python and the versions
    of JAX, jaxlib, NumPy, ml_dtypes, optax and flax (a model's constants are NumPy's work)."""
    return (platform.python_version(), jax.__version__,
            *(package_version(p) for p in ("jaxlib", "numpy", "ml_dtypes", "optax", "flax")))


@functools.cache
def source_digest() -> str:
    """A hash of epsweep's own source files. Part of every stored program's key (with the
    :func:`versions` of what else traces it), so a program traced by other code is not
    reused: an edited checkout keeps its version number."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:20]


def stable_key(task: Task, spec: TrainSpec, devices: Sequence[jax.Device] | None, width: int | None) -> str | None:
    """A hash of what the lowered programs depend on, the same in every process; None when the
    task's identity (or its trainable rule) has no process-independent text. Without
    ``devices``, the key of what does not depend on them (the memory estimate)."""
    identity = task.shaped_identity(spec.batch_size, spec.eval_batch_size)
    if identity is None:
        return None
    trainable = None
    if task.trainable is not None:
        trainable = f"{task.trainable.__module__}.{task.trainable.__qualname__}"
        if "<locals>" in trainable:
            return None
    text = repr((FORMAT, identity, trainable, *program_shape(task, spec),
                 (devices[0].platform, devices[0].device_kind, len(devices)) if devices else None,
                 width, package_version("epsweep"), source_digest(), versions()))
    if _ADDRESS.search(text):
        return None
    return hashlib.sha256(text.encode()).hexdigest()[:40]


def _sds(shape, dtype, sharding) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype), sharding=sharding)


def call_shapes(task: Task, spec: TrainSpec, devices: Sequence[jax.Device], width: int,
                init: export.Exported | None = None) -> dict[str, tuple]:
    """The abstract arguments (shape, dtype, sharding) each program is called with at ``width``
    settings and one seed: ``init``'s alone, or, given the exported ``init`` (its outputs are
    the training state), every program's."""
    from epsweep.engine.compiled import CONFIG_AXIS

    mesh = Mesh(np.array(devices), (CONFIG_AXIS,))
    by_config, replicated = NamedSharding(mesh, P(CONFIG_AXIS)), NamedSharding(mesh, P())
    runs = NamedSharding(mesh, P(None, CONFIG_AXIS))
    h = {name: _sds((width,), np.float32, by_config) for name in HPARAMS}
    seeds = _sds((1,), np.uint32, replicated)
    constants = jax.tree.map(lambda a: _sds(np.shape(a), np.asarray(a).dtype, replicated), task.constants)
    shapes: dict[str, tuple] = {"init": (h, seeds, constants)}
    if init is None:
        return shapes
    state = jax.tree.unflatten(init.out_tree, init.out_avals)  # a TrainState, placed as init places it:
    # (S, G, ...) blocks split by setting; an empty one (sgd's mask of moving parameters) comes back
    # replicated, and declared split it sent every call of train and finish to a second compile
    state = type(state)(runs=jax.tree.map(lambda a: _sds(a.shape, a.dtype, runs if a.size else replicated), state.runs),
                        order=_sds(state.order.shape, state.order.dtype, replicated))
    if task.data is not None:
        x_train = _sds(task.data.x_train.shape, task.data.x_train.dtype, replicated)
        y_train = _sds(task.data.y_train.shape, task.data.y_train.dtype, replicated)
    else:
        x_train, y_train = _sds((1, 1), np.float32, replicated), _sds((1,), np.int32, replicated)
    step = _sds((), np.int32, replicated)
    shapes["train"] = (state, h, seeds, step, step, x_train, y_train)
    sums = _sds((1, width), np.float32, runs)
    batch = task.validation_batch_size(spec.eval_batch_size)  # the shapes of validation_batches' rows
    if batch:
        x_val, y_val = task.data.x_val, task.data.y_val
        shapes["evaluate"] = (program_input("evaluate", state), sums, sums,
                              _sds((batch, *x_val.shape[1:]), x_val.dtype, replicated),
                              _sds((batch, *y_val.shape[1:]), y_val.dtype, replicated),
                              _sds((batch,), np.float32, replicated))
    shapes["finish"] = (program_input("finish", state), sums, sums, _sds((), np.float32, replicated))
    shapes["measure"] = (program_input("measure", state),)
    return shapes


OnProgram = Callable[[str, export.Exported, tuple], None]  # (name, program, its call shapes)


def _export(task: Task, spec: TrainSpec, devices: Sequence[jax.Device], width: int,
            on_program: OnProgram | None = None) -> dict[str, export.Exported]:
    """Trace and export the programs at their call shapes (one seed, ``width`` settings),
    ``init`` first (its outputs give the others' shapes), then ``train``; ``on_program`` is
    called as each is ready, so that its compilation can start while the next traces."""
    from epsweep.engine.compiled import sharded_programs

    jitted = sharded_programs(task, spec, devices)
    shapes = call_shapes(task, spec, devices, width)
    out = {"init": _export_one(jitted["init"], shapes["init"])}
    if on_program is not None:
        on_program("init", out["init"], shapes["init"])
    for name, args in call_shapes(task, spec, devices, width, out["init"]).items():
        if name != "init" and name in jitted:
            out[name] = _export_one(jitted[name], args)
            if on_program is not None:
                on_program(name, out[name], args)
    return out


class Unexported(NamedTuple):
    """A program that ``jax.export`` cannot serialize (a model that calls back to Python:
    ``jax.debug.print``, ``pure_callback``), called as it is traced: the exported module's
    ``call``, ``out_tree``, ``in_avals`` and ``out_avals``, nothing to store."""

    call: Callable
    out_tree: Any
    out_avals: tuple
    in_avals: tuple


def _export_one(program: Callable, args: tuple) -> export.Exported | Unexported:
    try:
        return export.export(program)(*args)
    except NotImplementedError as error:
        if "host_callbacks" not in str(error):
            raise
        log.debug("not exporting %s: %s", program, error)
        avals, out_tree = jax.tree.flatten(jax.eval_shape(program, *args))
        return Unexported(program, out_tree, _shapes(avals), _shapes(jax.tree.leaves(args)))


def _shapes(arrays: Sequence[Any]) -> tuple:
    return tuple(jax.ShapeDtypeStruct(a.shape, a.dtype) for a in arrays)


def _namedtuple_types(treedef: Any, found: dict[str, type]) -> None:
    data = treedef.node_data()
    if data is not None:
        kind = data[0]
        if isinstance(kind, type) and issubclass(kind, tuple) and hasattr(kind, "_fields"):
            found[f"{kind.__module__}.{kind.__qualname__}"] = kind
    for child in treedef.children():
        _namedtuple_types(child, found)


def _register(types: dict[str, type]) -> None:
    for name, kind in types.items():
        try:
            export.register_namedtuple_serialization(kind, serialized_name=name)
        except ValueError:  # registered already (by this process)
            pass


def _resolve(name: str) -> type:
    """The type ``name`` (module.qualname) from a module this process has imported already: the
    programs' types come from the task's own modules, and a stored file never imports one."""
    module, _, qualname = name.rpartition(".")
    while module and module not in sys.modules:
        module, _, head = module.rpartition(".")
        qualname = f"{head}.{qualname}"
    if not module:
        raise LookupError(name)
    value: Any = sys.modules[module]
    for part in qualname.split("."):  # what is defined there, never a module's lazy __getattr__
        value = vars(value).get(part)
    if not (isinstance(value, type) and issubclass(value, tuple) and hasattr(value, "_fields")):
        raise LookupError(f"{name} is not a NamedTuple")
    return value


def _write_atomic(path: Path, data: bytes) -> None:
    """``data`` into ``path`` whole or not at all (a temporary file beside it, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _save(path: Path, key: str, exported: dict[str, export.Exported]) -> None:
    types: dict[str, type] = {}
    for program in exported.values():
        _namedtuple_types(program.in_tree, types)
        _namedtuple_types(program.out_tree, types)
    _register(types)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("meta.json", json.dumps({"format": FORMAT, "key": key, "programs": sorted(exported),
                                                  "types": sorted(types)}))
        for name, program in exported.items():
            archive.writestr(name, bytes(program.serialize()))
    _write_atomic(path, buffer.getvalue())


def _load(path: Path, key: str) -> dict[str, export.Exported]:
    """The programs stored in ``path``, which must hold exactly what its ``meta.json`` names,
    saved under ``key`` (a file copied from another key is not this key's)."""
    with zipfile.ZipFile(path) as archive:
        meta = json.loads(archive.read("meta.json"))
        if meta.get("format") != FORMAT or meta.get("key") != key:
            raise ValueError(f"format {meta.get('format')!r}, key {meta.get('key')!r}")
        names = meta.get("programs")
        if not isinstance(names, list) or not {"init", "train", "finish"} <= set(names) <= set(PROGRAMS):
            raise ValueError(f"programs {names!r}")
        _register({name: _resolve(name) for name in meta["types"]})
        return {name: export.deserialize(bytearray(archive.read(name))) for name in PROGRAMS if name in names}


def _check_calls(loaded: dict[str, export.Exported], shapes: dict[str, tuple]) -> None:
    """Raise ValueError unless every loaded program takes the shapes and dtypes it is called with."""
    for name, program in loaded.items():
        if name not in shapes:
            raise ValueError(f"{name}: not a program of this sweep")
        expected = [(tuple(a.shape), jax.dtypes.canonicalize_dtype(a.dtype)) for a in jax.tree.leaves(shapes[name])]
        stored = [(tuple(a.shape), a.dtype) for a in program.in_avals]  # as JAX narrowed them
        if stored != expected:
            raise ValueError(f"{name}: takes other shapes than it is called with")


def _stored(name: str, task: Task, spec: TrainSpec, devices: Sequence[jax.Device] | None,
            width: int | None) -> tuple[Path, str] | None:
    """The file ``name`` (``{}`` standing for the :func:`stable_key`) in :func:`export_dir`, and
    that key; None when nothing is stored (no cache, or no stable key). The key is only
    computed, and the sources only hashed, when there is a folder to store in."""
    folder = export_dir()
    if folder is None:
        return None
    key = stable_key(task, spec, devices, width)
    return None if key is None else (folder / name.format(key), key)


def _is_file(path: Path) -> bool:
    """Whether ``path`` is a file; False when the system cannot say (a name too long, a
    parent that is a file): nothing is read from there then."""
    try:
        return path.is_file()
    except OSError:
        return False


@while_tracing  # the programs' traces, or the exported modules read back
def load_or_export(task: Task, spec: TrainSpec, devices: Sequence[jax.Device], width: int,
                   on_program: OnProgram | None = None) -> tuple[dict[str, export.Exported], bool]:
    """The exported programs, read from the disk cache when it holds them (second value True),
    else traced now and, when they can be, saved there. ``on_program(name, program, call
    shapes)`` is called for each program as soon as it is ready (``init`` first). A stored
    file that is damaged, saved under another key, or whose programs take other shapes than
    this sweep calls them with is a miss, and replaced."""
    stored = _stored("{}.zip", task, spec, devices, width)
    if stored is not None and _is_file(stored[0]):
        try:
            loaded = _load(*stored)
            shapes = call_shapes(task, spec, devices, width, loaded["init"])
            _check_calls(loaded, shapes)
        except Exception as error:  # noqa: BLE001 - a damaged or foreign file is a miss, never a failure
            log.debug("ignoring exported programs %s: %s", stored[0], error)
        else:
            if on_program is not None:
                for name, program in loaded.items():
                    on_program(name, program, shapes[name])
            return loaded, True
    exported = _export(task, spec, devices, width, on_program)
    if stored is not None and not any(isinstance(p, Unexported) for p in exported.values()):
        try:
            _save(*stored, exported)
        except Exception as error:  # noqa: BLE001 - a program that cannot be saved still runs
            log.debug("not saving exported programs to %s: %s", stored[0], error)
    return exported, False


def cached_estimate(task: Task, spec: TrainSpec, compute) -> Any:
    """``compute()`` (the memory estimate, a tracing of the model), kept as JSON beside the
    exported programs under the task's stable key so that a warm start does not trace. A file
    saved under another key, or holding anything but byte counts (whole numbers, at least one
    byte a setting), is computed again and replaced: the estimate sets the call width, and
    with it a setting's numbers."""
    from epsweep.engine.memory import Estimate

    stored = _stored("{}.estimate.json", task, spec, None, None)
    if stored is not None and _is_file(stored[0]):
        try:
            fields = json.loads(stored[0].read_text())
            values = {name: fields[name] for name in ("per_config", "state", "fixed")}
            if fields.get("key") != stored[1] or not all(type(v) is int and v >= 0 for v in values.values()):
                raise ValueError(fields)
            if values["per_config"] < 1:
                raise ValueError(fields)
            return Estimate(**values)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            log.debug("ignoring memory estimate %s: %s", stored[0], error)
    value = compute()
    if stored is not None:
        try:
            _write_atomic(stored[0], json.dumps({"key": stored[1], "per_config": value.per_config,
                                                 "state": value.state, "fixed": value.fixed}).encode())
        except OSError as error:
            log.debug("not saving memory estimate %s: %s", stored[0], error)
    return value
