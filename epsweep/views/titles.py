"""Titles of tables and plots: what a results file's meta says about its run, in one line.

Plain text (no markup): every string in it may come from a file or a path.
"""

from __future__ import annotations


def run_title(meta: dict) -> str:
    """What the meta says about the run, in one line; keys of an unexpected type are left out."""
    parts = []
    if isinstance(meta.get("task"), str) and meta["task"]:
        parts.append(f"task {meta['task']}")
    data = meta.get("data")
    if isinstance(data, dict) and data.get("name") is not None:
        sizes = f" ({data['train']} train / {data['val']} val)" if "train" in data and "val" in data else ""
        parts.append(f"data {data['name']}{sizes}")
    if _count(meta.get("steps")):
        parts.append(f"{meta['steps']} steps")
    if _count(meta.get("batch_size")):
        parts.append(f"batch {meta['batch_size']}")
    seeds = meta.get("seeds")
    if isinstance(seeds, list) and seeds:
        parts.append(f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''}")
    return "RMSProp sweep: " + ", ".join(parts) if parts else "RMSProp sweep"


def _count(value) -> bool:
    """A positive whole number (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
