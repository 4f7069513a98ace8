"""The ``epsweep`` command line: each command parses, calls one library function, presents.

Typer bundles a Click that refuses options taking several values, so :func:`normalize_argv`
rewrites ``--eps 1e-8 1`` into ``--eps 1e-8 --eps 1`` before Typer sees the arguments.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from epsweep.errors import UserError

try:  # Typer >= 0.20 bundles its own Click; its errors are not the standalone Click's
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover - older Typer on the standalone Click
    from click.exceptions import ClickException

MULTI_VALUE_OPTIONS = frozenset({"--eps", "--decay", "--lr", "--momentum", "--convention"})
_NEGATIVE_NUMBER = re.compile(r"^-(\d|\.\d|inf|nan)", re.IGNORECASE)

stderr = Console(stderr=True, highlight=False)


def _is_value(token: str) -> bool:
    return token == "-" or not token.startswith("-") or bool(_NEGATIVE_NUMBER.match(token))


def normalize_argv(argv: list[str]) -> list[str]:
    """``--eps 1e-8 1`` -> ``--eps 1e-8 --eps 1`` for the options that take several values.

    Values run until the next option; ``-`` (stdin) and negative numbers count as values so
    that they reach validation and get a clear message. Everything after ``--`` is untouched.
    """
    out: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--":
            out.extend(argv[i:])
            break
        out.append(token)
        i += 1
        if token in MULTI_VALUE_OPTIONS:
            values = []
            while i < len(argv) and _is_value(argv[i]) and argv[i] != "--":
                values.append(argv[i])
                i += 1
            for n, value in enumerate(values):
                out.extend([token, value] if n else [value])
    return out


@functools.lru_cache(maxsize=1)
def _stdin_text() -> str:
    if sys.stdin is None or sys.stdin.isatty():
        raise UserError("'-' reads values from standard input, but nothing is piped in")
    return sys.stdin.read()


app = typer.Typer(
    name="epsweep",
    help="Sweep RMSProp's epsilon, decay and learning rate: every setting trained at once.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)



@app.callback()
def _commands() -> None:
    """Sweep RMSProp's epsilon, decay and learning rate: every setting trained at once.

    Example: epsweep grid --eps 1e-8 1
    """


# --- options shared by every training command ---------------------------------------------

VALUES_HELP = "Several values: 1e-8 1, 1e-8,1, log:1e-10:1:11, lin:0.8:0.99:5, or - for stdin."
EpsOpt = Annotated[Optional[list[str]], typer.Option("--eps", help=f"Epsilon values [default: 1e-8 1]. {VALUES_HELP}")]
DecayOpt = Annotated[Optional[list[str]], typer.Option("--decay", help="Decay (rho) values [default: 0.9].")]
LrOpt = Annotated[Optional[list[str]], typer.Option("--lr", help="Learning rates [default: 1e-3].")]
MomentumOpt = Annotated[Optional[list[str]], typer.Option("--momentum", help="Momentum values [default: 0].")]
ConventionOpt = Annotated[
    Optional[list[str]],
    typer.Option("--convention", help="Update rule: optax, pytorch, tf1, keras (several allowed) [default: optax]."),
]
CenteredOpt = Annotated[bool, typer.Option("--centered", help="Centered RMSProp (divide by the running std).")]
StepsOpt = Annotated[Optional[int], typer.Option("--steps", help="Training steps per setting.")]
EpochsOpt = Annotated[Optional[int], typer.Option("--epochs", help="Epochs per setting [default: the task's].")]
BatchOpt = Annotated[Optional[int], typer.Option("--batch-size", help="Minibatch size [default: 32].")]
SeedsOpt = Annotated[int, typer.Option("--seeds", help="Seeds per setting (mean ± std over them).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="First seed.")]
ValSplitOpt = Annotated[float, typer.Option("--val-split", help="Fraction held out for validation.")]
FormatOpt = Annotated[Optional[str], typer.Option("--format", "-f", help="table, csv, json or jsonl [default: table].")]
OutputOpt = Annotated[
    Optional[Path], typer.Option("--output", "-o", help="Also write the records to FILE (.csv, .json or .jsonl).")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or log lines on stderr.")]
ChunkOpt = Annotated[Optional[int], typer.Option("--chunk-size", help="Settings per compiled call [default: all].")]


def _values(tokens: list[str] | None, name: str) -> list[float] | None:
    from epsweep.grid import parse_values

    return None if tokens is None else parse_values(tokens, name, read_stdin=_stdin_text)


def _grid(eps, decay, lr, momentum):
    from epsweep.grid import Grid

    axes = {"eps": eps, "decay": decay, "lr": lr, "momentum": momentum}
    given = {name: _values(tokens, name) for name, tokens in axes.items() if tokens is not None}
    return Grid(**given)


def _conventions(tokens: list[str] | None) -> tuple[str, ...]:
    if tokens is None:
        return ("optax",)
    names = [piece.strip() for token in tokens for piece in token.split(",")]
    return tuple(dict.fromkeys(names))


def _output_format(fmt: str | None, output: Path | None) -> tuple[str, str | None]:
    """(stdout format, file format). A machine --format with --output goes to the file only."""
    from epsweep.results import FORMATS

    if fmt is not None and fmt not in FORMATS:
        raise UserError(f"--format: unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    if output is None:
        return fmt or "table", None
    if fmt not in (None, "table"):
        return "none", fmt
    suffix = output.suffix.lower().lstrip(".")
    if suffix not in ("csv", "json", "jsonl"):
        raise UserError(f"--output: cannot tell the format of {output} (use .csv, .json or .jsonl, or --format)")
    if output.is_dir():
        raise UserError(f"--output: {output} is a directory")
    if not output.parent.exists():
        raise UserError(f"--output: directory {output.parent} does not exist")
    if not os.access(output.parent, os.W_OK) or (output.exists() and not os.access(output, os.W_OK)):
        raise UserError(f"--output: {output} is not writable")
    return fmt or "table", suffix


class _Progress:
    """A Rich progress bar on stderr, shown only on a terminal."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None
        self.tasks: dict[str, int] = {}

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("steps"), TimeRemainingColumn(), console=stderr, transient=True)
            self.bar.__enter__()
        return self

    def __call__(self, label: str, done: int, total: int) -> None:
        if self.bar is None:
            return
        if label not in self.tasks:
            self.tasks[label] = self.bar.add_task(label, total=total)
        self.bar.update(self.tasks[label], completed=done)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)

    @property
    def callback(self):
        return self if self.enabled else None


