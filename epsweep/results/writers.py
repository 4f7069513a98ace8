"""Where a sweep's records go: small writer objects behind one interface, as clu's metric writers.

The runner calls, for every writer it was given::

    writer.open(meta)        # before training: claim the target, write a header
    writer.write(records)    # each chunk's finished records, as soon as they exist
    writer.close(result)     # at the end, with the whole result (records in grid order)
    writer.abort()           # instead of close, when the sweep stopped early

:class:`JsonlWriter` streams (a record per line, flushed per chunk) and can resume;
:class:`JsonWriter` and :class:`CsvWriter` write whole files atomically at the end;
:class:`MemoryWriter` keeps the records in a list. A writer to a file holds a
:class:`~epsweep.results.files.FileClaim` on it from ``open`` to ``close``/``abort``, so two
sweeps never write one file at once.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from epsweep.errors import UserError, param
from epsweep.results.files import WRITE_LOCK, FileClaim, check_writable, write_atomic, write_or_keep
from epsweep.results.formats import dumps, render_machine
from epsweep.results.reading import STREAM_FORMAT, Loaded, read_stream
from epsweep.results.records import SettingKey, setting_key


class Writer(Protocol):
    """What the runner needs of a destination for records."""

    streams: bool  # True when each write() is on disk at once (nothing to save on interruption)

    def open(self, meta: dict) -> None: ...

    def write(self, records: Sequence[dict]) -> None: ...

    def close(self, result: Any) -> None: ...

    def abort(self) -> None: ...


class MemoryWriter:
    """Keeps every record it is given, in arrival order, in :attr:`records`.

    Example:
        >>> from epsweep import Grid, RunConfig, run
        >>> kept = MemoryWriter()
        >>> _ = run("quadratic", Grid(eps=(1e-8, 1.0)), RunConfig(steps=10), writers=[kept])
        >>> [r["eps"] for r in kept.records]
        [1e-08, 1.0]
    """

    streams = False

    def __init__(self) -> None:
        self.meta: dict = {}
        self.records: list[dict] = []

    def open(self, meta: dict) -> None:
        self.meta = meta

    def write(self, records: Sequence[dict]) -> None:
        self.records.extend(records)

    def close(self, result: Any) -> None:
        self.meta = result.meta

    def abort(self) -> None:
        pass


class _WholeFileWriter:
    """A file written whole, atomically, when the sweep ends (``fmt``: json or csv)."""

    streams = False
    fmt = ""

    def __init__(self, path: Path | str, *, option: str = "output"):
        self.path = Path(path)
        self.option = option
        self._claim: FileClaim | None = None

    def open(self, meta: dict) -> None:
        check_writable(self.path, self.option)
        self._claim = FileClaim.take(self.path, self.option)

    def write(self, records: Sequence[dict]) -> None:
        pass  # the whole file is written at the end, from the result

    def close(self, result: Any) -> None:
        try:
            write_or_keep(self.path, render_machine(self.fmt, result.meta, result.records), self.fmt, self.option)
        finally:
            self.abort()

    def abort(self) -> None:
        if self._claim is not None:
            self._claim.release()
            self._claim = None


class JsonWriter(_WholeFileWriter):
    """``{"meta": ..., "results": [...]}`` in one file, written atomically at the end.

    Example:
        >>> import json, pathlib, tempfile
        >>> from epsweep import Grid, RunConfig, run
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "sweep.json"
        >>> _ = run("quadratic", Grid(eps=(1e-8,)), RunConfig(steps=10), writers=[JsonWriter(path)])
        >>> sorted(json.loads(path.read_text()))
        ['meta', 'results']
    """

    fmt = "json"


class CsvWriter(_WholeFileWriter):
    """A row per setting (no loss curves), written atomically at the end.

    Example:
        >>> import pathlib, tempfile
        >>> from epsweep import Grid, RunConfig, run
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "sweep.csv"
        >>> _ = run("quadratic", Grid(eps=(1e-8, 1.0)), RunConfig(steps=10), writers=[CsvWriter(path)])
        >>> path.read_text().splitlines()[0].split(",")[:3]
        ['eps', 'decay', 'lr']
    """

    fmt = "csv"


class JsonlWriter:
    """Streams records to a ``.jsonl`` file: a ``{"meta": ...}`` first line, then one record
    per line, each chunk written and flushed as it finishes.

    With ``resume``, :meth:`previous` returns the records already in the file (from a run with
    the same description) and :meth:`close` rewrites the file in grid order, so it equals the
    file of an uninterrupted run. Without ``resume``, a file holding part of the same run is
    refused rather than overwritten.

    Example:
        >>> import pathlib, tempfile
        >>> from epsweep import Grid, RunConfig, run
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "sweep.jsonl"
        >>> _ = run("quadratic", Grid(eps=(1e-8,)), RunConfig(steps=10), writers=[JsonlWriter(path)])
        >>> more = Grid(eps=(1e-8, 1.0))  # the grid grew: resume trains only the new setting
        >>> writer = JsonlWriter(path, resume=True)
        >>> again = run("quadratic", more, RunConfig(steps=10), writers=[writer], resume=True)
        >>> again.meta["trained"], again.meta["resumed"]
        (1, 1)
    """

    streams = True

    def __init__(self, path: Path | str, *, resume: bool = False, option: str = "output"):
        self.path = Path(path)
        self.resume = resume
        self.option = option
        self.existing: Loaded | None = None
        self.saved = 0
        self._file = None
        self._claim: FileClaim | None = None
        self._resuming = False
        self._extras: list[dict] = []
        self._done = 0
        self._meta: dict = {}

    # -- resume ----------------------------------------------------------------------------

    def previous(self, description: dict, wanted: set[SettingKey]) -> dict[SettingKey, dict]:
        """Records already in the file for settings in ``wanted`` (first record of a setting
        wins), when resuming a run with this ``description``; ``{}`` otherwise. Raises a
        UserError when the file cannot be resumed, or holds part of this run and
        ``resume`` is off."""
        check_writable(self.path, self.option)
        existing = None
        if self.path.exists() and self.path.stat().st_size > 0:
            try:
                existing = read_stream(self.path)
            except UserError:
                if self.resume:
                    raise
        if existing is not None and existing.meta.get("format") != STREAM_FORMAT:
            if self.resume:
                raise UserError(f"{param('resume')}: {self.path} is not a streamed epsweep sweep (no meta line)")
            existing = None
        if existing is None:
            return {}
        same_run = existing.meta.get("run") == description
        in_grid = {setting_key(r) for r in existing.records} & wanted
        if self.resume and not same_run:
            diff = differences(existing.meta.get("run"), description)
            raise UserError(f"{param('resume')}: {self.path} comes from a different run ({'; '.join(diff[:2])})")
        if not self.resume and same_run and 0 < len(in_grid) < len(wanted):
            raise UserError(f"{param(self.option)}: {self.path} holds {len(in_grid)} of {len(wanted)} settings of "
                            f"this run; add {param('resume')} to finish it, or remove the file to start over")
        if not self.resume:
            return {}
        self.existing = existing
        done: dict[SettingKey, dict] = {}
        for record in existing.records:
            key = setting_key(record)
            if key in done or any(setting_key(e) == key for e in self._extras):
                continue
            if key in wanted:
                done[key] = record
            else:
                self._extras.append(record)
        self.saved = self._done = len(done)
        return done

    # -- writing ---------------------------------------------------------------------------

    def open(self, meta: dict) -> None:
        check_writable(self.path, self.option)
        self._claim = FileClaim.take(self.path, self.option)
        self._resuming = self.existing is not None
        self._meta = meta
        try:
            with WRITE_LOCK:
                if self._resuming:
                    self._file = open(self.path, "r+b")
                    self._file.truncate(self.existing.valid_bytes)
                    self._file.seek(0, os.SEEK_END)
                else:
                    self._file = open(self.path, "wb")
                    self._file.write((dumps({"meta": meta}) + "\n").encode())
                self._file.flush()
        except OSError as e:
            self.abort()
            raise UserError(f"{param(self.option)}: cannot write {self.path}: {e.strerror or e}") from None

    def write(self, records: Sequence[dict]) -> None:
        text = "".join(dumps(r) + "\n" for r in records).encode()
        try:
            with WRITE_LOCK:
                self._file.write(text)
                self._file.flush()
        except OSError as e:
            raise UserError(f"{param(self.option)}: cannot write {self.path}: {e.strerror or e} "
                            f"({self.saved} settings were saved before)") from None
        self.saved += len(records)

    def close(self, result: Any) -> None:
        try:
            self._close_file()
            old = self.existing
            reordered = self._resuming and (result.meta.get("trained") or old.notes
                                            or len(old.records) != self._done + len(self._extras))
            if reordered:  # rewrite in grid order: the file now equals that of an uninterrupted run
                lines = [dumps({"meta": self._meta})] + [dumps(r) for r in [*result.records, *self._extras]]
                try:
                    write_atomic(self.path, "\n".join(lines) + "\n")
                except OSError as e:
                    raise UserError(f"{param(self.option)}: cannot rewrite {self.path} in order: "
                                    f"{e.strerror or e} (all {len(result.records)} records are in it, "
                                    f"unordered)") from None
        finally:
            self.abort()

    def _close_file(self) -> None:
        with WRITE_LOCK, contextlib.suppress(OSError):  # a failed write was reported already
            if self._file is not None and not self._file.closed:
                self._file.close()

    def abort(self) -> None:
        self._close_file()
        if self._claim is not None:
            self._claim.release()
            self._claim = None


def writer_for(path: Path | str, fmt: str, *, resume: bool = False) -> Writer:
    """The writer of ``fmt`` (jsonl, json or csv) for ``path``."""
    if fmt == "jsonl":
        return JsonlWriter(path, resume=resume)
    if fmt == "json":
        return JsonWriter(path)
    if fmt == "csv":
        return CsvWriter(path)
    raise ValueError(f"no writer for format {fmt!r}")


def differences(there: Any, here: Any, path: str = "") -> list[str]:
    """What differs between two run descriptions, one phrase per difference."""
    if isinstance(there, dict) and isinstance(here, dict):
        out = []
        for key in list(dict.fromkeys([*there, *here])):
            out += differences(there.get(key), here.get(key), f"{path}.{key}" if path else key)
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
