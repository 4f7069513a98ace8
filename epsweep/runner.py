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
import logging
import math
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from epsweep import provenance
from epsweep.config import RunConfig
from epsweep.data.dataset import format_bytes
from epsweep.engine.spec import by_program, resolve_spec
from epsweep.errors import UserError, param
from epsweep.grid import Grid
from epsweep.outcome import (
    OutOfMemory,
    ProgressEvent,
    ProgressFn,
    StopReport,
    SweepInterrupted,
    SweepResult,
    SweepStopped,
    WriteFailed,
)
from epsweep.results.cache import ArrayCache
from epsweep.results.records import fold_seeds, named_metrics, results_bytes, setting_key
from epsweep.results.writers import Writer, save_partial_stream
from epsweep.tasks import Task, build_task
from epsweep.vocabulary import GRID_AXES, METRICS, uses_axis

log = logging.getLogger(__name__)


def results_budget() -> int:
    """What a sweep's results may take: a quarter of this machine's memory (the data may take
    another half)."""
    from epsweep.data.dataset import memory_budget

    return memory_budget() // 2


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
        self.task = build_task(task) if isinstance(task, str) else _checked(task, Task, "task", "a task's name")
        self.grid = _made(grid, Grid, "grid")
        self.config = _made(config, RunConfig, "config")
        self.writers = _writers(writers)
        if progress is not None and not callable(progress):
            raise UserError(f"progress: {progress!r} is not callable (a function of one ProgressEvent)")
        self.progress = progress
        self.resume = resume
        self.rules = self.config.update_rules()
        self.total = sum(self.grid.size(rule.optimizer) for rule in self.rules)
        runs = self.total * self.config.seeds
        need, budget = results_bytes(self.total, self.config.seeds, self.config.curve_points), results_budget()
        if need > budget:  # before anything is allocated: the settings list alone would be large
            raise UserError(f"the sweep has {runs:,} runs ({self.total:,} settings over {len(self.rules)} update "
                            f"rule{'s' * (len(self.rules) != 1)} x {self.config.seeds:,} seeds): their results "
                            f"would take about {format_bytes(need)} in memory, more than the budget of "
                            f"{format_bytes(budget)} (a quarter of this machine's memory); use fewer settings, "
                            f"{param('seeds')} or update rules")
        if resume and not any(getattr(w, "resumable", False) for w in self.writers):
            raise UserError(f"{param('resume')} needs a streamed {param('output')} (a .jsonl file to resume)")
        if not resume and any(getattr(w, "resume", False) is True for w in self.writers):
            raise UserError("a writer made with resume=True resumes only when the run is: run(..., resume=True)")
        self.meta: dict = {}
        self._lock = threading.RLock()
        self._done: dict[tuple, dict] = {}  # from the file being resumed
        self._new: dict[tuple, dict] = {}  # trained by this run, in the order they finished
        self._partial: StopReport | None = None

    # -- stopping early ---------------------------------------------------------------------

    def _streamed(self) -> Writer | None:
        """The writer whose file holds every finished record, if any (one that failed does not)."""
        return next((w for w in self.writers if w.streams and getattr(w, "path", None) is not None
                     and not getattr(w, "failed", False)), None)

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
            path = save_partial_stream(finished, self.meta, [getattr(w, "path", None) for w in self.writers])
            self._partial = StopReport(len(finished) if path else 0, self.total, path, False)
            if path is None:  # a stream that failed (a full disk) still holds what it wrote before
                failed = next((w for w in self.writers if w.streams and getattr(w, "saved", 0) > 0), None)
                if failed is not None:
                    self._partial = StopReport(failed.saved, self.total, failed.path, True)
            return self._partial

    # -- running ----------------------------------------------------------------------------

    def run(self) -> SweepResult:
        """Train the sweep; see the module docstring."""
        from epsweep.engine import devices, ensure_setup

        ensure_setup()
        with devices.nan_markers_allowed():
            return self._run()

    def _run(self) -> SweepResult:
        from epsweep.engine import cache_loads, compile_count, compile_seconds, devices

        if self.resume and devices.process_count() > 1:
            raise UserError(f"{param('resume')} works in a single process (every process must train the same "
                            f"settings)")
        writers = self.writers if devices.is_primary() else []  # of several processes, process 0 writes
        try:  # every target is claimed and checked before anything is trained; on failure, none is kept
            trained, specs, settings, order, per_call = self._plan(writers)
            for writer in writers:
                writer.open(self.meta)
        except BaseException:
            for writer in writers:
                writer.abort()
            raise
        started = time.perf_counter()
        before = (compile_count(), compile_seconds(), cache_loads())
        runs: list[dict] = []
        try:
            self._train(trained, specs, settings, per_call, runs, writers)
        except BaseException as error:
            self._stopped(error, writers)
            raise
        self.meta.update({
            "trained": len(self._new), "resumed": len(self._done),
            "compilations": compile_count() - before[0],
            "compile_time_s": round(compile_seconds() - before[1], 3),
            "compile_cache_loads": cache_loads() - before[2],
            "peak_memory_mib": devices.peak_memory(),
            "wall_time_s": round(time.perf_counter() - started, 3),
            "finished_at": provenance.finished_at(),
        })
        result = SweepResult(self.meta, [self._done.get(k) or self._new[k] for k in order], runs)
        failure: Exception | None = None
        for writer in writers:
            try:
                writer.close(result)
            except Exception as error:  # the others still get their results, and release their files
                failure = failure or error
        if failure is not None:  # the records travel with the error: training is not lost
            message = failure.message if isinstance(failure, UserError) else (
                f"an output could not be written ({type(failure).__name__}: {failure})")
            raise WriteFailed(message, result) from failure
        return result

    def _plan(self, writers: Sequence[Writer]) -> tuple[Task, dict, dict, list, int]:
        """The task trained (a task with frozen features: on its features), specs and settings
        per update rule, the settings' order, what a resumed file holds already, the call
        width, and the meta."""
        from epsweep.engine import devices, on_features
        from epsweep.engine.memory import plan_width

        task, grid, config = self.task, self.grid, self.config
        specs = {rule: resolve_spec(task, config, rule, any(grid.values("momentum", rule.optimizer)))
                 for rule in self.rules}
        first = specs[self.rules[0]]
        optimizers = list(dict.fromkeys(rule.optimizer for rule in self.rules))
        for axis in GRID_AXES:  # values given for an axis no optimizer of the sweep reads
            if getattr(grid, axis) is not None and not any(uses_axis(o, axis) for o in optimizers):
                who = " and ".join(optimizers) + (" do" if len(optimizers) > 1 else " does")
                log.warning("%s not use %s: the %s values given are ignored", who, axis, axis)
        if config.batch_size is not None and first.batch_size < config.batch_size:
            log.warning("batch size %d is more than the %d training examples: every step takes all %d",
                        config.batch_size, first.batch_size, first.batch_size)
        settings = {rule: grid.settings(rule.optimizer) for rule in self.rules}
        order = [setting_key({**s, **rule._asdict()}) for rule in self.rules for s in settings[rule]]
        description = provenance.run_description(task, config, first)
        if not devices.same_everywhere(repr((description, order))):  # else each trains its part of process 0's
            raise UserError("the processes were given different sweeps (their grids, tasks, data or training "
                            "settings differ); start every process with the same command")
        for writer in writers:  # claims its file; refuses to replace what is not this sweep's
            prepare = getattr(writer, "prepare", None)
            done = prepare(description, set(order)) if prepare is not None else None
            if self.resume and done:
                self._done.update(done)
        mesh_devices = devices.config_devices()
        # a task with frozen features is described as given (meta, resume) and trained on its features
        store = ArrayCache.default() if task.features is not None else None
        trained, features = on_features(task, mesh_devices, store, None if self.progress is None else (
            lambda done, total: self.progress(ProgressEvent("features", "features", done, total, 0, self.total))))
        chunk_size = config.chunk_size
        if chunk_size is None and self.resume:  # the interrupted run's call width: the same shapes
            chunk_size = self._resumed_width(len(mesh_devices))
        per_call = devices.agree(plan_width(trained, first, mesh_devices, chunk_size))
        self.meta = provenance.run_meta(task, grid, config, first, devices.layout(mesh_devices, per_call), description)
        self.meta.update(devices=[str(d) for d in mesh_devices], backend=mesh_devices[0].platform,
                         processes=devices.process_count(), **({"features": features} if features else {}))
        return trained, specs, settings, order, per_call

    def _stopped(self, error: BaseException, writers: Sequence[Writer]) -> None:
        """A sweep that stopped early: keep what finished, release the writers, and turn
        Ctrl-C, out of memory and an output that failed into what callers catch (other errors,
        a progress callback's own say, go on as they are, with a note of where the finished
        settings went)."""
        kept = self.save_partial()
        for writer in writers:
            writer.abort()
        from epsweep.engine.devices import callback_failure, is_out_of_memory

        out_of_memory = is_out_of_memory(error)
        model_failed = callback_failure(error)
        if model_failed is not None:  # the model's own Python code, called back while training, raised
            raise SweepStopped(f"the model failed while training: {model_failed}", kept) from None
        if not isinstance(error, (KeyboardInterrupt, UserError)) and not out_of_memory:
            if kept.saved and kept.path is not None:
                note = (f"{kept.saved} of {kept.total} settings had finished; they are in {kept.path} (resume it "
                        f"to finish)")
                log.warning("the sweep stopped (%s); %s", type(error).__name__, note)
                error.add_note(f"epsweep: {note}")
            return
        if isinstance(error, KeyboardInterrupt):
            raise SweepInterrupted(kept) from None
        if isinstance(error, UserError):  # an output that failed mid-sweep: what finished is kept elsewhere
            raise SweepStopped(error.message, kept) from None
        if out_of_memory:
            first_line = str(error).splitlines()[0][:200]
            raise OutOfMemory(f"out of memory while training: {first_line} (use a smaller {param('batch_size')} or "
                              f"{param('chunk_size')}, fewer {param('seeds')}, or a smaller model or input)",
                              kept) from None

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

    def _train(self, task: Task, specs: dict, settings: dict, per_call: int, runs: list[dict],
               writers: Sequence[Writer]) -> None:
        from epsweep.engine.driver import train_runs
        from epsweep.vocabulary import GRID_AXES

        seeds = np.asarray(self.config.seed_list, dtype=np.uint32)
        chance = (self.meta.get("chance") or {}).get("threshold")
        todo = {rule: [s for s in settings[rule] if setting_key({**s, **rule._asdict()}) not in self._done]
                for rule in self.rules}
        total_steps = sum(len(todo[r]) * specs[r].steps for r in self.rules) * len(seeds)
        steps_before = 0
        for rule, spec, chosen in by_program(todo, specs):
            # an axis the optimizer does not use is None in its settings: any number will do
            hparams = {name: np.array([0.0 if s[name] is None else s[name] for s in chosen]) for name in GRID_AXES}

            def finish_chunk(start: int, stop: int, out, chosen=chosen, rule=rule) -> None:
                chunk = []
                for j, setting in enumerate(chosen[start:stop]):
                    setting = {**setting, **rule._asdict()}
                    metrics = named_metrics({name: getattr(out, name)[:, j] for name in METRICS},
                                            self.task.metric_name)
                    chunk.append(fold_seeds(setting, metrics, out.diverged_step[:, j], out.curve[:, j],
                                            chance=chance))
                    for k, seed in enumerate(seeds):  # a diverged seed's numbers are not its own: NaN
                        gone = out.diverged_step[k, j] >= 0
                        runs.append({**setting, "seed": int(seed), **{m: math.nan if gone else metrics[m][k].item()
                                                                       for m in metrics},
                                     "diverged_step": int(out.diverged_step[k, j])})
                with self._lock:  # first: a writer that fails cannot cost these records
                    for record in chunk:
                        self._new[setting_key(record)] = record
                for writer in writers:
                    writer.write(chunk)

            hook = None
            if self.progress is not None:
                def hook(done: int, total: int, rule=rule, base=steps_before) -> None:
                    self.progress(ProgressEvent("compiling" if done == 0 else "training", rule.describe(),
                                                base + done, total_steps, len(self._done) + len(self._new),
                                                self.total))

            train_runs(task, spec, hparams, seeds, chunk_size=per_call, on_chunk=finish_chunk, progress=hook)
            steps_before += len(chosen) * spec.steps * len(seeds)


