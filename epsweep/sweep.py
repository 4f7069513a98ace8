"""The library entry point: ``sweep(task, grid, config)`` -> records, one per setting."""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np

from epsweep import engine, parallel
from epsweep.errors import UserError
from epsweep.grid import Grid
from epsweep.optim import check_convention, check_optimizer
from epsweep.results import METRICS, fold_seeds
from epsweep.tasks import Task, build_task


MAX_SEEDS = 10_000


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """How every setting of a sweep is trained.

    Give ``steps`` or ``epochs`` (not both); with neither, the task's default applies. Seeds
    are ``first_seed, first_seed + 1, ...``; every setting is trained once per seed.
    """

    steps: int | None = None
    epochs: int | None = None
    batch_size: int | None = None
    seeds: int = 1
    first_seed: int = 0
    conventions: Sequence[str] = ("optax",)
    centered: bool = False
    curve_points: int = 50
    chunk_size: int | None = None
    clip_norm: float | None = None
    lr_decay_rate: float | None = None
    lr_decay_epochs: float | None = None
    optimizers: Sequence[str] = ("rmsprop",)  # rmsprop, adam, adagrad, sgd

    def __post_init__(self) -> None:
        if self.steps is not None and self.epochs is not None:
            raise UserError("give --steps or --epochs, not both")
        for name in ("steps", "epochs", "batch_size", "seeds", "curve_points", "chunk_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"--{name.replace('_', '-')}: {value} must be a positive integer")
        if self.seeds > MAX_SEEDS:
            raise UserError(f"--seeds: {self.seeds} is more than {MAX_SEEDS:,} seeds")
        if self.first_seed < 0 or self.first_seed + self.seeds > 2**32:
            raise UserError(f"--seed: {self.first_seed} must lie in [0, 2^32 - {self.seeds}] "
                            f"(the seeds are --seed, --seed + 1, ...)")
        if self.steps is not None and self.steps > engine.MAX_STEPS:
            raise UserError(f"--steps: {self.steps} is more than {engine.MAX_STEPS:,}")
        if not self.curve_points <= engine.MAX_CURVE_POINTS:
            raise UserError(f"curve_points: {self.curve_points} is more than {engine.MAX_CURVE_POINTS}")
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise UserError(f"--clip-norm: {self.clip_norm:g} must be > 0")
        if self.lr_decay_rate is not None and not 0 < self.lr_decay_rate <= 1:
            raise UserError(f"--lr-decay-rate: {self.lr_decay_rate:g} must lie in (0, 1]")
        if self.lr_decay_epochs is not None and not self.lr_decay_epochs > 0:
            raise UserError(f"--lr-decay-epochs: {self.lr_decay_epochs:g} must be > 0")
        if not self.conventions:
            raise UserError("--convention: no convention given")
        for convention in self.conventions:
            check_convention(convention)
        if not self.optimizers:
            raise UserError("--optimizer: no optimizer given")
        for optimizer in self.optimizers:
            check_optimizer(optimizer)

    def programs(self) -> list[tuple[str, str]]:
        """(optimizer, convention) per compiled program: rmsprop once per convention, every
        other optimizer once (conventions are RMSProp's; the baselines follow optax's rules)."""
        pairs = []
        for optimizer in dict.fromkeys(self.optimizers):
            pairs.extend((optimizer, c) for c in (self.conventions if optimizer == "rmsprop" else ("optax",)))
        return pairs

    def train_settings(self, task: Task, convention: str, optimizer: str = "rmsprop") -> engine.TrainSettings:
        """Resolve defaults against the task's data into the engine's static settings."""
        batch_size = self.batch_size or task.default_batch_size
        n_train = len(task.data.x_train) if task.data is not None else None
        if n_train is not None:
            batch_size = min(batch_size, n_train)
        steps_per_epoch = n_train // batch_size if n_train is not None else 1
        if self.steps is not None:
            steps = self.steps
        elif self.epochs is not None:
            if task.data is None:
                raise UserError(f"task {task.name} has no data, so no epochs; use --steps")
            steps = self.epochs * steps_per_epoch
            if steps > engine.MAX_STEPS:
                raise UserError(f"--epochs: {self.epochs} epochs of {steps_per_epoch} steps is more than "
                                f"{engine.MAX_STEPS:,} steps")
        else:
            steps = task.default_steps or (task.default_epochs or 1) * steps_per_epoch
        decay_steps = None
        if self.lr_decay_rate is not None:
            epochs = self.lr_decay_epochs if self.lr_decay_epochs is not None else 1.0
            decay_steps = max(1, round(epochs * steps_per_epoch))
        return engine.TrainSettings(
            steps=steps, batch_size=batch_size, convention=convention,
            centered=self.centered and optimizer == "rmsprop", optimizer=optimizer,
            curve_points=self.curve_points, clip_norm=self.clip_norm, lr_decay_rate=self.lr_decay_rate,
            eval_batch_size=task.eval_batch_size,
            lr_decay_steps=decay_steps,
        )


def planned_chunk_size(task: Task, config: RunConfig, settings: int) -> int:
    """How many of ``settings`` the engine would train per compiled call with no
    ``chunk_size`` (memory, and on CPU the cache; see :func:`epsweep.memory.plan_chunk`), for
    the first optimizer and convention of ``config``; process 0's value in every process."""
    from epsweep import memory

    optimizer, convention = config.programs()[0]
    train = config.train_settings(task, convention, optimizer)
    devices = parallel.config_devices(settings)
    planned = memory.plan_chunk(settings, config.seeds, devices, engine.estimate(task, train), None,
                                task.settings_per_cpu_device)
    return parallel.agree(planned)


@dataclasses.dataclass
class SweepResult:
    """``records``: one dict per setting (means over seeds); ``runs``: one per (setting, seed)."""

    meta: dict
    records: list[dict]
    runs: list[dict]


def versions() -> dict[str, str]:
    out = {}
    for package in ("epsweep", "jax", "jaxlib", "optax", "flax", "numpy"):
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = "unknown"
    return out


ProgressFn = Callable[[str, int, int], None]


def sweep(
    task: Task | str = "mlp",
    grid: Grid | None = None,
    config: RunConfig | None = None,
    *,
    progress: ProgressFn | None = None,
    on_records: Callable[[list[dict]], None] | None = None,
    select: Callable[[dict], bool] | None = None,
) -> SweepResult:
    """Train every setting of ``grid`` (times every seed) and return one record per setting.

    All settings of one (optimizer, convention) pair are trained by a single compiled, vmapped
    program.
    ``progress(label, done_steps, total_steps)`` is called while it runs (steps summed over
    the chunks of one program; ``done_steps`` is 0 while it compiles);
    ``on_records(records)`` receives each chunk's finished records as soon as they exist (in
    process 0 only, when several processes share the sweep).
    ``select(setting)``, when given, picks the settings to train (the setting's axes plus
    ``optimizer`` and ``convention``); the others are skipped (``epsweep.store`` resumes so).
    """
    parallel.ensure_setup()
    task = build_task(task) if isinstance(task, str) else task
    grid = grid or Grid()
    config = config or RunConfig()
    seeds = np.arange(config.first_seed, config.first_seed + config.seeds, dtype=np.uint32)
    started = time.perf_counter()
    compiles_before, compile_seconds_before = engine.compile_count(), engine.compile_seconds()
    cache_loads_before = engine.cache_loads()
    all_settings = grid.settings()
    records: list[dict] = []
    runs: list[dict] = []
    steps_used = None
    for optimizer, convention in config.programs():
        settings = config.train_settings(task, convention, optimizer)
        steps_used = settings.steps
        settings_list = [s for s in all_settings
                         if select is None or select({**s, "optimizer": optimizer, "convention": convention})]
        if not settings_list:
            continue
        hparams = {name: np.array([s[name] for s in settings_list]) for name in engine.HPARAMS}
        chunk_records: list[dict] = []

        def finish_chunk(start: int, stop: int, out: engine.RunOutputs) -> None:
            chunk = []
            for j, setting in enumerate(settings_list[start:stop]):
                setting = {**setting, "optimizer": optimizer, "convention": convention}
                metrics = {name: getattr(out, name)[:, j] for name in METRICS}
                chunk.append(fold_seeds(setting, metrics, out.diverged_step[:, j], out.curve[:, j]))
                for k, seed in enumerate(seeds):
                    runs.append({**setting, "seed": int(seed), **{m: metrics[m][k].item() for m in METRICS},
                                 "diverged_step": int(out.diverged_step[k, j])})
            chunk_records.extend(chunk)
            if on_records is not None and parallel.is_primary():  # of several processes, one writes
                on_records(chunk)

        what = convention if optimizer == "rmsprop" else optimizer
        label = f"{what}: {len(settings_list)} settings x {len(seeds)} seeds"
        hook = (lambda done, total, label=label: progress(label, done, total)) if progress is not None else None
        engine.train_runs(task, settings, hparams, seeds, chunk_size=config.chunk_size, on_chunk=finish_chunk,
                          progress=hook)
        records.extend(chunk_records)
    meta = {
        **task.describe(),
        "steps": steps_used,
        "batch_size": settings.batch_size if task.data is not None else None,
        "seeds": [int(s) for s in seeds],
        "conventions": list(config.conventions),
        "optimizers": list(dict.fromkeys(config.optimizers)),
        "centered": config.centered,
        "clip_norm": config.clip_norm,
        "lr_decay_rate": config.lr_decay_rate,
        "lr_decay_steps": settings.lr_decay_steps,
        "settings": len(all_settings) * len(config.programs()),
        "devices": [str(d) for d in jax.devices()],
        "backend": jax.default_backend(),
        "versions": versions(),
        "processes": jax.process_count(),
        "compilations": engine.compile_count() - compiles_before,
        "compile_time_s": round(engine.compile_seconds() - compile_seconds_before, 3),
        "compile_cache_loads": engine.cache_loads() - cache_loads_before,
        "peak_memory_mib": parallel.peak_memory(),
        "wall_time_s": round(time.perf_counter() - started, 3),
        "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    return SweepResult(meta, records, runs)
