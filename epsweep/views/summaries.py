"""The report's other tables: the best setting for each axis value, the eps sensitivity at each
other setting, and two sweeps compared; as sheets, for the terminal or markdown."""

from __future__ import annotations

from collections.abc import Sequence

from epsweep.numbers import column, show, show_share, span
from epsweep.results.analysis import OTHER_AXES
from epsweep.views.sheet import Column, Sheet
from epsweep.views.table import NOT_USED, axis_columns, rule_column, rule_name, shown_axes
from epsweep.views.titles import held_axes, title_head
from epsweep.vocabulary import GRID_AXES, RULE_AXES, SHARES, axis_title, label


def _axis_text(axis: str, value, notation: dict[str, bool]) -> str:
    if value is None:
        return NOT_USED
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
                   if a != row["axis"] and a not in RULE_AXES and best[a] is not None]
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
    numeric = shown_axes(rows)
    held = [a for a in OTHER_AXES if (a in numeric if a in GRID_AXES else len({r[a] for r in rows}) > 1)] or ["lr"]
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
        columns.append(Column("left out", [f"{r['diverged']} diverged" if r["diverged"] else "" for r in rows],
                              drop=70))  # settings with a diverged seed, whose spread would mix seeds
    return Sheet(head, [], columns)


def _signed(texts: list[str]) -> list[str]:
    """Differences with their sign; one that rounds to zero (``-0.000``, ``0.000``) has none."""
    def signed(text: str) -> str:
        if text == "—" or not text.strip("-+0."):  # none, or zero as rounded (-0.000)
            return text.lstrip("-")
        return text if text.startswith("-") else "+" + text

    return [signed(t) for t in texts]


def _setting_columns(records: Sequence[dict], meta: dict) -> tuple[list[Column], list[str]]:
    """Axis and update-rule columns for rows of settings (what varies among them; eps at
    least), and the axes all of them share, for the title."""
    shown = shown_axes(records)
    columns = axis_columns(records, shown, meta)
    rule = rule_column(records)
    return columns + ([rule] if rule is not None else []), held_axes(records, shown, meta)


def _metric_texts(values: Sequence[float | None], metric: str) -> list[str]:
    return [show_share(v) for v in values] if metric in SHARES else column(values, zeros=True)


DIFFERENCE_LINES = 3  # at most this many terminal lines say how the runs differ


def differences_note(differences: Sequence[str], width: int | None = None) -> str:
    """``The runs differ: ...``: every difference (most decisive first), or at a terminal
    ``width`` as many as fit :data:`DIFFERENCE_LINES` lines and how many more there are."""
    def note(shown: list[str]) -> str:
        left = len(differences) - len(shown)
        more = f"; and {left} more (the json format lists all)." if left else "."
        return "The runs differ: " + "; ".join(shown) + more

    shown = list(differences)
    while width is not None and len(shown) > 1 and len(note(shown)) > DIFFERENCE_LINES * width:
        shown.pop()
    return note(shown)


def compare_sheets(comparison, width: int | None = None) -> list[Sheet]:
    """A :class:`~epsweep.results.compare.Comparison` as sheets: the shared settings (A, B and
    B - A for each metric; the first metric's never left out), then those only in A or only in B.
    ``width``: the terminal's, to fit the note of how the runs differ (None: every difference)."""
    rows = comparison.rows
    a, b = comparison.a, comparison.b
    both = [*a.records, *b.records]  # one notation per axis over both sweeps
    meta = {"grid": {axis: list(dict.fromkeys(r.get(axis) for r in both)) for axis in GRID_AXES}}
    parts = [f"A = {a.path} ({title_head(a.meta, a.records)})", f"B = {b.path} ({title_head(b.meta, b.records)})"]
    notes = []
    if comparison.matched_on == GRID_AXES and comparison.rows:
        rule = comparison.rows[0]
        notes.append(f"A and B train different update rules (optimizer {rule['optimizer']}, convention "
                     f"{rule['convention']}): settings are matched by eps, decay, lr and momentum.")
    if comparison.differences:
        notes.append(differences_note(comparison.differences, width))
    if comparison.only_a or comparison.only_b:
        notes.append(f"{len(comparison.only_a)} setting{'s' * (len(comparison.only_a) != 1)} only in A, "
                     f"{len(comparison.only_b)} only in B (listed below).")
    sheets = []
    if rows:
        columns, held = _setting_columns(rows, meta)
        for i, metric in enumerate(comparison.metrics):
            drop = None if i == 0 else 80 - 10 * i
            name = label(metric)
            columns.append(Column(f"A {name}", _metric_texts([r[f"a_{metric}"] for r in rows], metric), drop=drop))
            columns.append(Column(f"B {name}", _metric_texts([r[f"b_{metric}"] for r in rows], metric), drop=drop))
            diffs = _signed(_metric_texts([r[f"diff_{metric}"] for r in rows], metric))
            columns.append(Column(f"Δ {name}", diffs, drop=drop))
        status = [", ".join(f"{side.upper()} {flag.replace('_', ' ')}" for side in ("a", "b")
                            for flag in ("diverged", "collapsed", "at_chance") if r[f"{side}_{flag}"]) for r in rows]
        if any(status):
            columns.append(Column("status", status, justify="left", wrap=True))
        sheets.append(Sheet(f"{len(rows)} settings in both", parts, columns, held=held, notes=notes))
    else:
        sheets.append(Sheet("No setting in both", parts, [], notes=notes))
    for side, records in (("A", comparison.only_a), ("B", comparison.only_b)):
        if records:
            columns, held = _setting_columns(records, meta)
            metric = comparison.metrics[0] if comparison.metrics else "final_loss"
            columns.append(Column(label(metric), _metric_texts([r.get(metric) for r in records], metric)))
            sheets.append(Sheet(f"Only in {side}", [], columns, held=held))
    return sheets
