"""The report's other tables: the best setting for each axis value, the eps sensitivity at each
other setting, and two sweeps compared; as sheets, for the terminal or markdown."""

from __future__ import annotations

from collections.abc import Sequence

from epsweep.numbers import column, show, span
from epsweep.results.analysis import OTHER_AXES
from epsweep.views.sheet import Column, Sheet
from epsweep.views.table import rule_name
from epsweep.vocabulary import GRID_AXES, RULE_AXES, axis_title, label


def _axis_text(axis: str, value, notation: dict[str, bool]) -> str:
    if axis in GRID_AXES and isinstance(value, (int, float)) and not isinstance(value, bool):
        return show(value, scientific=notation.get(axis))
    return str(value)


def best_per_axis_sheet(rows: Sequence[dict], notation: dict[str, bool]) -> Sheet:
    """For each value of each axis, the best setting having it (from analysis.best_per_axis);
    ``notation``: per axis, scientific or not (as in the records table)."""
    metric = rows[0]["metric"] if rows else "val_accuracy"
    varying = list(dict.fromkeys(r["axis"] for r in rows))
    both_rules = "optimizer" in varying and "convention" in varying
    scores = column([r["score"] for r in rows], zeros=True)
    at = []
    for row in rows:
        best = row["best"]
        if best is None:
            at.append(f"all {row['settings']} diverged, collapsed or at chance")
            continue
        phrases = [f"{a} {_axis_text(a, best[a], notation)}" for a in varying
                   if a != row["axis"] and a not in RULE_AXES]
        if any(a in RULE_AXES for a in varying):
            rule = rule_name(best, both_rules) if "optimizer" in varying else str(best["convention"])
            if rule != str(row["value"]):
                phrases.append(rule)
        at.append(", ".join(phrases))
    columns = [
        Column("axis", [r["axis"] for r in rows], justify="left"),
        Column("value", [_axis_text(r["axis"], r["value"], notation) for r in rows]),
        Column(label(metric), scores),
        Column("at", at, justify="left", wrap=True),
    ]
    return Sheet("Best setting for each axis value", [], columns)


def sensitivity_sheet(rows: Sequence[dict], notation: dict[str, bool]) -> Sheet:
    """How much the metric moves across eps at each other setting (from analysis.sensitivity)."""
    metric = rows[0]["metric"] if rows else "val_accuracy"
    held = [a for a in OTHER_AXES if len({r[a] for r in rows}) > 1] or ["lr"]
    ranges = {(r["eps_min"], r["eps_max"]) for r in rows}
    same_range = len(ranges) == 1
    head = f"Eps sensitivity of {label(metric)}"
    if rows and same_range:
        head += f" (eps {span(rows[0]['eps_min'], rows[0]['eps_max'])})"
    columns = []
    conventions = len({r["convention"] for r in rows}) > 1
    for axis in held:
        if axis in RULE_AXES:
            if axis == "convention" and "optimizer" in held:
                continue
            cells = [rule_name(r, conventions) if axis == "optimizer" else str(r[axis]) for r in rows]
            columns.append(Column(axis, cells, justify="left"))
        else:
            optimizers = [r["optimizer"] for r in rows]
            columns.append(Column(axis_title(axis, optimizers), [_axis_text(axis, r[axis], notation) for r in rows]))
    if not same_range:
        columns.append(Column("eps range", [span(r["eps_min"], r["eps_max"]) for r in rows]))
    values = column([v for r in rows for v in (r["low"], r["high"], r["spread"])], zeros=True)
    columns += [Column("lowest", values[0::3], drop=80), Column("highest", values[1::3], drop=80),
                Column("spread", values[2::3])]
    best = [_axis_text("eps", r["best_eps"], notation) if r["best_eps"] is not None else "—" for r in rows]
    columns.append(Column("best eps", best))
    if any(r["diverged"] for r in rows):
        columns.append(Column("diverged", [f"{r['diverged']}/{r['settings']}" if r["diverged"] else "" for r in rows],
                              drop=70))
    return Sheet(head, [], columns)
