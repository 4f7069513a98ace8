"""Presenting results on the terminal: tables and machine formats on stdout, log lines on
stderr. User-provided text (paths, names from files) is always printed literally."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from rich.console import Console

from epsweep.cli.options import flag
from epsweep.errors import UserError, param

stderr = Console(stderr=True, highlight=False)


def log(text: str) -> None:
    """A log line on stderr: never wrapped, no markup (paths may hold brackets)."""
    stderr.print(text, soft_wrap=True, markup=False, highlight=False, emoji=False)


def setup_logging(quiet: bool) -> None:
    """The library's warnings (logger ``epsweep``) as ``epsweep: warning: ...`` lines on stderr;
    with --quiet, errors only."""
    logger = logging.getLogger("epsweep")
    if not any(getattr(h, "_epsweep", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("epsweep: %(levelname)s: %(message)s"))
        handler._epsweep = True
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.ERROR if quiet else logging.WARNING)


def output_format(fmt: str | None, output: Path | None) -> tuple[str, str | None]:
    """(stdout format, file format). A machine --format with --output goes to the file only."""
    from epsweep.results.files import check_writable
    from epsweep.results.formats import FORMATS

    if fmt is not None and fmt not in FORMATS:
        raise UserError(f"{param('format')}: unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    if output is None:
        return fmt or "table", None
    check_writable(output)  # before any training: a bad path must not cost the results
    suffix = output.suffix.lower().lstrip(".")
    known = suffix in ("csv", "json", "jsonl")
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
    return Console(highlight=False, emoji=False, markup=False)


def print_prose(console: Console, text: str) -> None:
    """A sentence on stdout, wrapped at the console's width between phrases, literally."""
    from rich.text import Text

    from epsweep.views.sheet import prose

    console.print(Text(prose(text, console.width)), soft_wrap=True)


def write_stdout(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def present_records(result, fmt: str) -> None:
    """Records to stdout in ``fmt`` (table, markdown, csv, json, jsonl; "none": nothing)."""
    from epsweep.results.formats import render_machine
    from epsweep.views.table import records_markdown, records_table

    if fmt == "table":
        console = stdout_console()
        console.print(records_table(result.records, result.meta, sparklines=True, max_width=console.width))
    elif fmt == "markdown":
        write_stdout(records_markdown(result.records, result.meta))
    elif fmt in ("csv", "json", "jsonl"):
        write_stdout(render_machine(fmt, result.meta, result.records))


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
    log(f"trained {meta.get('trained', meta['settings'])} settings{resumed} x {seeds} seed{'s' * (seeds != 1)} x "
        f"{meta['steps']} steps in {meta['wall_time_s']:.2f} s on {layout.get('backend', '?')} "
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
