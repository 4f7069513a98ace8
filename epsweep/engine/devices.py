"""Where epsweep's programs run: devices, the persistent compilation cache, several processes.

:func:`setup` (``epsweep.setup``) configures JAX for this process. Parts of it only take effect
before JAX starts its backends; nothing in epsweep starts them before a sweep runs (building
tasks and datasets uses NumPy only), and a sweep calls it with the defaults when nobody has, so
the order of calls does not matter unless other code starts JAX first:

- the persistent compilation cache, on by default in ``$EPSWEEP_COMPILE_CACHE`` or else
  ``$XDG_CACHE_HOME/epsweep/jax`` (``~/.cache/epsweep/jax``), so a rerun with other values of
  the same shapes loads its program instead of compiling it (``EPSWEEP_COMPILE_CACHE=off``
  turns it off; see :mod:`epsweep.engine.cache`);
- on CPU, one JAX device per core, so that the configuration axis is split across cores
  (many small independent programs beat one program split into threads);
- several processes (``jax.distributed``): given a coordinator, a process count and an id, or
  detected from a launcher that started more than one process (Slurm ``srun``, Open MPI,
  PMI). Every process runs the same program over the global device mesh; results are
  gathered to every process and :func:`is_primary` (process 0) writes them.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import resource
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from epsweep.engine.cache import set_compile_cache
from epsweep.engine.runtime import Runtime, available_cores, coordinator_address
from epsweep.errors import UserError, param

log = logging.getLogger(__name__)

_applied: Runtime | None = None
_cache_path: Path | None = None  # the persistent compilation cache in use, if any


def compile_cache_dir() -> Path | None:
    """The persistent compilation cache directory this process uses (None: no cache)."""
    return _cache_path


def _backends_started() -> bool:
    """Whether JAX has started its backends (after which the device count is fixed). There
    is no public way to ask; if the private one moves, say no: :func:`setup` then tries, and
    a device count that comes too late is dropped (see there)."""
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):  # pragma: no cover - a JAX without it
        return False


def _cpu_devices_now() -> int:
    """The CPU devices JAX has (once started) or will make (as configured; -1: its default)."""
    return len(jax.devices("cpu")) if _backends_started() else jax.config.jax_num_cpu_devices


def setup(runtime: Runtime | None = None, **kwargs: Any) -> Runtime:
    """Configure JAX for this process (see the module docstring); ``kwargs`` are Runtime fields.

    Safe to call again: the cache setting always applies; devices and processes are set the
    first time only, and only while JAX has not started (a later request for several
    processes is an error, a device count is left as it is).

    Args:
        runtime: what to set up; default: ``Runtime(**kwargs)``.
        **kwargs: :class:`~epsweep.engine.runtime.Runtime` fields (``compile_cache``,
            ``cpu_devices``, ``coordinator``, ``num_processes``, ``process_id``).

    Returns:
        The runtime applied.

    Example:
        >>> setup(compile_cache=False).compile_cache  # no persistent compilation cache
        False
    """
    global _applied, _cache_path
    from epsweep.engine.compiled import install_listeners

    runtime = runtime or Runtime(**kwargs)
    install_listeners()
    _cache_path = set_compile_cache(runtime.compile_cache)
    first = _applied is None
    _applied = runtime
    if runtime.cpu_devices is not None and (not first or _backends_started()) \
            and runtime.cpu_devices != _cpu_devices_now():  # asked for, and too late to give
        log.warning("cpu_devices=%d is not applied: CPU devices are set once a process, before JAX starts "
                    "(call epsweep.setup first)", runtime.cpu_devices)
    if not first:
        if runtime.distributed and jax.process_count() == 1:
            raise UserError("several processes were asked for after JAX had started; call setup() first")
        return runtime
    started = _backends_started()
    device_flag = "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
    if not started and not device_flag and jax.config.jax_num_cpu_devices < 0:
        try:
            jax.config.update("jax_num_cpu_devices", runtime.cpu_devices or available_cores())
        except RuntimeError:  # pragma: no cover - JAX had started after all: its devices stay
            log.info("JAX started before epsweep.parallel.setup(); keeping its CPU devices")
    if runtime.distributed:
        if started:
            raise UserError("several processes were asked for after JAX had started; call setup() first")
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        _join(runtime)
    return runtime


# JAX's words when neither the caller nor a cluster launcher gave it a value, and the parameter that gives it
_NOT_GIVEN = {"coordinator_address should be defined": ("coordinator", "where process 0 is"),
              "Number of processes must be defined": ("num_processes", "how many processes there are"),
              "process id of the current process must be defined": ("process_id", "which process this is")}


def _join(runtime: Runtime) -> None:
    """``jax.distributed.initialize`` for ``runtime``: process 0 first checks that it can serve
    the others at its port, the others wait until it does; JAX's errors become UserErrors."""
    if runtime.coordinator is not None and runtime.process_id == 0:
        check_coordinator_port(runtime.coordinator)
    elif runtime.coordinator is not None and runtime.process_id is not None:
        _wait_for_coordinator(runtime.coordinator, runtime.join_timeout_s)
    try:
        # JAX ends the whole process (a fatal error) when its own timeout passes: it is set a
        # minute beyond join_timeout_s, so that a caller who watches the time (the CLI, with
        # epsweep.cli.signals.deadline) can give up first, with one line
        jax.distributed.initialize(
            coordinator_address=runtime.coordinator, num_processes=runtime.num_processes,
            process_id=runtime.process_id, initialization_timeout=runtime.join_timeout_s + 60,
        )
    except (RuntimeError, ValueError) as e:
        for words, (name, what) in _NOT_GIVEN.items():
            if words in str(e):  # no cluster JAX knows
                raise UserError(f"cannot join the other processes: no {param(name)} given, and no cluster launcher "
                                f"(Slurm, Open MPI, ...) says {what}") from None
        raise UserError(f"cannot join the other processes: {' '.join(str(e).split())}") from None


