"""Result records: per-seed runs folded into one record per setting, what identifies a setting,
and which setting is best.

A record is a plain dict with the fields in :data:`FIELDS` (``*_std`` over seeds, ``None``
where a task has no such number or too few finite seeds) plus ``loss_curve``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from epsweep.vocabulary import METRICS, SETTING_AXES, SETTING_DEFAULTS

FIELDS = (
    *SETTING_AXES,
    "final_loss", "final_loss_std", "val_loss", "val_loss_std", "val_accuracy", "val_accuracy_std",
    "eps_dominated", "eps_dominated_std", "eps_dominated_mean", "eps_dominated_mean_std",
    "effective_lr", "effective_lr_std",
    "diverged", "diverged_seeds", "diverged_step", "seeds",
)
CSV_FIELDS = FIELDS  # every field but the loss curve

SettingKey = tuple


def setting_key(record: dict) -> SettingKey:
    """What identifies a setting within a sweep: its axes, optimizer and convention."""
    return tuple(record.get(k, SETTING_DEFAULTS.get(k)) for k in SETTING_AXES)


def _number(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def fold_seeds(setting: dict, metrics: dict[str, np.ndarray], diverged_step: np.ndarray, curve: np.ndarray) -> dict:
    """One record from a setting's per-seed arrays (each of shape (seeds,), curve (seeds, points)).

    Means and sample standard deviations are taken over the seeds that did not diverge.
    """
    alive = diverged_step < 0
    record = dict(setting)
    for name in METRICS:
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


# What a sweep's results take in memory (measured with tracemalloc): a record per setting, with
# its loss curve, and a run per (setting, seed); a sweep keeps all of them until it returns.
RECORD_BYTES = 1300
CURVE_POINT_BYTES = 32
RUN_BYTES = 800


def results_bytes(settings: int, seeds: int, curve_points: int) -> int:
    """About how much memory the results of ``settings`` settings x ``seeds`` seeds take."""
    return settings * (RECORD_BYTES + CURVE_POINT_BYTES * curve_points) + settings * seeds * RUN_BYTES
