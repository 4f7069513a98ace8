"""Running a sweep: the one library call that plans, trains, writes, resumes and survives
interruption.

``epsweep.run(task, grid, config, writers=[...], progress=...)`` trains every setting of
``grid`` under every update rule of ``config`` with the vmapped engine, hands each chunk's
records to the writers as soon as they exist (:mod:`epsweep.results.writers`), and returns a
:class:`SweepResult`. With ``resume=True`` a :class:`~epsweep.results.writers.JsonlWriter`'s
file supplies the settings already trained. If the sweep stops early (Ctrl-C between compiled
calls, or the device runs out of memory) the finished records are kept: in the streamed file,
or else in a ``.partial.jsonl`` that a resumed run finishes. :meth:`Runner.save_partial` does
the same from another thread, for a caller that must stop the process at once.
"""

from __future__ import annotations

import dataclasses
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from epsweep import provenance
from epsweep.config import RunConfig
from epsweep.engine.spec import resolve_spec
from epsweep.errors import UserError, param
from epsweep.grid import Grid
from epsweep.results.files import write_atomic
from epsweep.results.formats import dumps
from epsweep.results.records import fold_seeds, named_metrics, setting_key
from epsweep.results.writers import Writer
from epsweep.tasks import Task, build_task
from epsweep.vocabulary import METRICS

MAX_RUNS = 10_000_000  # settings x update rules x seeds in one sweep


