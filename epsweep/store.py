"""Keeping results: atomic files, streamed ``.jsonl`` sweeps that survive interruption and
resume, and reading saved results back.

A streamed file starts with one ``{"meta": {...}}`` line (the run description that resume
checks, plus what ``epsweep report`` shows in its title), then one record per line, written
and flushed as each chunk of settings finishes. ``.json`` and ``.csv`` files are written
whole, atomically (a temporary file in the same directory, then a rename).

Settings are identified by :data:`SETTING_KEYS`. Resume trains only the settings missing from
the file, in chunks of the same size as the interrupted run (the file records it): the engine
is bitwise deterministic per (seed, setting) for a fixed chunk size, whichever other settings
share the chunk, but a different chunk size changes float rounding, which chaotic settings
(high lr, tiny eps) amplify over training.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime
import hashlib
import json
import math
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from epsweep.errors import UserError
from epsweep.results import METRICS, render_machine

STREAM_FORMAT = "epsweep-stream/1"
SETTING_KEYS = ("eps", "decay", "lr", "momentum", "optimizer", "convention")
SETTING_DEFAULTS = {"momentum": 0.0, "optimizer": "rmsprop", "convention": "optax"}
STREAM_CHUNKS = 8  # with no --chunk-size, a streamed sweep arrives in about this many pieces

# Every write to a results file holds this lock, so a signal handler that exits the process
# (see exit_on_interrupt) never leaves half a line behind.
_WRITE_LOCK = threading.RLock()

Key = tuple


def setting_key(record: dict) -> Key:
    """What identifies a setting within a run: its axes, optimizer and convention."""
    return tuple(record.get(k, SETTING_DEFAULTS.get(k)) for k in SETTING_KEYS)


# --- atomic files -------------------------------------------------------------------------


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: Path, data: str | bytes | Callable[[Path], None]) -> None:
    """Write ``path`` all at once: a temporary file beside it, flushed to disk, then renamed
    over it. ``data`` is the text or bytes, or a function that writes a given path.

    Raises OSError; the target is never left half-written. A symbolic link is followed (the
    file it points to is replaced); a device or pipe (``/dev/stdout``) is simply written to.
    """
    path = Path(os.path.realpath(path))
    if path.exists() and not path.is_file():
        with _WRITE_LOCK:
            if callable(data):
                data(path)
            else:
                with open(path, "wb") as f:
                    f.write(data.encode() if isinstance(data, str) else data)
        return
    with _WRITE_LOCK:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
        try:
            if callable(data):
                os.close(fd)
                fd = -1
                data(Path(tmp))
                fd = os.open(tmp, os.O_RDONLY)
            else:
                payload = data.encode() if isinstance(data, str) else data
                view = memoryview(payload)
                while view:
                    view = view[os.write(fd, view):]
            os.fsync(fd)
            os.close(fd)
            fd = -1
            mode = path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_umask()
            os.chmod(tmp, mode)
            os.replace(tmp, path)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def save_results(path: Path, fmt: str, meta: dict, records: Sequence[dict]) -> None:
    """Write records to ``path`` in ``fmt`` (csv, json or jsonl) atomically.

    If that fails (disk full, path gone), the results go to a file in the temporary directory
    instead and the UserError says where: finished results are never thrown away.
    """
    text = render_machine(fmt, meta, records)
    try:
        write_atomic(path, text)
    except OSError as e:
        reason = e.strerror or str(e)
        try:
            fd, fallback = tempfile.mkstemp(prefix="epsweep-results-", suffix=f".{fmt}")
            with os.fdopen(fd, "w") as f:
                f.write(text)
        except OSError:
            raise UserError(f"--output: cannot write {path}: {reason}") from None
        raise UserError(f"--output: cannot write {path}: {reason}; the results were saved to {fallback}") from None


def check_writable(path: Path, option: str = "--output") -> None:
    """Refuse early (before any training) an output path that cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{option}: {path} is a directory")
    if path.exists() and not path.is_file():  # a device or pipe such as /dev/stdout
        if not os.access(path, os.W_OK):
            raise UserError(f"{option}: {path} is not writable")
        return
    path = Path(os.path.realpath(path)) if path.is_symlink() else path
    parent = path.parent
    if not parent.exists():
        raise UserError(f"{option}: directory {parent} does not exist")
    if not parent.is_dir():
        raise UserError(f"{option}: {parent} is not a directory")
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"{option}: {path} is not writable")
    try:  # the real test: can a file be created beside it (read-only file systems, ACLs)?
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as e:
        raise UserError(f"{option}: cannot write in {parent}: {e.strerror or e}") from None


