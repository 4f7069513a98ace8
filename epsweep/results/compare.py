"""Two saved sweeps side by side: the settings both have, each metric in A and in B and the
difference (B - A), and the settings only one of them has.

Settings are matched by their axes (to 12 significant digits, so ``1e-4`` typed in one sweep
meets ``log:1e-8:1:5``'s 0.00010000000000000009 in the other), optimizer and convention; when
each sweep trained one update rule and they differ (an optax sweep against a tf1 sweep), by
the axes alone, and the comparison says so.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from epsweep.errors import UserError, param
from epsweep.results.analysis import metric_of, parse_where, record_fields
from epsweep.results.formats import dumps, to_csv
from epsweep.results.guard import by_weight
from epsweep.results.guard import differences as run_differences
from epsweep.results.reading import Loaded
from epsweep.vocabulary import GRID_AXES, SETTING_AXES, SETTING_DEFAULTS, is_number

COMPARED = ("final_loss", "val_loss", "val_accuracy", "eps_dominated_mean")
"""The metrics a comparison shows, where either sweep has them."""


def match_key(record: dict, axes: Sequence[str] = SETTING_AXES) -> tuple:
    """A setting's identity across sweeps: grid axes to 12 significant digits, update rule."""
    key = []
    for axis in axes:
        value = record.get(axis, SETTING_DEFAULTS.get(axis))
        key.append(float(f"{value:.12g}") if axis in GRID_AXES and is_number(value) else value)
    return tuple(key)


@dataclasses.dataclass
class Comparison:
    """``rows``: one per setting both sweeps have (axes, then ``a_M``, ``b_M``, ``diff_M`` for
    each metric M of :attr:`metrics`, plus each side's status flags); ``only_a``/``only_b``:
    the records of settings just one sweep has; ``differences``: how the runs differ (the data
    first: :func:`by_weight`);
    ``matched_on``: the fields settings were matched by."""

    a: Loaded
    b: Loaded
    metrics: list[str]
    rows: list[dict]
    only_a: list[dict]
    only_b: list[dict]
    differences: list[str]
    matched_on: tuple = SETTING_AXES

    def to_json(self) -> str:
        document = {"a": {"path": str(self.a.path), "meta": self.a.meta},
                    "b": {"path": str(self.b.path), "meta": self.b.meta},
                    "metrics": self.metrics, "shared": self.rows, "only_a": self.only_a, "only_b": self.only_b,
                    "differences": self.differences, "matched_on": list(self.matched_on)}
        return dumps(document, indent=2) + "\n"

    def to_jsonl(self) -> str:
        return "".join(dumps(row) + "\n" for row in self.rows)

    def to_csv(self) -> str:
        return to_csv(self.rows, self.fields())

    def fields(self) -> list[str]:
        """The columns of a shared row, in order."""
        sides = [f"{side}_{m}" for m in self.metrics for side in ("a", "b", "diff")]
        flags = [f"{side}_{flag}" for side in ("a", "b") for flag in ("diverged", "collapsed", "at_chance")]
        return [*SETTING_AXES, *sides, *flags]


def compare(a: Loaded, b: Loaded, *, where: Sequence[str] = ()) -> Comparison:
    """The settings of ``a`` and ``b`` matched up, filtered by ``where`` as in report (a
    setting both have stays when it passes in either).

    Example:
        >>> from epsweep.results.reading import Loaded
        >>> row = {"eps": 1e-8, "decay": 0.9, "lr": 0.1, "momentum": 0.0, "optimizer": "rmsprop",
        ...        "convention": "optax", "final_loss": 0.5, "diverged": False}
        >>> c = compare(Loaded("a", {}, [row], []), Loaded("b", {}, [{**row, "final_loss": 0.25},
        ...             {**row, "eps": 1.0}], []))
        >>> c.rows[0]["diff_final_loss"], len(c.only_b)
        (-0.25, 1)
    """
    for side in (a, b):
        if not side.records:
            raise UserError(f"{side.path}: no results in the file yet")
    conditions = [[parse_where(w, record_fields(side.records)) for w in where] for side in (a, b)]

    def kept(side: int, record: dict) -> bool:
        return all(c.test(record) for c in conditions[side])

    left, right = ([r for r in side.records if kept(i, r)] for i, side in enumerate((a, b)))
    if where and not left and not right:  # as report says it: nothing to compare is not a comparison
        raise UserError(f"{param('where')}: no settings match in either file ({'; '.join(where)})")
    metric = metric_of(left + right)
    metrics = [m for m in COMPARED if any(r.get(m) is not None for r in left + right)]
    if metric in metrics:  # the metric that decides "best" first
        metrics.remove(metric)
        metrics.insert(0, metric)
    rules = [{(r.get("optimizer"), r.get("convention")) for r in side} for side in (left, right)]
    axes = GRID_AXES if len(rules[0]) == 1 and len(rules[1]) == 1 and rules[0] != rules[1] else SETTING_AXES
    by_key = {}
    for record in b.records:  # a setting both have is compared when either passes the conditions
        by_key.setdefault(match_key(record, axes), record)
    seen = set()
    rows, only_a = [], []
    for record in a.records:
        key = match_key(record, axes)
        other = by_key.get(key)
        if other is None or key in seen:
            if kept(0, record):
                only_a.append(record)
            continue
        seen.add(key)
        if not (kept(0, record) or kept(1, other)):
            continue
        row = {axis: record.get(axis) for axis in GRID_AXES}
        for axis in ("optimizer", "convention"):
            row[axis] = record.get(axis) if record.get(axis) == other.get(axis) else \
                f"{record.get(axis)} / {other.get(axis)}"
        for m in metrics:
            x, y = record.get(m), other.get(m)
            row.update({f"a_{m}": x, f"b_{m}": y, f"diff_{m}": y - x if x is not None and y is not None else None})
        for side, source in (("a", record), ("b", other)):
            for flag in ("diverged", "collapsed", "at_chance"):
                row[f"{side}_{flag}"] = bool(source.get(flag))
        rows.append(row)
    only_b = [r for r in right if match_key(r, axes) not in seen]
    run_a, run_b = a.meta.get("run"), b.meta.get("run")
    both = isinstance(run_a, dict) and isinstance(run_b, dict)
    differences = by_weight(run_differences(run_a, run_b, sides=("in A", "in B"))) if both else []
    return Comparison(a, b, metrics, rows, only_a, only_b, differences, tuple(axes))
