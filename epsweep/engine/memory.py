"""How many settings one compiled call trains: the memory one configuration needs, what a
device can hold, and the chunk size that follows.

The estimate is made from shapes alone (nothing is compiled): the training state of one
configuration (parameters, model state, optimizer state, and the one-byte-per-parameter
mask of the parameters the last step moved, from which ``finish`` takes the median effective
lr) counted three times (the carried state, the new state, and the last step's gradient,
carried to the steps where the eps diagnostics are measured), plus the most bytes that one
training step (the gradient and activations) or one evaluation batch holds at once when its
operations run one after another, each value freed after its last use (:func:`peak_bytes`).

Summing every intermediate instead, as this module once did, counted Inception-v3's training
step at 299 x 299 (bfloat16, batch 32) as 25.0 GiB per setting where this peak is 3.2 GiB, and on
an H200 (139 GiB) a sweep trained 2 settings per call with 3.8 GiB of the device in use
(docs/performance.md, "On a GPU"). XLA fuses elementwise chains (fewer bytes than this peak)
but may add layout copies and, for vmapped convolutions, grouped-convolution temporaries (on
the CPU, Inception-v3 at 75 x 75 and batch 8: XLA's temporaries of the vmapped gradient came to
128 MiB per setting at 4 settings a call against a peak of 116 MiB, docs/scale.md); the three
copies of the state cover that, and tests/test_scale.py checks the whole estimate against XLA's
own buffer assignment.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import weakref
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from epsweep.collector import while_tracing
from epsweep.engine.devices import available_cores
from epsweep.optim import make_optimizer
from epsweep.optim.diagnostics import moving_mask_size

log = logging.getLogger(__name__)

STATE_COPIES = 3
CACHE_STATE_COPIES = 4  # state, gradient, new state, carried gradient: what one step streams through
MEMORY_SHARE = 0.5  # of what a device has free, the share a sweep plans to use
CPU_MIN_PER_DEVICE = 4  # below this, per-call overheads dominate on CPU
MAX_PER_DEVICE = 1024  # wider calls gain nothing on any device measured; padding a small grid costs
_DEFAULT_L2 = 1024**2
# The most last-level cache a core is credited with: more than almost any part gives one core
# (a few frequency-optimised EPYCs with 2-4 cores per 32 MiB excepted), and enough to keep this
# project's Zen 5 at its measured best. A virtual machine may report its host's whole L3 as shared
# by its few virtual CPUs (480 MiB for 2 on this project's Intel Xeon guest): counted as such, a
# core "held" 550 MLP settings, every call trained 1,024, and a 1-setting grid took 14 s, not 0.5
L3_PER_CORE_MAX = 16 * 1024**2


def tree_bytes(tree: Any) -> int:
    """Bytes held by the arrays (or shape structs) of a pytree."""
    return int(sum(np.prod(x.shape, dtype=np.int64) * x.dtype.itemsize  # PRNG keys included
                   for x in jax.tree.leaves(tree) if hasattr(x, "shape")))


def peak_bytes(jaxpr: Any, _known: dict | None = None) -> int:
    """The most bytes of values a jaxpr computes that are live at once when its equations run
    in order: at equation i, what earlier equations made that a later one (or the result) still
    reads, plus the peak of the jaxprs equation i runs (a jit's body, a loop's, a cond's branches,
    a custom derivative's primal; JAX's ``jaxprs_in_params``), plus its outputs. Its inputs (the
    caller's parameters, state and data) are not counted; a value is freed after its last use.
    A sub-jaxpr called from several places is walked once (its peak does not depend on where)."""
    from jax.extend.core import Var, jaxprs_in_params

    known = {} if _known is None else _known
    if id(jaxpr) in known:
        return known[id(jaxpr)][1]
    eqns = jaxpr.eqns
    last_use: dict = {}
    for i, eqn in enumerate(eqns):
        for v in eqn.invars:
            if isinstance(v, Var):
                last_use[v] = i
    for v in jaxpr.outvars:
        if isinstance(v, Var):
            last_use[v] = len(eqns)
    held: dict = {}  # values this jaxpr made that a later equation still reads: their bytes
    live = peak = 0
    for i, eqn in enumerate(eqns):
        inner = max((peak_bytes(sub, known) for sub in jaxprs_in_params(eqn.params)), default=0)
        made = {v: tree_bytes(v.aval) for v in eqn.outvars if hasattr(v.aval, "shape")}
        peak = max(peak, live + inner + sum(made.values()))
        for v, size in made.items():
            if last_use.get(v, -1) > i:  # unused outputs go at once
                held[v] = size
                live += size
        for v in {v for v in eqn.invars if isinstance(v, Var)}:
            if last_use[v] == i and v in held:  # inputs were never held
                live -= held.pop(v)
    known[id(jaxpr)] = (jaxpr, peak)  # the jaxpr itself kept, so that its id is not reused
    return peak


@dataclasses.dataclass(frozen=True)
class Estimate:
    """Bytes one configuration of one seed needs (``per_config``), of which ``state`` is its
    training state; ``fixed``: what every call holds whatever its size (the data)."""

    per_config: int
    state: int
    fixed: int


_estimates: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # task -> {spec: Estimate}


@while_tracing  # the model's trace
def estimate(task: Any, spec: Any) -> Estimate:
    """The memory the engine's program needs for ``task`` trained with ``spec`` (a
    :class:`~epsweep.engine.spec.TrainSpec`), kept per task and spec."""
    from epsweep.engine.exports import cached_estimate

    per_task = _estimates.setdefault(task, {})
    if spec not in per_task:
        per_task[spec] = cached_estimate(task, spec, lambda: _estimate(task, spec))
    return per_task[spec]


def _estimate(task: Any, spec: Any) -> Estimate:
    key = jax.eval_shape(lambda: jax.random.key(0))  # a shape only: nothing runs
    init_args = (key,) if task.constants is None else (key, task.constants)
    params, model_state = jax.eval_shape(task.init, *init_args)
    optimizer = make_optimizer(spec.optimizer, 1e-3, 0.9, 1e-8, momentum=0.0 if spec.momentum else None,
                               convention=spec.convention, centered=spec.centered)
    opt_state = jax.eval_shape(optimizer.init, params)
    state = tree_bytes((params, model_state, opt_state))
    work = 0
    fixed = tree_bytes(task.constants) if task.constants is not None else 0
    if task.data is not None:
        data = task.data
        fixed += sum(a.nbytes for a in (data.x_train, data.y_train, data.x_val, data.y_val))
        xb = jax.ShapeDtypeStruct((spec.batch_size, *data.input_shape), data.x_train.dtype)
        yb = jax.ShapeDtypeStruct((spec.batch_size, *data.y_train.shape[1:]), data.y_train.dtype)
        step = jax.make_jaxpr(jax.value_and_grad(task.loss, has_aux=True))(params, model_state, xb, yb, key)
        work = peak_bytes(step.jaxpr)
        if task.evaluate is not None and len(data.x_val):
            n = min(spec.eval_batch_size, len(data.x_val))
            xe = jax.ShapeDtypeStruct((n, *data.input_shape), data.x_val.dtype)
            ye = jax.ShapeDtypeStruct((n, *data.y_val.shape[1:]), data.y_val.dtype)
            work = max(work, peak_bytes(jax.make_jaxpr(task.evaluate)(params, model_state, xe, ye).jaxpr))
    else:
        step = jax.make_jaxpr(jax.value_and_grad(task.loss, has_aux=True))(params, model_state, None, None, key)
        work = peak_bytes(step.jaxpr)
    # the mask of the parameters the last step moved (one byte each): it goes with the state from
    # call to call, but no step of a training loop streams through it (not in ``state``)
    moving = moving_mask_size(params, spec.optimizer)
    return Estimate(per_config=STATE_COPIES * (state + moving) + work, state=state, fixed=fixed)


def _total_host_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - not Linux
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def device_budget(device: jax.Device) -> int:
    """Bytes a sweep plans to use on ``device``: a share of its capacity (on CPU, of the
    host's memory divided among the local CPU devices). Capacity, not what is free at the
    moment, so that the plan, and with it every setting's numbers, is the same on every run."""
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "bytes_limit" in stats:
        capacity = stats["bytes_limit"]
    else:
        capacity = _total_host_bytes() // max(1, len(jax.local_devices(backend=device.platform)))
    return int(capacity * MEMORY_SHARE)


def _cache_levels() -> list[tuple[int, int, int]]:
    """(level, bytes, CPUs sharing it) of cpu0's data and unified caches, from sysfs."""
    base = "/sys/devices/system/cpu/cpu0/cache"
    levels = []
    for index in sorted(name for name in os.listdir(base) if name.startswith("index")):
        with open(f"{base}/{index}/type") as f:
            if f.read().strip() == "Instruction":
                continue
        with open(f"{base}/{index}/level") as f:
            level = int(f.read().strip())
        with open(f"{base}/{index}/size") as f:
            text = f.read().strip().upper()
        size = int(text.rstrip("KMG")) * {"K": 1024, "M": 1024**2, "G": 1024**3}.get(text[-1], 1)
        try:
            with open(f"{base}/{index}/shared_cpu_list") as f:  # e.g. "0-1" or "0,2-3"
                spans = [part.partition("-") for part in f.read().strip().split(",") if part]
            shared = sum(int(high) - int(low) + 1 if high else 1 for low, _, high in spans)
        except (OSError, ValueError):
            shared = 1
        levels.append((level, size, max(1, shared)))
    return levels


def cache_bytes_per_core() -> int:
    """A core's L2 cache plus its share of the last-level (L3) cache, at most L3_PER_CORE_MAX:
    what one core's group of settings can keep close. On this project's 2-core AMD EPYC (Zen 5:
    1 MiB L2, 32 MiB L3 for both cores) that is 17 MiB, and 32 MLP settings per core trained
    fastest (16 and 64 per core were 10-20% slower per setting); on its 2-core Intel Xeon guest
    (2 MiB L2, a reported 480 MiB L3) 18 MiB, again 32 per core: 5% slower than 16 there, 12%
    faster than 64 (docs/performance.md)."""
    try:
        levels = _cache_levels()
    except (OSError, ValueError):
        return _DEFAULT_L2
    l2 = next((size for level, size, _ in levels if level == 2), _DEFAULT_L2)
    l3 = sum(size // shared for level, size, shared in levels if level >= 3)
    return l2 + min(l3, L3_PER_CORE_MAX)


def plan_width(task: Any, spec: Any, devices: Sequence[jax.Device], chunk_size: int | None = None) -> int:
    """Settings per compiled call (a multiple of the device count), the same for every sweep
    of this task and spec on these devices, whatever the grid's size.

    ``chunk_size``, when given, is rounded up to that multiple (not estimated: :func:`check_fits`
    compares it with XLA's figures once compiled). Otherwise each device gets as
    many settings as fit its memory budget (:func:`device_budget`, by :func:`estimate`) and,
    on CPU, no more than keep CACHE_STATE_COPIES copies of their training state within the
    cache of the cores the device runs on (:func:`cache_bytes_per_core`: L2 and its share of
    L3, times the cores per device; but at least CPU_MIN_PER_DEVICE): without this, a CPU
    made one device (JAX started before :func:`epsweep.setup`) would train 1024 settings per
    call, 16 times the work of a small grid. On the default task 32 settings per core train
    1.2-1.3x faster per setting than 4 or 64 on this project's Zen 5 (docs/performance.md).
    ``Task.settings_per_cpu_device`` caps the settings per CPU device for models that run
    faster one at a time. The count per device is then rounded down to a power
    of two, at most MAX_PER_DEVICE. A task capped at one setting per CPU device gets one without
    an estimate (:func:`check_fits` warns later when even that does not fit).
    """
    n = len(devices)
    if chunk_size is not None:
        return math.ceil(chunk_size / n) * n
    if _one_per_device(task, devices):
        return n  # whatever the memory: check_fits warns once the programs are compiled
    est = estimate(task, spec)
    budget = _checked_budget(est, devices)
    fit = max(1, budget // est.per_config)
    if devices[0].platform == "cpu":
        cores_per_device = max(1, available_cores() // len(jax.local_devices(backend="cpu")))
        in_cache = cores_per_device * cache_bytes_per_core() // (CACHE_STATE_COPIES * max(1, est.state))
        fit = min(fit, max(CPU_MIN_PER_DEVICE, in_cache))
    if devices[0].platform == "cpu" and task.settings_per_cpu_device is not None:
        fit = min(fit, task.settings_per_cpu_device)
    fit = min(fit, MAX_PER_DEVICE)
    return 2 ** int(math.log2(fit)) * n


def _one_per_device(task: Any, devices: Sequence[jax.Device]) -> bool:
    """Whether ``task`` trains one setting per device whatever its memory needs (on CPU, capped at one)."""
    return devices[0].platform == "cpu" and task.settings_per_cpu_device == 1


def _checked_budget(est: Estimate, devices: Sequence[jax.Device]) -> int:
    """The bytes per device left for the settings; warns when not even one setting fits."""
    budget = min(device_budget(d) for d in devices) - est.fixed
    if budget < est.per_config:
        log.warning("one setting needs about %.1f GiB by the memory estimate, more than the "
                    "%.1f GiB planned per device; trying one setting per device",
                    est.per_config / 1024**3, max(0, budget) / 1024**3)
    return budget


def check_fits(task: Any, devices: Sequence[jax.Device], width: int, programs: Any, resident_bytes: int,
               names: Sequence[str]) -> bool:
    """Warn when a call of ``width`` settings needs more than a device's budget while one of
    the programs ``names`` runs, by XLA's own buffer assignment: what stays on the device
    between calls (the training state, ``init``'s outputs, and ``resident_bytes`` of data and
    constants) plus the program's temporaries and outputs less the donated inputs they reuse
    (for ``init``, a new state beside the last chunk's). Returns whether it warned. The driver
    checks ``init`` just before its first call (which waits for that compilation anyway) and
    the others once it is dispatched, before the first step. Every width is checked; this is
    the only check of one :func:`plan_width` did not estimate: one setting per device (tracing
    the model again for :func:`estimate` cost 2.7-10 s of one core while Inception-v3's
    programs compiled), a chunk size the user chose, or the width a resumed run reuses. A
    width planned by the estimate usually passes: the estimate covers what each setting adds
    (1-4x XLA's figure for the MLP and the cnn), not temporaries that do not grow with the
    width, such as ``init``'s random draws."""
    init = programs.init.memory_stats()
    stats = {name: getattr(programs, name).memory_stats() for name in names if getattr(programs, name) is not None}
    stats = {name: m for name, m in stats.items() if m is not None}
    if init is None or not stats:
        return False
    work = {name: m.temp_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes for name, m in stats.items()}
    name = max(work, key=work.get)
    need = resident_bytes + init.output_size_in_bytes + work[name]
    budget = min(device_budget(d) for d in devices)
    if need <= budget:
        return False
    per_device = max(1, width // len(devices))
    one = per_device == 1
    log.warning("%s about %s per device while %s %s program runs (XLA's figure, with the training state and the "
                "data), more than the %s planned per device; %s",
                "one setting needs" if one else f"{per_device} settings per device need", _size(need),
                "its" if one else "the", name, _size(budget),
                "training one setting per device anyway" if one
                else "training them anyway (a smaller chunk size trains fewer at once)")
    return True


def _size(n: int) -> str:
    return f"{n / 1024**3:.1f} GiB" if n >= 1024**3 else f"{n / 1024**2:.0f} MiB"
