"""Where a sweep's records go: small writer objects behind one interface, as clu's metric writers.

The runner calls, for every writer it was given::

    writer.prepare(run, keys)  # optional, before anything else: claim the target, check it
    writer.open(meta)          # before training: claim the target, write a header
    writer.write(records)      # each chunk's finished records, as soon as they exist
    writer.close(result)       # at the end, with the whole result (records in grid order)
    writer.abort()             # instead of close, when the sweep stopped early (or never started)

:class:`JsonlWriter` streams (a record per line, flushed per chunk) and can resume;
:class:`JsonWriter` and :class:`CsvWriter` write whole files atomically at the end;
:class:`MemoryWriter` keeps the records in a list. A writer to a file holds a
:class:`~epsweep.results.files.FileClaim` on it from ``prepare`` (or ``open``) to
``close``/``abort``, so two sweeps never write one file at once, and refuses in ``prepare`` to
replace another sweep's results unless made with ``force=True`` (see
:mod:`epsweep.results.guard`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from epsweep.errors import UserError, param
from epsweep.results.files import WRITE_LOCK, FileClaim, check_writable, write_atomic, write_or_keep
from epsweep.results.formats import dumps, render_machine
from epsweep.results.guard import check_replace, in_brief, is_stream_meta_or_absent, refusal, replace_problem
from epsweep.results.meta import short_json
from epsweep.results.reading import STREAM_FORMAT, Loaded, meta_path, read_stream
from epsweep.results.records import SettingKey, resumed_records, setting_key

log = logging.getLogger(__name__)


@runtime_checkable
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

    def __init__(self, path: Path | str, *, force: bool = False, option: str = "output"):
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix in (".csv", ".json", ".jsonl") and suffix != f".{self.fmt}":  # read back as that, it would not parse
            writer = {".csv": "CsvWriter", ".json": "JsonWriter", ".jsonl": "JsonlWriter"}[suffix]
            raise UserError(f"{self.path}: {type(self).__name__} writes .{self.fmt}; {writer} writes {suffix}")
        self.force = force
        self.option = option
        self._claim: FileClaim | None = None

    def prepare(self, run: dict, keys: set[SettingKey]) -> dict:
        """Claim the file and refuse to replace another sweep's results (unless ``force``)."""
        check_writable(self.path, self.option)
        if self._claim is None:
            self._claim = FileClaim.take(self.path, self.option)
        check_replace(self.path, run, keys, fmt=self.fmt, option=self.option, force=self.force)
        return {}

    def open(self, meta: dict) -> None:
        check_writable(self.path, self.option)
        if self._claim is None:
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
    """Streams records to a ``.jsonl`` file, one record per line, each chunk written and
    flushed as it finishes; the meta goes beside it, to ``NAME.meta.json`` (see
    :func:`~epsweep.results.reading.meta_path`), so ``pandas.read_json(path, lines=True)``
    reads one row per setting.

    With ``resume``, :meth:`prepare` returns the records already in the file (from a run with
    the same description) and :meth:`close` rewrites the file in grid order, so it equals the
    file of an uninterrupted run. Without ``resume``, a file holding part of the same run,
    another sweep's results or anything else is refused rather than replaced, unless ``force``.

    Example:
        >>> import pathlib, tempfile
        >>> from epsweep import Grid, RunConfig, run
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "sweep.jsonl"
        >>> _ = run("quadratic", Grid(eps=(1e-8,)), RunConfig(steps=10), writers=[JsonlWriter(path)])
        >>> sorted(p.name for p in path.parent.iterdir())
        ['sweep.jsonl', 'sweep.meta.json']
        >>> more = Grid(eps=(1e-8, 1.0))  # the grid grew: resume trains only the new setting
        >>> writer = JsonlWriter(path, resume=True)
        >>> again = run("quadratic", more, RunConfig(steps=10), writers=[writer], resume=True)
        >>> again.meta["trained"], again.meta["resumed"], len(path.read_text().splitlines())
        (1, 1, 2)
    """

    streams = True
    resumable = True

    def __init__(self, path: Path | str, *, resume: bool = False, force: bool = False, option: str = "output"):
        self.path = Path(path)
        if self.path.suffix.lower() in (".csv", ".json"):  # read back as that format, it would not parse
            raise UserError(f"{self.path}: JsonlWriter writes JSON lines (.jsonl); CsvWriter and JsonWriter write "
                            f"{self.path.suffix}")
        self.meta_path = meta_path(self.path)
        self.resume = resume
        self.force = force
        self.option = option
        self.existing: Loaded | None = None
        self.saved = 0
        self._file = None
        self._claim: FileClaim | None = None
        self._resuming = False
        self._extras: list[dict] = []
        self._done = 0
        self.failed = False  # a write failed: the file no longer holds every finished record

    # -- before training -------------------------------------------------------------------

    @property
    def _with_meta(self) -> bool:
        """A device or pipe (``/dev/stdout``) gets the records only, and no meta file beside it."""
        return not (self.path.exists() and not self.path.is_file())

    def _take_claim(self) -> None:
        check_writable(self.path, self.option)
        if self._claim is None:
            self._claim = FileClaim.take(self.path, self.option)

    def _read_existing(self) -> Loaded | None:
        if not self.path.is_file() or self.path.stat().st_size == 0:
            return None
        try:
            return read_stream(self.path)
        except UserError as error:
            if self.resume:
                raise
            reason = error.message.removeprefix(str(self.path)).lstrip(":, ")
            raise refusal(self.path, f"exists and is not epsweep results ({reason})", self.option) from None

    def prepare(self, run: dict, keys: set[SettingKey]) -> dict[SettingKey, dict]:
        """Claim the file; when resuming a run with description ``run``, the records already
        in it for settings in ``keys`` (first record of a setting wins), else ``{}``. Raises a
        UserError when the file cannot be resumed, or (without ``resume`` or ``force``) holds
        anything a fresh sweep would lose."""
        self._take_claim()
        if not self.resume and self.force:
            return {}  # replaced whatever it holds: nothing to read
        existing = self._read_existing()
        if not self.force and self._with_meta and not is_stream_meta_or_absent(self.meta_path):
            raise refusal(self.meta_path, f"exists and is not the meta of a streamed sweep ({self.path.name} "
                                          f"writes its meta there)", self.option)
        if not self.resume:
            if existing is not None:
                ours = {setting_key(r) for r in existing.records} & keys
                if existing.meta.get("run") == run and 0 < len(ours) < len(keys):
                    raise UserError(f"{param(self.option)}: {self.path} holds {len(ours)} of {len(keys)} settings "
                                    f"of this run; add {param('resume')} to finish it, {param('force')} to start "
                                    f"over, or choose another file")
                problem = replace_problem(existing, run, keys)
                if problem is not None:
                    raise refusal(self.path, problem, self.option, hint=f"{param('resume')} to keep them"
                                  if existing.meta.get("run") == run else "")
            return {}
        if existing is None:
            return {}
        found = existing.meta.get("format")
        if found != STREAM_FORMAT:
            if found is None:
                raise UserError(f"{param('resume')}: {self.path} is not a streamed epsweep sweep (no meta: neither "
                                f"{self.meta_path.name} beside it nor a meta first line)")
            raise UserError(f"{param('resume')}: {self.path} is a stream of format {short_json(found)}, which this "
                            f"epsweep cannot resume (it writes {STREAM_FORMAT})")
        if existing.meta.get("run") != run:
            raise UserError(f"{param('resume')}: {self.path} comes from a different run "
                            f"({in_brief(existing.meta.get('run'), run)})")
        self.existing = existing
        done, self._extras, differing = resumed_records(existing.records, keys)
        if differing:
            log.warning("%s holds %d later record(s) of settings it already had, with other results; the first of "
                        "each counts, the later ones are kept after the others", self.path, differing)
        self.saved = self._done = len(done)
        return done

    @property
    def others_kept(self) -> int:
        """Records kept after this grid's own: other settings', later ones with other results."""
        return len(self._extras)

    # -- writing ---------------------------------------------------------------------------

    def open(self, meta: dict) -> None:
        self._take_claim()
        self._resuming = self.existing is not None
        try:
            created = not os.path.lexists(self.path)
            # no write yet, so not under the exit's lock: a FIFO blocks here until a reader comes
            self._file = open(self.path, "r+b" if self._resuming else "ab")
            with WRITE_LOCK:
                if self._resuming:
                    self._file.truncate(self.existing.valid_bytes)
                    self._file.seek(0, os.SEEK_END)
                    if self.existing.newline_missing:  # its last record ends the line before the next
                        self._file.write(b"\n")
                else:  # opened before the meta is written, emptied after
                    if self._with_meta:  # the file is never without its meta
                        try:
                            write_atomic(self.meta_path, dumps(meta, indent=2) + "\n")
                        except OSError as e:
                            e.filename = self.meta_path  # not the temporary file it was written to
                            if created:
                                self.path.unlink(missing_ok=True)
                            raise
                        self._file.truncate(0)
                self._file.flush()
        except OSError as e:
            self.abort()
            where = e.filename or self.path
            raise UserError(f"{param(self.option)}: cannot write {where}: {e.strerror or e}") from None

    def write(self, records: Sequence[dict]) -> None:
        text = "".join(dumps(r) + "\n" for r in records).encode()
        try:  # a pipe or device may block for good (a reader that stopped): not under the exit's lock
            with WRITE_LOCK if self._with_meta else contextlib.nullcontext():
                self._file.write(text)
                self._file.flush()
        except OSError as e:
            self.failed = True
            raise UserError(f"{param(self.option)}: cannot write {self.path}: {e.strerror or e}") from None
        self.saved += len(records)

    def close(self, result: Any) -> None:
        """The final meta (counts, times) goes beside the file; a resumed file is rewritten
        in grid order (and without the meta line of a file written before 0.2)."""
        try:
            self._close_file()
            old = self.existing
            reordered = self._resuming and (result.meta.get("trained") or old.notes or old.meta_line
                                            or len(old.records) != self._done + len(self._extras))
            try:
                if self._with_meta:
                    write_atomic(self.meta_path, dumps(result.meta, indent=2) + "\n")
            except OSError as e:
                raise UserError(f"{param(self.option)}: cannot write {self.meta_path}: {e.strerror or e} (all "
                                f"{len(result.records)} records are in {self.path})") from None
            if reordered:  # rewrite in grid order: the file now equals that of an uninterrupted run
                text = "".join(dumps(r) + "\n" for r in [*result.records, *self._extras])
                try:
                    write_atomic(self.path, text)
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


