"""Compiling the programs, once per sweep shape, and counting what JAX compiles.

Programs are cached in this process under a key derived from everything they depend on
(:func:`program_key`): the task's functions, which parameters train, the shapes and dtypes of
its data and constants, the training specification and the devices. The cache
holds at most :data:`MAX_CACHED` program sets, least recently used first out.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
from collections.abc import Callable, Hashable, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from epsweep.engine import lapack, replicas, xla_options
from epsweep.engine.memory import tree_bytes
from epsweep.engine.programs import build_programs
from epsweep.engine.spec import RunOutputs, TrainSpec, program_shape
from epsweep.engine.state import TrainState
from epsweep.tasks.task import Task

log = logging.getLogger(__name__)

CONFIG_AXIS = "config"  # the mesh axis the settings are split across
MAX_CACHED = 8  # program sets kept in memory (each holds compiled executables)


class Programs(NamedTuple):
    """The jitted programs of a (task, spec, devices, width); see :mod:`epsweep.engine.programs`.
    ``h`` holds ``width`` settings' hyperparameters and ``seeds`` one seed."""

    init: Callable  # (h, seeds, constants) -> TrainState
    train: Callable  # (state, h, seeds, t0, t1, x_train, y_train) -> (state, t1)
    # evaluate, finish and measure take what they read of the state: state.program_input(name, state)
    evaluate: Callable  # (runs, loss sum, metric sum, x, y, mask of one validation batch) -> the sums + its
    finish: Callable  # (runs, loss sum, metric sum, count) -> RunOutputs
    measure: Callable | None  # loop-free: (runs) -> the eps diagnostics' sums after the step just taken
    loop_free: bool  # train runs exactly one step per call (t0), the host looping; see build_programs
    keep: tuple  # the task's functions, alive while the entry is: their ids are in its key (program_key)


# --- compile counting ---------------------------------------------------------------

_compile_count = 0
_compile_seconds = 0.0
_cache_loads = 0
_compile_lock = threading.Lock()
_cache_hit = threading.local()  # set between a persistent-cache hit and the end of its "compile"
_listening = False


def _note_cache_hit(event: str, **kwargs: Any) -> None:
    if event == "/jax/compilation_cache/cache_hits":
        _cache_hit.pending = True


def _count_compile(event: str, duration: float, **kwargs: Any) -> None:
    global _compile_count, _compile_seconds, _cache_loads
    if event == "/jax/core/compile/backend_compile_duration":  # also sent when the cache had the program
        with _compile_lock:
            if getattr(_cache_hit, "pending", False):
                _cache_hit.pending = False
                _cache_loads += 1
            else:
                _compile_count += 1
                _compile_seconds += duration


def install_listeners() -> None:
    """Start counting compilations (JAX monitoring listeners); once per process, by
    :func:`epsweep.setup`."""
    global _listening
    with _compile_lock:
        if _listening:
            return
        jax.monitoring.register_event_listener(_note_cache_hit)
        jax.monitoring.register_event_duration_secs_listener(_count_compile)
        _listening = True


def compile_count() -> int:
    """How many XLA programs this process has compiled since :func:`epsweep.setup` (all of
    JAX, not just ours); programs loaded from the persistent compilation cache are not counted,
    nor compiles XLA refused for their options (:func:`.xla_options.refusals`)."""
    return max(0, _compile_count - xla_options.refusals())


def compile_seconds() -> float:
    """Seconds this process has spent compiling XLA programs so far."""
    return _compile_seconds


def cache_loads() -> int:
    """How many programs this process has loaded from the persistent compilation cache."""
    return _cache_loads


# --- what a program depends on --------------------------------------------------------------


