"""Reading results files back (``.jsonl``, ``.json``, ``.csv``), trusting nothing in them.

Every record is validated (:func:`check_record`); anything a crafted file could use to crash a
report or a plot (deep nesting, numbers beyond ±1e300, wrong types) is a :class:`UserError`
naming the file and line. Meta keys of the wrong type are dropped with a note.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import dataclasses
import io
import json
import re
import stat
import sys
from pathlib import Path, PurePath
from typing import Any

from epsweep.errors import UserError, looked_up
from epsweep.results.meta import META_KEYS, clean_meta  # noqa: F401 - re-exported
from epsweep.vocabulary import GRID_AXES, METRICS, SETTING_DEFAULTS, is_number

STREAM_FORMAT = "epsweep-stream/1"


@dataclasses.dataclass
class Loaded:
    """A results file read back: its meta (``{}`` when it has none), records, and notes
    about anything skipped (a truncated last line)."""

    path: Path
    meta: dict
    records: list[dict]
    notes: list[str]
    valid_bytes: int | None = None  # jsonl: the length of the whole, readable lines
    newline_missing: bool = False  # jsonl: the last of them is a whole record with no newline after it
    meta_line: bool = False  # jsonl: the meta is the file's first line (as epsweep wrote it before 0.2)

    def to_pandas(self):
        """The records as a ``pandas.DataFrame`` (pandas is optional), one row per setting."""
        from epsweep.results.records import records_frame

        return records_frame(self.records)


REQUIRED_FIELDS = ("eps", "decay", "lr", "final_loss", "diverged")  # what every record has
_NUMBER_FIELDS = GRID_AXES
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
    if isinstance(value, (dict, list)) and (problem := _json_problem(value)):
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


def _is_finite(value: Any) -> bool:
    """A number (not a bool) within ±:data:`MAX_MAGNITUDE`: finite, and so are differences."""
    return is_number(value) and abs(value) <= MAX_MAGNITUDE


def check_record(record: Any, where: str) -> dict:
    """Validate one record read from a file (``where`` names it in messages); fill in the
    optional setting fields older or other files may lack."""
    if not isinstance(record, dict):
        raise UserError(f"{where}: a record must be a JSON object, not {type(record).__name__}")
    if missing := [k for k in REQUIRED_FIELDS if k not in record]:
        raise UserError(f"{where}: record has no {', '.join(missing)}")
    for key, default in SETTING_DEFAULTS.items():
        record.setdefault(key, default)
    for key in _NUMBER_FIELDS:
        if record[key] is None and key != "lr":  # an axis the record's optimizer does not use
            continue
        if not _is_finite(record[key]):
            raise UserError(f"{where}: {key} must be a finite number, not {_shown(record[key])}")
    for key, value in record.items():
        if key in _NUMBER_FIELDS or key == "loss_curve" or value is None or isinstance(value, (str, bool)):
            continue
        if is_number(value):
            if not _is_finite(value):
                raise UserError(f"{where}: {key} is {_shown(value)}; missing numbers must be null")
        elif not isinstance(value, (dict, list)):
            raise UserError(f"{where}: {key} has an unexpected value {_shown(value)}")
    for key in _OPTIONAL_NUMBERS:
        if record.get(key) is not None and not is_number(record[key]):
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


def meta_path(path: Path) -> Path:
    """Where the meta of a ``.jsonl`` results file lives: beside it, ``NAME.meta.json`` for
    ``NAME.jsonl``. The ``.jsonl`` itself holds one record per line and nothing else, so
    ``pandas.read_json(path, lines=True)`` reads it as one row per setting."""
    path = Path(path)
    stem = path.name[: -len(".jsonl")] if path.name.lower().endswith(".jsonl") else path.name
    return path.with_name(f"{stem}.meta.json")


MAX_META_BYTES = 16 << 20  # a meta file is a few KiB


def _read_meta_file(path: Path) -> dict:
    try:
        size = path.stat().st_size
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None
    if size > MAX_META_BYTES:
        raise UserError(f"{path}: {size:,} bytes is too big for the meta of a sweep")
    meta = _parse_json(_read_bytes(path).removeprefix(codecs.BOM_UTF8), str(path))
    if not isinstance(meta, dict):
        raise UserError(f"{path}: meta must be a JSON object")
    return meta


def _has_file(path: Path) -> bool:  # a name too long for the system (NAME.meta.json is 4 bytes longer): none
    with contextlib.suppress(OSError):
        return path.is_file()
    return False


def read_stream(path: Path) -> Loaded:
    """Read a ``.jsonl`` results file: one record per line, the meta beside it in
    :func:`meta_path` (or, in files written before it moved there, on the first line as
    ``{"meta": ...}``).

    A last line with no newline is read when it is a whole record (a file cut by hand, or
    written by another tool), else skipped with a note (the process died mid-write); any other
    unreadable line is an error naming it, as is an only line with no stream meta beside it.
    """
    raw = _read_bytes(path)
    meta, meta_line, newline_missing = {}, False, False
    records: list[dict] = []
    notes: list[str] = []
    offset = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0  # an editor's byte-order mark
    lines = raw[offset:].split(b"\n")
    for number, line in enumerate(lines, start=1):
        where = f"{path}, line {number}"
        if number == len(lines):  # after the last newline
            if not line.strip():
                break
            try:
                value = check_record(_parse_json(line, where), where)
            except UserError:
                if number == 1 and not _has_file(meta_path(path)):  # no whole line, no meta: not a stream
                    raise
                notes.append(f"{path}: skipped a truncated last line (line {number})")
                break
            records.append(value)
            offset, newline_missing = offset + len(line), True
            break
        offset += len(line) + 1
        if not line.strip():
            continue
        value = _parse_json(line, where)
        if isinstance(value, dict) and set(value) == {"meta"}:
            if records or meta_line:
                raise UserError(f"{where}: a meta line can only be the first line")
            if not isinstance(value["meta"], dict):
                raise UserError(f"{where}: meta must be a JSON object")
            meta, meta_line = value["meta"], True
            continue
        records.append(check_record(value, where))
    if not meta_line and _has_file(meta_path(path)):
        try:
            meta = _read_meta_file(meta_path(path))
        except UserError as e:  # the records still read; a damaged meta (a cut copy) is left out, saying why
            notes.append(f"ignored {e.message}")
    return Loaded(Path(path), meta, records, notes, valid_bytes=offset, meta_line=meta_line,
                  newline_missing=newline_missing)


def _short(error: Exception) -> str:  # the first line of an error's text, at most 120 characters
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
        if "int_max_str_digits" in str(e):  # Python's guard against quadratic-time parsing
            raise UserError(f"{where}: a number of more than {sys.get_int_max_str_digits():,} digits") from None
        raise UserError(f"{where}: not valid JSON ({_short(e)})") from None


def _check_file(path: Path) -> None:
    status = looked_up(path, str(path))
    if status is None:
        raise UserError(f"{path}: no such file")
    if stat.S_ISDIR(status.st_mode):
        raise UserError(f"{path}: is a directory, not a results file")


def _path(path: Any) -> Path:
    if isinstance(path, (str, PurePath)):
        return Path(path)
    raise UserError(f"a results file's path, not {type(path).__name__} {path!r:.60}")


def _read_bytes(path: Path) -> bytes:
    path = _path(path)
    _check_file(path)
    try:
        return path.read_bytes()
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None


def _read_json(path: Path) -> Loaded:
    raw = _read_bytes(path).removeprefix(codecs.BOM_UTF8)
    if not raw.strip():
        raise UserError(f"{path}: file is empty")
    document = _parse_json(raw, str(path))
    if isinstance(document, list):
        meta, results = {}, document
    elif isinstance(document, dict) and "results" in document:
        meta, results = document.get("meta") or {}, document["results"]
    elif isinstance(document, dict) and document.get("format") == STREAM_FORMAT:
        raise UserError(f"{path}: the meta of a streamed sweep; read its .jsonl file (the records) instead")
    else:
        raise UserError(f"{path}: expected {{\"meta\": ..., \"results\": [...]}} as epsweep writes in JSON")
    if not isinstance(meta, dict) or not isinstance(results, list):
        raise UserError(f"{path}: meta must be an object and results a list")
    records = [check_record(r, f"{path}, result {i + 1}") for i, r in enumerate(results)]
    return Loaded(Path(path), meta, records, [])


_CSV_INTS = ("diverged_seeds", "diverged_step", "seeds", "collapsed_seeds")
_CSV_FLAGS = ("diverged", "collapsed", "at_chance")  # true or false, in any case, or 1 or 0


def _read_csv(path: Path) -> Loaded:
    raw = _read_bytes(path)
    try:
        text = raw.decode("utf-8-sig")  # Excel's "CSV UTF-8" starts with a byte-order mark
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    rows = []  # (the line a row ends on, its cells)
    try:
        for row in reader:
            rows.append((reader.line_num, row))
    except csv.Error as e:  # a cell beyond csv.field_size_limit() (128 KiB), a stray NUL, ...
        raise UserError(f"{path}, line {reader.line_num}: not readable as CSV ({e})") from None
    if not rows:
        raise UserError(f"{path}: file is empty")
    header = rows[0][1]
    missing = [name for name in REQUIRED_FIELDS if name not in header]
    if missing:
        raise UserError(f"{path}: the header row has no {', '.join(missing)} column{'s' * (len(missing) > 1)}")
    records = []
    for number, row in rows[1:]:
        where = f"{path}, line {number}"
        if not row:
            continue
        if len(row) != len(header):
            raise UserError(f"{where}: {len(row)} cells but the header has {len(header)}")
        record: dict[str, Any] = {}
        for name, cell in zip(header, row, strict=True):
            if name and not name.startswith("Unnamed: "):  # pandas' unnamed index column is left out
                record[name] = _csv_value(name, cell, where)
        records.append(check_record(record, where))
    return Loaded(Path(path), {}, records, [])


def _csv_value(name: str, cell: str, where: str) -> Any:
    cell = cell.strip()
    if cell == "":
        return None
    if name in ("convention", "optimizer"):
        return cell
    if name == "loss_curve" and cell.startswith("["):  # as pandas writes a list: [2.3, 1.1, nan]
        return _parse_json(re.sub(r"-?\b(?:nan|None|inf)\b", "null", cell).encode(), f"{where}: {name}")
    if cell.lower() in ("true", "false") or (name in _CSV_FLAGS and cell in ("0", "1")):  # Excel: TRUE, FALSE
        return cell.lower() in ("true", "1")
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


def read_results(path: Path, fmt: str | None = None) -> Loaded:
    """Read a results file written by epsweep: ``.json``, ``.jsonl`` or ``.csv``.

    Args:
        path: the file; its suffix says the format.
        fmt: ``"json"``, ``"jsonl"`` or ``"csv"`` to read it as that whatever its suffix.

    Returns:
        A :class:`Loaded`: ``meta``, ``records`` (validated; the first of each setting, as
        ``--resume`` reads them), ``notes`` on anything skipped.

    Example:
        >>> import json, pathlib, tempfile
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "r.json"
        >>> _ = path.write_text(json.dumps({"meta": {"task": "mlp"}, "results": [
        ...     {"eps": 1e-8, "decay": 0.9, "lr": 0.01, "final_loss": 0.3, "diverged": False}]}))
        >>> loaded = read_results(path)
        >>> loaded.meta["task"], loaded.records[0]["convention"]
        ('mlp', 'optax')
    """
    path = _path(path)
    _check_file(path)  # missing or a directory: say so before anything about its format
    suffix = "." + str(fmt).lower().lstrip(".") if fmt else path.suffix.lower()  # "JSONL", ".jsonl": jsonl
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
    _first_of_each_setting(loaded)
    return loaded


def _first_of_each_setting(loaded: Loaded) -> None:
    """Keep the first record of each setting, as ``--resume`` does, noting how many later
    ones were skipped (a file appended to twice, or two files joined with ``cat``) and how
    many of those differ from the first: a report of one setting twice would rank it twice."""
    from epsweep.results.records import first_of_each

    first, differing = first_of_each(loaded.records)
    skipped, differ = len(loaded.records) - len(first), len(differing)
    if not skipped:
        return
    loaded.records = list(first.values())
    plural = "s" if skipped != 1 else ""
    loaded.notes.append(f"{loaded.path}: skipped {skipped} later record{plural} of settings already read (the "
                        "first of each counts, as resuming the sweep would)"
                        + (f"; {differ} of them with other results" if differ else ""))
