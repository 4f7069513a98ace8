"""Result records: per-seed runs folded into one record per setting, and their file formats.

A record is a plain dict with the fields in :data:`FIELDS` (``*_std`` over seeds, ``None``
where a task has no such number or too few finite seeds) plus ``loss_curve``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Sequence

import numpy as np

# eps_dominated: share of parameters whose eps term exceeds the gradient-statistics term at
# the end of training (eps_dominated_mean: averaged over the steps); effective_lr: median over
# parameters of lr / denominator at the end. None for sgd (no denominator). docs/conventions.md.
DIAGNOSTICS = ("eps_dominated", "eps_dominated_mean", "effective_lr")
METRICS = ("final_loss", "val_loss", "val_accuracy", *DIAGNOSTICS)
FIELDS = (
    "eps", "decay", "lr", "momentum", "optimizer", "convention",
    "final_loss", "final_loss_std", "val_loss", "val_loss_std", "val_accuracy", "val_accuracy_std",
    "eps_dominated", "eps_dominated_std", "eps_dominated_mean", "eps_dominated_mean_std",
    "effective_lr", "effective_lr_std",
    "diverged", "diverged_seeds", "diverged_step", "seeds",
)
CSV_FIELDS = FIELDS
FORMATS = ("table", "csv", "json", "jsonl")


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


def best_index(records: Sequence[dict]) -> int | None:
    """The best setting that did not diverge: highest validation accuracy, then lowest
    validation loss, then lowest final training loss."""
    def key(i: int):
        r = records[i]
        acc = r.get("val_accuracy")
        vloss = r.get("val_loss")
        loss = r.get("final_loss")
        return (-(acc if acc is not None else -math.inf), vloss if vloss is not None else math.inf,
                loss if loss is not None else math.inf)

    candidates = [i for i, r in enumerate(records) if not r["diverged"] and r.get("final_loss") is not None]
    return min(candidates, key=key) if candidates else None


def to_csv(records: Iterable[dict], fields: Sequence[str] = CSV_FIELDS) -> str:
    """CSV with a header row; empty cells for missing numbers; no loss curves."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fields), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow({k: ("" if record.get(k) is None else record.get(k)) for k in fields})
    return buffer.getvalue()


def to_jsonl(records: Iterable[dict]) -> str:
    return "".join(json.dumps(r, allow_nan=False) + "\n" for r in records)


def to_json(meta: dict, records: Sequence[dict]) -> str:
    return json.dumps({"meta": meta, "results": list(records)}, indent=2, allow_nan=False) + "\n"


def render_machine(fmt: str, meta: dict, records: Sequence[dict]) -> str:
    """The text of a machine-readable format (csv, json, jsonl)."""
    if fmt == "csv":
        return to_csv(records)
    if fmt == "jsonl":
        return to_jsonl(records)
    if fmt == "json":
        return to_json(meta, records)
    raise ValueError(f"not a machine format: {fmt}")
