"""Presenting results on the terminal: tables and machine formats on stdout, log lines on
stderr. User-provided text (paths, names from files) is always printed literally."""

from __future__ import annotations

import codecs
import contextlib
import errno
import io
import logging
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from epsweep.cli.options import flag
from epsweep.errors import UserError, param
from epsweep.views.sheet import visible, visible_line

MIN_WIDTH = 20  # a narrower COLUMNS (0, say) is no terminal's: tables then use DEFAULT_WIDTH
DEFAULT_WIDTH = 80


class _Console(Console):
    """Rich's console with no markup (every string is shown literally: paths and names from
    files may hold ``[/x]``), no emoji codes, no cropping, and a usable width whatever ``COLUMNS`` says. A
    closed pipe raises BrokenPipeError (handled by :func:`epsweep.cli.app.main`) instead of
    Rich's exit with code 1."""

    def __init__(self, **kwargs):
        super().__init__(markup=False, emoji=False, highlight=False, **kwargs)
        if self.width < MIN_WIDTH:
            self.width = DEFAULT_WIDTH

    def on_broken_pipe(self) -> None:
        raise BrokenPipeError

    def print(self, *objects, crop: bool = False, **kwargs) -> None:
        """Rich's print, not cropped to the terminal's width: a table too wide for it (it gives
        way first: :func:`epsweep.views.sheet.rich_table`) runs over and wraps, never cut."""
        super().print(*objects, crop=crop, **kwargs)


stderr = _Console(stderr=True)


def log(text: str) -> None:
    """A log line on stderr: never wrapped, no markup (paths may hold brackets), control
    characters written out. A stderr that cannot be written (a full disk) loses the line,
    never the run."""
    try:
        stderr.print(visible(text), soft_wrap=True)  # the console shows text literally
    except OSError:
        pass


def warning(text: str) -> None:
    """``epsweep: warning: text`` on stderr, as the library's warnings read (:class:`_LineFormatter`)."""
    log(f"epsweep: warning: {text}")


class _LineFormatter(logging.Formatter):
    """``epsweep: warning: message`` on one line, as the error lines are."""

    def format(self, record: logging.LogRecord) -> str:
        return f"epsweep: {record.levelname.lower()}: {visible_line(record.getMessage())}"


class _StderrHandler(logging.StreamHandler):
    """Writes to the ``sys.stderr`` of the moment, not the one it was made with (``main`` may
    run several times in a process that swaps it: a notebook, a test harness)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def setup_logging(quiet: bool) -> None:
    """The library's warnings (logger ``epsweep``) as ``epsweep: warning: ...`` lines on stderr;
    with --quiet, errors only."""
    logger = logging.getLogger("epsweep")
    if not any(getattr(h, "_epsweep", False) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(_LineFormatter())
        handler._epsweep = True
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.ERROR if quiet else logging.WARNING)


def output_format(fmt: str | None, output: Path | None) -> tuple[str, str | None]:
    """(stdout format, file format). A machine --format with --output goes to the file only."""
    from epsweep.results.files import check_writable
    from epsweep.results.formats import FORMATS, MACHINE_FORMATS

    if fmt is not None and fmt not in FORMATS:
        raise UserError(f"{param('format')}: unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    if output is None:
        return fmt or "table", None
    check_writable(output)  # before any training: a bad path must not cost the results
    suffix = output.suffix.lower().lstrip(".")
    known = suffix in MACHINE_FORMATS
    if fmt not in (None, "table", "markdown"):
        if known and suffix != fmt:
            raise UserError(f"{param('format')} {fmt} conflicts with {param('output')} {output.name} "
                            f"(a .{suffix} file)")
        return "none", fmt
    if not known:
        raise UserError(f"{param('output')}: cannot tell the format of {output} (use .csv, .json or .jsonl, "
                        f"or {param('format')})")
    return fmt or "table", suffix


def stdout_console() -> Console:
    return _Console(file=WholeWrites(results_stdout()))  # refuses a closed standard output


def print_prose(console: Console, text: str) -> None:
    """A sentence on stdout, wrapped at the console's width between phrases, literally."""
    from rich.text import Text

    from epsweep.views.sheet import prose

    console.print(Text(prose(text, console.width)), soft_wrap=True)


class ClosedStdout(io.TextIOBase):
    """Standard output for a process started with it closed (``>&-``). Stray prints are
    dropped, as Python drops them then (a model's own go to stderr: :func:`prints_to_stderr`);
    results refuse to go there (:func:`results_stdout`), so that they are saved to a file that
    the error line names."""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        return len(text)