# --- the run description --------------------------------------------------------------------


def _fingerprint_update(digest, array: np.ndarray) -> None:
    array = np.ascontiguousarray(array)
    digest.update(f"{array.dtype.str}{array.shape}".encode())
    if array.nbytes > 64 << 20 and array.ndim and len(array) > 1:  # big: every k-th row
        array = np.ascontiguousarray(array[:: math.ceil(array.nbytes / (64 << 20))])
    digest.update(array.tobytes())


def data_fingerprint(task) -> str | None:
    """A short hash of the task's data (and constants, e.g. pretrained weights)."""
    import jax

    arrays = []
    if task.data is not None:
        arrays += [task.data.x_train, task.data.y_train, task.data.x_val, task.data.y_val]
    if getattr(task, "constants", None) is not None:
        arrays += [np.asarray(leaf) for leaf in jax.tree.leaves(task.constants)]
    if not arrays:
        return None
    digest = hashlib.blake2b(digest_size=12)
    for array in arrays:
        _fingerprint_update(digest, np.asarray(array))
    return digest.hexdigest()


def _plain(value: Any) -> Any:
    """JSON-shaped (tuples become lists) so that a description compares equal after a round trip."""
    return json.loads(json.dumps(value, default=str))


def run_description(task, config) -> dict:
    """Everything that decides a setting's numbers apart from the setting itself: the task
    and its data, the resolved training settings (steps, batch size, ...) and the seeds.

    Two runs with equal descriptions produce interchangeable records, so one can resume the
    other. The data is compared by content, not by the path it was loaded from.
    """
    described = task.describe()
    data = described.get("data")
    if isinstance(data, dict):
        described["data"] = {k: v for k, v in data.items() if k != "name"}
    train = config.train_settings(task, config.conventions[0])
    fixed = {k: v for k, v in dataclasses.asdict(train).items()
             if k not in ("convention", "optimizer")}
    fixed["centered"] = config.centered
    return _plain({
        "task": described,
        "task_key": repr(task.key),
        "data_fingerprint": data_fingerprint(task),
        "train": fixed,
        "seeds": list(range(config.first_seed, config.first_seed + config.seeds)),
    })


def _differences(there: Any, here: Any, path: str = "") -> list[str]:
    if isinstance(there, dict) and isinstance(here, dict):
        out = []
        for key in list(dict.fromkeys([*there, *here])):
            out += _differences(there.get(key), here.get(key), f"{path}.{key}" if path else key)
        return out
    if there == here:
        return []

    def show(v):
        text = json.dumps(v)
        return text if len(text) <= 40 else text[:37] + "..."

    name = path.split(".", 1)[-1]  # task.data.train -> data.train, train.steps -> steps
    if name == "data_fingerprint":
        return ["the data's contents differ"]
    return [f"{name} {show(there)} in the file, {show(here)} now"]


def stream_header(task, grid, config, description: dict, chunk_size: int) -> dict:
    """The first line of a streamed file: the run description plus what a report shows."""
    train = config.train_settings(task, config.conventions[0])
    return _plain({
        "format": STREAM_FORMAT,
        **task.describe(),
        "steps": train.steps,
        "batch_size": train.batch_size if task.data is not None else None,
        "seeds": description["seeds"],
        "conventions": list(config.conventions),
        "optimizers": list(dict.fromkeys(getattr(config, "optimizers", ("rmsprop",)))),
        "centered": config.centered,
        "grid": {axis: list(getattr(grid, axis)) for axis in ("eps", "decay", "lr", "momentum")},
        "settings": len(grid) * len(config.programs()),
        "chunk_size": chunk_size,
        "started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "run": description,
    })


def default_stream_chunk(settings: int) -> int:
    """About :data:`STREAM_CHUNKS` pieces of ``settings``, so that records arrive progressively
    at little cost."""
    return max(1, math.ceil(settings / STREAM_CHUNKS))


