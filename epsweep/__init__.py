"""epsweep: how RMSProp's epsilon (with decay and learning rate) changes training.

Library API::

    import epsweep
    result = epsweep.sweep("mlp", epsweep.Grid(eps=(1e-8, 1.0)), epsweep.RunConfig(epochs=5))
    for record in result.records:
        print(record["eps"], record["val_accuracy"])

Your own Flax model: ``epsweep.flax_task(model, epsweep.Dataset.from_arrays(x, y))`` is a task
like ``"mlp"`` (``features=epsweep.Features(apply, constants)``: a frozen extractor in front of
it, whose features a sweep computes once).
``epsweep.run(task, grid, config, writers=[epsweep.JsonlWriter("sweep.jsonl")])`` streams
records to files as they finish (and resumes); ``epsweep.setup()`` chooses devices, the
compilation cache and processes (optional: a sweep applies the defaults). The optimizers on
their own: ``epsweep.rmsprop(lr, decay, eps, convention=...)``, ``epsweep.make_optimizer``;
``epsweep.eps_diagnostics(opt_state, ...)`` says how much of the denominator eps is.

Names are imported on first use: ``import epsweep`` starts no JAX.
"""

from __future__ import annotations

from epsweep.lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "UserError": "epsweep.errors",
    "Grid": "epsweep.grid", "parse_values": "epsweep.grid",
    "RunConfig": "epsweep.config",
    "run": "epsweep.runner", "sweep": "epsweep.runner", "Runner": "epsweep.runner",
    "SweepResult": "epsweep.outcome", "ProgressEvent": "epsweep.outcome",
    "setup": "epsweep.engine.devices", "Runtime": "epsweep.engine.runtime",
    "Task": "epsweep.tasks", "build_task": "epsweep.tasks", "flax_task": "epsweep.tasks", "Features": "epsweep.tasks",
    "Dataset": "epsweep.data",
    "CONVENTIONS": "epsweep.optim", "OPTIMIZERS": "epsweep.optim", "denominator_terms": "epsweep.optim",
    "eps_diagnostics": "epsweep.optim", "make_optimizer": "epsweep.optim", "rmsprop": "epsweep.optim",
    "read_results": "epsweep.results", "build_report": "epsweep.results",
    "JsonlWriter": "epsweep.results", "JsonWriter": "epsweep.results", "CsvWriter": "epsweep.results",
    "MemoryWriter": "epsweep.results",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
