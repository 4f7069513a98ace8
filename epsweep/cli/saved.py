"""The commands that look at saved sweeps, ``report`` and ``plot``. Neither imports JAX."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from epsweep.cli import options as o
from epsweep.cli.app import app
from epsweep.cli.options import flag
from epsweep.cli.present import (
    log,
    output_format,
    print_prose,
    reader_left,
    setup_logging,
    stdout_console,
    stdout_failed,
    warning,
    write_stdout,
)
from epsweep.errors import UserError, param

MAX_TABLE_ROWS = 1000  # a report's table; a longer one is unreadable, and Rich takes ~2 ms a row


@app.command(short_help="Show a saved sweep: table, best per axis value, eps sensitivity.")
@o.with_columns_help
def report(
    file: o.ResultsFileArg,
    sort: Annotated[Optional[str], typer.Option(
        "--sort", metavar="FIELD", help="Order rows by a field: rank, val_accuracy, val_loss, final_loss, eps, lr, "
        "... (metrics best first, axes ascending).")] = None,
    reverse: Annotated[bool, typer.Option("--reverse", help="Reverse the --sort order.")] = False,
    top: Annotated[Optional[int], typer.Option(
        "--top", metavar="N", help="Only the first N rows (best first without --sort).")] = None,
    where: o.WhereOpt = None,
    fmt: o.FormatOpt = None,
    output: o.OutputOpt = None,
    force: o.ForceOpt = False,
    quiet: o.QuietOpt = False,
) -> None:
    """Show a saved sweep again: its table, the best setting per axis value, and how much
    accuracy moves across the eps range at each lr/decay.

    Example: epsweep report sweep.jsonl --top 5 --where decay=0.9
    """
    setup_logging(quiet)
    from epsweep.results.analysis import build_report
    from epsweep.results.reading import read_results

    out_fmt, file_fmt = output_format(fmt, output)
    if output is not None and not force and _same_file(output, file):
        raise UserError(f"{param('output')}: {output} is the file being reported on; the report would replace it "
                        f"(add {param('force')} to do so, or choose another file)")
    loaded = read_results(file)
    result = build_report(loaded, where=where or (), sort=sort, reverse=reverse, top=top)
    present_report(result, out_fmt, output, file_fmt, quiet, source=file, force=force)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and a.samefile(b)
    except OSError:
        return False


def present_report(result, fmt: str, output: Path | None, file_fmt: str | None, quiet: bool,
                   source: Path | None = None, force: bool = False) -> None:
    """A report to stdout in ``fmt`` and, when asked, atomically to ``output`` (``source``: the
    file reported on; ``force``: replace ``output`` even if it holds other results)."""
    from epsweep.results.files import FileClaim, write_atomic
    from epsweep.results.formats import HUMAN_FORMATS, MACHINE_FORMATS, render_machine
    from epsweep.results.guard import check_replace
    from epsweep.results.records import setting_key

    def text(kind: str) -> str:
        return result.to_json() if kind == "json" else render_machine(kind, result.meta, result.records)

    if not quiet:
        for note in result.notes:
            warning(note)
    if output is not None and file_fmt is not None:
        claim = FileClaim.take(output)
        try:
            check_replace(output, result.meta.get("run"), {setting_key(r) for r in result.records}, fmt=file_fmt,
                          force=force)
            write_atomic(output, text(file_fmt))
        except OSError as e:
            raise UserError(f"{param('output')}: cannot write {output}: {e.strerror or e}") from None
        finally:
            claim.release()
        if not quiet:
            log(f"wrote {len(result.records)} record{'s' * (len(result.records) != 1)} to {output}")
    try:
        if fmt in HUMAN_FORMATS:
            show_report(result, fmt)
        elif fmt in MACHINE_FORMATS:
            write_stdout(text(fmt))
    except BrokenPipeError:
        raise reader_left() from None
    except OSError as error:
        raise stdout_failed(error, kept=source) from None


def table_rows(result) -> tuple[list[dict], str | None]:
    """The rows a report's table shows, and its title note: at most :data:`MAX_TABLE_ROWS`
    (best first, unless an order was asked for); csv, json and jsonl always carry every row."""
    from epsweep.results.analysis import sort_records

    rows, note = result.records, result.title()
    if len(rows) <= MAX_TABLE_ROWS:
        return rows, note
    ordered = rows if result.ordered else sort_records(rows, "rank")
    cut = (f"{'the first' if result.ordered else 'the best'} {MAX_TABLE_ROWS:,} of {len(rows):,} rows shown; "
           f"{flag('top')} N for another number, {flag('format')} csv for all")
    return ordered[:MAX_TABLE_ROWS], "; ".join(filter(None, [note, cut]))


def print_sheets(console, sheets) -> None:
    """Tables fitted to the console, a blank line before each one's title but the first's."""
    from epsweep.views.sheet import rich_table

    for i, sheet in enumerate(sheets):
        if i:
            console.print()
        console.print(rich_table(sheet, console.width))


def show_report(result, fmt: str) -> None:
    """The report's tables and summary for people: Rich tables fitted to the terminal, or markdown."""
    from epsweep.results.records import axis_notation
    from epsweep.views.sheet import markdown, markdown_text
    from epsweep.views.summaries import best_per_axis_sheet, sensitivity_sheet
    from epsweep.views.table import records_sheet

    notation = axis_notation(result.records, result.meta)
    rows, note = table_rows(result)
    sheets = [records_sheet(rows, result.meta, sparklines=fmt == "table", note=note, best=result.best)]
    if result.best_per_axis:
        sheets.append(best_per_axis_sheet(result.best_per_axis, notation))
    if result.sensitivity:
        sheets.append(sensitivity_sheet(result.sensitivity, notation))
    if fmt == "markdown":
        text = "\n".join(markdown(sheet) for sheet in sheets)
        write_stdout(text + (f"\n{markdown_text(result.summary)}\n" if result.summary else ""))
        return
    console = stdout_console()
    print_sheets(console, sheets)
    if result.summary:
        print_prose(console, result.summary)


