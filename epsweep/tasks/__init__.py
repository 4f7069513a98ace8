"""Tasks: what a sweep trains (model, loss, evaluation, data) as pure functions."""

from epsweep.tasks.builtin import DEFAULT_DATASET, TASKS, build_task, classifier_task, quadratic_task, toy_task
from epsweep.tasks.own import flax_task
from epsweep.tasks.task import Features, Task

__all__ = [
    "DEFAULT_DATASET", "TASKS", "Features", "Task", "build_task", "classifier_task", "flax_task", "quadratic_task",
    "toy_task",
]