def _checked(value: Any, kind: type, name: str, other: str) -> Any:
    if not isinstance(value, kind):
        raise UserError(f"{name}: a {kind.__name__} or {other}, not {type(value).__name__} {value!r:.60}")
    return value


def _made(value: Any, kind: type, name: str) -> Any:
    """``value``, the default ``kind()`` for None, or ``kind(**value)`` for a dict of its fields."""
    if value is None or isinstance(value, Mapping):
        fields = {f.name for f in dataclasses.fields(kind)}
        unknown = sorted(set(value or {}) - fields)
        if unknown:
            raise UserError(f"{name}: unknown field{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))}; "
                            f"{kind.__name__} has {', '.join(sorted(fields))}")
        return kind(**(value or {}))
    return _checked(value, kind, name, "a dict of its fields")


def _writers(writers: Any) -> list:
    """The writers as a list (one writer alone is a list of one); each must be a writer object."""
    if isinstance(writers, Writer):
        writers = [writers]
    if isinstance(writers, (str, bytes)) or not isinstance(writers, Iterable):
        raise UserError(f"writers: a list of writers (JsonlWriter(path), MemoryWriter(), ...), not {writers!r:.60}")
    writers = list(writers)
    for writer in writers:
        if not isinstance(writer, Writer):
            raise UserError(f"writers: {writer!r:.60} is not a writer (JsonlWriter(path), CsvWriter(path), "
                            f"MemoryWriter(), ...: streams, open, write, close and abort)")
    return writers


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
        grid: the hyperparameter axes (default: eps 1e-8 and 1); a dict of them is made a Grid.
        config: how to train (default: the task's default length, one seed, optax RMSProp); a
            dict of its fields is made a RunConfig.
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

