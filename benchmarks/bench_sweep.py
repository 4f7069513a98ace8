"""epsweep against the loops a user would otherwise write, timed side by side in one run.

Workload: the default ``mlp`` task (Flatten, Dense 64->128 ReLU, Dense 10) on the embedded
digits (80/20 split, data seed 0), RMSProp lr 1e-3, decay 0.9, batch 32, 500 steps, eps
log-spaced from 1e-10 to 1 (1e-8 when G = 1), one seed. Every contender runs in its own
process and is timed from process start to its final numbers (training loss, validation loss
and accuracy of every setting):

  epsweep cold   ``epsweep grid`` through the CLI, empty persistent compilation cache
  epsweep warm   the same command with other eps values of the same shape, cache filled
  jax loop       the same JAX model and data, one setting after another, each trained by one
                 jitted ``lax.scan`` over the steps (compiled once, reused for every setting)
  torch loop     PyTorch, ``torch.optim.RMSprop``, one setting after another
  keras loop     Keras 3 ``model.fit`` with ``keras.optimizers.RMSprop``, one setting after
                 another (a fresh model each time), on the backend given by --keras-backend

Steady state (compilation and start-up excluded) is measured inside a process: for epsweep the
median of three sweeps of new values after a first one that compiles, for the jax loop the
median time of a setting after the first, times G. Medians, because this machine's other work
moves single timings by 10-30%.

FLOPs are counted analytically: a training step of one setting is forward + backward of the
two dense layers, 2 x batch x (2 x (64 x 128 + 128 x 10) + 128 x 10) = 1,294,336 FLOP at batch
32: the forward pass is one matrix product per layer, the backward pass the weight gradient of
both layers and the input gradient of the second only (the first layer's input is the data,
whose gradient nobody computes: 5 products in the gradient's jaxpr, not 6). XLA's own cost
analysis of the compiled gradient counts about 1.32 million with the elementwise work. The machine's
matmul peak is the best of a jitted 2048 x 2048 float32 matmul in JAX (at JAX's default
precision: TF32 on an NVIDIA GPU), measured at the start and again after each grid's steady
state, the best of all kept (as is the memory bandwidth's): a ceiling measured in a slow
moment would flatter the shares compared with it.

    python benchmarks/bench_sweep.py                   # table on stdout
    python benchmarks/bench_sweep.py --json            # one JSON object on stdout
    python benchmarks/bench_sweep.py --grids 1 16 --skip keras
    python benchmarks/bench_sweep.py --repeat 3         # medians of three runs of each

With --repeat N, every end-to-end contender runs N times (fresh processes, and for epsweep
fresh caches; the contenders of a grid interleaved, in a fixed order) and each row is its
median run (the lower middle one for an even N), with every run's wall time beside it; the two
steady-state figures are likewise the median over N processes each.

A contender whose framework is not installed is skipped with a message. Loops over more than
--subset-above settings are timed on --subset settings and extrapolated: start-up, then the
first setting as measured (it carries the loop's one-off costs: PyTorch's first backward pass,
CUDA's start), then every other setting at the mean of the measured ones after the first. Such
rows are marked "extrapolated".
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STEPS = 500
BATCH = 32
LR, DECAY = 1e-3, 0.9
HIDDEN, INPUTS, CLASSES = 128, 64, 10
# forward: one product per layer; backward: both weight gradients and the second layer's input gradient
FLOP_PER_SETTING_STEP = 2 * BATCH * (2 * (INPUTS * HIDDEN + HIDDEN * CLASSES) + HIDDEN * CLASSES)  # 1,294,336
PARAMS = INPUTS * HIDDEN + HIDDEN + HIDDEN * CLASSES + CLASSES  # 9,610
# RMSProp's update moves at least: read g; read and write v; read and write p (float32)
OPTIMIZER_BYTES_PER_SETTING_STEP = 5 * 4 * PARAMS
HERE = Path(__file__).resolve()


def eps_values(grid: int, shift: int = 0) -> list[float]:
    """The grid's eps values; ``shift`` moves the lower end (new values, same shape)."""
    import numpy as np

    if grid == 1:
        return [10.0 ** (-8 + shift)]
    return [float(v) for v in np.logspace(-10 + shift, 0, grid)]