# one-cell ASCII stand-ins for the characters tables use, for a standard output whose encoding
# lacks them (PYTHONIOENCODING=ascii, a Latin-1 locale): columns stay aligned
ASCII_STAND_INS = {"★": "*", "±": "~", "×": "x", "—": "-", "–": "-", "…": ".", "→": ">", "≤": "<", "≥": ">",
                   **dict(zip("▁▂▃▄▅▆▇█", "_.:-=+*#", strict=True))}
_STAND_IN_ERRORS = "epsweep-ascii-stand-ins"


def _stand_in(error: UnicodeError) -> tuple[str, int]:
    """The codec error handler behind ASCII_STAND_INS: a stand-in, else ``?``, per character."""
    if not isinstance(error, UnicodeEncodeError):
        raise error
    text = error.object[error.start:error.end]
    return "".join(ASCII_STAND_INS.get(c, "?") for c in text), error.end


codecs.register_error(_STAND_IN_ERRORS, _stand_in)


def _encodes_tables(stream) -> bool:
    encoding = getattr(stream, "encoding", None)
    try:
        "".join(ASCII_STAND_INS).encode(encoding or "utf-8")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def open_standard_streams() -> Callable[[], None]:
    """Stand-ins for standard streams the process started without (Python sets them to None),
    and for the table characters a standard output cannot encode (the results would otherwise
    fail to print after training); returns what puts the streams back as they were (``main``
    may run inside another program)."""
    before = sys.stdout, sys.stderr
    errors_before = None
    if sys.stdout is None:
        sys.stdout = ClosedStdout()
    elif not _encodes_tables(sys.stdout) and hasattr(sys.stdout, "reconfigure"):
        errors_before = sys.stdout.errors
        sys.stdout.reconfigure(errors=_STAND_IN_ERRORS)
    if sys.stderr is None:  # nowhere to say anything; the exit code still tells
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - closed by the restore

    def restore() -> None:
        if sys.stderr is not before[1] and before[1] is None:
            sys.stderr.close()
        sys.stdout, sys.stderr = before
        if errors_before is not None:
            with contextlib.suppress(OSError, ValueError):
                sys.stdout.reconfigure(errors=errors_before)

    return restore


class _PrintsToStderr(io.TextIOBase):
    """Writes go to ``stream`` (stderr); one that cannot be written (a full disk, a closed
    pipe) loses the text, never the run, as :func:`log` does."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with contextlib.suppress(OSError, ValueError):  # ValueError: a closed file
            self.stream.write(text)
        return len(text)

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.stream.flush()


@contextlib.contextmanager
def prints_to_stderr():
    """Within: Python's ``sys.stdout`` (a user's model calling ``print`` as it is traced, or
    ``jax.debug.print`` as it runs) writes to stderr instead, since stdout carries results only
    (``-f jsonl | jq`` must parse). Results are written after it, to the real stdout. The
    library leaves prints where they are; only the CLI moves them. ``sys.stdout`` is the whole
    process's, so ``main`` run in another thread of someone's program leaves it alone."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    with contextlib.redirect_stdout(_PrintsToStderr(sys.stderr)):
        yield


def results_stdout():
    """Standard output, for results: an OSError when the process started with it closed."""
    if isinstance(sys.stdout, ClosedStdout):
        raise OSError(errno.EBADF, "it is closed")
    return sys.stdout


class WholeWrites(io.TextIOBase):
    """``stream`` (standard output) writing the whole of every text or raising OSError.
    Python's buffered stdout drops what a partial write left (a full disk, ``ulimit -f``, a
    reader gone mid-way) without a word, and results would end cut, with exit code 0: here
    each text is encoded as ``stream`` encodes and written with :func:`write_all`. A stream
    that is no file (a test's capture) is written as it is."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return self.stream.isatty()

    @property
    def encoding(self) -> str:
        return getattr(self.stream, "encoding", None) or "utf-8"

    def write(self, text: str) -> int:
        from epsweep.results.files import write_all

        try:
            fd = self.stream.fileno()
        except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
            return self.stream.write(text)
        self.stream.flush()
        write_all(fd, text.encode(self.encoding, getattr(self.stream, "errors", None) or "strict"))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def write_stdout(text: str) -> None:
    WholeWrites(results_stdout()).write(text)


def reader_left() -> Exception:
    """The exit for a standard output whose reader stopped early (`| head -1`): code 0 and
    nothing said, as Unix tools do (Click would exit with 1). Standard output is pointed at
    /dev/null, so that Python's flush at exit does not fail again."""
    import typer

    with contextlib.suppress(OSError, ValueError), open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), sys.stdout.fileno())
    return typer.Exit(0)


