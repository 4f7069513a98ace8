"""Result records: per-seed runs folded into one record per setting, what identifies a setting,
and which setting is best.

A record is a plain dict with the fields in :data:`FIELDS` (``*_std`` over seeds, ``None``
where a task has no such number or too few finite seeds) plus ``loss_curve``. A task whose
metric is not accuracy adds ``val_<metric>`` and its ``_std`` (``val_accuracy`` is then null).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from epsweep.vocabulary import SETTING_AXES, SETTING_DEFAULTS, is_number

FIELDS = (
    *SETTING_AXES,
    "final_loss", "final_loss_std", "val_loss", "val_loss_std", "val_accuracy", "val_accuracy_std",
    "eps_dominated", "eps_dominated_std", "eps_dominated_mean", "eps_dominated_mean_std",
    "effective_lr", "effective_lr_std",
    "diverged", "diverged_seeds", "diverged_step", "seeds",
)
CSV_FIELDS = FIELDS  # every field but the loss curve

SettingKey = tuple


def metric_field(metric_name: str | None) -> str:
    """The record field of a task's validation metric: ``val_<name>`` (``val_accuracy`` when
    the task has none: it stays null)."""
    return f"val_{metric_name or 'accuracy'}"


def named_metrics(values: dict, metric_name: str | None) -> dict:
    """Per-run numbers keyed by :data:`~epsweep.vocabulary.METRICS` (the engine's outputs,
    whose ``val_accuracy`` holds the task's metric) keyed by record field instead: a metric
    other than accuracy moves to ``val_<name>``, right after ``val_accuracy``, which becomes NaN."""
    field = metric_field(metric_name)
    if field == "val_accuracy":
        return values
    out = {}
    for name, value in values.items():
        out[name] = np.full_like(value, np.nan, dtype=float) if name == "val_accuracy" else value
        if name == "val_accuracy":
            out[field] = value
    return out


def extra_metrics(records: Sequence[dict]) -> list[str]:
    """Metric fields of the records beyond :data:`FIELDS` (``val_<name>`` of a task's own
    metric), in the order they first appear: numbers or null in every record, as its ``_std``."""
    names = dict.fromkeys(k for r in records for k in r if k.startswith("val_") and k not in FIELDS
                          and not k.endswith("_std"))
    return [n for n in names if all(r.get(f) is None or is_number(r[f]) for r in records for f in (n, f"{n}_std"))]


def csv_fields(records: Sequence[dict]) -> list[str]:
    """The CSV columns of ``records``: :data:`CSV_FIELDS`, then any metric of the task's own
    (with its ``_std``) after ``val_accuracy_std``."""
    extra = [f for name in extra_metrics(records) for f in (name, f"{name}_std")]
    at = CSV_FIELDS.index("val_accuracy_std") + 1
    return [*CSV_FIELDS[:at], *extra, *CSV_FIELDS[at:]]


def setting_key(record: dict) -> SettingKey:
    """What identifies a setting within a sweep: its axes, optimizer and convention."""
    return tuple(record.get(k, SETTING_DEFAULTS.get(k)) for k in SETTING_AXES)


def _number(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def fold_seeds(setting: dict, metrics: dict[str, np.ndarray], diverged_step: np.ndarray, curve: np.ndarray) -> dict:
    """One record from a setting's per-seed arrays (each of shape (seeds,), curve (seeds, points)),
    ``metrics`` keyed by record field (:func:`named_metrics`).

    Means and sample standard deviations are taken over the seeds that did not diverge.
    """
    alive = diverged_step < 0
    record = dict(setting)
    for name in metrics:
        values = metrics[name][alive]
        values = values[np.isfinite(values)]
        record[name] = _number(values.mean()) if len(values) else None
        record[f"{name}_std"] = _number(values.std(ddof=1)) if len(values) > 1 else None
    record["diverged"] = bool((~alive).any())
    record["diverged_seeds"] = int((~alive).sum())
    record["diverged_step"] = int(diverged_step[~alive].min()) if (~alive).any() else None
    record["seeds"] = int(len(diverged_step))
    with np.errstate(all="ignore"):
        mean_curve = np.nanmean(np.where(alive[:, None], curve, np.nan), axis=0) if alive.any() else curve[0]
    record["loss_curve"] = [_number(v) for v in mean_curve]
    return record


def usable(record: dict) -> bool:
    """Whether a record can be ranked: it did not diverge and has a final loss."""
    return not record.get("diverged") and record.get("final_loss") is not None


def rank_key(record: dict) -> tuple:
    """Sort key, best first: usable records, then highest validation accuracy, lowest
    validation loss, lowest final training loss (missing numbers last).

    Example:
        >>> good = {"diverged": False, "final_loss": 0.2, "val_accuracy": 0.9}
        >>> worse = {"diverged": False, "final_loss": 0.1, "val_accuracy": 0.8}
        >>> sorted([worse, good], key=rank_key)[0] is good
        True
    """
    def low(v):
        return v if v is not None else math.inf

    acc = record.get("val_accuracy")
    return (not usable(record), -acc if acc is not None else math.inf, low(record.get("val_loss")),
            low(record.get("final_loss")))


def best_index(records: Sequence[dict]) -> int | None:
    """Index of the best usable record by :func:`rank_key`, or None when none is usable."""
    candidates = [i for i, r in enumerate(records) if usable(r)]
    return min(candidates, key=lambda i: rank_key(records[i])) if candidates else None
