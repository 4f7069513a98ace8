"""The table of a sweep's records (a row per setting), for the terminal and as markdown: varying
axes as columns, what every row shares in the title, the best usable row starred, what went wrong
(diverged, collapsed, at chance) in a status column. Numbers follow :mod:`epsweep.numbers`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from rich.table import Table

from epsweep.numbers import column, notation, show, show_share, show_std
from epsweep.results.records import axis_notation, best_index, extra_metrics
from epsweep.views.sheet import Column, Sheet, markdown, rich_table
from epsweep.views.titles import held_axes, run_parts, title_head
from epsweep.vocabulary import GRID_AXES, axis_title, label, uses_axis

NOT_USED = "n/a"
"""The cell of an axis the row's optimizer does not use (eps for sgd)."""


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


def rule_name(record: dict, conventions: bool) -> str:
    """The update rule of a row among several optimizers: ``adam``, ``rmsprop``, or (when
    RMSProp's ``conventions`` vary too) ``rmsprop tf1``."""
    optimizer, convention = str(record.get("optimizer")), str(record.get("convention"))
    if optimizer != "rmsprop":
        return optimizer
    return f"rmsprop {convention}" if conventions else "rmsprop"


def rule_column(records: Sequence[dict]) -> Column | None:
    """One column for the update rule when optimizers or RMSProp's conventions vary."""
    optimizers = list(dict.fromkeys(str(r.get("optimizer")) for r in records))
    conventions = list(dict.fromkeys(str(r.get("convention")) for r in records if r.get("optimizer") == "rmsprop"))
    if len(optimizers) > 1:
        return Column("optimizer", [rule_name(r, len(conventions) > 1) for r in records], justify="left", squeeze=True)
    if len(conventions) > 1:
        return Column("convention", [str(r.get("convention")) for r in records], justify="left")
    return None


def varying_axes(records: Sequence[dict]) -> list[str]:
    """The grid axes that vary among the rows of one optimizer using them (an axis each
    optimizer holds at one value, if different ones, does not vary: the title says it)."""
    varying = []
    for axis in GRID_AXES:
        values: dict[str, set] = {}
        for r in records:
            if uses_axis(str(r.get("optimizer")), axis):
                values.setdefault(str(r.get("optimizer")), set()).add(r.get(axis))
        if any(len(v) > 1 for v in values.values()):
            varying.append(axis)
    return varying


def shown_axes(records: Sequence[dict]) -> list[str]:
    """The axis columns of a table: :func:`varying_axes` (eps at least, when nothing varies)."""
    shown = varying_axes(records)
    if not shown and rule_column(records) is None:
        shown = ["eps"] if any(uses_axis(str(r.get("optimizer")), "eps") for r in records) else ["lr"]
    return shown


def axis_columns(records: Sequence[dict], shown: Sequence[str], meta: dict | None = None) -> list[Column]:
    """A column per ``shown`` axis, in its notation for this sweep; ``n/a`` where a row's
    optimizer does not use the axis."""
    notation = axis_notation(records, meta)
    columns = []
    for axis in shown:
        cells = [show(r.get(axis), scientific=notation[axis]) if uses_axis(str(r.get("optimizer")), axis)
                 else NOT_USED for r in records]
        columns.append(Column(axis_title(axis, [r.get("optimizer") for r in records]), cells))
    return columns


def metric_column(records: Sequence[dict], name: str, *, drop: int | None = None) -> Column:
    """Mean ± std over seeds: one notation for the whole column; ``±std`` goes first when narrow."""
    values = [r.get(name) for r in records]
    means, scientific = column(values, zeros=True), notation(values)
    full = [m if r.get(name) is None else m + show_std(r.get(f"{name}_std"), scientific)
            for m, r in zip(means, records, strict=True)]
    has_std = any(r.get(f"{name}_std") is not None for r in records)
    return Column(label(name), full, drop=drop, short=means if has_std else None, shorten=90 if has_std else None,
                  what="±std over seeds")