def present(result, fmt: str, output: Path | None, file_fmt: str | None, quiet: bool) -> None:
    """Write records to stdout in ``fmt`` and, when asked, to ``output`` in ``file_fmt``."""
    from epsweep.render import records_table
    from epsweep.results import render_machine

    if output is not None and file_fmt is not None:
        try:
            output.write_text(render_machine(file_fmt, result.meta, result.records))
        except OSError as e:
            raise UserError(f"--output: cannot write {output}: {e.strerror}") from None
        if not quiet:
            stderr.print(f"wrote {len(result.records)} records to {output}")
    if fmt == "table":
        Console(highlight=False).print(records_table(result.records, result.meta))
    elif fmt in ("csv", "json", "jsonl"):
        sys.stdout.write(render_machine(fmt, result.meta, result.records))
        sys.stdout.flush()


def _log_summary(result, quiet: bool) -> None:
    if quiet:
        return
    m = result.meta
    stderr.print(
        f"trained {m['settings']} settings x {len(m['seeds'])} seeds x {m['steps']} steps "
        f"in {m['wall_time_s']:.2f} s on {m['backend']} ({m['compilations']} compilations)"
    )


@app.command()
def grid(
    eps: EpsOpt = None,
    decay: DecayOpt = None,
    lr: LrOpt = None,
    momentum: MomentumOpt = None,
    convention: ConventionOpt = None,
    centered: CenteredOpt = False,
    task: Annotated[str, typer.Option("--task", help="mlp, cnn, toy or quadratic.")] = "mlp",
    dataset: Annotated[
        str, typer.Option("--dataset", help="digits, synthetic, an .npz file, or an MNIST IDX file/directory.")
    ] = "digits",
    steps: StepsOpt = None,
    epochs: EpochsOpt = None,
    batch_size: BatchOpt = None,
    seeds: SeedsOpt = 1,
    seed: SeedOpt = 0,
    val_split: ValSplitOpt = 0.2,
    fmt: FormatOpt = None,
    output: OutputOpt = None,
    quiet: QuietOpt = False,
    chunk_size: ChunkOpt = None,
) -> None:
    """Train a grid of RMSProp settings at once and print final loss and accuracy per setting.

    Example: epsweep grid --eps 1e-8 1 --lr 1e-3 1e-2 --seeds 3
    """
    from epsweep.sweep import RunConfig
    from epsweep.tasks import build_task

    out_fmt, file_fmt = _output_format(fmt, output)
    the_grid = _grid(eps, decay, lr, momentum)
    config = RunConfig(
        steps=steps, epochs=epochs, batch_size=batch_size, seeds=seeds, first_seed=seed,
        conventions=_conventions(convention), centered=centered, chunk_size=chunk_size,
    )
    the_task = build_task(task, dataset, val_split)
    run_sweep(the_task, the_grid, config, out_fmt=out_fmt, output=output, file_fmt=file_fmt, quiet=quiet)


def run_sweep(task, grid, config, *, out_fmt: str, output: Path | None, file_fmt: str | None, quiet: bool) -> None:
    """The part every training command shares: sweep with progress, log, present."""
    from epsweep.sweep import sweep

    with _Progress(enabled=not quiet and stderr.is_terminal) as progress:
        result = sweep(task, grid, config, progress=progress.callback)
    _log_summary(result, quiet)
    present(result, out_fmt, output, file_fmt, quiet)


def _error(message: str) -> None:
    """One plain line on stderr (never wrapped, never styled)."""
    print(f"epsweep: error: {' '.join(message.split())}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``epsweep`` executable; returns the exit code."""
    args = normalize_argv(list(sys.argv[1:] if argv is None else argv))
    try:
        code = app(args=args, prog_name="epsweep", standalone_mode=False)
    except UserError as e:
        _error(str(e))
        return 2
    except ClickException as e:
        if type(e).__name__ == "NoArgsIsHelpError":
            sys.stdout.write(e.ctx.get_help() + "\n")
            return 0
        _error(e.format_message())
        return 2
    except KeyboardInterrupt:
        stderr.print("epsweep: interrupted")
        return 130
    except BrokenPipeError:  # e.g. `epsweep grid -f csv | head -1`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return code if isinstance(code, int) else 0


def main_exit() -> None:
    """Console-script wrapper: exit with :func:`main`'s code."""
    sys.exit(main())
