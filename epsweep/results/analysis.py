"""Looking at saved results: filter, sort, the best setting per axis value, and how much the
metric moves across the eps range at each other setting (sensitivity).

``build_report(loaded, where=..., sort=..., top=...)`` works on records read by
:func:`epsweep.results.read_results`; :mod:`epsweep.views.table` draws the result.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
from collections.abc import Sequence
from typing import Any

from epsweep.errors import UserError, param, quoted
from epsweep.numbers import listing, matches, show, span
from epsweep.results.formats import dumps
from epsweep.results.reading import Loaded
from epsweep.results.records import FLAGS, axis_notation, best_index, rank_key, usable
from epsweep.vocabulary import HIGHER_IS_BETTER, SETTING_AXES, SHARES, is_number, label

AXES = SETTING_AXES
OTHER_AXES = tuple(a for a in AXES if a != "eps")
SORT_ALIASES = {
    "acc": "val_accuracy", "val_acc": "val_accuracy", "accuracy": "val_accuracy",
    "loss": "final_loss", "val": "val_loss", "step": "diverged_step",
}
_WHERE = re.compile(r"^\s*([A-Za-z_][\w-]*)\s*(<=|>=|!=|==|=|<|>)\s*(.*?)\s*$")


def metric_of(records: Sequence[dict]) -> str:
    """What "best" means here: validation accuracy, else validation loss, else final loss."""
    for name in ("val_accuracy", "val_loss"):
        if any(r.get(name) is not None for r in records):
            return name
    return "final_loss"


# --- filtering ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Condition:
    """``field op value``; for ``=`` and ``!=`` the value may be a comma list (any of).

    A number matches as shown (:func:`epsweep.numbers.matches`): ``lr=0.2683``, copied from a
    table, selects lr 0.268347...; ``<=`` and ``>=`` include such a match, ``<`` and ``>`` do not.
    """

    field: str
    op: str
    values: tuple
    texts: tuple = ()  # the values as typed (numbers match to the digits typed)

    def test(self, record: dict) -> bool:
        have = record.get(self.field)
        if have is None:
            return self.op == "!="
        texts = self.texts or tuple(repr(v) for v in self.values)
        if self.op in ("=", "=="):
            return any(self._equal(have, v, t) for v, t in zip(self.values, texts, strict=True))
        if self.op == "!=":
            return not any(self._equal(have, v, t) for v, t in zip(self.values, texts, strict=True))
        value, text = self.values[0], texts[0]
        if not is_number(have) or not is_number(value):  # names, flags, lists: no order
            return False
        same = self._equal(have, value, text)
        return {"<": have < value and not same, "<=": have <= value or same,
                ">": have > value and not same, ">=": have >= value or same}[self.op]

    def _equal(self, have: Any, want: Any, text: str) -> bool:
        if isinstance(have, bool) or isinstance(want, bool):
            return have is want or have == want
        if is_number(have) and is_number(want):
            return have == want or matches(text, have, share=self.field in SHARES)
        return have == want


def _parse_value(text: str, field: str, where: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "yes"):
        return True
    if lowered in ("false", "no"):
        return False
    try:
        value = float(text)
    except ValueError:
        if field in ("optimizer", "convention"):
            return text
        if field.removeprefix("a_").removeprefix("b_") in FLAGS:
            raise UserError(f"{param('where')}: {field} is true or false, not {quoted(text)} "
                            f"(in {quoted(where)})") from None
        raise UserError(f"{param('where')}: {quoted(text)} in {quoted(where)} is not a number") from None
    if not math.isfinite(value):
        raise UserError(f"{param('where')}: {quoted(text)} in {quoted(where)} is not a finite number")
    return value


def parse_where(text: str, fields: Sequence[str]) -> Condition:
    """``lr=0.01``, ``eps<=1e-4``, ``convention=tf1,keras``, ``diverged=false``."""
    match = _WHERE.match(text)
    if not match or not match.group(3):
        raise UserError(f"{param('where')}: {quoted(text)} must look like FIELD=VALUE, FIELD<VALUE, ... (e.g. lr=0.01)")
    field, op, raw = match.group(1).replace("-", "_"), match.group(2), match.group(3)
    field = SORT_ALIASES.get(field, field)
    if field not in fields:
        raise UserError(f"{param('where')}: unknown field {quoted(field)}; fields: {', '.join(fields)}")
    pieces = [p.strip() for p in raw.split(",")] if op in ("=", "==", "!=") else [raw]
    if any(not p for p in pieces):
        raise UserError(f"{param('where')}: empty value in {quoted(text)}")
    return Condition(field, op, tuple(_parse_value(p, field, text) for p in pieces), tuple(pieces))


def record_fields(records: Sequence[dict]) -> list[str]:
    """Fields one may filter or sort on: every scalar field the records have."""
    fields: dict[str, None] = {}
    for record in records:
        for key, value in record.items():
            if key != "loss_curve" and not isinstance(value, (list, dict)):
                fields[key] = None
    return list(fields)


# --- analysis -------------------------------------------------------------------------------


def _values(records: Sequence[dict], axis: str) -> list:
    return list(dict.fromkeys(r.get(axis) for r in records))


def _sortable(value: Any) -> tuple:
    return (0, value, "") if isinstance(value, (int, float)) else (1, 0, str(value))


def best_per_axis(records: Sequence[dict], metric: str) -> list[dict]:
    """For every axis with more than one value: for each value, the best setting having it
    (ranked as the starred row; ``best`` is None when all of them diverged). One pass over the
    records per axis: linear in their number, however many values an axis has."""
    rows = []
    for axis in AXES:
        groups: dict[Any, list[dict]] = {}
        for record in records:
            if record.get(axis) is not None:  # None: an axis the optimizer does not use
                groups.setdefault(record.get(axis), []).append(record)
        if len(groups) < 2:
            continue
        for value in sorted(groups, key=_sortable):
            group = groups[value]
            best = min(group, key=rank_key)
            ok = usable(best)
            rows.append({"axis": axis, "value": value, "metric": metric,
                         "score": best.get(metric) if ok else None,
                         "best": {a: best.get(a) for a in AXES} if ok else None,
                         "settings": len(group), "diverged": sum(bool(r.get("diverged")) for r in group)})
    return rows


def sensitivity(records: Sequence[dict], metric: str) -> list[dict]:
    """How much ``metric`` moves across eps with every other axis held: one row per
    (decay, lr, momentum, optimizer, convention) that has at least two eps values. "best eps"
    is the best usable setting by :func:`~epsweep.results.records.rank_key` (None when none is)."""
    groups: dict[tuple, list[dict]] = {}
    for record in records:
        groups.setdefault(tuple(record.get(a) for a in OTHER_AXES), []).append(record)
    higher = metric in HIGHER_IS_BETTER
    rows = []
    for key in sorted(groups, key=lambda k: tuple(_sortable(v) for v in k)):
        group = groups[key]
        if len({r["eps"] for r in group}) < 2:
            continue
        scored = [r for r in group if not r.get("diverged") and r.get(metric) is not None]
        row = {**dict(zip(OTHER_AXES, key, strict=True)), "metric": metric,
               "eps_min": min(r["eps"] for r in group), "eps_max": max(r["eps"] for r in group),
               "settings": len(group), "diverged": sum(bool(r.get("diverged")) for r in group),
               "low": None, "high": None, "spread": None, "best_eps": None, "worst_eps": None}
        if scored:
            ranked = [r for r in group if usable(r)]
            best = min(ranked, key=rank_key) if ranked else None
            worst = min(scored, key=lambda r: r[metric]) if higher else max(scored, key=lambda r: r[metric])
            low, high = min(r[metric] for r in scored), max(r[metric] for r in scored)
            spread = high - low if math.isfinite(high - low) else None  # None: beyond the float range
            row.update(low=low, high=high, spread=spread, best_eps=best["eps"] if best else None,
                       worst_eps=worst["eps"])
        rows.append(row)
    return rows


def _where_text(row: dict, axes: Sequence[str], notation: dict[str, bool]) -> str:
    axes = [a for a in axes if a != "convention" or row.get("optimizer") in (None, "rmsprop")]  # RMSProp's alone
    return ", ".join(f"{a} {show(row[a], scientific=notation.get(a))}" if is_number(row[a]) else f"{a} {row[a]}"
                     for a in axes if row[a] is not None)  # None: an axis the row's optimizer does not use


def sensitivity_summary(rows: Sequence[dict], varying: Sequence[str], notation: dict[str, bool] | None = None) -> str:
    """One sentence: where eps matters most and least (numbers as the tables show them)."""
    scored = [r for r in rows if r["spread"] is not None]
    if not scored:
        return ""
    notation = notation or {}
    name = label(rows[0]["metric"])
    most = max(scored, key=lambda r: r["spread"])
    least = min(scored, key=lambda r: r["spread"])
    # an axis only one optimizer reads (momentum 0 for RMSProp, none for Adam) tells the rows apart by no value
    axes = [a for a in OTHER_AXES if a in varying and len({r[a] for r in rows if r[a] is not None}) > 1] or ["lr"]
    text = (f"Across eps {span(most['eps_min'], most['eps_max'])}, {name} moves by up to "
            f"{show(most['spread'], zeros=True)} ({_where_text(most, axes, notation)})")
    if least is not most:
        text += f" and by as little as {show(least['spread'], zeros=True)} ({_where_text(least, axes, notation)})"
    diverged = sum(r["diverged"] for r in rows)
    return text + (f"; {diverged} setting{'s' if diverged > 1 else ''} diverged." if diverged else ".")


# --- the report ----------------------------------------------------------------------------


@dataclasses.dataclass
class Report:
    """What ``epsweep report`` shows: the selected records (filtered, sorted, cut), the best
    setting per axis value and the eps sensitivity (both over the filtered records)."""

    meta: dict
    records: list[dict]
    metric: str
    best_per_axis: list[dict]
    sensitivity: list[dict]
    summary: str
    shown_of: tuple[int, int]  # (rows shown, records in the file)
    notes: list[str]
    ordered: bool = False  # rows are sorted (a sort or top was asked for), not in file order
    best: dict | None = None  # the best setting where every condition holds, shown or cut by top

    def to_json(self) -> str:
        document = {"meta": self.meta, "results": self.records, "metric": self.metric,
                    "best_per_axis": self.best_per_axis, "sensitivity": self.sensitivity,
                    "summary": self.summary}
        return dumps(document, indent=2) + "\n"

    def title(self) -> str | None:
        shown, total = self.shown_of
        expected = self.meta.get("settings")
        parts = []
        if isinstance(expected, int) and expected > total:
            parts.append(f"partial: {total} of {expected} settings")
        if shown != total:
            parts.append(f"showing {shown} of {total}")
        return "; ".join(parts) or None


def sort_field(name: str, fields: Sequence[str]) -> str:
    field = SORT_ALIASES.get(name.replace("-", "_"), name.replace("-", "_"))
    if field != "rank" and field not in fields:
        raise UserError(f"{param('sort')}: unknown field {name!r}; choose from rank, {', '.join(fields)}")
    return field


def sort_records(records: Sequence[dict], field: str, reverse: bool = False) -> list[dict]:
    """Best first for ``rank`` and metrics (accuracy high, losses low), ascending otherwise;
    missing values always last. ``reverse`` flips the order of the present values."""
    if field == "rank":
        ordered = sorted(records, key=rank_key)
        return ordered[::-1] if reverse else ordered
    present = [r for r in records if r.get(field) is not None]
    missing = [r for r in records if r.get(field) is None]
    descending = (field in HIGHER_IS_BETTER) != reverse
    return sorted(present, key=lambda r: _sortable(r[field]), reverse=descending) + missing


def build_report(
    loaded: Loaded,
    *,
    where: Sequence[str] = (),
    sort: str | None = None,
    reverse: bool = False,
    top: int | None = None,
) -> Report:
    """Filter (every ``where`` condition must hold), sort, keep the ``top`` rows (ranked best
    first when no ``sort`` is given), and summarise.

    Args:
        loaded: a results file read by :func:`~epsweep.results.read_results`.
        where: conditions such as ``"lr=0.01"``, ``"eps<=1e-4"``, ``"convention=tf1,keras"``.
        sort: a field to order rows by (``rank``, a metric best first, an axis ascending).
        reverse: flip the ``sort`` order.
        top: keep only the first ``top`` rows.

    Returns:
        A :class:`Report`: the rows, the best setting per axis value, the eps sensitivity.

    Example:
        >>> from epsweep.results.reading import Loaded
        >>> rows = [{"eps": e, "decay": 0.9, "lr": 0.1, "momentum": 0.0, "optimizer": "rmsprop",
        ...          "convention": "optax", "final_loss": l, "val_accuracy": a, "diverged": False}
        ...         for e, l, a in [(1e-8, 0.2, 0.9), (1.0, 0.5, 0.7)]]
        >>> report = build_report(Loaded("f.jsonl", {}, rows, []), top=1)
        >>> report.records[0]["eps"], round(report.sensitivity[0]["spread"], 6)
        (1e-08, 0.2)
    """
    if not isinstance(loaded, Loaded):
        raise UserError(f"build_report takes what read_results(path) returns, not {type(loaded).__name__} "
                        f"{loaded!r:.60}")
    records = loaded.records
    if not records:
        raise UserError(f"{loaded.path}: no results in the file yet")
    fields = record_fields(records)
    conditions = [parse_where(w, fields) for w in ((where,) if isinstance(where, str) else where)]
    if top is not None and (isinstance(top, bool) or not isinstance(top, numbers.Integral)):
        raise UserError(f"{param('top')}: {top!r} must be a whole number")
    if top is not None and top < 1:
        raise UserError(f"{param('top')}: {top} must be a positive integer")
    field = sort_field(sort, fields) if sort is not None else None
    if reverse and field is None and top is None:
        raise UserError(f"{param('reverse')} needs {param('sort')} (or {param('top')})")
    selected = [r for r in records if all(c.test(r) for c in conditions)]
    if not selected:
        hints = "; ".join(f"{c.field} in the file: {_listing(records, c.field)}" for c in conditions)
        raise UserError(f"{param('where')}: no settings match ({hints})")
    metric = metric_of(selected)
    varying = [a for a in AXES if len(_values(selected, a)) > 1]
    per_axis = best_per_axis(selected, metric)
    sens = sensitivity(selected, metric)
    if field is None and top is not None:
        field = "rank"
    shown = sort_records(selected, field, reverse) if field is not None else list(selected)
    if top is not None:
        shown = shown[:top]
    summary = sensitivity_summary(sens, varying, axis_notation(selected, loaded.meta))
    best = best_index(selected)
    return Report(loaded.meta, shown, metric, per_axis, sens, summary, (len(shown), len(records)), list(loaded.notes),
                  ordered=field is not None, best=None if best is None else selected[best])


def _listing(records: Sequence[dict], field: str, limit: int = 8) -> str:
    values = sorted(_values(records, field), key=_sortable)
    if values and all(is_number(v) for v in values):
        return listing(values, limit)
    text = ", ".join(str(v) for v in values[:limit])
    return text + (", ..." if len(values) > limit else "")
