"""epsweep: how RMSProp's epsilon (with decay and learning rate) changes training.

Library API::

    import epsweep
    result = epsweep.sweep("mlp", epsweep.Grid(eps=(1e-8, 1.0)), epsweep.RunConfig(epochs=5))
    for record in result.records:
        print(record["eps"], record["val_accuracy"])

``epsweep.rmsprop(lr, decay, eps, convention=...)`` is the optimizer on its own;
``epsweep.make_optimizer("adam", lr, decay, eps)`` builds the baselines, and
``epsweep.eps_diagnostics(opt_state, ...)`` says how much of the denominator eps is.
"""

from epsweep.errors import UserError
from epsweep.grid import Grid, parse_values
from epsweep.optim import CONVENTIONS, OPTIMIZERS, denominator_terms, eps_diagnostics, make_optimizer, rmsprop
from epsweep.sweep import RunConfig, SweepResult, sweep
from epsweep.tasks import Task, build_task

__version__ = "0.1.0"

__all__ = [
    "CONVENTIONS", "OPTIMIZERS", "Grid", "RunConfig", "SweepResult", "Task", "UserError",
    "build_task", "denominator_terms", "eps_diagnostics", "make_optimizer", "parse_values", "rmsprop", "sweep",
]