@app.command(short_help="Draw a saved sweep: loss curves and a heatmap, into an image.")
def plot(
    file: o.ResultsFileArg,
    output: Annotated[Path, typer.Option("--output", "-o", metavar="FILE", parser=o.path_value,
                                         help="Image to write: .png, .svg, .pdf, or another format "
                                              "matplotlib writes (.jpg, .eps, ...).",
                                         show_default=False)],
    where: o.WhereOpt = None,
    quiet: o.QuietOpt = False,
) -> None:
    """Draw a saved sweep: loss curves coloured by eps (a panel per lr/decay and update rule)
    and a heatmap of validation accuracy over eps x lr (one per update rule), coloured by the
    error rate on a log scale. Needs matplotlib: pip install 'epsweep[plot]'.

    Example: epsweep plot sweep.jsonl -o sweep.png
    """
    setup_logging(quiet)
    from epsweep.results.analysis import build_report
    from epsweep.results.reading import read_results
    from epsweep.views.plot import save_plot

    loaded = read_results(file)
    selected = build_report(loaded, where=where or ())
    panels, heatmaps = save_plot(selected.meta, selected.records, output)
    if not quiet:
        for note in selected.notes:
            warning(note)
        maps = "a heatmap" if heatmaps == 1 else f"{heatmaps} heatmaps (one per update rule)"
        log(f"wrote {output}: {panels} loss-curve panel{'s' if panels != 1 else ''} and {maps}")


@app.command(short_help="Two saved sweeps side by side, with the difference in each metric.")
def compare(
    file_a: Annotated[Path, typer.Argument(metavar="A", parser=o.path_value,
                                           help="A results file (.jsonl, .json or .csv).",
                                           show_default=False)],
    file_b: Annotated[Path, typer.Argument(metavar="B", parser=o.path_value,
                                           help="Another results file, compared with A.",
                                           show_default=False)],
    where: o.WhereOpt = None,
    fmt: o.FormatOpt = None,
    quiet: o.QuietOpt = False,
) -> None:
    """Compare two saved sweeps: for every setting both have, each metric in A and in B and
    the difference B - A; then the settings only one of them has. --where filters both (a
    setting both have stays when it passes in either).

    Example: epsweep compare optax.jsonl tf1.jsonl --where lr=0.01
    """
    setup_logging(quiet)
    from epsweep.results.compare import compare as compare_results
    from epsweep.results.formats import MACHINE_FORMATS
    from epsweep.results.reading import read_results
    from epsweep.views.sheet import markdown
    from epsweep.views.summaries import compare_sheets

    out_fmt, _ = output_format(fmt, None)
    loaded = [read_results(file_a), read_results(file_b)]
    if not quiet:
        for note in loaded[0].notes + loaded[1].notes:
            warning(note)
    result = compare_results(*loaded, where=where or ())
    try:
        if out_fmt in MACHINE_FORMATS:
            write_stdout({"csv": result.to_csv, "json": result.to_json, "jsonl": result.to_jsonl}[out_fmt]())
            return
        if out_fmt == "markdown":
            write_stdout("\n".join(markdown(sheet) for sheet in compare_sheets(result)))
            return
        console = stdout_console()
        print_sheets(console, compare_sheets(result, console.width))
    except BrokenPipeError:
        raise reader_left() from None
    except OSError as error:
        raise stdout_failed(error, kept=f"{file_a} and {file_b}") from None