def status_of(record: dict, *, short: bool = False) -> str:
    """What went wrong with a setting: ``diverged (1/3 seeds, step 61)``, ``collapsed``,
    ``at chance``; empty when nothing did."""
    seeds = record.get("seeds") or 1
    out = []
    if record.get("diverged"):
        step = record.get("diverged_step")
        count = f"{record.get('diverged_seeds')}/{seeds} seeds, " if seeds > 1 else ""
        out.append("diverged" if short else f"diverged ({count}step {step})")
    if record.get("collapsed"):
        count = record.get("collapsed_seeds")
        out.append("collapsed" if short or seeds == 1 else f"collapsed ({count}/{seeds} seeds)")
    if record.get("at_chance"):
        out.append("at chance")
    return ", ".join(out)


def _no_star_note(records: Sequence[dict], meta: dict) -> str | None:
    """Why nothing is starred, when nothing is."""
    if best_index(records) is not None or not records:
        return None
    scored = [r for r in records if r.get("val_accuracy") is not None]  # collapsed ones too: they may beat chance
    chance = meta.get("chance") if isinstance(meta.get("chance"), dict) else {}
    if scored and all(r.get("at_chance") for r in scored):
        guess = chance.get("accuracy")
        scores = f" (guessing the most common class scores {show(guess, zeros=True)})" if guess is not None else ""
        return f"No setting beats chance{scores}; nothing is starred."
    return "No setting trained without diverging, collapsing or ending at chance; nothing is starred."


_AMONG_THEM = object()


def records_sheet(records: Sequence[dict], meta: dict | None = None, *, sparklines: bool = False,
                  note: str | None = None, best: Any = _AMONG_THEM) -> Sheet:
    """The table of ``records`` as a :class:`~epsweep.views.sheet.Sheet`, starring the best of
    them, or ``best`` (a record: the best of more than are shown, starred if shown; None: none)."""
    meta = meta or {}
    records = list(records)
    shown = shown_axes(records)
    columns = axis_columns(records, shown, meta)
    rule = rule_column(records)
    if rule is not None:
        columns.append(rule)
    has = {name: any(r.get(name) is not None for r in records)
           for name in ("val_loss", "val_accuracy", "eps_dominated_mean")}
    columns.append(metric_column(records, "final_loss", drop=50 if has["val_accuracy"] else None))
    scale = curve_scale([r.get("loss_curve") for r in records]) if sparklines else None
    if scale is not None:
        columns.append(Column("loss curve", [sparkline(r.get("loss_curve"), scale) for r in records],
                              justify="left", drop=100, crop=True))
    if has["val_loss"]:
        columns.append(metric_column(records, "val_loss", drop=70))
    if has["val_accuracy"]:
        columns.append(metric_column(records, "val_accuracy"))
    for name in extra_metrics(records):  # a task's own metric: val_<name>
        columns.append(metric_column(records, name))
    if has["eps_dominated_mean"]:
        shares = [show_share(r.get("eps_dominated_mean")) for r in records]
        columns.append(Column(label("eps_dominated_mean"), shares, drop=80))
    statuses = [status_of(r) for r in records]
    if any(statuses):
        columns.append(Column("status", statuses, justify="left", short=[status_of(r, short=True) for r in records],
                              shorten=60, drop=40, squeeze=True))
    none_usable = best_index(records) is None if best is _AMONG_THEM else best is None  # say why
    best = best_index(records) if best is _AMONG_THEM else next((i for i, r in enumerate(records) if r is best), None)
    if best is not None:
        columns[0].cells[best] = "★ " + columns[0].cells[best]
    styles = ["bold green" if i == best else ("red" if r.get("diverged") else
                                              ("yellow" if r.get("collapsed") or r.get("at_chance") else None))
              for i, r in enumerate(records)]
    notes = [n for n in [_no_star_note(records, meta) if none_usable else None] if n]
    parts = run_parts(meta) + ([note] if note else [])
    return Sheet(title_head(meta, records), parts, columns, styles, held_axes(records, shown, meta), notes)


def records_table(records: Sequence[dict], meta: dict | None = None, *, sparklines: bool = False,
                  note: str | None = None, max_width: int | None = None) -> Table:
    """A Rich table, a row per setting, fitted to ``max_width`` columns (see
    :func:`~epsweep.views.sheet.rich_table`): axis values are never cut."""
    return rich_table(records_sheet(records, meta, sparklines=sparklines, note=note), max_width)


def records_markdown(records: Sequence[dict], meta: dict | None = None, *, note: str | None = None) -> str:
    """The same table as GitHub markdown, every column."""
    return markdown(records_sheet(records, meta, note=note))


