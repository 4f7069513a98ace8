"""Result records: per-seed runs folded into one record per setting, what identifies a setting,
what went wrong with it, and which setting is best (one ranking for every table, report and plot).

A record is a plain dict with the fields in :data:`FIELDS` (``*_std`` over seeds, ``None``
where a task has no such number or too few finite seeds) plus ``loss_curve``. A task whose
metric is not accuracy adds ``val_<metric>`` and its ``_std`` (``val_accuracy`` is then null).

What can go wrong with a setting, each flagged in its record:

- ``diverged``: a seed's loss became non-finite (an update that overflows shows in the next
  step's loss, or for the last step in the final parameters); its numbers are left out from there.
- ``collapsed``: a seed stayed finite but ended worse than it started: its final loss (the last
  point of its loss curve) is more than :data:`COLLAPSE_MARGIN` (5 %) above the first point.
- ``at_chance``: its mean validation accuracy is no better than guessing: at most the share
  of the most common validation class plus two standard errors of such a guesser
  (:func:`chance_level`).

None of them is ever the best setting.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from epsweep.errors import UserError
from epsweep.numbers import needs_scientific
from epsweep.vocabulary import GRID_AXES, SETTING_AXES, SETTING_DEFAULTS, as_float32, is_number

FIELDS = (
    *SETTING_AXES,
    "final_loss", "final_loss_std", "val_loss", "val_loss_std", "val_accuracy", "val_accuracy_std",
    "eps_dominated", "eps_dominated_std", "eps_dominated_mean", "eps_dominated_mean_std",
    "effective_lr", "effective_lr_std",
    "diverged", "diverged_seeds", "diverged_step", "collapsed", "collapsed_seeds", "at_chance", "seeds",
)
CSV_FIELDS = FIELDS  # every field but the loss curve
FLAGS = ("diverged", "collapsed", "at_chance")
"""The true-or-false fields."""

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
    """What identifies a setting within a sweep: its axes, optimizer and convention; each axis
    as the float32 the engine trains on, so that two decimals of one float32 (1e-08, and
    9.99999993922529e-09 in a file written from a float32 array) are one setting, as in a Grid."""
    return tuple(_as_trained(record.get(k, SETTING_DEFAULTS.get(k))) for k in SETTING_AXES)


def _as_trained(value: object) -> object:
    """A float axis value as the float32 it is trained as; anything else (None, names, and a
    value beyond float32, which no sweep trains) as it is."""
    if type(value) is not float:
        return value
    single = as_float32(value)
    return value if math.isinf(single) else single


def _number(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


COLLAPSE_MARGIN = 0.05
"""A finite run collapsed when its final loss ends this fraction (of the first loss) above its first."""


def chance_level(labels: np.ndarray | None) -> dict | None:
    """What guessing achieves on validation ``labels``: the accuracy of always answering the
    most common class, and the accuracy at or below which a setting counts as at chance (that
    plus two standard errors of a guesser's accuracy on this many examples). None without labels.

    Example:
        >>> chance_level(np.array([0, 0, 1, 2]))
        {'accuracy': 0.5, 'threshold': 1.0, 'examples': 4}
    """
    if labels is None or len(labels) == 0:
        return None
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    share = float(np.bincount(labels - labels.min()).max() / len(labels))
    threshold = min(1.0, share + 2 * math.sqrt(share * (1 - share) / len(labels)))
    return {"accuracy": share, "threshold": threshold, "examples": int(len(labels))}


def collapsed_seeds(curve: np.ndarray) -> np.ndarray:
    """Per seed (rows of ``curve``, shape (seeds, points)): finite, and the last point more than
    :data:`COLLAPSE_MARGIN` of the first above it."""
    if curve.ndim != 2 or curve.shape[1] < 2:
        return np.zeros(curve.shape[:1], bool)
    first, last = curve[:, 0], curve[:, -1]
    with np.errstate(all="ignore"):
        return np.isfinite(first) & np.isfinite(last) & (last - first > COLLAPSE_MARGIN * np.abs(first))


def fold_seeds(setting: dict, metrics: dict[str, np.ndarray], diverged_step: np.ndarray, curve: np.ndarray,
               chance: float | None = None) -> dict:
    """One record from a setting's per-seed arrays (each of shape (seeds,), curve (seeds, points)),
    ``metrics`` keyed by record field (:func:`named_metrics`).

    Means and sample standard deviations are taken over the seeds that did not diverge, in
    float64 (a float32 loss above 1.8e19 squared overflows).
    ``chance`` is the accuracy at or below which the setting is ``at_chance``
    (:func:`chance_level`'s threshold).
    """
    alive = diverged_step < 0
    record = dict(setting)
    for name in metrics:
        values = np.asarray(metrics[name], np.float64)[alive]
        values = values[np.isfinite(values)]
        record[name] = _number(values.mean()) if len(values) else None
        record[f"{name}_std"] = _number(values.std(ddof=1)) if len(values) > 1 else None
    record["diverged"] = bool((~alive).any())
    record["diverged_seeds"] = int((~alive).sum())
    record["diverged_step"] = int(diverged_step[~alive].min()) if (~alive).any() else None
    collapsed = collapsed_seeds(np.asarray(curve, float)) & alive
    record["collapsed"] = bool(collapsed.any())
    record["collapsed_seeds"] = int(collapsed.sum())
    accuracy = record.get("val_accuracy")
    record["at_chance"] = bool(chance is not None and accuracy is not None and accuracy <= chance)
    record["seeds"] = int(len(diverged_step))
    with np.errstate(all="ignore"):
        curve = np.asarray(curve, np.float64)
        mean_curve = np.nanmean(np.where(alive[:, None], curve, np.nan), axis=0) if alive.any() else curve[0]
    record["loss_curve"] = [_number(v) for v in mean_curve]
    return record


def usable(record: dict) -> bool:
    """Whether a record can be the best: it did not diverge, collapse or end at chance, and
    has a final loss."""
    return not (record.get("diverged") or record.get("collapsed") or record.get("at_chance")) \
        and record.get("final_loss") is not None


def rank_key(record: dict) -> tuple:
    """Sort key, best first: usable records, then highest validation accuracy, lowest
    validation loss, lowest final training loss (missing numbers last). The only ranking:
    the star, ``report --sort rank``, the best per axis value, "best eps" and the plots use it.

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


def axis_notation(records: Sequence[dict], meta: dict | None = None) -> dict[str, bool]:
    """Per grid axis, whether its values are shown in scientific notation: when any of them
    (or of the sweep's grid in ``meta``) needs it (:mod:`epsweep.numbers`), so an axis of one
    sweep reads the same in every table, summary and message."""
    grid = (meta or {}).get("grid")
    grid = grid if isinstance(grid, dict) else {}
    grids = [g for g in grid.values() if isinstance(g, dict)] or [grid]  # per optimizer, or flat (older files)
    out = {}
    for axis in GRID_AXES:
        values = [r.get(axis) for r in records]
        for g in grids:
            if isinstance(g.get(axis), list):
                values += g[axis]
        out[axis] = any(is_number(v) and needs_scientific(v) for v in values)
    return out


# What a sweep's results take in memory (measured with tracemalloc): a record per setting, with
# its loss curve, and a run per (setting, seed); a sweep keeps all of them until it returns.
RECORD_BYTES = 1300
CURVE_POINT_BYTES = 32
RUN_BYTES = 800


def results_bytes(settings: int, seeds: int, curve_points: int) -> int:
    """About how much memory the results of ``settings`` settings x ``seeds`` seeds take."""
    return settings * (RECORD_BYTES + CURVE_POINT_BYTES * curve_points) + settings * seeds * RUN_BYTES


def first_of_each(records: Sequence[dict]) -> tuple[dict[SettingKey, dict], list[dict]]:
    """The first record of each setting (by key, in order) and the later records whose results
    differ from their setting's first; an identical repeat is in neither."""
    first: dict[SettingKey, dict] = {}
    differing: list[dict] = []
    for record in records:
        key = setting_key(record)
        if key not in first:
            first[key] = record
        elif record != first[key]:
            differing.append(record)
    return first, differing


def resumed_records(records: Sequence[dict], keys: set[SettingKey]) -> tuple[dict[SettingKey, dict], list[dict], int]:
    """A resumed file's records: the first of each setting in ``keys`` (by key), the records
    kept after them (settings not in ``keys``, then later records of a setting whose results
    differ from its first), and how many of the latter there are."""
    first, differing = first_of_each(records)
    others = [r for k, r in first.items() if k not in keys]
    return {k: r for k, r in first.items() if k in keys}, [*others, *differing], len(differing)


def records_frame(records: list[dict]):
    """Records as a ``pandas.DataFrame``: one row per setting, the axes and metrics as
    columns (``loss_curve`` a column of lists); a missing number is NaN, as
    ``pandas.read_json(path, lines=True)`` gives it. pandas is optional; without it, a UserError."""
    try:
        import pandas
    except ImportError:
        raise UserError("to_pandas() needs pandas: pip install pandas") from None
    frame = pandas.DataFrame.from_records([dict(r) for r in records])
    for column in frame.columns:
        values = [v for v in frame[column] if v is not None]
        if all(is_number(v) for v in values):  # numbers, or only nulls: a numeric column
            frame[column] = pandas.to_numeric(frame[column])
    return frame
