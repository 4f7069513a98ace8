"""The XLA options every program of a sweep compiles with on CPU: YNNPACK for XLA's own
choice of products and reductions, but not for convolutions.

XLA's CPU backend (jaxlib 0.10) hands three kinds of operation to YNNPACK by default:
single dot products, reductions and convolutions (``xla_cpu_experimental_ynn_fusion_type`` =
INDIVIDUAL_DOT, REDUCE, INDIVIDUAL_CONVOLUTION). For Inception-v3 on this project's 2-core
Intel Xeon, YNNPACK's convolutions made a training step at 299 x 299 slower (9.3-11.1 s
against 6.0-7.1 s, batch 8, two settings), its compile longer (44 s against 33 s) and every
warm start wait for them: more YNNPACK fusions to read back from the cache (748 against 473),
each found by a scan of the whole program, and each planned at its first call (at 75 x 75
the first step took 2.1 s against 1.1-1.4 s). A model without convolutions compiles to the
very same program either way (docs/performance.md, twelfth stop).

``XLA_FLAGS`` naming the option wins (a user's own choice), and an XLA that no longer knows
it (:func:`rejected`) compiles with its own defaults.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

import jax

YNN_FUSION_OPTION = "xla_cpu_experimental_ynn_fusion_type"
YNN_FUSION_TYPES = "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"

_refused = threading.Event()  # set once XLA refused the option: every later program goes without it


def cpu_options(devices: Sequence[jax.Device]) -> dict[str, Any]:
    """The compiler options for a program on ``devices``: {} off CPU, when ``XLA_FLAGS``
    sets the option itself, or once this XLA has refused it."""
    if devices[0].platform != "cpu" or _refused.is_set() or YNN_FUSION_OPTION in os.environ.get("XLA_FLAGS", ""):
        return {}
    return {YNN_FUSION_OPTION: YNN_FUSION_TYPES}


def rejected(error: BaseException) -> bool:
    """Whether ``error`` is XLA refusing the option (an XLA that renamed or dropped it); if so,
    later calls of :func:`cpu_options` leave it out."""
    if isinstance(error, jax.errors.JaxRuntimeError) and YNN_FUSION_OPTION in str(error):
        _refused.set()
        return True
    return False
