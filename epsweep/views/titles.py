"""Titles of tables and plots: which optimizer, what the run was (from a results file's meta),
and what every shown setting shares.

Plain text (no markup): every string in it may come from a file or a path; the renderers
show it literally.
"""

from __future__ import annotations

from collections.abc import Sequence

from epsweep.numbers import show
from epsweep.results.records import axis_notation
from epsweep.vocabulary import GRID_AXES, axis_title, canonical_order, optimizer_title, uses_axis


def _names(meta: dict, records: Sequence[dict], field: str, meta_key: str) -> list[str]:
    names = [r.get(field) for r in records if isinstance(r.get(field), str)]
    if not names and isinstance(meta.get(meta_key), list):
        names = [n for n in meta[meta_key] if isinstance(n, str)]
    return list(dict.fromkeys(names))


def title_head(meta: dict, records: Sequence[dict] = ()) -> str:
    """``RMSProp (optax) sweep``, ``RMSProp and Adam sweep``: which optimizers the rows were
    trained with (from the records, else the meta), and RMSProp's convention when it is one;
    a results file's own ``title`` when it has one."""
    given = meta.get("title")
    if isinstance(given, str) and given.strip():
        return given
    optimizers = canonical_order(_names(meta, records, "optimizer", "optimizers")) or ["rmsprop"]
    conventions = _names(meta, [r for r in records if r.get("optimizer") == "rmsprop"], "convention", "conventions")
    names = []
    for optimizer in optimizers:
        name = optimizer_title(optimizer)
        if optimizer == "rmsprop" and len(conventions) == 1:
            name += f" ({conventions[0]})"
        names.append(name)
    joined = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return f"{joined} sweep"


def run_parts(meta: dict) -> list[str]:
    """What the meta says about the run, a phrase each; keys of an unexpected type are left out."""
    if isinstance(meta.get("title"), str) and meta["title"].strip():
        return []
    parts = []
    if isinstance(meta.get("task"), str) and meta["task"]:
        parts.append(f"task {meta['task']}")
    data = meta.get("data")
    if isinstance(data, dict) and data.get("name") is not None:
        sizes = f" ({data['train']} train / {data['val']} val)" if "train" in data and "val" in data else ""
        parts.append(f"data {data['name']}{sizes}")
    if _count(meta.get("steps")):
        parts.append(f"{meta['steps']} step{'s' * (meta['steps'] != 1)}")
    if _count(meta.get("batch_size")):
        parts.append(f"batch {meta['batch_size']}")
    seeds = meta.get("seeds")
    if isinstance(seeds, list) and seeds:
        parts.append(f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''}")
    return parts


def held_axes(records: Sequence[dict], shown: Sequence[str], meta: dict | None = None) -> list[str]:
    """``decay 0.9``, ``b2 0.999``: each grid axis not in ``shown`` that the rows of each
    optimizer using it hold at one value; ``decay 0.9 (RMSProp)``, ``b2 0.999 (Adam)`` when the
    optimizers hold different values. Momentum 0 (no momentum) only when the ``meta``'s grid
    had other momentum values."""
    notation = axis_notation(records, meta)
    swept = _swept(meta)
    out = []
    for axis in GRID_AXES:
        if axis in shown:
            continue
        held: dict[str, list] = {}
        for r in records:
            optimizer = str(r.get("optimizer"))
            if uses_axis(optimizer, axis) and r.get(axis) is not None:
                held.setdefault(optimizer, [])
                if r[axis] not in held[optimizer]:
                    held[optimizer].append(r[axis])
        if not held or any(len(v) != 1 for v in held.values()):
            continue
        values = {v[0] for v in held.values()}
        if values == {0} and axis == "momentum" and axis not in swept:
            continue
        if len(values) == 1:
            out.append(f"{axis_title(axis, list(held))} {show(values.pop(), scientific=notation.get(axis))}")
            continue
        for optimizer in canonical_order(held):
            value = show(held[optimizer][0], scientific=notation.get(axis))
            out.append(f"{axis_title(axis, [optimizer])} {value} ({optimizer_title(optimizer)})")
    return out


def _swept(meta: dict | None) -> set[str]:
    """The axes the meta's grid gives more than one value (flat, or per optimizer)."""
    grid = (meta or {}).get("grid")
    if not isinstance(grid, dict):
        return set()
    grids = [g for g in grid.values() if isinstance(g, dict)] or [grid]
    return {a for g in grids for a, v in g.items() if isinstance(v, list) and len(v) > 1}


def run_title(meta: dict, records: Sequence[dict] = ()) -> str:
    """The whole title in one line: ``RMSProp (optax) sweep: task mlp, 440 steps, 1 seed``."""
    parts = run_parts(meta)
    head = title_head(meta, records)
    return f"{head}: {', '.join(parts)}" if parts else head


def _count(value) -> bool:
    """A positive whole number (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
