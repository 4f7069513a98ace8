"""Tasks: what a sweep trains (model, loss, evaluation, data) as pure functions.

Names are imported on first use: a module of its own that needs no JAX
(:mod:`epsweep.tasks.inception_options`) imports none through this package."""

from __future__ import annotations

from epsweep.lazy import lazy_exports

_EXPORTS = {
    "DEFAULT_DATASET": "epsweep.tasks.builtin", "TASKS": "epsweep.tasks.builtin",
    "build_task": "epsweep.tasks.builtin", "classifier_task": "epsweep.tasks.builtin",
    "quadratic_task": "epsweep.tasks.builtin", "toy_task": "epsweep.tasks.builtin",
    "flax_task": "epsweep.tasks.own",
    "Features": "epsweep.tasks.task", "Task": "epsweep.tasks.task",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