PARTIAL_NAMES = 20  # names tried beside the output for a stopped sweep's records before the temporary directory


def save_partial_stream(records: Sequence[dict], meta: dict, near: Sequence[Path | str | None]) -> Path | None:
    """Keep ``records`` (a sweep that stopped early) as a resumable stream: ``NAME.partial.jsonl``
    and its meta beside the first regular file of ``near`` (an output the sweep was to write;
    ``NAME.partial-2.jsonl`` and so on when an earlier one is there, never replaced), else in
    the temporary directory. Its path, or None when nothing could be written."""
    text = "".join(dumps(record) + "\n" for record in records)
    meta_text = dumps(meta, indent=2) + "\n"
    beside = next((Path(p) for p in near if p is not None and not (Path(p).exists() and not Path(p).is_file())),
                  None)  # not beside a device such as /dev/full

    def written(path: Path, created: bool = False) -> bool:
        """The meta and the records, each written whole beside its place and then renamed in,
        the meta first (the records are never without it); on failure nothing is left of this
        attempt (an earlier partial file at ``path`` stays as it was; ``created``: ``path`` is
        this attempt's own empty file, removed too)."""
        staged = [(Path(f"{target}.new"), target, body) for target, body in ((meta_path(path), meta_text),
                                                                              (path, text))]
        try:
            for new, _, body in staged:
                write_atomic(new, body)
            for new, target, _ in staged:
                os.replace(new, target)
            return True
        except OSError:
            for leftover in [new for new, _, _ in staged] + ([path] if created else []):
                with contextlib.suppress(OSError):
                    leftover.unlink()
            return False

    if beside is not None:
        for n in range(1, PARTIAL_NAMES + 1):  # NAME.partial.jsonl, else NAME.partial-2.jsonl, ...
            path = beside.with_name(f"{beside.stem}.partial{'' if n == 1 else f'-{n}'}.jsonl")
            try:
                if meta_path(path).exists():  # an earlier stop's (or anyone's) file: never replaced
                    continue
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            except FileExistsError:
                continue
            except OSError:
                break
            if written(path, created=True):
                return path
            break
    try:
        fd, name = tempfile.mkstemp(prefix="epsweep-partial-", suffix=".jsonl")
        os.close(fd)
    except OSError:
        return None
    return Path(name) if written(Path(name), created=True) else None


def writer_for(path: Path | str, fmt: str, *, resume: bool = False, force: bool = False) -> Writer:
    """The writer of ``fmt`` (jsonl, json or csv) for ``path``."""
    if fmt == "jsonl":
        return JsonlWriter(path, resume=resume, force=force)
    if fmt == "json":
        return JsonWriter(path, force=force)
    if fmt == "csv":
        return CsvWriter(path, force=force)
    raise ValueError(f"no writer for format {fmt!r}")
