"""Rich tables of sweep records (the terminal rendering; nothing below imports it)."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table
from rich.text import Text

from epsweep.results import best_index


def _num(value: float | None, spec: str = ".4g") -> str:
    return "—" if value is None else format(value, spec)


def _fixed_or_sci(value: float) -> str:
    return f"{value:.4f}" if value == 0 or 1e-3 <= abs(value) < 1e5 else f"{value:.3e}"


def _mean_std(record: dict, name: str) -> str:
    mean, std = record.get(name), record.get(f"{name}_std")
    if mean is None:
        return "—"
    return _fixed_or_sci(mean) + (f"±{std:.3f}" if std is not None else "")


def records_table(records: Sequence[dict], meta: dict | None = None) -> Table:
    """A row per setting; varying axes only; the best row marked and highlighted."""
    meta = meta or {}
    axes = ["eps", "decay", "lr", "momentum", "convention"]
    shown = [a for a in axes if a in ("eps", "decay", "lr") or len({r.get(a) for r in records}) > 1]
    has_val = any(r.get("val_loss") is not None for r in records)
    has_acc = any(r.get("val_accuracy") is not None for r in records)
    title = meta.get("title") or _title(meta)
    table = Table(title=title, title_justify="left", header_style="bold")
    for axis in shown:
        table.add_column(axis, justify="right" if axis != "convention" else "left", no_wrap=True)
    table.add_column("final loss", justify="right", no_wrap=True)
    if has_val:
        table.add_column("val loss", justify="right", no_wrap=True)
    if has_acc:
        table.add_column("val acc", justify="right", no_wrap=True)
    table.add_column("diverged", justify="center")
    best = best_index(records)
    for i, record in enumerate(records):
        cells = [record[a] if a == "convention" else _num(record[a]) for a in shown]
        cells.append(_mean_std(record, "final_loss"))
        if has_val:
            cells.append(_mean_std(record, "val_loss"))
        if has_acc:
            cells.append(_mean_std(record, "val_accuracy"))
        if record["diverged"]:
            where = record.get("diverged_step")
            cells.append(f"yes ({record['diverged_seeds']}/{record['seeds']}, step {where})")
        else:
            cells.append("")
        if i == best:
            cells[0] = Text("★ ") + Text(str(cells[0]))
        table.add_row(*cells, style="bold green" if i == best else ("red" if record["diverged"] else None))
    return table


def _title(meta: dict) -> str:
    parts = []
    if meta.get("task"):
        parts.append(f"task {meta['task']}")
    data = meta.get("data")
    if isinstance(data, dict):
        parts.append(f"data {data['name']} ({data['train']} train / {data['val']} val)")
    if meta.get("steps"):
        parts.append(f"{meta['steps']} steps")
    if meta.get("batch_size"):
        parts.append(f"batch {meta['batch_size']}")
    seeds = meta.get("seeds")
    if seeds:
        parts.append(f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''}")
    return "RMSProp sweep: " + ", ".join(parts) if parts else "RMSProp sweep"