def stream_chunk(task, config, settings: int) -> int:
    """Settings per compiled call when streaming with no --chunk-size: about
    :data:`STREAM_CHUNKS` pieces, but never more than the engine would put in one call for
    memory (or, on CPU, cache) reasons. Process 0's value in every process."""
    from epsweep.sweep import planned_chunk_size

    return min(default_stream_chunk(settings), planned_chunk_size(task, config, settings))


# --- reading results files ----------------------------------------------------------------


@dataclasses.dataclass
class Loaded:
    """A results file read back: its meta (``{}`` when it has none), records, and notes
    about anything skipped (a truncated last line)."""

    path: Path
    meta: dict
    records: list[dict]
    notes: list[str]
    valid_bytes: int | None = None  # jsonl: the length of the whole, readable lines


_NUMBER_FIELDS = ("eps", "decay", "lr", "momentum")
_OPTIONAL_NUMBERS = tuple(f for m in METRICS for f in (m, f"{m}_std"))  # a number or null
_COUNT_FIELDS = ("diverged_seeds", "seeds")  # whole numbers >= 0
MAX_JSON_DEPTH = 64  # an epsweep file nests about 5 deep
MAX_MAGNITUDE = 1e300  # beyond it differences and scales overflow; no sweep makes such numbers


class NotReadable(ValueError):
    """Valid JSON that is no results file: nested too deep, or a number beyond ±1e300."""


def _reject_constant(name: str):
    raise ValueError(f"{name} is not allowed (missing numbers are written as null)")


def _json_loads(text: str) -> Any:
    """Parse JSON text; :class:`NotReadable` for what parses but no results file holds
    (1e400 parses as infinity, a 400-digit integer fits no float, deep nesting recurses)."""
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise NotReadable(f"nested more than {MAX_JSON_DEPTH} levels deep") from None
    if isinstance(value, (dict, list)):
        problem = _json_problem(value)
        if problem:
            raise NotReadable(problem)
    return value


def _json_problem(document: dict | list) -> str | None:
    """What makes a parsed document unusable, or None: nesting deeper than
    :data:`MAX_JSON_DEPTH`, or a number beyond :data:`MAX_MAGNITUDE` (named by its place)."""
    stack: list[tuple[Any, int, tuple]] = [(document, 1, ())]
    while stack:
        item, depth, place = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return f"nested more than {MAX_JSON_DEPTH} levels deep"
        for key, value in item.items() if isinstance(item, dict) else enumerate(item):
            kind = type(value)
            if kind is dict or kind is list:
                stack.append((value, depth + 1, (place, key)))
            elif (kind is float or kind is int) and not abs(value) <= MAX_MAGNITUDE:
                return f"{_place_text((place, key))} is a number beyond ±1e300"
    return None


def _place_text(place: tuple) -> str:
    keys = []
    while place:
        place, key = place
        keys.append(key)
    text = ""
    for key in reversed(keys):
        text += f"[{key}]" if isinstance(key, int) else (f".{key}" if text else str(key))
    return text or "a value"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_finite(value: Any) -> bool:
    """A number (not a bool) within ±:data:`MAX_MAGNITUDE`: finite, and so are differences."""
    return _is_number(value) and abs(value) <= MAX_MAGNITUDE