def stdout_failed(error: OSError, kept: Path | str | None = None, keep: Callable[[], str] | None = None) -> UserError:
    """The error for results that could not reach standard output (a full disk, a closed
    terminal): they are ``kept`` in a file already, or ``keep()`` gives their text (JSON),
    saved to a temporary file that the message names. Standard output is pointed at
    /dev/null, so that Python's flush at exit does not fail again."""
    if not isinstance(sys.stdout, ClosedStdout):
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), sys.stdout.fileno())
    return UserError(f"cannot write to standard output: {error.strerror or error}; {kept_text(kept, keep)}")


def kept_text(kept: Path | str | None, keep: Callable[[], str] | None) -> str:
    """Where results that did not all reach standard output are: ``kept`` (a file holding them
    already), else a temporary file that ``keep()``'s text (JSON) is saved to now."""
    from epsweep.results.files import keep_elsewhere

    if kept is not None:
        return f"the results are in {kept}"
    saved = keep_elsewhere(keep(), "json") if keep is not None else None
    return "the results could not be saved elsewhere either" if saved is None else f"the results were saved to {saved}"


def present_records(result, fmt: str, kept: Path | None = None) -> None:
    """Records to stdout in ``fmt`` (table, markdown, csv, json, jsonl; "none": nothing). If
    standard output cannot be written, a UserError says where the results are (``kept``: a file
    holding them already; else they are saved to a temporary file)."""
    from epsweep.results.formats import MACHINE_FORMATS, render_machine
    from epsweep.views.table import records_markdown, records_table

    try:
        if fmt == "table":
            console = stdout_console()
            console.print(records_table(result.records, result.meta, sparklines=True, max_width=console.width))
        elif fmt == "markdown":
            write_stdout(records_markdown(result.records, result.meta))
        elif fmt in MACHINE_FORMATS:
            write_stdout(render_machine(fmt, result.meta, result.records))
    except BrokenPipeError:  # the reader stopped early (`| head -1`): not an error, but keep them
        if kept is None:
            from epsweep.results.files import keep_elsewhere

            saved = keep_elsewhere(render_machine("json", result.meta, result.records), "json")
            if saved is not None:  # said even with --quiet: results nobody read would be lost without a word
                warning(f"standard output was closed before all {len(result.records)} records were read; they "
                        f"were saved to {saved}")
        raise reader_left() from None
    except OSError as error:
        raise stdout_failed(error, kept, lambda: render_machine("json", result.meta, result.records)) from None


def log_summary(meta: dict, quiet: bool) -> None:
    """One stderr line: what was trained, how long it took, how many compilations."""
    if quiet:
        return
    resumed = f" (+{meta['resumed']} resumed)" if meta.get("resumed") else ""
    seeds = len(meta["seeds"])
    peak = meta.get("peak_memory_mib") or {}
    value = peak.get("device_peak_mib") or peak.get("host_peak_mib")
    memory = f", peak memory {value:.0f} MiB" if value else ""
    layout = meta.get("layout") or {}
    trained = meta.get("trained", meta["settings"])
    log(f"trained {trained} setting{'s' * (trained != 1)}{resumed} x {seeds} seed{'s' * (seeds != 1)} x "
        f"{meta['steps']} step{'s' * (meta['steps'] != 1)} in {meta['wall_time_s']:.2f} s "
        f"on {layout.get('backend', '?')} "
        f"({meta['compilations']} compilation{'s' * (meta['compilations'] != 1)}{memory})")


def stop_text(report, output: Path | None, interrupted: bool = True) -> str:
    """What a sweep that stopped early kept, in one line naming the flags to finish it."""
    what = "interrupted" if interrupted else "stopped"
    if report.path is None:
        if output is not None and output.suffix.lower() != ".jsonl":
            return f"{what}; nothing saved ({output} is written at the end; use a .jsonl {flag('output')} to stream)"
        return f"{what}; nothing saved (stream results with {flag('output')} FILE.jsonl to keep them)"
    if report.streamed:
        return (f"{what}; {report.saved} of {report.total} settings saved to {report.path} "
                f"(resume with {flag('resume')})")
    return (f"{what}; {report.saved} of {report.total} finished settings saved to {report.path} "
            f"(finish with {flag('output')} {report.path} {flag('resume')})")
