"""Driving the compiled programs over a grid: chunks of settings, seeds, segments of steps.

:func:`train_runs` is the one entry point: hyperparameter arrays and seeds in, per-run output
arrays out, with a callback as each chunk finishes. It places data on the devices, dispatches
each chunk before collecting the previous one (the devices never wait for the host), and
reports progress between calls of the training program.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from epsweep.engine.compiled import CONFIG_AXIS, compiled_programs
from epsweep.engine.devices import agree, config_devices, ensure_setup, gather
from epsweep.engine.features import on_features
from epsweep.engine.memory import check_fits, plan_width, tree_bytes
from epsweep.engine.spec import RunOutputs, TrainSpec, program_hyperparameters
from epsweep.engine.state import program_input, with_measures
from epsweep.tasks.task import Task

PROGRESS_UPDATES = 100  # with a progress display, about this many updates over a whole call


def validation_batches(task: Task, eval_batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validation data padded to whole batches: (batches, batch, ...) plus a 0/1 mask."""
    batch = task.validation_batch_size(eval_batch_size)
    if not batch:
        return np.zeros((0, 1)), np.zeros((0, 1), np.int32), np.zeros((0, 1), np.float32)
    x, y = task.data.x_val, task.data.y_val
    batches = math.ceil(len(x) / batch)
    pad = batches * batch - len(x)
    mask = np.concatenate([np.ones(len(x), np.float32), np.zeros(pad, np.float32)])
    x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
    y = np.concatenate([y, np.zeros((pad, *y.shape[1:]), y.dtype)])
    return (x.reshape(batches, batch, *x.shape[1:]), y.reshape(batches, batch, *y.shape[1:]),
            mask.reshape(batches, batch))


def segment_bounds(steps: int, segments: int) -> list[tuple[int, int]]:
    """``segments`` (at most ``steps``) consecutive step ranges covering ``0 .. steps - 1``."""
    segments = max(1, min(segments, steps))
    edges = [round(i * steps / segments) for i in range(segments + 1)]
    return list(zip(edges[:-1], edges[1:], strict=False))


Progress = Callable[[int, int], None]  # (run-steps done, run-steps in all) over every chunk of a call