def check_coordinator_port(address: str) -> None:
    """Refuse, with one line, to be process 0 at ``address`` ("host:port") when its port cannot be
    bound: JAX serves the other processes on that port of every interface (or at
    ``$JAX_COORDINATOR_BIND_ADDRESS``), and when something else listens there gRPC fails to add
    the port and the process then crashes (a segmentation fault), saying nothing useful."""
    bind = os.environ.get("JAX_COORDINATOR_BIND_ADDRESS")
    try:
        host, port = coordinator_address(bind) if bind else ("", coordinator_address(address)[1])
    except ValueError:  # a bind address JAX will judge itself
        return
    host = "" if host == "::" else host
    try:
        if host:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
            probe = socket.create_server((host, port), family=family)
        elif socket.has_dualstack_ipv6():  # [::]:port, IPv4 included, as JAX binds it
            probe = socket.create_server(("::", port), family=socket.AF_INET6, dualstack_ipv6=True)
        else:
            probe = socket.create_server(("", port))
        probe.close()
    except OSError as e:
        where = f"{host}:{port}" if host else f"port {port}"
        reason = ("something else listens there; stop it or choose another port" if e.errno == errno.EADDRINUSE
                  else f"{e.strerror or e}")
        raise UserError(f"{param('coordinator')}: process 0 cannot serve the other processes at {address} "
                        f"(cannot listen on {where}: {reason})") from None


def _wait_for_coordinator(address: str, timeout_s: float) -> None:
    """Wait until process 0 accepts connections at ``address``; a UserError after
    ``timeout_s`` (JAX itself would retry, then end the process with a fatal error)."""
    host, port = coordinator_address(address)
    deadline = time.monotonic() + timeout_s
    reason = "no answer"
    while True:
        try:
            with socket.create_connection((host, port), timeout=max(0.1, min(2.0, deadline - time.monotonic()))):
                return
        except OSError as e:
            reason = e.strerror or str(e) or type(e).__name__
        if time.monotonic() >= deadline:
            raise UserError(f"{param('coordinator')}: cannot reach {address} within {timeout_s:g} s ({reason}); is "
                            f"process 0 running there? ({param('join_timeout_s')} sets how long to wait)")
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


