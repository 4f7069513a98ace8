"""The progress display on stderr (a terminal only): run-steps (settings x seeds x steps) trained
of all, settings finished and the time that remains, in 80 columns; while the programs compile
(no step has run yet, so there is no rate to estimate from), a spinner keeps turning."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class _Remaining(TimeRemainingColumn):
    """``eta`` and the time remaining, or ``-:--:--`` while compiling (the rate of the last
    rule says nothing)."""

    def render(self, task):
        if task.fields.get("compiling"):
            return Text("eta -:--:--", style="progress.remaining")
        return Text("eta ").append(super().render(task))


class ProgressDisplay:
    """A context manager; :meth:`sweep` takes the runner's events, :meth:`items` counts other
    work (images decoded). Does nothing unless ``enabled``."""

    def __init__(self, console: Console, enabled: bool):
        self.console = console
        self.enabled = enabled
        self.bar: Progress | None = None
        self.tasks: dict[str, int] = {}
        self.shown = ""  # the sweep's description now (rule and phase)

    def __enter__(self) -> ProgressDisplay:
        if self.enabled:
            self.bar = Progress(
                # 80 columns hold the widest line: "⠋ pytorch (compiling) ━━━━━━━━━━ 1500/1500 run-steps
                # 24/30 finished eta -:--:--" (the time so far is in the closing line)
                SpinnerColumn(finished_text=" "), TextColumn("{task.description}"), BarColumn(bar_width=10),
                TextColumn("{task.completed}/{task.total} {task.fields[unit]}"), TextColumn("{task.fields[saved]}"),
                _Remaining(),
                console=self.console, transient=True, refresh_per_second=4,
            )
            self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()

    def _task(self, key: str, total: int, unit: str) -> int:
        if key not in self.tasks:
            self.tasks[key] = self.bar.add_task(key, total=total, unit=unit, saved="", compiling=False)
        return self.tasks[key]

    def sweep(self, event) -> None:
        """Show a :class:`~epsweep.runner.ProgressEvent`."""
        if self.bar is None:
            return
        if event.phase == "features":  # a frozen base's features, before any step
            self.items("features", event.done, event.total, "images")
            return
        task = self._task("sweep", event.total, "run-steps")
        what = f"{event.rule} (compiling)" if event.phase == "compiling" else event.rule
        saved = f"{event.saved}/{event.settings} finished"  # settings whose records are done
        changed, self.shown = what != self.shown, what
        self.bar.update(task, completed=event.done, total=event.total, description=what, saved=saved,
                        compiling=event.phase == "compiling")
        if changed:  # a new phase shows at once, however short it is
            self.bar.refresh()

    def items(self, label: str, done: int, total: int, unit: str) -> None:
        """Show ``done`` of ``total`` ``unit`` (e.g. images) under ``label``."""
        if self.bar is None:
            return
        task = self._task(label, total, unit)
        self.bar.update(task, completed=done, total=total)

    @property
    def sweep_callback(self):
        return self.sweep if self.enabled else None
