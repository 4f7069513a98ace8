"""Results as text: CSV, JSON and JSON lines, written so that no value can make a write fail.

Non-finite numbers (an ``inf`` clip norm, a NaN metric) become ``null``; NumPy scalars and
paths become plain JSON values. What is written is always valid, strict JSON.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import PurePath
from typing import Any

from epsweep.results.records import csv_fields

FORMATS = ("table", "markdown", "csv", "json", "jsonl")
HUMAN_FORMATS = ("table", "markdown")  # for people, on stdout; the others are for programs
MACHINE_FORMATS = ("csv", "json", "jsonl")


def plain(value: Any) -> Any:
    """``value`` as strict JSON data: dicts, lists, str, int, finite float, bool or None.

    Example:
        >>> plain({"a": float("inf"), "b": (1, 2.5)})
        {'a': None, 'b': [1, 2.5]}
    """
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, PurePath):
        return str(value)
    if hasattr(value, "item") and getattr(value, "shape", None) == ():  # a NumPy scalar
        return plain(value.item())
    if hasattr(value, "tolist"):
        return plain(value.tolist())
    return str(value)


def dumps(value: Any, indent: int | None = None) -> str:
    """Strict JSON text of :func:`plain` ``(value)``; never raises on a value."""
    return json.dumps(plain(value), indent=indent, allow_nan=False)


def to_csv(records: Iterable[dict], fields: Sequence[str] | None = None) -> str:
    """CSV with a header row; empty cells for missing numbers; no loss curves. The columns
    default to :func:`~epsweep.results.records.csv_fields` of the records."""
    records = list(records)
    fields = csv_fields(records) if fields is None else fields
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fields), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for record in records:
        row = plain({k: record.get(k) for k in fields})
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return buffer.getvalue()


def to_jsonl(records: Iterable[dict]) -> str:
    """One JSON object per line."""
    return "".join(dumps(r) + "\n" for r in records)


def to_json(meta: dict, records: Sequence[dict]) -> str:
    """``{"meta": ..., "results": [...]}``, indented."""
    return dumps({"meta": meta, "results": list(records)}, indent=2) + "\n"


def render_machine(fmt: str, meta: dict, records: Sequence[dict]) -> str:
    """The text of a machine-readable format (csv, json, jsonl)."""
    if fmt == "csv":
        return to_csv(records)
    if fmt == "jsonl":
        return to_jsonl(records)
    if fmt == "json":
        return to_json(meta, records)
    raise ValueError(f"not a machine format: {fmt}")
