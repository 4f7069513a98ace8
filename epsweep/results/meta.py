"""The meta of a results file read back: which keys a report or plot shows, and what each must
hold (a crafted file may put anything there)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any


def short_json(value: Any) -> str:
    """``value`` as JSON, cut to 40 characters: how messages quote a file's values."""
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _whole(value: Any, least: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _names_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


# What a report or plot shows of the meta: each key's test and what it should hold.
META_KEYS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "format": (lambda v: isinstance(v, str), "a name"),
    "title": (lambda v: isinstance(v, str), "text"),
    "task": (lambda v: isinstance(v, str), "a name"),
    "data": (lambda v: isinstance(v, dict) and isinstance(v.get("name"), str)
             and all(_whole(v.get(k)) for k in ("train", "val")),
             'an object with "name", "train" and "val"'),
    "steps": (lambda v: _whole(v, 1), "a positive whole number"),
    "batch_size": (lambda v: _whole(v, 1), "a positive whole number"),
    "seeds": (lambda v: isinstance(v, list) and all(_whole(s) for s in v), "a list of seeds"),
    "settings": (_whole, "a whole number"),
    "chunk_size": (lambda v: _whole(v, 1), "a positive whole number"),
    "conventions": (_names_list, "a list of names"),
    "optimizers": (_names_list, "a list of names"),
}


def clean_meta(meta: dict, where: str) -> tuple[dict, list[str]]:
    """The meta of a file read back, without the shown keys (:data:`META_KEYS`) whose value
    has the wrong type (null is kept: "not known"), and a note for each key dropped."""
    kept, notes = {}, []
    for key, value in meta.items():
        check = META_KEYS.get(key)
        if value is None or check is None or check[0](value):
            kept[key] = value
        else:
            notes.append(f"{where}: ignored meta {key} {short_json(value)} (expected {check[1]})")
    return kept, notes
