"""One device's program, compiled once and run on every CPU device as a replica.

A sweep's programs split the settings across the devices and communicate nothing (every
device trains its share with the same code), so the program each device runs is the
single-device program at the per-device width. Compiled as an XLA SPMD program over the
device mesh (``jax.jit`` of a ``shard_map``), XLA's partitioner (Shardy's propagation, then
the partitioning) walks the whole module first: 3-4 s of CPU of Inception-v3's ``train``
on a 2-core CPU. Compiled instead with one replica per device (``num_replicas``, the way
``pmap`` once compiled), XLA compiles the single-device module once, skips the partitioner,
and runs it on every device with that device's blocks of the arguments.

The arrays stay the sweep's global arrays, placed on the ``config`` mesh as before: a call
passes each array's per-device blocks to the replica on that device (JAX's own argument
handling, which places a host value or an array placed otherwise where the program takes it;
shapes and dtypes must be those it was compiled for, nothing is converted) and assembles the
replicas' outputs into global arrays (JAX's result handlers), so the driver cannot tell the
two apart. A replica's numbers are those of the single-device program.

Used on CPU with every device in this process; elsewhere (GPU, TPU, several processes) the
SPMD program runs as before (:mod:`epsweep.engine.compiled`). This module calls JAX's own
internals (the compiler entry and the argument and result handlers that ``jit`` uses), which
JAX may change in any release: only the JAX releases in :data:`TESTED_JAX` use them, and with
any other :func:`available` is False and the SPMD program runs.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from epsweep.engine import lapack, xla_options

log = logging.getLogger(__name__)

TESTED_JAX = ((0, 10),)  # (major, minor) releases whose internals this module and .lapack are tested with


def _release(version: str) -> tuple[int, ...]:
    """(major, minor) of a version string; () when it does not start with two numbers."""
    parts = version.split(".")[:2]
    return tuple(int(p) for p in parts) if len(parts) == 2 and all(p.isdigit() for p in parts) else ()


def tested_jax() -> bool:
    """Whether this JAX is one of the releases in :data:`TESTED_JAX`, whose internals this
    module and :mod:`.lapack` are tested with (elsewhere they leave JAX as it is)."""
    return _release(jax.__version__) in TESTED_JAX


try:  # what jit itself compiles and calls with
    from jax._src import compiler as _compiler
    from jax._src import dispatch as _dispatch
    from jax._src import xla_bridge as _xla_bridge
    from jax._src.interpreters import pxla as _pxla
    from jax._src.lib import xla_client as _xc

    _INTERNALS = tested_jax() and all(hasattr(m, a) for m, a in (
        (_compiler, "compile_or_get_cached"), (_compiler, "get_compile_options"),
        (_compiler, "use_detailed_logging"), (_dispatch, "log_elapsed_time"),
        (_dispatch, "BACKEND_COMPILE_EVENT"), (_pxla, "shard_args"),
        (_pxla, "global_avals_to_results_handler"), (_xc, "ArrayCopySemantics"), (_xc, "DeviceList")))
except ImportError:  # pragma: no cover - another JAX
    _INTERNALS = False


def available(devices: Sequence[jax.Device]) -> bool:
    """Whether the programs for ``devices`` run as replicas: several CPU devices, all of
    this process, and a JAX with the internals this module uses."""
    return (_INTERNALS and len(devices) > 1 and all(d.platform == "cpu" for d in devices)
            and all(d.process_index == jax.process_index() for d in devices))


UNASKED = object()  # a program's memory_stats() not asked for yet


def memory_of(executable: Any, method: str) -> Any:
    """``executable.method()``, XLA's buffer assignment of a compiled program; None when there
    is no executable (the compile failed) or the backend does not say."""
    if executable is not None:
        with contextlib.suppress(NotImplementedError, jax.errors.JaxRuntimeError):  # backend-specific
            return getattr(executable, method)()
    return None


def global_aval(aval: Any, spec: P, count: int) -> jax.ShapeDtypeStruct:
    """The whole array whose per-device block is ``aval``, split by ``spec`` over ``count``
    devices along one mesh axis: each dimension that ``spec`` names is ``count`` times longer."""
    shape = [n * count if i < len(spec) and spec[i] is not None else n for i, n in enumerate(aval.shape)]
    return jax.ShapeDtypeStruct(tuple(shape), aval.dtype)


def leaf_specs(specs: Any, tree: Any) -> list[P]:
    """``specs`` (a prefix of ``tree``: one spec for a whole subtree) given to every leaf of ``tree``."""
    return jax.tree.leaves(jax.tree_util.tree_broadcast(specs, tree, is_leaf=lambda x: isinstance(x, P)),
                           is_leaf=lambda x: isinstance(x, P))


class Replicated:
    """``program`` (an exported single-device program, called through ``call``, its ``call``
    under the name XLA's module takes, with ``args``: its per-device abstract arguments),
    compiled for one replica per device of ``devices`` in a thread of its
    own as soon as it is made, then called with global arrays placed by ``in_specs`` on the
    mesh ``(config,)`` of ``devices``, returning global arrays placed by ``out_specs``. The
    counterpart of :class:`~epsweep.engine.compiled.CompiledAhead` (``lowered``, ``memory_stats``
    and calls alike, except that a call of other shapes or dtypes than it was compiled for is
    refused with a TypeError, not compiled again). ``options``: XLA's compiler options,
    ``fallback_options`` those it compiles with if XLA refuses those of :mod:`.xla_options`;
    ``donate``: the arguments the program may update in place."""

    def __init__(self, program: Any, call: Any, args: tuple, devices: Sequence[jax.Device], axis: str,
                 in_specs: tuple, out_specs: Any, options: dict, fallback_options: dict,
                 donate: tuple[int, ...] = ()) -> None:
        mesh = Mesh(np.array(devices), (axis,))
        count = len(devices)
        self.name = call.__name__  # epsweep_<program>
        self.lowered = threading.Event()
        self._done = threading.Event()
        self._devices = tuple(devices)
        self._executable: Any = None
        self._error: BaseException | None = None
        self._memory: Any = UNASKED  # memory_stats(), once asked
        specs = leaf_specs(in_specs, args)
        self._in_tree = jax.tree.structure(args)
        self._in_shardings = [NamedSharding(mesh, s) for s in specs]
        self._in_shapes = [global_aval(a, s, count).shape for a, s in zip(jax.tree.leaves(args), specs, strict=True)]
        self._in_dtypes = [jax.dtypes.canonicalize_dtype(a.dtype) for a in jax.tree.leaves(args)]
        outs = jax.tree.unflatten(program.out_tree, program.out_avals)
        out_leaf_specs = leaf_specs(out_specs, outs)
        self._out_tree = jax.tree.structure(outs)
        out_avals = [jax.core.ShapedArray(g.shape, g.dtype) for g in
                     (global_aval(a, s, count) for a, s in zip(program.out_avals, out_leaf_specs, strict=True))]
        out_shardings = [NamedSharding(mesh, s) for s in out_leaf_specs]
        self._handlers = _pxla.global_avals_to_results_handler(out_avals, out_shardings, committed=True).handlers
        self._layouts = [None] * len(specs)  # XLA's default layouts
        self._copy = [_xc.ArrayCopySemantics.REUSE_INPUT] * len(specs)
        threading.Thread(target=self._compile, args=(program, call, args, options, fallback_options, donate),
                         name="epsweep-compile", daemon=False).start()  # not a daemon: see CompiledAhead

    def _compile(self, program: Any, call: Any, args: tuple, options: dict, fallback_options: dict,
                 donate: tuple[int, ...]) -> None:
        try:
            with lapack.lowering(program):
                module = jax.jit(call, keep_unused=True, donate_argnums=donate).lower(*args).compiler_ir("stablehlo")
            self.lowered.set()
            self._executable = xla_options.or_without_options(lambda: self._compile_module(module, options),
                                                              lambda: self._compile_module(module, fallback_options))
        except BaseException as error:  # noqa: BLE001 - raised again by the first call
            self._error = error
        finally:
            self.lowered.set()
            self._done.set()

    def _compile_module(self, module: Any, options: dict) -> Any:
        """XLA's executable of ``module`` with one replica per device, through JAX's compiler
        entry (its persistent cache, its compile-time event) as ``jit`` compiles."""
        backend = _xla_bridge.get_backend(self._devices[0].platform)
        assignment = np.array(self._devices, dtype=object)[:, None]  # (replicas, partitions)
        compile_options = _compiler.get_compile_options(
            num_replicas=len(self._devices), num_partitions=1, device_assignment=assignment,
            env_options_overrides=dict(options) or None, detailed_logging=_compiler.use_detailed_logging(module),
            backend=backend)
        compile_options.executable_build_options.use_spmd_partitioning = False
        with _dispatch.log_elapsed_time("Finished XLA compilation of {fun_name} in {elapsed_time:.9f} sec",
                                        fun_name=f"jit({self.name})", event=_dispatch.BACKEND_COMPILE_EVENT):
            return _compiler.compile_or_get_cached(backend, module, assignment, compile_options, [],
                                                   _xc.DeviceList(self._devices))

    def memory_stats(self) -> Any:
        """XLA's buffer assignment of one call on each device (argument, output, alias and
        temp sizes in bytes); None when the compile failed or the backend does not say."""
        self._done.wait()
        if self._memory is UNASKED:
            self._memory = memory_of(self._executable, "get_compiled_memory_stats")
        return self._memory

    def __call__(self, *args: Any) -> Any:
        self._done.wait()
        if self._error is not None:
            raise self._error
        leaves, tree = jax.tree.flatten(args)
        if tree != self._in_tree:
            raise TypeError(f"{self.name}: called with {tree}, compiled for {self._in_tree}")
        self._check("shape", [np.shape(a) for a in leaves], self._in_shapes)
        self._check("dtype", [_dtype(a) for a in leaves], self._in_dtypes)
        placed = _pxla.shard_args(self._in_shardings, self._layouts, self._copy, leaves)
        results = self._executable.execute_sharded(placed)
        return jax.tree.unflatten(self._out_tree, results.consume_with_handlers(self._handlers))

    def _check(self, what: str, given: list, compiled: list) -> None:
        """Raise TypeError naming the first argument whose ``what`` is not the compiled one."""
        if given != compiled:
            wrong = next(i for i, (g, c) in enumerate(zip(given, compiled, strict=True)) if g != c)
            raise TypeError(f"{self.name}: argument {wrong} has {what} {given[wrong]}, "
                            f"compiled for {compiled[wrong]}")


def _dtype(value: Any) -> np.dtype:
    """The dtype JAX gives ``value`` (an array's own; a Python or NumPy scalar's, canonicalised)."""
    if isinstance(value, jax.Array):
        return value.dtype
    return jax.dtypes.canonicalize_dtype(np.result_type(value))


def call_width(width: int, count: int) -> int:
    """The settings one device's program takes of a call of ``width`` over ``count`` devices."""
    if width % count:
        raise ValueError(f"a call of {width} settings does not split over {count} devices")
    return width // count