class ProgressEvent(NamedTuple):
    """Where a running sweep stands, as a progress display shows it.

    ``phase``: "compiling" (no step of the current update rule has run yet) or "training";
    ``rule``: the update rule being trained (``"optax"``, ``"adam"``); ``done``/``total``:
    run-steps (settings x seeds x steps) trained and in all, over every rule;
    ``saved``/``settings``: settings whose records are finished, and in all.

    Example:
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


class WriteFailed(UserError):
    """Training finished but an output could not be written; ``result`` holds every record
    (and the message says where a fallback copy went, when one could be made)."""

    def __init__(self, message: str, result: "SweepResult"):
        super().__init__(message)
        self.result = result


class OutOfMemory(UserError):
    """The device ran out of memory while training; ``report`` says what was kept."""

    def __init__(self, message: str, report: StopReport):
        super().__init__(message)
        self.report = report


@dataclasses.dataclass
class SweepResult:
    """``records``: one dict per setting (means over seeds), in grid order; ``runs``: one per
    (setting, seed) trained by this call; ``meta``: the run's provenance and costs.

    Example:
        >>> result = sweep("quadratic", Grid(eps=(1e-8, 1.0)), RunConfig(steps=10, seeds=2))
        >>> len(result.records), len(result.runs), result.meta["steps"], result.records[0]["seeds"]
        (2, 4, 10, 2)
    """

    meta: dict
    records: list[dict]
    runs: list[dict]

    def to_pandas(self):
        """The records as a ``pandas.DataFrame`` (pandas is optional), one row per setting."""
        from epsweep.results.reading import records_frame

        return records_frame(self.records)


def _is_out_of_memory(error: BaseException) -> bool:
    from jax.errors import JaxRuntimeError

    return isinstance(error, JaxRuntimeError) and "RESOURCE_EXHAUSTED" in str(error)


class Runner:
    """One sweep: :meth:`run` trains it; :meth:`save_partial` keeps what has finished, from
    any thread. See the module docstring; :func:`run` is the usual way in.

    Example:
        >>> runner = Runner("quadratic", Grid(eps=(1e-8,)), RunConfig(steps=10))
        >>> runner.total, runner.save_partial().path is None  # nothing finished yet
        (1, True)
        >>> runner.run().meta["trained"]
        1
    """

    def __init__(
        self,
        task: Task | str = "mlp",
        grid: Grid | None = None,
        config: RunConfig | None = None,
        *,
        writers: Sequence[Writer] = (),
        progress: ProgressFn | None = None,
        resume: bool = False,
    ):
        self.task = build_task(task) if isinstance(task, str) else task
        self.grid = grid or Grid()
        self.config = config or RunConfig()
        self.writers = list(writers)
        self.progress = progress
        self.resume = resume
        self.rules = self.config.update_rules()
        self.total = self.grid.size * len(self.rules)
        runs = self.total * self.config.seeds
        if runs > MAX_RUNS:
            raise UserError(f"the sweep has {runs:,} runs ({self.grid.size:,} settings x {len(self.rules)} update "
                            f"rules x {self.config.seeds:,} seeds); the limit is {MAX_RUNS:,}")
        if resume and not any(hasattr(w, "previous") for w in self.writers):
            raise UserError(f"{param('resume')} needs a streamed {param('output')} (a .jsonl file to resume)")
        self.meta: dict = {}
        self._lock = threading.RLock()
        self._done: dict[tuple, dict] = {}  # from the file being resumed
        self._new: dict[tuple, dict] = {}  # trained by this run, in the order they finished
        self._partial: StopReport | None = None

    # -- stopping early ---------------------------------------------------------------------

    def _streamed(self) -> Writer | None:
        return next((w for w in self.writers if w.streams and getattr(w, "path", None) is not None), None)

    def save_partial(self) -> StopReport:
        """Keep what has finished: nothing to do when a writer streams it (its file is
        reported), else the finished records go to ``NAME.partial.jsonl`` beside the first
        output file (or into the temporary directory), which ``resume`` finishes. Safe to
        call from another thread, and more than once (the first call's file is reused)."""
        with self._lock:
            streamed = self._streamed()
            if streamed is not None:
                return StopReport(streamed.saved, self.total, streamed.path, True)
            if self._partial is not None:
                return self._partial
            finished = [*self._done.values(), *self._new.values()]
            if not finished or not self.meta:
                return StopReport(0, self.total, None, False)
            text = "".join(dumps(line) + "\n" for line in [{"meta": self.meta}, *finished])
            near = next((Path(w.path) for w in self.writers if getattr(w, "path", None) is not None), None)
            path = None
            if near is not None:
                try:
                    path = near.with_name(f"{near.stem}.partial.jsonl")
                    write_atomic(path, text)
                except OSError:
                    path = None
            if path is None:
                try:
                    handle = tempfile.NamedTemporaryFile("w", prefix="epsweep-partial-", suffix=".jsonl",
                                                         delete=False)
                    with handle:
                        handle.write(text)
                    path = Path(handle.name)
                except OSError:
                    path = None
            self._partial = StopReport(len(finished) if path else 0, self.total, path, False)
            return self._partial

    # -- running ----------------------------------------------------------------------------

    def run(self) -> SweepResult:
        """Train the sweep; see the module docstring."""
        from epsweep.engine import cache_loads, compile_count, compile_seconds, devices, ensure_setup
        from epsweep.engine.memory import plan_width

        ensure_setup()
        task, grid, config = self.task, self.grid, self.config
        primary = devices.is_primary()
        if self.resume and devices.process_count() > 1:
            raise UserError(f"{param('resume')} works in a single process (every process must train the same "
                            f"settings)")
        writers = self.writers if primary else []
        specs = {rule: resolve_spec(task, config, rule) for rule in self.rules}
        first = specs[self.rules[0]]
        settings = grid.settings()
        order = [setting_key({**s, **rule._asdict()}) for rule in self.rules for s in settings]
        description = provenance.run_description(task, config, first)
        if self.resume:
            for writer in writers:
                if hasattr(writer, "previous"):
                    self._done.update(writer.previous(description, set(order)))
        else:
            for writer in writers:
                if hasattr(writer, "previous"):
                    writer.previous(description, set(order))  # refuses to overwrite part of this run
        mesh_devices = devices.config_devices()
        chunk_size = config.chunk_size
        if chunk_size is None and self.resume:  # the interrupted run's call width: the same shapes
            chunk_size = self._resumed_width(len(mesh_devices))
        per_call = devices.agree(plan_width(task, first, mesh_devices, chunk_size))
        self.meta = provenance.run_meta(task, grid, config, first, devices.layout(mesh_devices, per_call))
        self.meta.update(devices=[str(d) for d in mesh_devices], backend=mesh_devices[0].platform,
                         processes=devices.process_count())
        opened: list[Writer] = []
        try:
            for writer in writers:
                writer.open(self.meta)
                opened.append(writer)
        except BaseException:
            for writer in opened:
                writer.abort()
            raise
        started = time.perf_counter()
        before = (compile_count(), compile_seconds(), cache_loads())
        runs: list[dict] = []
        try:
            self._train(specs, settings, per_call, runs, writers)
        except KeyboardInterrupt:
            report = self.save_partial()
            for writer in writers:
                writer.abort()
            raise SweepInterrupted(report) from None
        except Exception as error:
            if not _is_out_of_memory(error):
                for writer in writers:
                    writer.abort()
                raise
            report = self.save_partial()
            for writer in writers:
                writer.abort()
            first_line = str(error).splitlines()[0][:200]
            raise OutOfMemory(f"out of memory while training: {first_line} (use a smaller {param('batch_size')} or "
                              f"{param('chunk_size')}, fewer {param('seeds')}, or a smaller model or input)",
                              report) from None
        records = [self._done.get(k) or self._new[k] for k in order]
        self.meta.update({
            "trained": len(self._new), "resumed": len(self._done),
            "compilations": compile_count() - before[0],
            "compile_time_s": round(compile_seconds() - before[1], 3),
            "compile_cache_loads": cache_loads() - before[2],
            "peak_memory_mib": devices.peak_memory(),
            "wall_time_s": round(time.perf_counter() - started, 3),
            "finished_at": provenance.finished_at(),
        })
        result = SweepResult(self.meta, records, runs)
        failure = None
        for writer in writers:
            try:
                writer.close(result)
            except UserError as error:  # the others still get their results
                failure = failure or error
        if failure is not None:
            raise WriteFailed(failure.message, result)
        return result

    def _resumed_width(self, devices: int) -> int | None:
        """Settings per call of the run being resumed, when it ran on as many devices."""
        for writer in self.writers:
            existing = getattr(writer, "existing", None)
            layout = existing.meta.get("layout") if existing is not None else None
            if isinstance(layout, dict) and layout.get("devices") == devices:
                width = layout.get("settings_per_call")
                if isinstance(width, int) and not isinstance(width, bool) and 1 <= width <= 10**6:
                    return width
        return None

    def _train(self, specs: dict, settings: list[dict], per_call: int, runs: list[dict],
               writers: Sequence[Writer]) -> None:
        from epsweep.engine.driver import train_runs
        from epsweep.engine.spec import HPARAMS

        seeds = np.asarray(self.config.seed_list, dtype=np.uint32)
        todo = {rule: [s for s in settings if setting_key({**s, **rule._asdict()}) not in self._done]
                for rule in self.rules}
        total_steps = sum(len(todo[r]) * specs[r].steps for r in self.rules) * len(seeds)
        steps_before = 0
        for rule in self.rules:
            chosen, spec = todo[rule], specs[rule]
            if not chosen:
                continue
            hparams = {name: np.array([s[name] for s in chosen]) for name in HPARAMS}

            def finish_chunk(start: int, stop: int, out, chosen=chosen, rule=rule) -> None:
                chunk = []
                for j, setting in enumerate(chosen[start:stop]):
                    setting = {**setting, **rule._asdict()}
                    metrics = named_metrics({name: getattr(out, name)[:, j] for name in METRICS},
                                            self.task.metric_name)
                    chunk.append(fold_seeds(setting, metrics, out.diverged_step[:, j], out.curve[:, j]))
                    for k, seed in enumerate(seeds):
                        runs.append({**setting, "seed": int(seed), **{m: metrics[m][k].item() for m in metrics},
                                     "diverged_step": int(out.diverged_step[k, j])})
                for writer in writers:
                    writer.write(chunk)
                with self._lock:
                    for record in chunk:
                        self._new[setting_key(record)] = record

            hook = None
            if self.progress is not None:
                def hook(done: int, total: int, rule=rule, base=steps_before) -> None:
                    self.progress(ProgressEvent("compiling" if done == 0 else "training", rule.describe(),
                                                base + done, total_steps, len(self._done) + len(self._new),
                                                self.total))

            train_runs(self.task, spec, hparams, seeds, chunk_size=per_call, on_chunk=finish_chunk, progress=hook)
            steps_before += len(chosen) * spec.steps * len(seeds)


def run(
    task: Task | str = "mlp",
    grid: Grid | None = None,
    config: RunConfig | None = None,
    *,
    writers: Sequence[Writer] = (),
    progress: ProgressFn | None = None,
    resume: bool = False,
) -> SweepResult:
    """Train every setting of ``grid`` under every update rule and seed of ``config``.

    Args:
        task: a :class:`~epsweep.tasks.Task` or a built-in task's name (``"mlp"``).
        grid: the hyperparameter axes (default: eps 1e-8 and 1).
        config: how to train (default: the task's default length, one seed, optax RMSProp).
        writers: where records go as chunks finish (:mod:`epsweep.results.writers`).
        progress: called with a :class:`ProgressEvent` as training advances.
        resume: take the settings already in a streaming writer's file (same run) as done.

    Returns:
        A :class:`SweepResult`: one record per setting in grid order, one run per (setting,
        seed) trained, and the meta.

    Example:
        >>> result = run("quadratic", Grid(eps=(1e-8, 1.0), lr=(0.1,)), RunConfig(steps=20))
        >>> [(r["eps"], r["diverged"]) for r in result.records]
        [(1e-08, False), (1.0, False)]
    """
    return Runner(task, grid, config, writers=writers, progress=progress, resume=resume).run()


def sweep(
    task: Task | str = "mlp",
    grid: Grid | None = None,
    config: RunConfig | None = None,
    *,
    progress: ProgressFn | None = None,
) -> SweepResult:
    """:func:`run` with no writers: train and return the records in memory.

    Args:
        task: a :class:`~epsweep.tasks.Task` or a built-in task's name.
        grid: the hyperparameter axes.
        config: how to train.
        progress: called with a :class:`ProgressEvent` as training advances.

    Returns:
        A :class:`SweepResult`.

    Example:
        >>> result = sweep("quadratic", Grid(eps=(1e-8,), lr=(0.1,)), RunConfig(steps=20))
        >>> round(result.records[0]["final_loss"], 3) < 30.4
        True
    """
    return run(task, grid, config, progress=progress)