def eps_token(grid: int, shift: int = 0) -> str:
    return f"{10.0 ** (-8 + shift):g}" if grid == 1 else f"log:1e{-10 + shift}:1:{grid}"


def minibatch_order(n_train: int, steps: int = STEPS, batch: int = BATCH, seed: int = 0):
    """(steps, batch) indices: a fresh permutation each epoch, remainder dropped (as epsweep)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    per_epoch = n_train // batch
    epochs = -(-steps // per_epoch)
    rows = [rng.permutation(n_train)[: per_epoch * batch].reshape(per_epoch, batch) for _ in range(epochs)]
    return np.concatenate(rows)[:steps]


# --- workers: each runs in its own process ------------------------------------------------


def _gaps(start: float, finished: list[float]) -> list[float]:
    """Each setting's own time, from the end of the one before (the first: from the loop's start)."""
    return [b - a for a, b in zip([start, *finished], finished, strict=False)]


def _done(started: float, loop_s: float, settings: int, results: list, **extra) -> None:
    """Print a worker's report (one JSON line) on stdout."""
    print(json.dumps({"loop_s": loop_s, "settings_timed": settings, "in_process_s": time.perf_counter() - started,
                      "checksum": float(sum(r[0] for r in results)), **extra}))


def worker_jax_loop(args) -> None:
    started = time.perf_counter()
    import jax
    import jax.numpy as jnp
    import optax

    from epsweep.engine import compiled
    from epsweep.tasks import build_task

    compiled.install_listeners()  # counts compilations; JAX keeps its default devices here
    task = build_task("mlp")
    data = task.data
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    x_val, y_val = jnp.asarray(data.x_val), jnp.asarray(data.y_val)
    order = jnp.asarray(minibatch_order(len(data.x_train)))
    key = jax.random.key(0)

    @jax.jit
    def train_one(eps):
        params, state = task.init(key)
        optimizer = optax.rmsprop(LR, decay=DECAY, eps=eps)

        def step(carry, index):
            params, opt_state = carry
            (loss, _), grads = jax.value_and_grad(task.loss, has_aux=True)(params, state, x[index], y[index], key)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, _), losses = jax.lax.scan(step, (params, optimizer.init(params)), order)
        val_losses, correct = task.evaluate(params, state, x_val, y_val)
        return losses[-STEPS // 50:].mean(), val_losses.mean(), correct.mean()

    results, finished = [], []
    loop_start = time.perf_counter()
    for eps in eps_values(args.grid)[: args.settings]:
        results.append([float(v) for v in train_one(jnp.float32(eps))])
        finished.append(time.perf_counter())
    end = time.perf_counter()
    # steady state: the median time of a setting after the first (which compiles); the median
    # is robust to the machine's other work, as epsweep's median of three sweeps is
    setting_s = _gaps(loop_start, finished)
    steady = statistics.median(setting_s[1:]) if len(setting_s) > 1 else None
    _done(started, end - loop_start, len(results), results, steady_per_setting_s=steady,
          setting_s=setting_s,
          compilations=compiled.compile_count(), compile_s=compiled.compile_seconds())


def worker_torch(args) -> None:
    started = time.perf_counter()
    import numpy as np
    import torch
    from torch import nn

    device = "cuda" if torch.cuda.is_available() else "cpu"  # what a user would pick
    data = np.load(args.data)
    x = torch.from_numpy(data["x_train"].reshape(len(data["x_train"]), -1)).to(device)
    y = torch.from_numpy(data["y_train"].astype(np.int64)).to(device)
    x_val = torch.from_numpy(data["x_val"].reshape(len(data["x_val"]), -1)).to(device)
    y_val = torch.from_numpy(data["y_val"].astype(np.int64)).to(device)
    order = torch.from_numpy(minibatch_order(len(x))).to(device)
    results, finished = [], []
    loop_start = time.perf_counter()
    for eps in eps_values(args.grid)[: args.settings]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(INPUTS, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, CLASSES)).to(device)
        optimizer = torch.optim.RMSprop(model.parameters(), lr=LR, alpha=DECAY, eps=eps)
        losses = []
        for index in order:
            loss = nn.functional.cross_entropy(model(x[index]), y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
        with torch.no_grad():
            logits = model(x_val)
            val_loss = nn.functional.cross_entropy(logits, y_val).item()
            accuracy = (logits.argmax(-1) == y_val).float().mean().item()
        results.append([torch.stack(losses[-STEPS // 50:]).mean().item(), val_loss, accuracy])
        finished.append(time.perf_counter())
    _done(started, time.perf_counter() - loop_start, len(results), results, threads=torch.get_num_threads(),
          device=device, setting_s=_gaps(loop_start, finished))


def worker_keras(args) -> None:
    started = time.perf_counter()
    import keras
    import numpy as np

    compiles = [0]
    if keras.backend.backend() == "jax":
        import jax

        jax.monitoring.register_event_duration_secs_listener(
            lambda event, duration, **kw: compiles.__setitem__(0, compiles[0] + 1)
            if event == "/jax/core/compile/backend_compile_duration" else None)
    data = np.load(args.data)
    order = minibatch_order(len(data["x_train"])).ravel()
    x_seq, y_seq = data["x_train"][order], data["y_train"][order]  # exactly STEPS batches, in order
    results, finished = [], []
    loop_start = time.perf_counter()
    for eps in eps_values(args.grid)[: args.settings]:
        keras.utils.set_random_seed(0)
        model = keras.Sequential([
            keras.Input(data["x_train"].shape[1:]), keras.layers.Flatten(),
            keras.layers.Dense(HIDDEN, activation="relu"), keras.layers.Dense(CLASSES),
        ])
        model.compile(optimizer=keras.optimizers.RMSprop(learning_rate=LR, rho=DECAY, epsilon=eps),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
        history = model.fit(x_seq, y_seq, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
        val_loss, accuracy = model.evaluate(data["x_val"], data["y_val"], batch_size=512, verbose=0)
        results.append([float(history.history["loss"][-1]), float(val_loss), float(accuracy)])
        finished.append(time.perf_counter())
    _done(started, time.perf_counter() - loop_start, len(results), results, backend=keras.backend.backend(),
          compilations=compiles[0] if keras.backend.backend() == "jax" else None, setting_s=_gaps(loop_start, finished))


def worker_epsweep_steady(args) -> None:
    """One process: a first sweep (compiles), then a timed second sweep of new values."""
    started = time.perf_counter()
    import epsweep

    epsweep.setup(compile_cache=False)

    task = epsweep.build_task("mlp")
    config = epsweep.RunConfig(steps=STEPS, batch_size=BATCH)
    epsweep.sweep(task, epsweep.Grid(eps=tuple(eps_values(args.grid))), config)
    times = []
    for shift in (1, 2, 3):  # new values each time, same shapes: no compilation
        t0 = time.perf_counter()
        result = epsweep.sweep(task, epsweep.Grid(eps=tuple(eps_values(args.grid, shift=shift))), config)
        times.append(time.perf_counter() - t0)
    results = [[r["final_loss"], r["val_loss"], r["val_accuracy"]] for r in result.records]
    _done(started, statistics.median(times), len(results), results, compilations=result.meta["compilations"],
          devices=len(result.meta["devices"]), repeats_s=times)


def worker_peak(args) -> None:
    """Best GFLOP/s of a jitted float32 matmul on the default JAX device (all cores)."""
    import jax
    import jax.numpy as jnp

    n = 2048
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda a, b: a @ b)
    f(a, a).block_until_ready()
    best = float("inf")
    for _ in range(10):
        t0 = time.perf_counter()
        f(a, a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    print(json.dumps({"matmul_n": n, "peak_gflops": 2 * n**3 / best / 1e9, "device": str(jax.devices()[0])}))


def worker_bandwidth(args) -> None:
    """Best memory bandwidth of a jitted float32 ``x = a * x + y`` over 2 x 256 MiB, in place
    (the input donated, so no fresh pages are touched), on the default JAX device."""
    import jax
    import jax.numpy as jnp

    n = 64 * 1024**2
    x = jnp.ones((n,), jnp.float32)
    y = jnp.ones((n,), jnp.float32)
    f = jax.jit(lambda x, y: 1.0001 * x + y, donate_argnums=0)
    x = f(x, y).block_until_ready()
    best = float("inf")
    for _ in range(10):
        t0 = time.perf_counter()
        x = f(x, y).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    print(json.dumps({"bytes": 3 * 4 * n, "bandwidth_gbs": 3 * 4 * n / best / 1e9}))


WORKERS = {"jax": worker_jax_loop, "torch": worker_torch, "keras": worker_keras,
           "epsweep-steady": worker_epsweep_steady, "peak": worker_peak, "bandwidth": worker_bandwidth}


# --- the parent: runs every contender, then reports ---------------------------------------


def run_process(cmd: list[str], env: dict | None = None, timeout: float = 3600) -> dict:
    """Run ``cmd``; its wall time from start to exit, its own peak RSS, rc, stdout, stderr."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        process = subprocess.Popen(cmd, stdout=out, stderr=err, env={**os.environ, **(env or {})})
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - t0
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return {"wall_s": wall, "peak_rss_mib": usage.ru_maxrss / 1024, "rc": process.returncode,
                "stdout": out.read().decode(), "stderr": err.read().decode()}


def _worker_cmd(name: str, grid: int, settings: int, data: Path) -> list[str]:
    return [sys.executable, str(HERE), "--worker", name, "--grid", str(grid), "--settings", str(settings),
            "--data", str(data)]


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def measure(args) -> dict:
    """Run every contender for every grid size; returns the raw figures."""
    import numpy as np

    from epsweep.data import load_dataset

    exe = shutil.which("epsweep", path=str(Path(sys.executable).parent)) or shutil.which("epsweep")
    # without the executable (a checkout on PYTHONPATH, as benchmarks/gpu.sh falls back to), the module
    prefix = [exe] if exe is not None else [sys.executable, "-m", "epsweep"]
    if exe is None:
        _log("the epsweep executable is not installed: timing python -m epsweep from this checkout")
    work = Path(tempfile.mkdtemp(prefix="epsweep-bench-"))
    data = load_dataset("digits", 0.2, 0)
    data_path = work / "digits-split.npz"
    np.savez(data_path, x_train=data.x_train, y_train=data.y_train, x_val=data.x_val, y_val=data.y_val)
    load_before = os.getloadavg()  # before machine() starts its import-timing processes
    report: dict = {"workload": {"task": "mlp", "data": "digits 1438/359", "steps": STEPS, "batch": BATCH,
                                 "lr": LR, "decay": DECAY, "flop_per_setting_step": FLOP_PER_SETTING_STEP},
                    "load_before": load_before, "machine": machine(), "rows": [], "steady": []}
    measure_ceilings(report, data_path)
    skip = set(args.skip)
    for name, module in (("torch", "torch"), ("keras", "keras")):
        if name not in skip and not _installed(module):
            _log(f"skipping the {name} loop: {module} is not installed")
            skip.add(name)
    loops = [(label, name, env) for label, name, env in (
        ("jax loop", "jax", {}), ("torch loop", "torch", {}),
        ("keras loop", "keras", {"KERAS_BACKEND": args.keras_backend})) if name not in skip]
    for grid in args.grids:
        runs: dict[str, list[dict]] = {}  # contender -> one row per attempt
        loop_steady: list[float] = []
        for attempt in range(args.repeat):  # contenders interleaved: the machine's drift spreads over all
            cache = work / f"cache-{grid}-{attempt}"
            env = {"EPSWEEP_COMPILE_CACHE": str(cache)}
            for label, shift in (("epsweep cold", 0), ("epsweep warm", 1)):
                cmd = [*prefix, "grid", "--eps", eps_token(grid, shift), "--steps", str(STEPS), "--batch-size",
                       str(BATCH), "-f", "json", "-q"]
                r = run_process(cmd, env)
                _check(r, label)
                meta = json.loads(r["stdout"])["meta"]
                runs.setdefault(label, []).append({
                    "grid": grid, "contender": label, "wall_s": r["wall_s"], "peak_rss_mib": r["peak_rss_mib"],
                    "compilations": meta["compilations"], "compile_s": meta.get("compile_time_s"),
                    "devices": len(meta["devices"]), "settings_timed": grid, "extrapolated": False,
                    "command": " ".join(cmd[len(prefix):])})
                _log(f"G={grid} {label}: {r['wall_s']:.2f} s ({meta['compilations']} compilations)")
            for label, name, extra_env in loops:
                settings = grid if grid <= args.subset_above else args.subset
                if name == "jax":
                    settings = grid  # fast enough to run in full
                r = run_process(_worker_cmd(name, grid, settings, data_path), extra_env)
                _check(r, label)
                w = _last_json(r["stdout"])
                settings = w["settings_timed"]  # what the worker trained: a subset larger than the grid is the grid
                startup = r["wall_s"] - w["loop_s"]
                wall = startup + extrapolated_loop_s(w["setting_s"], w["loop_s"], grid)
                row = {"grid": grid, "contender": label, "wall_s": wall, "peak_rss_mib": r["peak_rss_mib"],
                       "compilations": w.get("compilations"), "compile_s": w.get("compile_s"),
                       "settings_timed": settings, "extrapolated": settings < grid,
                       "measured_wall_s": r["wall_s"], "startup_s": startup, "setting_s": w["setting_s"]}
                if name == "keras":
                    row["backend"] = w["backend"]
                if name == "torch":
                    row["threads"] = w["threads"]
                runs.setdefault(label, []).append(row)
                note = f" (measured {settings} settings in {r['wall_s']:.1f} s, extrapolated)"
                _log(f"G={grid} {label}: {wall:.2f} s{note if settings < grid else ''}")
                if name == "jax" and w.get("steady_per_setting_s") is not None:
                    loop_steady.append(w["steady_per_setting_s"])
        report["rows"] += [median_run(attempts) for attempts in runs.values()]
        if loop_steady:
            report["steady"].append({"grid": grid, "contender": "jax loop",
                                     "train_s": lower_median(loop_steady) * grid,
                                     "train_s_attempts": [t * grid for t in loop_steady]})
        steady = []
        for _ in range(args.repeat):  # as often as the jax loop's, which it is compared with
            r = run_process(_worker_cmd("epsweep-steady", grid, grid, data_path))
            _check(r, "epsweep steady")
            steady.append(_last_json(r["stdout"]))
            _log(f"G={grid} epsweep steady state: {steady[-1]['loop_s']:.3f} s")
        w = lower_median(steady, key=lambda a: a["loop_s"])
        report["steady"].append({"grid": grid, "contender": "epsweep", "train_s": w["loop_s"],
                                 "compilations": w["compilations"], "devices": w["devices"],
                                 "train_s_attempts": [a["loop_s"] for a in steady]})
        measure_ceilings(report, data_path)  # right after the steady state, which is compared with them
        if args.output:  # a run cut short (a GPU lease's limit) keeps the grids it finished
            args.output.write_text(json.dumps({**report, "partial": True}, indent=2) + "\n")
    report["load_after"] = os.getloadavg()
    shutil.rmtree(work, ignore_errors=True)
    return report


CEILINGS = (("matmul_peak", "peak", "peak_gflops", "matmul peak", "GFLOP/s"),
            ("memory", "bandwidth", "bandwidth_gbs", "memory bandwidth", "GB/s"))


def measure_ceilings(report: dict, data_path: Path) -> None:
    """Measure the matmul peak and the memory bandwidth (again), keeping the best of every
    measurement so far in ``report`` (each one's value under ``attempts``). The machine's speed
    moves within a run, and a ceiling measured in a slow moment would flatter every share of
    the peak and roofline compared with it; the best one never does."""
    for key, worker, field, name, unit in CEILINGS:
        r = run_process(_worker_cmd(worker, 1, 1, data_path))
        _check(r, f"the {name}")
        report[key] = best_ceiling(report.get(key), _last_json(r["stdout"]), field)
        attempts = report[key]["attempts"]
        _log(f"{name}: {attempts[-1]:.1f} {unit}" + (f" (best of {len(attempts)}: {report[key][field]:.1f})"
                                                   if len(attempts) > 1 else ""))


def best_ceiling(kept: dict | None, measured: dict, field: str) -> dict:
    """The better of the ``kept`` ceiling and the one just ``measured`` (a worker's JSON), with
    every measurement's ``field`` under ``attempts``.

    >>> first = best_ceiling(None, {"peak_gflops": 187.0}, "peak_gflops")
    >>> best_ceiling(first, {"peak_gflops": 209.0}, "peak_gflops")
    {'peak_gflops': 209.0, 'attempts': [187.0, 209.0]}
    >>> best_ceiling(first, {"peak_gflops": 150.0}, "peak_gflops")
    {'peak_gflops': 187.0, 'attempts': [187.0, 150.0]}
    """
    attempts = [*(kept["attempts"] if kept else []), measured[field]]
    best = measured if kept is None or measured[field] > kept[field] else kept
    return {**best, "attempts": attempts}


def extrapolated_loop_s(setting_s: list[float], loop_s: float, grid: int) -> float:
    """A sequential loop's time for ``grid`` settings from the settings it trained: the loop as
    measured when it trained them all; else the first setting as measured (it carries the
    one-off costs) plus every other at the mean of the measured ones after the first.

    >>> extrapolated_loop_s([1.0, 0.2, 0.4], 1.6, 3), extrapolated_loop_s([1.0, 0.2, 0.4], 1.6, 11)
    (1.6, 4.0)
    """
    if len(setting_s) >= grid:
        return loop_s
    return setting_s[0] + (grid - 1) * statistics.fmean(setting_s[1:])


def median_run(attempts: list[dict]) -> dict:
    """The attempt with the median wall time (the lower of the middle two for an even count),
    with every attempt's wall time in run order: one process start of a few seconds moves by
    10-30% on a shared 2-core machine, and a ratio of two such starts by more."""
    row = lower_median(attempts, key=lambda a: a["wall_s"])
    return {**row, "attempts": len(attempts), "wall_s_attempts": [a["wall_s"] for a in attempts]}


def lower_median(items: list, key=None):
    """The median item by ``key`` (the lower of the middle two for an even count): always one
    of the items, so a row keeps the figures of the run it came from."""
    return sorted(items, key=key)[(len(items) - 1) // 2]


def _check(result: dict, label: str) -> None:
    if result["rc"] != 0:
        sys.exit(f"bench_sweep: {label} failed (exit {result['rc']}):\n{result['stderr'][-3000:]}")


def machine() -> dict:
    """The CPU model, core count and memory of this machine."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal:"))
    except (OSError, StopIteration):
        mem = 0
    gpu = shutil.which("nvidia-smi")
    gpus = subprocess.run([gpu, "-L"], capture_output=True, text=True).stdout.strip() if gpu else ""
    return {"cpu": model, "cores": len(os.sched_getaffinity(0)), "memory_gib": round(mem / 1024**2, 1),
            "gpus": gpus or None, "python": sys.version.split()[0], **import_time()}


def import_time() -> dict:
    """What every contender that uses JAX pays before its first line of work: ``import jax`` in
    a fresh process (best of three), with the ml_dtypes release it loads (0.7.0 alone took
    0.5-0.6 s to import on this project's machine)."""
    import importlib.metadata

    code = "import time; t = time.perf_counter(); import jax; print(time.perf_counter() - t)"
    best = min(float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                    check=True).stdout) for _ in range(3))
    return {"import_jax_s": round(best, 3), "ml_dtypes": importlib.metadata.version("ml_dtypes")}


def summarize(report: dict) -> dict:
    """Derived figures: throughput, speed-ups, GFLOP/s and share of peak, and the targets."""
    peak = report["matmul_peak"]["peak_gflops"]
    for row in report["rows"] + report["steady"]:
        seconds = row.get("wall_s") or row.get("train_s")
        row["setting_steps_per_s"] = row["grid"] * STEPS / seconds
        row["gflops"] = row["setting_steps_per_s"] * FLOP_PER_SETTING_STEP / 1e9
        row["share_of_peak"] = row["gflops"] / peak
    by = {(r["grid"], r["contender"]): r for r in report["rows"]}
    for row in report["rows"]:
        cold = by.get((row["grid"], "epsweep cold"))
        warm = by.get((row["grid"], "epsweep warm"))
        row["cold_speedup"] = row["wall_s"] / cold["wall_s"] if cold else None
        row["warm_speedup"] = row["wall_s"] / warm["wall_s"] if warm else None
    steady = {(r["grid"], r["contender"]): r for r in report["steady"]}
    bandwidth = report.get("memory", {}).get("bandwidth_gbs")
    for (grid, who), row in steady.items():
        loop = steady.get((grid, "jax loop"))
        row["speedup_over_jax_loop"] = loop["train_s"] / row["train_s"] if loop and who == "epsweep" else None
        if bandwidth:  # the roofline: the FLOPs at the matmul peak plus the optimizer's bytes at bandwidth
            per_setting_step = (FLOP_PER_SETTING_STEP / (peak * 1e9)
                                + OPTIMIZER_BYTES_PER_SETTING_STEP / (bandwidth * 1e9))
            row["roofline_s"] = grid * STEPS * per_setting_step
            row["times_roofline"] = row["train_s"] / row["roofline_s"]
    grids = sorted({r["grid"] for r in report["rows"]})
    top, bottom = grids[-1], grids[0]
    targets = []

    def target(name: str, value: float | None, goal: float, unit: str = "x") -> None:
        if value is not None:
            targets.append({"target": name, "value": value, "goal": goal, "met": value >= goal, "unit": unit})

    if (top, "torch loop") in by:
        target(f"G={top}: epsweep cold vs torch loop", by[(top, "torch loop")]["cold_speedup"], 10)
    if (top, "keras loop") in by:
        target(f"G={top}: epsweep cold vs keras loop", by[(top, "keras loop")]["cold_speedup"], 50)
    if (top, "epsweep") in steady and (top, "jax loop") in steady:
        target(f"G={top}: steady throughput vs jax loop", steady[(top, "epsweep")]["speedup_over_jax_loop"], 2)
        target(f"G={top}: steady share of matmul peak", steady[(top, "epsweep")]["share_of_peak"], 0.5, "share")
    if top != bottom:
        c_top, c_bottom = by[(top, "epsweep cold")]["compile_s"], by[(bottom, "epsweep cold")]["compile_s"]
        if c_top and c_bottom:
            # within 1.5x means the ratio is at most 1.5; report it as bottom * 1.5 / top >= 1
            target(f"compile time G={top} within 1.5x of G={bottom} (value: 1.5 x G={bottom} / G={top})",
                   1.5 * c_bottom / c_top, 1.0)
    report["targets"] = targets
    return report


def table(report: dict) -> str:
    """The report as plain text."""
    m = report["machine"]
    lines = [f"machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB"
             + (f", {m['gpus']}" if m["gpus"] else "")
             + f"; matmul peak {report['matmul_peak']['peak_gflops']:.1f} GFLOP/s"
             + (f", memory {report['memory']['bandwidth_gbs']:.1f} GB/s" if report.get("memory") else "")
             + f"; load {report['load_before'][0]:.1f} before, {report['load_after'][0]:.1f} after"
             + (f"; import jax {m['import_jax_s']:.2f} s (ml_dtypes {m['ml_dtypes']})" if "import_jax_s" in m else ""),
             f"workload: mlp on digits, batch {BATCH}, {STEPS} steps, eps log-spaced, 1 seed; "
             f"{FLOP_PER_SETTING_STEP:,} FLOP per setting-step", "",
             "end to end (process start to final numbers)"]
    header = (f"{'G':>5} {'contender':<13} {'wall s':>9} {'set*steps/s':>12} {'cold x':>8} {'warm x':>8} "
              f"{'GFLOP/s':>8} {'% peak':>7} {'peak MiB':>9} {'compiles':>8} {'compile s':>9}  note")
    lines += [header, "-" * len(header)]
    for r in report["rows"]:
        note = []
        if r["extrapolated"]:
            note.append(f"extrapolated from {r['settings_timed']} settings ({r['measured_wall_s']:.1f} s measured)")
        if r.get("backend"):
            note.append(f"backend {r['backend']}")
        if r.get("devices"):
            note.append(f"{r['devices']} device(s)")
        if r.get("attempts", 1) > 1:
            walls = r["wall_s_attempts"]
            note.append(f"median of {r['attempts']} runs, {min(walls):.2f}-{max(walls):.2f} s")
        compiles = "-" if r.get("compilations") is None else str(r["compilations"])
        compile_s = "-" if r.get("compile_s") is None else f"{r['compile_s']:.2f}"
        lines.append(f"{r['grid']:>5} {r['contender']:<13} {r['wall_s']:>9.2f} {r['setting_steps_per_s']:>12,.0f} "
                     f"{r['cold_speedup']:>8.2f} {r['warm_speedup']:>8.2f} {r['gflops']:>8.2f} "
                     f"{100 * r['share_of_peak']:>6.1f}% {r['peak_rss_mib']:>9.0f} {compiles:>8} {compile_s:>9}  "
                     + "; ".join(note))
    lines += ["", "steady state (training only: no start-up, no compilation)",
              f"{'G':>5} {'contender':<13} {'train s':>9} {'set*steps/s':>12} {'GFLOP/s':>8} {'% peak':>7} "
              f"{'vs jax loop':>11} {'roofline s':>10} {'x roofline':>10}"]
    for r in report["steady"]:
        ratio = "" if r.get("speedup_over_jax_loop") is None else f"{r['speedup_over_jax_loop']:.2f}x"
        roof = "" if r.get("roofline_s") is None else f"{r['roofline_s']:>10.3f} {r['times_roofline']:>9.1f}x"
        lines.append(f"{r['grid']:>5} {r['contender']:<13} {r['train_s']:>9.3f} {r['setting_steps_per_s']:>12,.0f} "
                     f"{r['gflops']:>8.2f} {100 * r['share_of_peak']:>6.1f}% {ratio:>11} {roof}")
    if bandwidth := report.get("memory", {}).get("bandwidth_gbs"):
        lines.append(f"  roofline: {FLOP_PER_SETTING_STEP:,} FLOP at the matmul peak + "
                     f"{OPTIMIZER_BYTES_PER_SETTING_STEP:,} optimizer bytes (g, v, p: {PARAMS:,} float32 "
                     f"parameters) at {bandwidth:.1f} GB/s per setting-step")
    lines += ["", "targets"]
    for t in report["targets"]:
        value = f"{100 * t['value']:.1f}% (goal {100 * t['goal']:.0f}%)" if t["unit"] == "share" else \
            f"{t['value']:.2f}x (goal {t['goal']:g}x)"
        lines.append(f"  {'met   ' if t['met'] else 'MISSED'} {t['target']}: {value}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--grids", type=int, nargs="+", default=[1, 16, 64, 256], help="grid sizes G")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--skip", nargs="*", default=[], choices=["torch", "keras"], help="contenders to leave out")
    parser.add_argument("--keras-backend", default="jax", choices=["jax", "torch"], help="Keras 3 backend")
    parser.add_argument("--subset-above", type=int, default=64,
                        help="torch/keras loops over more settings than this are timed on --subset and extrapolated")
    parser.add_argument("--subset", type=int, default=16, help="settings timed when extrapolating")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run every contender this many times (fresh processes, epsweep with fresh "
                             "caches, interleaved) and report the median run (the lower middle for even N)")
    parser.add_argument("--output", type=Path, help="also write the JSON report to this file")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--grid", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--settings", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.subset < 2:  # the first setting carries the one-off costs: one more is needed for the rest
        parser.error("--subset must be at least 2")
    if args.worker:
        WORKERS[args.worker](args)
        return
    report = summarize(measure(args))
    if args.output:
        args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2) if args.json else table(report))


if __name__ == "__main__":
    main()