def ensure_setup() -> None:
    """Apply the defaults unless :func:`setup` has already run: the cache and the CPU devices,
    but never joining other processes (that takes an explicit :func:`setup` or the CLI). Then
    start JAX's backend: one that cannot start (``JAX_PLATFORMS`` naming a platform this
    install lacks, a device count of 0 in ``XLA_FLAGS``) is a UserError naming JAX's reason."""
    if _applied is None:
        setup(num_processes=1)
    try:
        jax.devices()
    except RuntimeError as e:
        raise UserError(f"JAX cannot start: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def process_count() -> int:
    """How many processes share the sweep (1 unless ``jax.distributed`` joined several)."""
    return jax.process_count()


def is_primary() -> bool:
    """Whether this process writes results: always, unless it is one of several and not process 0."""
    return jax.process_index() == 0


def config_devices(devices: Sequence[jax.Device] | None = None) -> list[jax.Device]:
    """The devices a grid's settings are split across: ``devices``, or every device of every
    process. Always all of them, whatever the grid's size, so that every sweep runs programs
    of the same shape (a setting's numbers then never depend on the grid around it)."""
    return list(devices) if devices is not None else jax.devices()


def layout(devices: Sequence[jax.Device], per_call: int) -> dict:
    """What a setting's bitwise numbers depend on beyond the setting itself, as recorded in
    results: the backend, device kind and count, and the settings per compiled call."""
    return {
        "backend": devices[0].platform,
        "device_kind": devices[0].device_kind,
        "devices": len(devices),
        "processes": jax.process_count(),
        "settings_per_call": per_call,
        "settings_per_device": per_call // len(devices),
    }


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send file descriptor 1 to 2 for a while (gloo announces its connections on stdout)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def agree(value: int) -> int:
    """Process 0's ``value`` in every process (each plans its chunk size from its own memory,
    but all of them must run programs of the same shapes); ``value`` itself in one process."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    with _stdout_to_stderr():
        return int(multihost_utils.broadcast_one_to_all(np.int64(value)))


def same_everywhere(text: str) -> bool:
    """Whether every process holds the same ``text`` (compared by a hash of it); True in one
    process."""
    if jax.process_count() == 1:
        return True
    import hashlib

    from jax.experimental import multihost_utils

    digest = np.frombuffer(hashlib.sha256(text.encode()).digest()[:8], np.int64)
    with _stdout_to_stderr():
        every = np.asarray(multihost_utils.process_allgather(digest))
    return bool(np.all(every == every[0]))


def broadcast(tree: Any) -> Any:
    """Process 0's NumPy arrays in every process (one process: ``tree`` itself)."""
    if jax.process_count() == 1:
        return tree
    from jax.experimental import multihost_utils

    with _stdout_to_stderr():
        return jax.tree.map(np.asarray, multihost_utils.broadcast_one_to_all(tree))


def gather(tree: Any) -> Any:
    """Every leaf as a NumPy array holding the global value, on every process."""
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, tree)
    from jax.experimental import multihost_utils

    with _stdout_to_stderr():
        return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is a device (or the CPU) running out of memory while a program ran."""
    from jax.errors import JaxRuntimeError

    text = str(error)  # a GPU's allocator says RESOURCE_EXHAUSTED; XLA's CPU backend "Out of memory allocating"
    return isinstance(error, JaxRuntimeError) and ("RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower())


def callback_failure(error: BaseException) -> str | None:
    """The last line of the exception a model's host callback (``jax.debug.callback``,
    ``pure_callback``) raised while a program ran, or None for any other error. JAX keeps the
    error to raise again at exit; it is collected here, so that it is said once."""
    from jax.errors import JaxRuntimeError

    text = str(error)
    if not isinstance(error, JaxRuntimeError) or "callback" not in text.lower():  # CPU: "CpuCallback error"
        return None
    with contextlib.suppress(Exception):
        jax.effects_barrier()
    with contextlib.suppress(Exception):  # else the failed effect token raises it again at exit, twice
        from jax._src import dispatch

        dispatch.runtime_tokens.clear()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


@contextlib.contextmanager
def nan_markers_allowed() -> Iterator[None]:
    """Run epsweep's programs with JAX's NaN and Inf checks (``JAX_DEBUG_NANS``,
    ``JAX_DEBUG_INFS``) off, restoring them after: the programs mark a value not reached yet
    (a divergence step, a loss after divergence) with NaN, which those checks would stop at
    every sweep. Divergence is reported per setting instead; one warning says so."""
    names = [name for name in ("jax_debug_nans", "jax_debug_infs") if getattr(jax.config, name, False)]
    if names:
        log.warning("%s ignored while training: epsweep marks values not reached with NaN and reports each "
                    "setting's divergence itself", " and ".join(name.upper() for name in names))
    for name in names:
        jax.config.update(name, False)
    try:
        yield
    finally:
        for name in names:
            jax.config.update(name, True)


def peak_memory() -> dict[str, float | None]:
    """Peak memory so far, in MiB: this process's resident set, and the most any local
    accelerator held (None on CPU, where it is part of the resident set)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_mib = rss / 1024**2 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux
    device_peak = None
    for device in jax.local_devices():
        stats = device.memory_stats() if device.platform != "cpu" else None
        if stats and "peak_bytes_in_use" in stats:
            device_peak = max(device_peak or 0.0, stats["peak_bytes_in_use"] / 1024**2)
    device_peak = None if device_peak is None else round(device_peak, 1)
    return {"host_peak_mib": round(rss_mib, 1), "device_peak_mib": device_peak}
