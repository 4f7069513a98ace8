"""The XLA options every program of a sweep compiles with on CPU: YNNPACK for single dot
products and reductions, but not for convolutions.

jaxlib 0.10's CPU backend gives all three to YNNPACK by default (``xla_cpu_experimental_ynn_fusion_type``
= INDIVIDUAL_DOT, REDUCE, INDIVIDUAL_CONVOLUTION). On this project's 2-core Intel Xeon,
YNNPACK's convolutions made Inception-v3's training step at 299 x 299 about 1.5 times as
slow, its compile longer and its warm start slower (docs/performance.md, twelfth stop). A
model without convolutions compiles to the same program either way.

``XLA_FLAGS`` naming the option wins (read at each compile; XLA itself reads it once, when
its backend starts), and an XLA that no longer knows the option (:func:`rejected`) compiles
with its own defaults.
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

log = logging.getLogger(__name__)
T = TypeVar("T")

_refused = threading.Event()  # set once XLA refused the option: every later program goes without it
_refusals = 0  # compiles XLA refused (each still reported a compilation)
_refusals_lock = threading.Lock()


def _user_value() -> str | None:
    """The option's value in ``XLA_FLAGS`` ("" when named without one); None when not named."""
    for flag in os.environ.get("XLA_FLAGS", "").split():
        name, _, value = flag.lstrip("-").partition("=")
        if name == YNN_FUSION_OPTION:
            return value
    return None


def cpu_options(devices: Sequence[jax.Device]) -> dict[str, Any]:
    """The compiler options for a program on ``devices``: {} off CPU, when ``XLA_FLAGS``
    sets the option itself, or once this XLA has refused it."""
    if devices[0].platform != "cpu" or _refused.is_set() or _user_value() is not None:
        return {}
    return {YNN_FUSION_OPTION: YNN_FUSION_TYPES}


def in_effect(devices: Sequence[jax.Device]) -> str | None:
    """The YNNPACK fusion types that programs on ``devices`` are meant to compile with, for
    keys of stored results: ``XLA_FLAGS``'s value when it names the option, else ours on CPU;
    None off CPU. Whether this XLA refused the option does not change it."""
    if devices[0].platform != "cpu":
        return None
    user = _user_value()
    return YNN_FUSION_TYPES if user is None else user


def rejected(error: BaseException) -> bool:
    """Whether ``error`` is XLA refusing the option (an XLA that renamed or dropped it, or its
    values); if so, later calls of :func:`cpu_options` leave it out, and it counts in
    :func:`refusals`."""
    global _refusals
    if isinstance(error, jax.errors.JaxRuntimeError) and YNN_FUSION_OPTION in str(error):
        _refused.set()
        with _refusals_lock:
            _refusals += 1
        return True
    return False


def refusals() -> int:
    """How many compiles XLA refused for the option in this process. XLA reports each as a
    compilation too, which the compile count takes back."""
    return _refusals


def or_without_options(attempt: Callable[[], T], without_options: Callable[[], T]) -> T:
    """``attempt()`` (which compiles with :func:`cpu_options`), or ``without_options()`` if XLA
    refuses those options."""
    try:
        return attempt()
    except jax.errors.JaxRuntimeError as error:
        if not rejected(error):
            raise
        log.debug("XLA refused %s; compiling with its defaults: %s", YNN_FUSION_OPTION, error)
        return without_options()
