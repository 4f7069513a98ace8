"""Where a sweep's numbers come from: the run description, a fingerprint of the data, the
library versions and the device layout. Built once per sweep; the streamed file's header and
the in-memory result's meta are the same dict.

The *run description* holds everything that decides a setting's numbers apart from the setting
itself (the task and its data by content, the training specification, the seeds). Two runs with
equal descriptions produce interchangeable records, so one can resume the other.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import importlib.metadata
import math

import numpy as np

from epsweep.results.formats import plain
from epsweep.results.reading import STREAM_FORMAT
from epsweep.results.records import chance_level
from epsweep.vocabulary import AXIS_ROLES, GRID_AXES

VERSIONED = ("epsweep", "jax", "jaxlib", "optax", "flax", "numpy")


def versions() -> dict[str, str]:
    """Installed versions of epsweep and the libraries that decide its numbers."""
    out = {}
    for package in VERSIONED:
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = "unknown"
    return out


def _fingerprint_update(digest, array: np.ndarray) -> None:
    array = np.ascontiguousarray(array)
    digest.update(f"{array.dtype.str}{array.shape}".encode())
    if array.nbytes > 64 << 20 and array.ndim and len(array) > 1:  # big: every k-th row
        array = np.ascontiguousarray(array[:: math.ceil(array.nbytes / (64 << 20))])
    digest.update(array.tobytes())


def data_fingerprint(task) -> str | None:
    """A short hash of the task's data (and constants, e.g. pretrained weights, those of a
    frozen feature extractor included)."""
    arrays = []
    if task.data is not None:
        arrays += [task.data.x_train, task.data.y_train, task.data.x_val, task.data.y_val]
    features = getattr(task, "features", None)
    for constants in (task.constants, None if features is None else features.constants):
        if constants is not None:
            import jax

            arrays += [np.asarray(leaf) for leaf in jax.tree.leaves(constants)]
    if not arrays:
        return None
    digest = hashlib.blake2b(digest_size=12)
    for array in arrays:
        _fingerprint_update(digest, np.asarray(array))
    return digest.hexdigest()


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def run_description(task, config, spec) -> dict:
    """What decides a setting's numbers apart from the setting: task, data (by content, not
    by path), the training specification ``spec`` (of any update rule: the rule itself is part
    of each setting) and the seeds. JSON-shaped, so it compares equal after a round trip."""
    described = task.describe()
    data = described.get("data")
    if isinstance(data, dict):
        described["data"] = {k: v for k, v in data.items() if k != "name"}
    if task.fingerprint_at is not None:  # what the model computes at the batch sizes it trains and is evaluated on
        described["model_fingerprint"] = task.fingerprint_for(spec.batch_size, spec.eval_batch_size)
    # the update rule is part of each setting; whether a momentum buffer is kept changes no number
    fixed = {k: v for k, v in dataclasses.asdict(spec).items() if k not in ("convention", "optimizer", "momentum")}
    fixed["centered"] = config.centered
    return plain({
        "task": described,
        "data_fingerprint": data_fingerprint(task),
        "train": fixed,
        "seeds": config.seed_list,
    })


def run_meta(task, grid, config, spec, layout: dict, description: dict | None = None) -> dict:
    """The meta of a sweep as it starts: what a report shows (task, data, steps, batch,
    seeds, update rules, the grid), the device ``layout``, versions and the run description
    (``description``, when the caller has it: :func:`run_description` hashes the data)."""
    description = description if description is not None else run_description(task, config, spec)
    rules = config.update_rules()
    return plain({
        "format": STREAM_FORMAT,
        **task.describe(),
        "steps": spec.steps,
        "batch_size": spec.batch_size if task.data is not None else None,
        "seeds": description["seeds"],
        "conventions": list(dict.fromkeys(config.conventions)),
        "optimizers": list(dict.fromkeys(config.optimizers)),
        "centered": config.centered,
        "clip_norm": config.clip_norm,
        "lr_decay_rate": config.lr_decay_rate,
        "lr_decay_steps": spec.lr_decay_steps,
        "grid": {rule.optimizer: {axis: list(grid.values(axis, rule.optimizer)) for axis in GRID_AXES
                                  if axis in AXIS_ROLES[rule.optimizer]} for rule in rules},
        "settings": sum(grid.size(rule.optimizer) for rule in rules),
        # guessing the most common class: only for classification with accuracy as its metric
        "chance": chance_level(task.data.y_val) if task.data is not None and task.data.num_classes
        and task.metric_name == "accuracy" else None,
        "layout": layout,
        "versions": versions(),
        "started_at": _now(),
        "run": description,
    })


def finished_at() -> str:
    """The current UTC time, as the meta records it."""
    return _now()
