"""What a sweep gives back: its result, the progress events it reports while it runs, and
what it kept when it stopped early (with the exceptions that carry that)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from epsweep.errors import UserError


class ProgressEvent(NamedTuple):
    """Where a running sweep stands, as a progress display shows it.

    ``phase``: "compiling" (no step of the current update rule has run yet) or "training";
    ``rule``: the update rule being trained (``"optax"``, ``"adam"``); ``done``/``total``:
    run-steps (settings x seeds x steps) trained and in all, over every rule. Before those, a
    task with frozen features reports phase "features": ``done``/``total`` count its inputs;
    ``saved``/``settings``: settings whose records are finished, and in all.

    Example:
        >>> from epsweep import Grid, RunConfig, run
        >>> events = []
        >>> _ = run("quadratic", Grid(eps=(1e-8,)), RunConfig(steps=10), progress=events.append)
        >>> events[0].phase, events[-1].phase, events[-1].done == events[-1].total == 10
        ('compiling', 'training', True)
    """

    phase: str
    rule: str
    done: int
    total: int
    saved: int
    settings: int


ProgressFn = Callable[[ProgressEvent], None]


class StopReport(NamedTuple):
    """What a sweep that stopped early kept: ``saved`` of ``total`` settings, in ``path``
    (``None`` when nothing could be kept); ``streamed`` when ``path`` is the streamed output
    file, else a ``.partial.jsonl`` made for the occasion."""

    saved: int
    total: int
    path: Path | None
    streamed: bool


class SweepInterrupted(KeyboardInterrupt):
    """A sweep stopped by Ctrl-C (between compiled calls); ``report`` says what was kept."""

    def __init__(self, report: StopReport):
        super().__init__(report)
        self.report = report

    def __str__(self) -> str:
        kept = self.report
        where = f"; they are in {kept.path} (resume it to finish)" if kept.path is not None and kept.saved else ""
        return f"interrupted: {kept.saved} of {kept.total} settings had finished{where}"


class WriteFailed(UserError):
    """Training finished but an output could not be written; ``result`` holds every record
    (and the message says where a fallback copy went, when one could be made)."""

    def __init__(self, message: str, result: "SweepResult"):
        super().__init__(message)
        self.result = result


class SweepStopped(UserError):
    """The sweep stopped before its end for a reason the user can act on (an output that could
    not be written); ``report`` says what was kept."""

    def __init__(self, message: str, report: StopReport):
        super().__init__(message)
        self.report = report


class OutOfMemory(SweepStopped):
    """The device ran out of memory while training; ``report`` says what was kept."""


@dataclasses.dataclass
class SweepResult:
    """``records``: one dict per setting (means over seeds), in grid order; ``runs``: one per
    (setting, seed) trained by this call (a seed that diverged has NaN for every metric);
    ``meta``: the run's provenance and costs.

    Example:
        >>> from epsweep import Grid, RunConfig, sweep
        >>> result = sweep("quadratic", Grid(eps=(1e-8, 1.0)), RunConfig(steps=10, seeds=2))
        >>> len(result.records), len(result.runs), result.meta["steps"], result.records[0]["seeds"]
        (2, 4, 10, 2)
    """

    meta: dict
    records: list[dict]
    runs: list[dict]

    def to_pandas(self):
        """The records as a ``pandas.DataFrame`` (pandas is optional), one row per setting."""
        from epsweep.results.records import records_frame

        return records_frame(self.records)