def check_record(record: Any, where: str) -> dict:
    """Validate one record read from a file (``where`` names it in messages); fill in the
    optional setting fields older or other files may lack."""
    if not isinstance(record, dict):
        raise UserError(f"{where}: a record must be a JSON object, not {type(record).__name__}")
    missing = [k for k in ("eps", "decay", "lr", "final_loss", "diverged") if k not in record]
    if missing:
        raise UserError(f"{where}: record has no {', '.join(missing)}")
    for key, default in SETTING_DEFAULTS.items():
        record.setdefault(key, default)
    for key in _NUMBER_FIELDS:
        if not _is_finite(record[key]):
            raise UserError(f"{where}: {key} must be a finite number, not {_shown(record[key])}")
    for key, value in record.items():
        if key in _NUMBER_FIELDS or key == "loss_curve" or value is None or isinstance(value, (str, bool)):
            continue
        if _is_number(value):
            if not _is_finite(value):
                raise UserError(f"{where}: {key} is {_shown(value)}; missing numbers must be null")
        elif not isinstance(value, (dict, list)):
            raise UserError(f"{where}: {key} has an unexpected value {_shown(value)}")
    for key in _OPTIONAL_NUMBERS:
        if record.get(key) is not None and not _is_number(record[key]):
            raise UserError(f"{where}: {key} must be a number or null, not {_shown(record[key])}")
    if not isinstance(record["diverged"], bool):
        raise UserError(f"{where}: diverged must be true or false, not {_shown(record['diverged'])}")
    if not isinstance(record.get("convention"), str) or not isinstance(record.get("optimizer"), str):
        raise UserError(f"{where}: convention and optimizer must be names")
    curve = record.get("loss_curve")
    if curve is not None:
        if not isinstance(curve, list) or not all(v is None or _is_finite(v) for v in curve):
            raise UserError(f"{where}: loss_curve must be a list of numbers")
    record.setdefault("diverged_seeds", int(record["diverged"]))
    record.setdefault("diverged_step", None)
    record.setdefault("seeds", 1)
    for key in (*_COUNT_FIELDS, "diverged_step"):
        value = record[key]
        if value is None and key == "diverged_step":
            continue
        if not (_is_finite(value) and value >= 0 and float(value).is_integer()):
            rule = "a whole number >= 0" + (" or null" if key == "diverged_step" else "")
            raise UserError(f"{where}: {key} must be {rule}, not {_shown(value)}")
        record[key] = int(value)
    return record


def _shown(value: Any, limit: int = 40) -> str:
    """``repr`` of a value read from a file, cut short (a crafted value may be huge)."""
    big_int = isinstance(value, int) and abs(value) > 10**20
    text = f"an integer of {len(str(abs(value)))} digits" if big_int else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_stream(path: Path) -> Loaded:
    """Read a ``.jsonl`` results file: an optional ``{"meta": ...}`` first line, then records.

    A last line with no newline (the process died mid-write) is skipped with a note; any
    other unreadable line is an error naming it.
    """
    raw = _read_bytes(path)
    meta: dict = {}
    records: list[dict] = []
    notes: list[str] = []
    offset = 0
    lines = raw.split(b"\n")
    for number, line in enumerate(lines, start=1):
        last = number == len(lines)
        if last and line.strip():  # no newline after it: cut off mid-write
            notes.append(f"{path}: skipped a truncated last line (line {number})")
            break
        if last:
            break
        offset += len(line) + 1
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        value = _parse_json(line, where)
        if isinstance(value, dict) and set(value) == {"meta"}:
            if records or meta:
                raise UserError(f"{where}: a meta line can only be the first line")
            if not isinstance(value["meta"], dict):
                raise UserError(f"{where}: meta must be a JSON object")
            meta = value["meta"]
            continue
        records.append(check_record(value, where))
    return Loaded(Path(path), meta, records, notes, valid_bytes=offset)


def _short(error: Exception) -> str:
    return str(error).split("\n")[0][:120]


def _parse_json(raw: bytes, where: str) -> Any:
    """``raw`` as UTF-8 JSON, or a UserError naming ``where`` and what is wrong."""
    try:
        return _json_loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{where}: not UTF-8 text") from None
    except NotReadable as e:
        raise UserError(f"{where}: {e}") from None
    except ValueError as e:
        raise UserError(f"{where}: not valid JSON ({_short(e)})") from None


def _check_file(path: Path) -> None:
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if path.is_dir():
        raise UserError(f"{path}: is a directory, not a results file")


def _read_bytes(path: Path) -> bytes:
    path = Path(path)
    _check_file(path)
    try:
        return path.read_bytes()
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None


def _read_json(path: Path) -> Loaded:
    raw = _read_bytes(path)
    if not raw.strip():
        raise UserError(f"{path}: file is empty")
    document = _parse_json(raw, str(path))
    if isinstance(document, list):
        meta, results = {}, document
    elif isinstance(document, dict) and "results" in document:
        meta, results = document.get("meta") or {}, document["results"]
    else:
        raise UserError(f"{path}: expected {{\"meta\": ..., \"results\": [...]}} as written by epsweep --format json")
    if not isinstance(meta, dict) or not isinstance(results, list):
        raise UserError(f"{path}: meta must be an object and results a list")
    records = [check_record(r, f"{path}, result {i + 1}") for i, r in enumerate(results)]
    return Loaded(Path(path), meta, records, [])


_CSV_INTS = ("diverged_seeds", "diverged_step", "seeds")