def train_runs(
    task: Task,
    spec: TrainSpec,
    hparams: dict[str, np.ndarray],
    seeds: np.ndarray,
    *,
    chunk_size: int | None = None,
    on_chunk: Callable[[int, int, RunOutputs], None] | None = None,
    devices: Sequence[jax.Device] | None = None,
    progress: Progress | None = None,
) -> RunOutputs:
    """Train every (seed, setting) pair; returns arrays with a leading (S, G) block.

    Settings go through the compiled programs a chunk at a time, split across ``devices``
    (default: every device, in every process), one seed per call. Every call has the same
    shape, whatever the grid: :func:`~epsweep.engine.memory.plan_width` settings (or
    ``chunk_size`` rounded up to a multiple of the device count), the last chunk padded by
    repeating its final setting. A run's numbers are therefore bitwise the same whichever
    other settings, seeds or update rules the sweep holds, on the same devices (the programs
    compile once, too). Each call is dispatched before the previous one is collected, so the
    devices never wait for the host. ``on_chunk(start, stop, outputs)`` is called as each chunk
    of settings finishes all its seeds (in every process); ``progress(done, total)`` as steps
    complete, counted in run-steps (settings x seeds x steps) over every chunk; ``done`` is 0
    until the first segment of steps has run, i.e. while the programs compile. A task with
    frozen :class:`~epsweep.tasks.task.Features` trains on them (:func:`on_features`, kept in
    memory only).
    """
    total, hyperparameters = len(hparams["eps"]), program_hyperparameters(hparams)
    ensure_setup()
    devices = config_devices(devices)
    task = on_features(task, devices)[0]  # frozen features: computed once (or kept from before)
    chunk = agree(plan_width(task, spec, devices, chunk_size))  # several processes run the same programs
    programs = compiled_programs(task, spec, devices, chunk)
    mesh = Mesh(np.array(devices), (CONFIG_AXIS,))
    by_config, replicated = NamedSharding(mesh, P(CONFIG_AXIS)), NamedSharding(mesh, P())
    no_data = (np.zeros((1, 1), np.float32), np.zeros((1,), np.int32))
    place = functools.partial(_global_array, sharding=replicated)
    seed_arrays = [place(np.asarray([seed], np.uint32)) for seed in seeds]
    train_data = tuple(map(place, no_data if task.data is None else (task.data.x_train, task.data.y_train)))
    x_val, y_val, val_mask = validation_batches(task, spec.eval_batch_size)
    val_batches = [tuple(place(a[i]) for a in (x_val, y_val, val_mask)) for i in range(len(x_val))]
    val_count = place(np.float32(val_mask.sum()))
    zeros = _global_array(np.zeros((1, chunk), np.float32), NamedSharding(mesh, P(None, CONFIG_AXIS)))
    constants = jax.tree.map(place, task.constants)
    resident = tree_bytes((train_data, val_batches, constants))  # on every device for the whole sweep
    starts = list(range(0, total, chunk))
    items = [(start, k) for start in starts for k in range(len(seeds))]  # one call sequence each
    if programs.loop_free:  # one step per call (see build_programs)
        bounds = [(t, t + 1) for t in range(spec.steps)]
        report_every = max(1, math.ceil(spec.steps * len(items) / PROGRESS_UPDATES))
    else:
        segments = 1 if progress is None else math.ceil(PROGRESS_UPDATES / len(items))
        bounds = segment_bounds(spec.steps, segments)
        report_every = 1
    all_steps = total * len(seeds) * spec.steps
    item_steps = [(min(start + chunk, total) - start) * spec.steps for start, _ in items]  # real runs only
    steps_before = [0, *itertools.accumulate(item_steps)][:-1]
    pieces: list[RunOutputs] = []
    per_seed: dict[int, list[RunOutputs]] = {}

    def report(item: int, steps_done: int) -> None:
        start, _ = items[item]
        progress(steps_before[item] + (min(start + chunk, total) - start) * steps_done, all_steps)

    def collect(item: int, out: RunOutputs) -> None:
        start, k = items[item]
        stop = min(start + chunk, total)
        per_seed.setdefault(start, []).append(RunOutputs(*(a[:, : stop - start] for a in gather(out))))
        if k == len(seeds) - 1:  # every seed of this chunk is done
            outs = per_seed.pop(start)
            out = RunOutputs(*(np.concatenate(parts, axis=0) for parts in zip(*outs, strict=True)))
            pieces.append(out)
            if on_chunk is not None:
                on_chunk(start, stop, out)

    if progress is not None:
        progress(0, all_steps)
    pending = None
    for item, (start, k) in enumerate(items):
        index = np.minimum(np.arange(start, start + chunk), total - 1)
        h = {name: _global_array(value[index], by_config) for name, value in hyperparameters.items()}
        seed = seed_arrays[k]
        warned = item == 0 and check_fits(task, devices, chunk, programs, resident, ("init",))
        state = programs.init(h, seed, constants)
        if item == 0 and not warned:  # while the first init runs
            check_fits(task, devices, chunk, programs, resident, ("train", "evaluate", "finish", "measure"))
        reached = None
        for call, (t0, t1) in enumerate(bounds):
            state, done = programs.train(state, h, seed, place(np.int32(t0)), place(np.int32(t1)), *train_data)
            if programs.measure is not None and spec.measured(t0):  # loop-free: t0 is the step taken
                state = with_measures(state, programs.measure(program_input("measure", state)))
            if progress is not None and (call + 1) % report_every == 0:
                if reached is not None:  # wait for the previous segment while this one runs
                    report(item, int(reached))
                reached = done
        sums, evaluated = (zeros, zeros), program_input("evaluate", state)
        for batch in val_batches:
            sums = programs.evaluate(evaluated, *sums, *batch)
        del evaluated  # the chunk's weights: not kept through the next chunk's steps
        out = programs.finish(program_input("finish", state), *sums, val_count)
        if pending is not None:
            collect(*pending)
        if progress is not None:
            report(item, int(done))
        pending = (item, out)
    collect(*pending)
    return RunOutputs(*(np.concatenate(parts, axis=1) for parts in zip(*pieces, strict=True)))


def _global_array(value: Any, sharding: NamedSharding) -> jax.Array:
    """A host array placed on the mesh; every process holds the whole value and gives its part."""
    value = np.asarray(value)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])
