"""The XLA options every program of a sweep compiles with on CPU: YNNPACK for single dot
products and reductions, but not for convolutions; and XLA's older fusion emitters for a
program made of many small kernels (:func:`older_emitters`).

jaxlib 0.10's CPU backend gives all three to YNNPACK by default (``xla_cpu_experimental_ynn_fusion_type``
= INDIVIDUAL_DOT, REDUCE, INDIVIDUAL_CONVOLUTION). On this project's 2-core Intel Xeon,
YNNPACK's convolutions made Inception-v3's training step at 299 x 299 about 1.5 times as
slow, its compile longer and its warm start slower (docs/performance.md, twelfth stop). A
model without convolutions compiles to the same program either way.

``XLA_FLAGS`` naming an option wins (read at each compile; XLA itself reads it once, when
its backend starts), and an XLA that no longer knows an option (:func:`rejected`) compiles
with its own defaults, and leaves that option out from then on.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import jax

YNN_FUSION_OPTION = "xla_cpu_experimental_ynn_fusion_type"
YNN_FUSION_TYPES = "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"
EMITTERS_OPTION = "xla_cpu_use_fusion_emitters"  # False: XLA's older (LLVM IR) fusion emitters

log = logging.getLogger(__name__)
T = TypeVar("T")

_refused = threading.Event()  # set once XLA refused the YNNPACK option: every later program goes without it
_emitters_refused = threading.Event()  # the same, for EMITTERS_OPTION
_refusals = 0  # compiles XLA refused (each still reported a compilation)
_refusals_lock = threading.Lock()


def _user_value(option: str = YNN_FUSION_OPTION) -> str | None:
    """``option``'s value in ``XLA_FLAGS`` ("" when named without one); None when not named."""
    for flag in os.environ.get("XLA_FLAGS", "").split():
        name, _, value = flag.lstrip("-").partition("=")
        if name == option:
            return value
    return None


def cpu_options(devices: Sequence[jax.Device]) -> dict[str, Any]:
    """The compiler options for a program on ``devices``: {} off CPU, when ``XLA_FLAGS``
    sets the option itself, or once this XLA has refused it."""
    if devices[0].platform != "cpu" or _refused.is_set() or _user_value() is not None:
        return {}
    return {YNN_FUSION_OPTION: YNN_FUSION_TYPES}


def older_emitters(devices: Sequence[jax.Device]) -> dict[str, Any]:
    """The option that compiles a program with XLA's older fusion emitters, for a program of
    many small kernels: {} off CPU, when ``XLA_FLAGS`` sets it, or once XLA has refused it.

    jaxlib 0.10's CPU backend compiles each kernel through its newer (MLIR) emitters, about
    13 ms a kernel however small on this project's 2-core CPU (200 broadcasts: 3.1 s; 1.1 s
    with the older emitters). Inception-v3's ``init`` is about 490 such kernels (random draws
    turned into weights, broadcast zeros and ones): 5.2-5.4 s to compile instead of 6.8-8.0 s,
    running as fast, with the same numbers in every case tested (at XLA's default optimisation
    level; tests/test_draws.py); a small model's ``evaluate`` and ``finish`` (dozens of small
    kernels) in about half the time. Programs of large kernels compile slower with them
    (Inception-v3's ``train``: 15.1 s against 11.7 s)."""
    if devices[0].platform != "cpu" or _emitters_refused.is_set() or _user_value(EMITTERS_OPTION) is not None:
        return {}
    return {EMITTERS_OPTION: False}


def in_effect(devices: Sequence[jax.Device]) -> str | None:
    """The YNNPACK fusion types that programs on ``devices`` are meant to compile with, for
    keys of stored results: ``XLA_FLAGS``'s value when it names the option, else ours on CPU;
    None off CPU. Whether this XLA refused the option does not change it."""
    if devices[0].platform != "cpu":
        return None
    user = _user_value()
    return YNN_FUSION_TYPES if user is None else user


def rejected(error: BaseException) -> bool:
    """Whether ``error`` is XLA refusing one of these options (an XLA that renamed or dropped
    it, or its values); if so, later calls of :func:`cpu_options` or :func:`older_emitters`
    leave it out, and it counts in :func:`refusals`."""
    global _refusals
    if not isinstance(error, jax.errors.JaxRuntimeError):
        return False
    refused = [event for option, event in ((YNN_FUSION_OPTION, _refused), (EMITTERS_OPTION, _emitters_refused))
               if option in str(error)]
    for event in refused:
        event.set()
    if refused:
        with _refusals_lock:
            _refusals += 1
    return bool(refused)


def refusals() -> int:
    """How many compiles XLA refused for these options in this process. XLA reports each as a
    compilation too, which the compile count takes back."""
    return _refusals


def or_without_options(attempt: Callable[[], T], without_options: Callable[[], T]) -> T:
    """``attempt()`` (which compiles with these options), or ``without_options()`` if XLA
    refuses them."""
    try:
        return attempt()
    except jax.errors.JaxRuntimeError as error:
        if not rejected(error):
            raise
        log.debug("XLA refused an option; compiling with its defaults: %s", error)
        return without_options()
