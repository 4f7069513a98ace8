"""Tasks: what a sweep trains (model, loss, evaluation, data) as pure functions.

Names are imported on first use: a module of its own that needs no JAX
(:mod:`epsweep.tasks.inception_options`) imports none through this package."""

from __future__ import annotations

from typing import TYPE_CHECKING

from epsweep.lazy import lazy_exports

if TYPE_CHECKING:  # what type checkers and editors see: the names as their modules define them
    from epsweep.tasks.builtin import (  # noqa: F401 - in __all__
        DEFAULT_DATASET,
        TASKS,
        build_task,
        classifier_task,
        quadratic_task,
        toy_task,
    )
    from epsweep.tasks.own import flax_task  # noqa: F401 - in __all__
    from epsweep.tasks.task import Features, Task  # noqa: F401 - in __all__

_EXPORTS = {
    "DEFAULT_DATASET": "epsweep.tasks.builtin", "TASKS": "epsweep.tasks.builtin",
    "build_task": "epsweep.tasks.builtin", "classifier_task": "epsweep.tasks.builtin",
    "quadratic_task": "epsweep.tasks.builtin", "toy_task": "epsweep.tasks.builtin",
    "flax_task": "epsweep.tasks.own",
    "Features": "epsweep.tasks.task", "Task": "epsweep.tasks.task",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