def program_key(task: Task, spec: TrainSpec, devices: Sequence[jax.Device]) -> Hashable:
    """What the compiled programs of (task, spec, devices) depend on, as a hashable value: the
    task's functions (its ``identity`` when its constructor gave one, which then names them
    completely; else the function objects themselves, kept alive by the cache entry, so a
    different model never meets another's program), which parameters train, the shapes and
    dtypes of the data and constants, the training spec and the devices."""
    identity = task.shaped_identity(spec.batch_size, spec.eval_batch_size)
    if identity is not None:
        functions: Hashable = ("identity", identity)
    else:
        functions = ("functions", id(task.init), id(task.loss), id(task.evaluate))
    trainable = None if task.trainable is None else ("trainable", id(task.trainable))
    return (functions, trainable, program_shape(task, spec), tuple(d.id for d in devices))


# --- compiling ------------------------------------------------------------------------------

_programs: collections.OrderedDict[Hashable, Programs] = collections.OrderedDict()
_programs_lock = threading.Lock()


LARGE_INIT_BYTES = 32 * 1024**2  # initial state per device from which init is compiled as optimised as the rest


def _large_state(devices: Sequence[jax.Device], state_bytes: int) -> bool:  # at least LARGE_INIT_BYTES a device
    return state_bytes >= LARGE_INIT_BYTES * len(devices)


