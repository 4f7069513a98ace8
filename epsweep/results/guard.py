"""Which existing files a results write may replace.

A write never silently replaces another sweep's results, nor a file that is not epsweep
results at all (notes, a photo, a half-written file), nor settings the new file would not
hold: each is a UserError before any training, unless the caller forces it. What may be
replaced: nothing (no file, an empty one, a device such as ``/dev/stdout``), and a file whose
settings the new file keeps, of the same run (the same run description) or of an unknown one
(a CSV file carries no run description).
"""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path
from typing import Any

from epsweep.errors import UserError, param
from epsweep.results.formats import plain
from epsweep.results.meta import short_json
from epsweep.results.reading import Loaded, read_results
from epsweep.results.records import SettingKey, setting_key

MAX_CHECKED_BYTES = 2 * 1024**3  # a bigger file is not read to tell whose it is: it needs force


def existing_results(path: Path, fmt: str | None = None, option: str = "output") -> Loaded | None:
    """The results already at ``path`` (read as ``fmt``, else by its suffix); None when there
    is nothing to lose there (no file, an empty one, a device). A UserError, naming
    ``force``, when the file is there but is not epsweep results."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return None
    size = path.stat().st_size
    if size > MAX_CHECKED_BYTES:
        raise UserError(f"{param(option)}: {path} exists and is too big to check whose results it holds "
                        f"({size / 1024**3:.1f} GiB); add {param('force')} to replace it, or choose another file")
    try:
        return read_results(path, fmt=fmt)
    except UserError as error:
        reason = error.message.removeprefix(str(path)).lstrip(":, ")
        raise UserError(f"{param(option)}: {path} exists and is not epsweep results ({reason}); add "
                        f"{param('force')} to replace it, or choose another file") from None


def replace_problem(existing: Loaded, run: dict | None, keys: Collection[SettingKey] | None) -> str | None:
    """Why a file holding ``existing`` must not be replaced by results of run description
    ``run`` holding the settings ``keys`` (None: unknown); None when it may be."""
    held = {setting_key(r) for r in existing.records}
    if not held:
        return None  # a header with no results yet: nothing to lose
    there = existing.meta.get("run")
    if there is not None and run is not None and there != run:
        return f"holds another sweep's results ({in_brief(there, run)})"
    lost = held - set(keys) if keys is not None else set()
    if lost:
        return f"holds {len(lost):,} setting{'s' * (len(lost) != 1)} this output would not keep"
    return None


def check_replace(path: Path, run: dict | None, keys: Collection[SettingKey] | None, *, fmt: str | None = None,
                  option: str = "output", force: bool = False, hint: str = "") -> None:
    """Refuse (a UserError naming ``force``) to replace ``path`` unless it holds nothing to
    lose: see the module docstring. ``hint`` is another way out, said first."""
    if force:
        return
    existing = existing_results(path, fmt, option)
    problem = replace_problem(existing, run, keys) if existing is not None else None
    if problem is not None:
        raise refusal(path, problem, option, hint)


def refusal(path: Path, problem: str, option: str = "output", hint: str = "") -> UserError:
    """The one-line error for a file that must not be replaced."""
    ways = f"{hint}, {param('force')} to replace it" if hint else f"{param('force')} to replace it"
    return UserError(f"{param(option)}: {path} {problem}; add {ways}, or choose another file")


def differences(there: Any, here: Any, path: str = "", sides: tuple[str, str] = ("in the file", "now")) -> list[str]:
    """What differs between two run descriptions, one phrase per difference, each value
    followed by its side's name (``steps 100 in the file, 200 now``)."""
    if isinstance(there, dict) and isinstance(here, dict):
        out = []
        for key in list(dict.fromkeys([*there, *here])):
            out += differences(there.get(key), here.get(key), f"{path}.{key}" if path else key, sides)
        return out
    if there == here:
        return []
    name = path.split(".", 1)[-1] or "run"  # task.data.train -> data.train, train.steps -> steps
    if name == "data_fingerprint":
        return ["the data's contents differ"]
    if None in (there, here) and isinstance(there if here is None else here, dict):  # a whole part one side lacks
        given, none = ("given", "none") if here is None else ("none", "given")
        return [f"{name} {given} {sides[0]}, {none} {sides[1]}"]
    return [f"{name} {short_json(plain(there))} {sides[0]}, {short_json(plain(here))} {sides[1]}"]


# what a reader weighs first when two sweeps differ: the data, then what is measured (loss, metric),
# then how it is trained (steps, batch size, clipping, seeds: any part not named here), then the model
_WEIGHTS = {"data": 0, "the data's contents differ": 0, "loss": 1, "metric": 1, "task": 3, "model": 4,
            "framework": 4, "parameters": 4, "model_shapes": 5, "model_fingerprint": 5}


def by_weight(differences: list[str]) -> list[str]:
    """Phrases of :func:`differences` ordered by what decides most (data,
    loss and metric, training; the model's name and fingerprints last), ties kept in order."""
    def weight(phrase: str) -> int:
        return _WEIGHTS.get(phrase, _WEIGHTS.get(phrase.split(" ", 1)[0].split(".", 1)[0], 2))

    return sorted(differences, key=weight)


def in_brief(there: Any, here: Any, shown: int = 2) -> str:
    """The ``shown`` most decisive :func:`differences` of two run descriptions, for one line,
    and how many more there are."""
    found = by_weight(differences(there, here))
    more = f"; and {len(found) - shown} more" if len(found) > shown else ""
    return "; ".join(found[:shown]) + more


META_BYTES = 1 << 20  # a stream's meta is a few kB; a larger NAME.meta.json is something else


def is_stream_meta_or_absent(path: Path) -> bool:
    """Whether a stream may write its meta to ``path`` (``NAME.meta.json``): nothing is there,
    or a streamed sweep's meta (small, no records). A sweep's ``.json`` results so named, or
    any file of the user's, may hold results."""
    try:
        if not path.is_file():
            return True
        size = path.stat().st_size
    except OSError:  # cannot even be looked up (a name too long): writing it says why
        return True
    try:
        found = json.loads(path.read_bytes()) if size <= META_BYTES else None
    except (OSError, ValueError):
        found = None
    return (isinstance(found, dict) and "results" not in found
            and str(found.get("format", "")).startswith("epsweep-stream/"))
