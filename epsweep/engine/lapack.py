"""JAX's LAPACK set-up, left out for programs that call no LAPACK kernel.

Before JAX lowers a call of an exported module (``jax.export``: every program of a sweep is
called through one, :mod:`.exports`) for the CPU, it sets up jaxlib's LAPACK kernels in case
the module calls them: jaxlib then imports SciPy's BLAS and LAPACK wrappers
(``scipy.linalg.cython_blas``, about 145 modules, 0.11-0.14 s on this project's 2-core CPU),
once per process, before the first program can compile or load: on the critical path of every
start, warm ones included. A sweep's modules call no LAPACK kernel unless the model does
linear algebra (``jnp.linalg``'s decompositions and solves, or an orthogonal initializer, which
takes a QR decomposition).

:func:`lowering` gives the context to lower a program's call in: without the set-up when the
module names none of jaxlib's LAPACK custom-call targets (its serialized bytes hold each
target's name), with it otherwise, and always with it outside the context (JAX's own
behaviour, for every other caller in the process). This changes a JAX internal
(``jax._src.export._export._ensure_backends_initialized``), so only the JAX releases that
:func:`epsweep.engine.replicas.tested_jax` names leave the set-up out; any other JAX sets
LAPACK up as it always does. After a sweep, the process has LAPACK set up only if one of its
programs needed it: code of your own that runs a LAPACK kernel without lowering it first (an
executable deserialized with ``jax.experimental.serialize_executable``) must set it up itself,
as it would in a process without epsweep.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

_state = threading.local()  # .skip: this thread lowers a module that calls no LAPACK kernel
_install_lock = threading.Lock()
_installed: bool | None = None  # None: not tried yet


@functools.cache
def _targets() -> tuple[bytes, ...] | None:
    """The names of jaxlib's CPU LAPACK custom-call targets (``lapack_sgetrf_ffi``, ...,
    ``tridiagonal_solve_perturbed_ffi``); None when this jaxlib does not list them."""
    try:
        from jax._src.lib import lapack

        names = tuple(name.encode() for name in lapack._lapack.registrations())
    except Exception as error:  # noqa: BLE001 - another jaxlib: the set-up always runs
        log.debug("jaxlib's LAPACK targets are unknown: %s", error)
        return None
    return names or None


def calls_lapack(serialized: bytes | bytearray) -> bool:
    """Whether a serialized module (``Exported.mlir_module_serialized``) may call one of
    jaxlib's LAPACK kernels: True when it names one of their targets, or when they are unknown.
    Every target's name ends in ``_ffi``: a module without that suffix is read once, not once a target."""
    targets = _targets()
    if targets is None:
        return True
    if all(name.endswith(b"_ffi") for name in targets) and b"_ffi" not in serialized:
        return False
    return any(name in serialized for name in targets)


def _install() -> bool:
    """Make JAX's set-up skippable (once per process); False where this JAX is not one tested,
    or lacks the function this replaces."""
    global _installed
    with _install_lock:
        if _installed is None:
            _installed = False
            from epsweep.engine.replicas import tested_jax

            try:
                from jax._src.export import _export

                original = _export._ensure_backends_initialized
            except (ImportError, AttributeError) as error:  # pragma: no cover - another JAX
                log.debug("cannot leave LAPACK's set-up out: %s", error)
            else:
                if tested_jax():
                    def ensure_backends_initialized(platforms: tuple[str, ...]) -> None:
                        if not getattr(_state, "skip", False):
                            original(platforms)

                    _export._ensure_backends_initialized = ensure_backends_initialized
                    _installed = True
        return _installed


@contextlib.contextmanager
def lowering(program: Any) -> Iterator[None]:
    """The context in which to lower a call of ``program``: in it JAX leaves LAPACK's set-up
    out if ``program`` is an exported program whose module calls no LAPACK kernel; otherwise
    JAX sets LAPACK up as usual, whatever an enclosing context chose. Applies to this thread only."""
    serialized = getattr(program, "mlir_module_serialized", None)
    skip = isinstance(serialized, bytes | bytearray) and not calls_lapack(serialized) and _install()
    previous = getattr(_state, "skip", False)
    _state.skip = skip
    try:
        yield
    finally:
        _state.skip = previous