def _init_compiler_options(devices: Sequence[jax.Device], state_bytes: int) -> dict | None:
    """XLA options for the ``init`` program, whose outputs (the runs' initial state) take ``state_bytes``.
    On CPU, for a small state, a quick compile at low optimisation: the MLP's compiles in 0.9 s instead
    of 1.5 s at the default level, and runs in 10 ms either way. A large state (at least
    LARGE_INIT_BYTES a device) is compiled at the default level: its random draws then run in 2.0 s
    instead of 5.0 s for Inception-v3 (187 MiB a setting), once per chunk in every run, warm or cold,
    for 2.4 s more compiling once (13.5 s against 11.1 s, in parallel with ``train``'s much longer
    compile; this project's Intel Xeon, a slow day); and with XLA's older fusion emitters
    (:func:`.xla_options.older_emitters`: its hundreds of small kernels compile faster, to the same
    numbers). Not at low optimisation, where the older emitters moved the MLP's weights by a float step."""
    if devices[0].platform != "cpu":
        return None
    if _large_state(devices, state_bytes):
        return xla_options.older_emitters(devices) or None
    return {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _after_training_options(devices: Sequence[jax.Device], input_bytes: int) -> dict | None:
    """XLA options for ``evaluate`` and ``finish`` (once a chunk, after training), whose inputs take
    ``input_bytes``. On CPU, for a small state, XLA's older fusion emitters: their small kernels compile in
    about half the time, to the same numbers, beside ``train``'s compile (the default MLP, G = 256, this
    project's AMD EPYC: ``evaluate`` 0.25-0.39 s against 0.55-0.74 s, ``finish`` 0.52-0.67 s against
    0.88-1.54 s; docs/performance.md, twenty-ninth stop). A large state's compile slower: XLA's own."""
    if devices[0].platform != "cpu" or _large_state(devices, input_bytes):
        return None
    return xla_options.older_emitters(devices) or None


def _loop_free(task: Task, devices: Sequence[jax.Device]) -> bool:
    """Whether ``train`` takes one step per call (:func:`~epsweep.engine.programs.build_programs`)."""
    return task.loop_free_on_cpu and devices[0].platform == "cpu"


def _train_donate_argnums(loop_free: bool) -> tuple[int, ...]:
    """The arguments ``train`` donates: its state (argument 0), which it returns updated, except
    loop-free (one step per call). Donated there, the state made XLA's copy insertion copy the
    inputs it updates in place while their old values are still read: Inception-v3 at 75 x 75
    copied 268 arrays (87 MB) a step, and a step took 300-326 ms instead of 250-261 ms, with the
    same numbers to the bit. Not donated, the new state lies beside the old during a call (XLA:
    81 MiB more a device), which the memory estimate counts anyway."""
    return () if loop_free else (0,)


def program_specs(task: Task, spec: TrainSpec, devices: Sequence[jax.Device]) -> dict[str, tuple[tuple, Any]]:
    """How each program's arguments and results lie on the ``config`` mesh, as ``(in_specs,
    out_specs)`` by name: (S, G, ...) blocks of runs and (G,) hyperparameters split by setting,
    everything else (data, seeds, the minibatch order, step numbers) on every device."""
    runs, config = P(None, CONFIG_AXIS), P(CONFIG_AXIS)
    state = TrainState(runs, P())  # the minibatch order is per seed: every device holds it
    specs = {
        "init": ((config, P(), P()), state),
        "train": ((state, config, P(), P(), P(), P(), P()), (state, P())),
        "evaluate": ((runs, runs, runs, P(), P(), P()), (runs, runs)),
        "finish": ((runs, runs, runs, P()), RunOutputs(*[runs] * len(RunOutputs._fields))),
        "measure": ((runs,), (runs, runs, runs)),
    }
    return specs if _loop_free(task, devices) else {k: v for k, v in specs.items() if k != "measure"}


def sharded_programs(task: Task, spec: TrainSpec, devices: Sequence[jax.Device]) -> dict[str, Callable]:
    """The programs of :mod:`epsweep.engine.programs`, each ``jax.jit`` of a ``shard_map``
    over a one-axis mesh (``config``) of ``devices``: every device trains its share of the
    settings with the single-device program, data and seeds replicated, nothing communicated
    (:func:`program_specs`). Shape-generic (any width); :func:`compiled_programs` fixes the shapes."""
    mesh = Mesh(np.array(devices), (CONFIG_AXIS,))
    loop_free = _loop_free(task, devices)
    narrow = devices[0].platform == "cpu"  # products.narrow_product: measured on CPU only
    functions = dict(zip(("init", "train", "evaluate", "finish", "measure"),
                         build_programs(task, spec, loop_free, narrow), strict=True))
    programs = {}
    for name, (in_specs, out_specs) in program_specs(task, spec, devices).items():
        if functions[name] is not None:
            sharded = jax.shard_map(functions[name], mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                                    check_vma=False)
            donate = _train_donate_argnums(loop_free) if name == "train" else ()
            programs[name] = jax.jit(sharded, donate_argnums=donate)
    return programs


def _compile_options(name: str, program: Any, devices: Sequence[jax.Device],
                     loop_free: bool) -> tuple[dict, dict, tuple[int, ...]]:
    """For the exported program ``name`` spanning ``devices`` (one device: a replica's
    program): XLA's options for it, those it compiles with should XLA refuse :mod:`.xla_options`'
    (XLA's defaults, but ``init``'s level), and the arguments it donates."""
    own_options = None
    if name == "init":  # sized by the runs' state, not by the minibatch orders
        runs = jax.tree.unflatten(program.out_tree, program.out_avals).runs
        own_options = _init_compiler_options(devices, tree_bytes(runs))
    elif name in ("evaluate", "finish"):
        own_options = _after_training_options(devices, tree_bytes(program.in_avals))
    options = {**xla_options.cpu_options(devices), **(own_options or {})}
    fallback_options = {k: v for k, v in (own_options or {}).items() if k != xla_options.EMITTERS_OPTION}
    donate = _train_donate_argnums(loop_free) if name == "train" else ()
    return options, fallback_options, donate


class _NotReplicable(Exception):
    """A program that cannot run as replicas (one that calls back to Python, not exported)."""


def compiled_programs(task: Task, spec: TrainSpec, devices: Sequence[jax.Device] | None = None,
                      width: int | None = None) -> Programs:
    """The programs for (task, spec) on ``devices`` (default: the first device) for calls of
    ``width`` settings (default: one per device), shared by every sweep whose
    :func:`program_key` matches.

    Each program is traced once and exported (``jax.export``): the call always goes through
    the exported module, so a program read back from the disk cache (:mod:`.exports`, beside
    the persistent compilation cache) is the very module a fresh trace gives, and a warm start
    traces nothing. XLA then compiles the module (or loads it from the compilation cache).
    On several CPU devices of this process the module is the single-device program at the
    per-device width, compiled once and run on every device as a replica (:mod:`.replicas`:
    no SPMD partitioner); elsewhere it is :func:`sharded_programs`' program over the mesh, as
    it is for a program that calls back to Python (not exported) and those traced after it:
    the model is then traced a second time, for the mesh, and the programs before it stay
    replicas (they take and give the same global arrays).
    """
    from epsweep.engine import exports

    devices = tuple(devices) if devices is not None else (jax.devices()[0],)
    width = width or len(devices)
    key = (program_key(task, spec, devices), width)
    with _programs_lock:
        if key in _programs:
            _programs.move_to_end(key)
            return _programs[key]
    ahead: dict[str, CompiledAhead | replicas.Replicated] = {}
    loop_free = _loop_free(task, devices)

    def start(name: str, program: Any, args: tuple) -> None:
        """Compile a program in a thread of its own as soon as it is traced (or read back),
        once it is lowered: lowering holds Python's lock, and lowered while the next program
        traced, the train program reached XLA's compiler 0.2-0.3 s later (the MLP's cold
        G = 256 run, 5.54-5.59 s against 5.27-5.37 s when each is lowered before the next traces)."""
        options, fallback_options, donate = _compile_options(name, program, devices, loop_free)
        call = _named(program.call, name)
        jitted = jax.jit(call, compiler_options=options or None, donate_argnums=donate)
        fallback = jax.jit(call, compiler_options=fallback_options or None, donate_argnums=donate)
        ahead[name] = CompiledAhead(jitted, args, fallback=fallback, exported=program)
        ahead[name].lowered.wait()

    def start_missing(name: str, program: Any, args: tuple) -> None:
        if name not in ahead:  # programs already compiling as replicas stay: they take the same arrays
            start(name, program, args)

    def replica(name: str, program: Any, args: tuple) -> None:
        """Like ``start``, for the single-device ``program`` run as one replica per device."""
        if isinstance(program, exports.Unexported) or program.ordered_effects or program.unordered_effects:
            raise _NotReplicable(name)
        options, fallback_options, donate = _compile_options(name, program, devices[:1], loop_free)
        ahead[name] = replicas.Replicated(program, _named(program.call, name), args, devices, CONFIG_AXIS,
                                          *specs[name], options, fallback_options, donate)
        ahead[name].lowered.wait()

    specs = program_specs(task, spec, devices)
    replicated = replicas.available(devices)
    if replicated:  # the single-device programs at the per-device width
        try:
            per_device = replicas.call_width(width, len(devices))
            exports.load_or_export(task, spec, devices[:1], per_device, on_program=replica)
        except _NotReplicable as which:
            log.debug("%s calls back to Python: it and the programs after it compiled for the device mesh", which)
            replicated = False
    if not replicated:
        exports.load_or_export(task, spec, devices, width, on_program=start_missing)
    programs = Programs(
        init=ahead["init"],
        train=ahead["train"],
        evaluate=ahead.get("evaluate"),
        finish=ahead["finish"],
        measure=ahead.get("measure"),
        loop_free=loop_free,
        keep=(task.init, task.loss, task.evaluate, task.trainable),  # the programs hold only traces of them
    )
    with _programs_lock:
        _programs[key] = programs
        while len(_programs) > MAX_CACHED:
            _programs.popitem(last=False)
    return programs


def _named(call: Callable, name: str) -> Callable:
    """``call`` under the name ``epsweep_<name>``, which names its XLA module (``jit_epsweep_train``)
    and so its entries in the persistent compilation cache: an entry that cannot be read is
    reported by that name, and found among that program's entries alone (:mod:`.cache`)."""
    def named(*args: Any) -> Any:
        return call(*args)

    named.__name__ = named.__qualname__ = f"epsweep_{name}"
    return named


class CompiledAhead:
    """A jitted program whose compilation (or load from the persistent cache) starts at once,
    in a thread of its own, for the call shapes ``args``. The programs of a sweep then
    compile at the same time, each from the moment it is traced, while the next one traces
    (XLA does not hold Python's lock while it compiles: Inception-v3 at 75 x 75, 33 s one
    after another, 26 s at once, on this project's 2-core machine), and a call skips jit's
    dispatch and lowering. A call whose arguments differ from ``args`` (in shape, dtype or
    sharding) goes through the jitted function as before. ``lowered`` is set once the program
    is lowered (or failed to), when XLA's compiler takes over. ``fallback``, the same program
    without :mod:`.xla_options`, replaces ``jitted`` if XLA refuses those options. ``exported``:
    the exported program ``jitted`` calls, if any (:func:`.lapack.lowering`)."""

    def __init__(self, jitted: Callable, args: tuple, fallback: Callable | None = None, exported: Any = None) -> None:
        self.jitted = jitted
        self._exported = exported
        self._fallback = fallback
        self._done = threading.Event()
        self.lowered = threading.Event()
        self._compiled: Any = None
        self._error: BaseException | None = None
        self._memory: Any = replicas.UNASKED  # memory_stats(), once asked
        # not a daemon: Python ends daemon threads abruptly at exit, and one inside XLA's compiler
        # then aborts the process; an exit waits for a compilation still running instead
        threading.Thread(target=self._compile, args=(args,), name="epsweep-compile", daemon=False).start()

    def _compile(self, args: tuple) -> None:
        try:
            lowered = self._lower(args)
            self.lowered.set()
            if self._fallback is None:
                self._compiled = lowered.compile()
            else:
                self._compiled = xla_options.or_without_options(lowered.compile, lambda: self._compile_fallback(args))
        except BaseException as error:  # noqa: BLE001 - raised again by the first call
            self._error = error
        finally:
            self.lowered.set()
            self._done.set()

    def _lower(self, args: tuple) -> Any:
        with lapack.lowering(self._exported):
            return self.jitted.lower(*args)

    def _compile_fallback(self, args: tuple) -> Any:
        self.jitted = self._fallback  # calls of other shapes too
        return self._lower(args).compile()

    def memory_stats(self) -> Any:
        """XLA's buffer assignment of one call on each device (``memory_analysis()``: argument,
        output, alias and temp sizes in bytes). Waits for the compilation; None when it failed
        or the backend does not say. Asked once (Inception-v3's ``init``: 77 ms a call), then kept."""
        self._done.wait()
        if self._memory is replicas.UNASKED:
            self._memory = replicas.memory_of(self._compiled, "memory_analysis")
        return self._memory

    def __call__(self, *args: Any) -> Any:
        self._done.wait()
        if self._error is not None:
            raise self._error
        try:
            return self._compiled(*args)
        except (TypeError, ValueError) as mismatch:  # raised before running: other shapes or shardings
            placed = self._empty_arrays_placed(args)
            if placed is not None:
                with contextlib.suppress(TypeError, ValueError):  # other arrays differ too
                    return self._compiled(*placed)
            log.debug("calling %s through jit: %s", self.jitted, mismatch)
            return self.jitted(*args)

    def _empty_arrays_placed(self, args: tuple) -> tuple | None:
        """``args`` with every empty array moved to the sharding the compiled program takes it
        in; None when no empty array is placed otherwise. An empty array has no elements to place, and
        XLA returns one replicated whatever its program declared (CPU; ``exports.call_shapes``
        declares them so), so a backend that kept them split would otherwise compile again."""
        try:
            wanted = jax.tree.leaves(self._compiled.input_shardings[0])
            given = jax.tree.leaves(args)
        except Exception:  # noqa: BLE001 - a backend that does not say: the call goes through jit
            return None
        if len(wanted) != len(given):
            return None
        moved = [jax.device_put(a, s) if isinstance(a, jax.Array) and a.size == 0 and a.sharding != s else a
                 for a, s in zip(given, wanted, strict=True)]
        if all(m is a for m, a in zip(moved, given, strict=True)):
            return None
        return jax.tree.unflatten(jax.tree.structure(args), moved)


def cached_program_sets() -> int:
    """How many program sets this process keeps (at most :data:`MAX_CACHED`)."""
    return len(_programs)
