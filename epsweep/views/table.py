"""Rich tables of sweep records: the terminal rendering (nothing below the views imports it)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from rich.table import Table
from rich.text import Text

from epsweep.results.records import best_index, extra_metrics
from epsweep.views.titles import run_title
from epsweep.vocabulary import label

_NAME_AXES = ("optimizer", "convention")


def _num(value: float | None, spec: str = ".4g") -> str:
    return "—" if value is None else format(value, spec)


def _fixed_or_sci(value: float) -> str:
    return f"{value:.4f}" if value == 0 or 1e-3 <= abs(value) < 1e5 else f"{value:.3e}"


def _mean_std(record: dict, name: str) -> str:
    mean, std = record.get(name), record.get(f"{name}_std")
    if mean is None:
        return "—"
    return _fixed_or_sci(mean) + (f"±{std:.3f}" if std is not None else "")


SPARK_BLOCKS = "▁▂▃▄▅▆▇█"
SPARK_WIDTH = 10


def curve_scale(curves: Sequence[Sequence[float | None] | None]) -> tuple[float, float, bool] | None:
    """One (low, high, log) scale shared by every row's sparkline, so rows compare: from the
    lowest loss to the typical (median) starting loss (higher values show as full blocks); log when
    positive and spanning more than 50x. None when there is nothing to draw."""
    finite = [[v for v in c if v is not None and math.isfinite(v)] for c in curves if c]
    values = np.array([v for c in finite for v in c], float)
    if values.size == 0:
        return None
    lo = float(values.min())
    hi = max(lo, min(float(values.max()), float(np.median([c[0] for c in finite if c]))))
    log = lo > 0 and hi / lo > 50
    return (math.log10(lo), math.log10(hi), True) if log else (lo, hi, False)


def sparkline(curve: Sequence[float | None] | None, scale: tuple[float, float, bool] | None,
              width: int = SPARK_WIDTH) -> str:
    """A loss curve as ``width`` Unicode block characters (blank where a segment has no finite
    value, e.g. after divergence), on a ``scale`` from :func:`curve_scale`."""
    if not curve or scale is None:
        return ""
    lo, hi, log = scale
    points = np.array([np.nan if v is None else v for v in curve], float)
    with np.errstate(all="ignore"):
        if log:
            points = np.where(points > 0, np.log10(points), np.nan)
        bins = np.array_split(points, min(width, len(points)))
        means = [np.nanmean(b) if np.isfinite(b).any() else np.nan for b in bins]
    top = len(SPARK_BLOCKS) - 1
    out = []
    for m in means:
        if not math.isfinite(m):
            out.append(" ")
        else:
            level = 0 if hi == lo else round((m - lo) / (hi - lo) * top)
            out.append(SPARK_BLOCKS[min(max(level, 0), top)])
    return "".join(out)


def records_table(records: Sequence[dict], meta: dict | None = None, *, sparklines: bool = False,
                  note: str | None = None, max_width: int | None = None) -> Table:
    """A row per setting; varying axes only; the best row marked and highlighted.

    ``sparklines`` adds a "loss curve" column (block characters, one scale for all rows)
    when the records carry loss curves and, given ``max_width``, the table still fits in it.
    """
    meta = meta or {}
    axes = ["eps", "decay", "lr", "momentum", "optimizer", "convention"]
    shown = [a for a in axes if a in ("eps", "decay", "lr") or len({r.get(a) for r in records}) > 1]
    scale = curve_scale([r.get("loss_curve") for r in records]) if sparklines else None
    if scale is not None and max_width is not None:
        without = records_table(records, meta, note=note)
        if _width(without) + SPARK_WIDTH + 3 > max_width:
            return without  # no room for the curves
    has_val = any(r.get("val_loss") is not None for r in records)
    has_acc = any(r.get("val_accuracy") is not None for r in records)
    own_metrics = extra_metrics(records)  # a task's own metric: val_<name>
    has_eps_dom = any(r.get("eps_dominated") is not None for r in records)
    given = meta.get("title")
    title = (given if isinstance(given, str) and given else run_title(meta)) + (f" ({note})" if note else "")
    table = Table(title=title, title_justify="left", header_style="bold")
    for axis in shown:
        table.add_column(axis, justify="left" if axis in _NAME_AXES else "right", no_wrap=True)
    table.add_column("final loss", justify="right", no_wrap=True)
    if scale is not None:
        table.add_column("loss curve", no_wrap=True, overflow="crop")
    if has_val:
        table.add_column("val loss", justify="right", no_wrap=True)
    if has_acc:
        table.add_column("val acc", justify="right", no_wrap=True)
    for field in own_metrics:
        table.add_column(label(field), justify="right", no_wrap=True)
    if has_eps_dom:  # share of moving parameters whose denominator eps dominates, end of training
        table.add_column("eps-dom %", justify="right", no_wrap=True)
    any_diverged = any(r.get("diverged") for r in records)
    if any_diverged:  # only when something diverged: keeps the table narrow
        table.add_column("diverged", justify="center")
    best = best_index(records)
    for i, record in enumerate(records):
        cells = [str(record.get(a)) if a in _NAME_AXES else _num(record.get(a)) for a in shown]
        cells.append(_mean_std(record, "final_loss"))
        if scale is not None:
            cells.append(sparkline(record.get("loss_curve"), scale))
        if has_val:
            cells.append(_mean_std(record, "val_loss"))
        if has_acc:
            cells.append(_mean_std(record, "val_accuracy"))
        cells += [_mean_std(record, field) for field in own_metrics]
        if has_eps_dom:
            share = record.get("eps_dominated")
            cells.append("—" if share is None else f"{100 * share:.1f}")
        if record["diverged"]:
            where = record.get("diverged_step")
            cells.append(f"yes ({record['diverged_seeds']}/{record['seeds']}, step {where})")
        elif any_diverged:
            cells.append("")
        if i == best:
            cells[0] = Text("★ ") + Text(str(cells[0]))
        table.add_row(*cells, style="bold green" if i == best else ("red" if record["diverged"] else None))
    return table


def _axis_value(value) -> str:
    return format(value, ".4g") if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def _metric_cell(value: float | None) -> str:
    return "—" if value is None else _fixed_or_sci(value)


def best_per_axis_table(rows: Sequence[dict]) -> Table:
    """For each value of each axis, the best setting having it (from report.best_per_axis)."""
    metric = rows[0]["metric"] if rows else "val_accuracy"
    table = Table(title="Best setting for each axis value", title_justify="left", header_style="bold")
    table.add_column("axis", no_wrap=True)
    table.add_column("value", justify="right", no_wrap=True)
    table.add_column(label(metric), justify="right", no_wrap=True)
    table.add_column("at")
    varying = list(dict.fromkeys(r["axis"] for r in rows))
    for row in rows:
        best = row["best"]
        if best is None:
            at = f"all {row['settings']} diverged"
        else:
            at = ", ".join(f"{a} {_axis_value(best[a])}" for a in varying if a != row["axis"])
        table.add_row(row["axis"], _axis_value(row["value"]), _metric_cell(row["score"]), at)
    return table


def sensitivity_table(rows: Sequence[dict]) -> Table:
    """How much the metric moves across eps at each other setting (from report.sensitivity)."""
    metric = rows[0]["metric"] if rows else "val_accuracy"
    name = label(metric)
    held = [a for a in ("decay", "lr", "momentum", "optimizer", "convention")
            if a in ("decay", "lr") or len({r[a] for r in rows}) > 1]
    ranges = {(r["eps_min"], r["eps_max"]) for r in rows}
    same_range = len(ranges) == 1
    span = f" {rows[0]['eps_min']:.3g}..{rows[0]['eps_max']:.3g}" if rows and same_range else ""
    table = Table(title=f"Eps sensitivity of {name}" + (f" (eps{span})" if span else ""), title_justify="left",
                  header_style="bold")
    for axis in held:
        table.add_column(axis, justify="left" if axis in _NAME_AXES else "right", no_wrap=True)
    columns = ([] if same_range else ["eps range"]) + ["lowest", "highest", "spread", "best eps"]
    any_diverged = any(r["diverged"] for r in rows)
    for column in columns + (["diverged"] if any_diverged else []):
        table.add_column(column, justify="right", no_wrap=True)
    for row in rows:
        cells = [_axis_value(row[a]) for a in held]
        if not same_range:
            cells.append(f"{row['eps_min']:.3g}..{row['eps_max']:.3g}")
        cells += [_metric_cell(row["low"]), _metric_cell(row["high"]), _metric_cell(row["spread"]),
                  "—" if row["best_eps"] is None else f"{row['best_eps']:.3g}"]
        if any_diverged:
            cells.append(f"{row['diverged']}/{row['settings']}" if row["diverged"] else "")
        table.add_row(*cells)
    return table


def _width(table: Table) -> int:
    from rich.console import Console
    from rich.measure import Measurement

    console = Console(width=10_000)
    return Measurement.get(console, console.options, table).maximum