def _read_csv(path: Path) -> Loaded:
    raw = _read_bytes(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    rows = list(csv.reader(text.splitlines()))
    if not rows:
        raise UserError(f"{path}: file is empty")
    header = rows[0]
    records = []
    for number, row in enumerate(rows[1:], start=2):
        where = f"{path}, line {number}"
        if not row:
            continue
        if len(row) != len(header):
            raise UserError(f"{where}: {len(row)} cells but the header has {len(header)}")
        record: dict[str, Any] = {}
        for name, cell in zip(header, row, strict=True):
            record[name] = _csv_value(name, cell, where)
        records.append(check_record(record, where))
    return Loaded(Path(path), {}, records, [])


def _csv_value(name: str, cell: str, where: str) -> Any:
    cell = cell.strip()
    if cell == "":
        return None
    if name in ("convention", "optimizer"):
        return cell
    if cell in ("True", "False", "true", "false"):
        return cell.lower() == "true"
    try:
        value = float(cell)
    except ValueError:
        if name in _NUMBER_FIELDS or name in _CSV_INTS or name.endswith(("_loss", "_accuracy", "_std")):
            raise UserError(f"{where}: {name} {cell!r} is not a number") from None
        return cell
    if cell.lower().lstrip("+-") in ("nan", "inf", "infinity"):
        raise UserError(f"{where}: {name} is {cell}; missing numbers must be empty cells")
    if not abs(value) <= MAX_MAGNITUDE:  # 1e400 reads as infinity
        raise UserError(f"{where}: {name} {_shown(cell)} is a number beyond ±1e300")
    return int(value) if name in _CSV_INTS and value.is_integer() else value


def read_results(path: Path) -> Loaded:
    """Read a results file written by epsweep: ``.json``, ``.jsonl`` or ``.csv``."""
    path = Path(path)
    _check_file(path)  # missing or a directory: say so before anything about its format
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        loaded = read_stream(path)
        if not loaded.records and not loaded.meta:
            raise UserError(f"{path}: file is empty")
    elif suffix == ".json":
        loaded = _read_json(path)
    elif suffix == ".csv":
        loaded = _read_csv(path)
    else:
        raise UserError(f"{path}: cannot tell the format (expected .json, .jsonl or .csv)")
    loaded.meta, notes = clean_meta(loaded.meta, str(path))
    loaded.notes += notes
    return loaded


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
            text = json.dumps(value)
            text = text if len(text) <= 40 else text[:37] + "..."
            notes.append(f"{where}: ignored meta {key} {text} (expected {check[1]})")
    return kept, notes


# --- streaming sweeps -------------------------------------------------------------------------


def save_partial(task, grid, config, records: Sequence[dict], chunk_size: int, near: Path | None = None) -> Path:
    """Save the finished records of a sweep that stopped before its end (Ctrl-C, out of memory)
    and was not streamed, as a streamed file that ``--output FILE --resume`` finishes.

    The file goes beside ``near`` (``NAME.partial.jsonl``) when given and writable, else to the
    temporary directory. Its header records the chunk size the sweep used, so a resumed run
    trains the missing settings in the same shapes (``chunk_size``: settings per compiled call
    in the sweep). Raises OSError when nothing can be written.
    """
    header = stream_header(task, grid, config, run_description(task, config), chunk_size)
    text = "".join(json.dumps(line, allow_nan=False) + "\n" for line in [{"meta": header}, *records])
    if near is not None:
        target = near.with_name(f"{near.stem}.partial.jsonl")
        try:
            write_atomic(target, text)
            return target
        except OSError:
            pass
    fd, name = tempfile.mkstemp(prefix="epsweep-partial-", suffix=".jsonl")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return Path(name)


class SweepInterrupted(KeyboardInterrupt):
    """A streamed sweep stopped by Ctrl-C; what had finished is in the file."""

    def __init__(self, saved: int, total: int, path: Path | None):
        super().__init__(saved, total, path)
        self.saved, self.total, self.path = saved, total, path

    def __str__(self) -> str:
        return interrupted_message(self.saved, self.total, self.path)


def interrupted_message(saved: int, total: int, path: Path | None, file_fmt: str | None = "jsonl") -> str:
    if path is None:
        return "interrupted; nothing saved (stream results with --output FILE.jsonl to keep them)"
    if file_fmt != "jsonl":
        return f"interrupted; nothing saved ({path} is written at the end; use a .jsonl --output to stream)"
    return f"interrupted; {saved} of {total} settings saved to {path} (resume with --resume)"


class _Stream:
    """Appends records to a streamed file, a whole chunk per write, flushed at once."""

    def __init__(self, path: Path, header: dict | None, truncate_at: int | None):
        self.path = path
        with _WRITE_LOCK:
            if header is not None:
                self.file = open(path, "wb")
                self.file.write((json.dumps({"meta": header}, allow_nan=False) + "\n").encode())
            else:
                self.file = open(path, "r+b")
                self.file.truncate(truncate_at)
                self.file.seek(0, os.SEEK_END)
            self.file.flush()

    def write(self, records: Sequence[dict]) -> None:
        text = "".join(json.dumps(r, allow_nan=False) + "\n" for r in records).encode()
        with _WRITE_LOCK:
            self.file.write(text)
            self.file.flush()

    def close(self) -> None:
        with _WRITE_LOCK, contextlib.suppress(OSError):  # a failed write was reported already
            if not self.file.closed:
                self.file.close()


def stream_sweep(
    task,
    grid=None,
    config=None,
    path: Path | str = "sweep.jsonl",
    *,
    resume: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
    on_saved: Callable[[int, int], None] | None = None,
):
    """:func:`epsweep.sweep`, writing each record to ``path`` (jsonl) as its chunk finishes.

    With ``resume``, settings already in ``path`` (from a run with the same description) are
    not trained again; the file is then rewritten in grid order, so it equals the file of an
    uninterrupted run. Without ``resume``, a file holding part of this same run is refused
    rather than overwritten. ``on_saved(saved, total)`` follows what is on disk. Ctrl-C raises
    :class:`SweepInterrupted` after closing the file.
    """
    from epsweep.grid import Grid
    from epsweep.sweep import RunConfig, sweep

    path = Path(path)
    grid = grid or Grid()
    config = config or RunConfig()
    programs = config.programs()
    settings = grid.settings()
    order = [setting_key({**s, "optimizer": o, "convention": c}) for o, c in programs for s in settings]
    wanted = set(order)
    total = len(order)
    description = run_description(task, config)
    check_writable(path)

    existing = None
    if path.exists() and path.stat().st_size > 0:
        try:
            existing = read_stream(path)
        except UserError:
            if resume:
                raise
    if existing is not None and existing.meta.get("format") != STREAM_FORMAT:
        if resume:
            raise UserError(f"--resume: {path} is not a streamed epsweep sweep (no meta line)")
        existing = None
    done: dict[Key, dict] = {}
    extras: list[dict] = []
    if existing is not None:
        same_run = existing.meta.get("run") == description
        in_grid = {setting_key(r) for r in existing.records} & wanted
        if resume and not same_run:
            diff = _differences(existing.meta.get("run"), description)
            raise UserError(f"--resume: {path} comes from a different run ({'; '.join(diff[:2])})")
        if not resume and same_run and 0 < len(in_grid) < total:
            raise UserError(f"--output: {path} holds {len(in_grid)} of {total} settings of this run; "
                            f"add --resume to finish it, or remove the file to start over")
        if resume:
            seen: set[Key] = set()
            for record in existing.records:  # the first record of a setting wins
                key = setting_key(record)
                if key in seen:
                    continue
                seen.add(key)
                if key in wanted:
                    done[key] = record
                else:
                    extras.append(record)
    chunk = config.chunk_size
    if chunk is None and resume and existing is not None:
        chunk = existing.meta.get("chunk_size")
    if not isinstance(chunk, int) or chunk < 1:
        chunk = stream_chunk(task, config, len(settings))
    config = dataclasses.replace(config, chunk_size=chunk)

    # Which settings to train: the missing ones, topped up with finished ones where fewer
    # than a chunk are missing, so that every compiled call has the interrupted run's shape
    # (the engine rounds the chunk up to a multiple of the device count and uses no more
    # devices than there are settings).
    import jax

    devices = len(jax.devices())
    per_call = min(math.ceil(chunk / devices) * devices, len(settings))
    train: set[Key] = set()
    for o, c in programs:
        keys = [setting_key({**s, "optimizer": o, "convention": c}) for s in settings]
        missing = [k for k in keys if k not in done]
        if missing:
            fill = [k for k in keys if k in done][: max(0, per_call - len(missing))]
            train.update(missing, fill)

    header = stream_header(task, grid, config, description, chunk)
    resuming = existing is not None and resume
    try:
        stream = _Stream(path, None if resuming else header, existing.valid_bytes if resuming else None)
    except OSError as e:
        raise UserError(f"--output: cannot write {path}: {e.strerror or e}") from None
    new: dict[Key, dict] = {}
    saved = len(done)
    if on_saved is not None:
        on_saved(saved, total)

    def write(chunk_records: list[dict]) -> None:
        nonlocal saved
        fresh = [r for r in chunk_records if (k := setting_key(r)) not in done and k not in new]
        if not fresh:
            return
        try:
            stream.write(fresh)
        except OSError as e:
            raise UserError(f"--output: cannot write {path}: {e.strerror or e} "
                            f"({saved} of {total} settings were saved before)") from None
        for record in fresh:
            new[setting_key(record)] = record
        saved += len(fresh)
        if on_saved is not None:
            on_saved(saved, total)

    try:
        result = sweep(task, grid, config, progress=progress, on_records=write,
                       select=lambda s: setting_key(s) in train)
    except KeyboardInterrupt:
        stream.close()
        raise SweepInterrupted(saved, total, path) from None
    finally:
        stream.close()
    records = [done.get(k) or new[k] for k in order]
    if resuming and (new or existing.notes or len(existing.records) != len(done) + len(extras)):
        # Rewrite in grid order: the file now equals that of an uninterrupted run.
        lines = [json.dumps({"meta": header}, allow_nan=False)] + [json.dumps(r, allow_nan=False)
                                                                    for r in records + extras]
        try:
            write_atomic(path, "\n".join(lines) + "\n")
        except OSError as e:
            raise UserError(f"--output: cannot rewrite {path} in order: {e.strerror or e} "
                            f"(all {len(records)} records are in it, unordered)") from None
    new_keys = set(new)
    result.records = records
    result.runs = [r for r in result.runs if setting_key(r) in new_keys]
    result.meta.update(settings=total, trained=len(new), resumed=len(done), chunk_size=chunk, output=str(path))
    return result


# --- Ctrl-C while a compiled program runs ---------------------------------------------------


@contextlib.contextmanager
def exit_on_interrupt(message: Callable[[], str], cleanup: Callable[[], None] | None = None) -> Iterator[None]:
    """For command-line use: on SIGINT (or SIGTERM), exit the process at once with code 130
    (143), printing ``epsweep: <message()>`` on stderr, even while a compiled program runs.

    A compiled XLA call does not return to Python until it finishes, so the usual
    KeyboardInterrupt would wait for the whole chunk. Here the signal wakes a thread instead,
    which waits for any results-file write to complete (never half a line), runs ``cleanup``
    (e.g. stop a progress bar) and calls ``os._exit``. Only in the main thread; elsewhere it
    does nothing and Ctrl-C behaves as usual.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.getsignal(s) for s in signals}

    def watch() -> None:
        while True:
            try:
                data = os.read(read_fd, 64)
            except OSError:
                return
            if not data:
                return
            for number in data:
                if number in signals:
                    _exit_now(number, message, cleanup)

    for s in signals:
        signal.signal(s, lambda *_: None)  # the watcher acts; the main thread carries on
    old_wakeup = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    watcher = threading.Thread(target=watch, name="epsweep-interrupt", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(old_wakeup)
        for s, handler in previous.items():
            signal.signal(s, handler)
        os.close(write_fd)
        watcher.join(timeout=5)
        os.close(read_fd)


def _exit_now(number: int, message: Callable[[], str], cleanup: Callable[[], None] | None) -> None:
    with _WRITE_LOCK:  # held for good: no write can start after this
        if cleanup is not None:
            helper = threading.Thread(target=cleanup, daemon=True)
            helper.start()
            helper.join(timeout=1)
        try:
            text = message()
        except Exception:  # noqa: BLE001 - the exit must happen whatever went wrong
            text = "interrupted"
        if number != signal.SIGINT:
            text = text.replace("interrupted", "terminated", 1)
        with contextlib.suppress(OSError):
            sys.stderr.flush()
            os.write(2, f"epsweep: {text}\n".encode())
        os._exit(128 + number)
