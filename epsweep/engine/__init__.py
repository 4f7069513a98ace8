"""The vmapped training engine: pure programs (:mod:`.programs`), their compilation and cache
(:mod:`.compiled`), the chunk driver (:mod:`.driver`), the memory plan (:mod:`.memory`) and
the devices they run on (:mod:`.runtime`, :mod:`.devices`), and frozen features computed once
(:mod:`.features`). Nothing here knows about files or terminals. Names are imported on first
use, so ``import epsweep.engine.runtime`` starts no JAX.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "cache_loads": "compiled", "compile_count": "compiled", "compile_seconds": "compiled",
    "compiled_programs": "compiled", "program_key": "compiled",
    "Runtime": "runtime", "ensure_setup": "devices", "setup": "devices",
    "train_runs": "driver", "on_features": "features",
    "Estimate": "memory", "estimate": "memory", "plan_width": "memory",
    "DIAGNOSTIC_POINTS": "spec", "HPARAMS": "spec", "MAX_CURVE_POINTS": "spec", "MAX_STEPS": "spec",
    "RunOutputs": "spec", "TrainSpec": "spec",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"epsweep.engine.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'epsweep.engine' has no attribute {name!r}")
