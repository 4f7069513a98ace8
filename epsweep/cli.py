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

MULTI_VALUE_OPTIONS = frozenset({"--eps", "--decay", "--lr", "--momentum", "--convention", "--optimizer"})
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


_stdin_readers: set[str] = set()


@functools.lru_cache(maxsize=1)
def _stdin_text() -> str:
    if sys.stdin is None or sys.stdin.isatty():
        raise UserError("'-' reads values from standard input, but nothing is piped in")
    return sys.stdin.read()


def _stdin_for(name: str) -> str:
    """Standard input's values for option ``--name``; only one option may read them."""
    _stdin_readers.add(name)
    if len(_stdin_readers) > 1:
        raise UserError(f"only one option can read values from standard input ('-'); "
                        f"got {' and '.join('--' + n for n in sorted(_stdin_readers))}")
    return _stdin_text()


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
OptimizerOpt = Annotated[
    Optional[list[str]],
    typer.Option("--optimizer", help="rmsprop, adam (b2 = decay, b1 = 0.9), adagrad (no decay) or sgd (momentum); "
                 "several allowed; --convention and --centered apply to rmsprop only [default: rmsprop]."),
]
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
ChunkOpt = Annotated[
    Optional[int],
    typer.Option("--chunk-size", help="Settings per compiled call, rounded up to a multiple of the device count "
                 "[default: what fits the device, estimated from the model].")
]
NoCompileCacheOpt = Annotated[
    bool, typer.Option("--no-compile-cache", help="Do not read or write the persistent compilation cache "
                       "($EPSWEEP_COMPILE_CACHE, else ~/.cache/epsweep/jax).")
]
CoordinatorOpt = Annotated[
    Optional[str], typer.Option("--coordinator", help="host:port of process 0, to run as one of several processes.")
]
NumProcessesOpt = Annotated[Optional[int], typer.Option("--num-processes", help="How many processes share the sweep.")]
ProcessIdOpt = Annotated[Optional[int], typer.Option("--process-id", help="This process's rank (0 writes results).")]


def _setup_logging(quiet: bool) -> None:
    """The library's warnings (logger ``epsweep``) as ``epsweep: warning: ...`` lines on stderr;
    with --quiet, errors only."""
    import logging

    logger = logging.getLogger("epsweep")
    if not any(getattr(h, "_epsweep", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("epsweep: %(levelname)s: %(message)s"))
        handler._epsweep = True
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.ERROR if quiet else logging.WARNING)


def _setup_runtime(no_compile_cache: bool, coordinator: str | None, num_processes: int | None,
                   process_id: int | None) -> None:
    """Configure JAX (cache, devices, processes) before anything starts it."""
    from epsweep import parallel

    parallel.setup(compile_cache=not no_compile_cache, coordinator=coordinator, num_processes=num_processes,
                   process_id=process_id)
ResumeOpt = Annotated[
    bool, typer.Option("--resume", help="With --output FILE.jsonl: train only the settings missing from FILE.")
]


def _values(tokens: list[str] | None, name: str) -> list[float] | None:
    from epsweep.grid import parse_values

    return None if tokens is None else parse_values(tokens, name, read_stdin=lambda: _stdin_for(name))


def _grid(eps, decay, lr, momentum):
    from epsweep.grid import Grid

    axes = {"eps": eps, "decay": decay, "lr": lr, "momentum": momentum}
    given = {name: _values(tokens, name) for name, tokens in axes.items() if tokens is not None}
    return Grid(**given)


def _names(tokens: list[str] | None, default: str = "optax") -> tuple[str, ...]:
    """Names given as values or comma lists, duplicates dropped; (default,) when none."""
    if tokens is None:
        return (default,)
    names = [piece.strip() for token in tokens for piece in token.split(",")]
    return tuple(dict.fromkeys(names))


def _output_format(fmt: str | None, output: Path | None) -> tuple[str, str | None]:
    """(stdout format, file format). A machine --format with --output goes to the file only."""
    from epsweep.results import FORMATS

    if fmt is not None and fmt not in FORMATS:
        raise UserError(f"--format: unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    if output is None:
        return fmt or "table", None
    from epsweep.store import check_writable

    check_writable(output)  # before any training: a bad path must not cost the results
    suffix = output.suffix.lower().lstrip(".")
    known = suffix in ("csv", "json", "jsonl")
    if fmt not in (None, "table"):
        if known and suffix != fmt:
            raise UserError(f"--format {fmt} conflicts with --output {output.name} (a .{suffix} file)")
        return "none", fmt
    if not known:
        raise UserError(f"--output: cannot tell the format of {output} (use .csv, .json or .jsonl, or --format)")
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
                                TextColumn("{task.fields[unit]}"), TimeRemainingColumn(), console=stderr,
                                transient=True)
            self.bar.__enter__()
        return self

    def __call__(self, label: str, done: int, total: int, unit: str = "steps") -> None:
        """Show ``done`` of ``total``; a training bar at 0 steps says it is compiling."""
        if self.bar is None:
            return
        if label not in self.tasks:
            self.tasks[label] = self.bar.add_task(label, total=total, unit=unit)
        compiling = unit == "steps" and done == 0
        self.bar.update(self.tasks[label], completed=done, total=total,
                        description=f"{label} (compiling)" if compiling else label)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()

    @property
    def callback(self):
        return self if self.enabled else None


def present(result, fmt: str, output: Path | None, file_fmt: str | None, quiet: bool) -> None:
    """Write records to stdout in ``fmt`` and, when asked, to ``output`` in ``file_fmt``
    (atomically; if that fails, the error names a fallback file holding the results)."""
    from epsweep.render import records_table
    from epsweep.results import render_machine
    from epsweep.store import save_results

    failed = None
    if output is not None and file_fmt is not None:
        try:
            save_results(output, file_fmt, result.meta, result.records)
        except UserError as e:
            failed = e  # still show the results on stdout, then report
        else:
            if not quiet:
                _log(f"wrote {len(result.records)} records to {output}")
    if fmt == "table":
        console = Console(highlight=False)
        console.print(records_table(result.records, result.meta, sparklines=True, max_width=console.width))
    elif fmt in ("csv", "json", "jsonl"):
        sys.stdout.write(render_machine(fmt, result.meta, result.records))
        sys.stdout.flush()
    if failed is not None:
        raise failed


def _log(text: str) -> None:
    """A log line on stderr: never wrapped, no markup (paths may hold brackets)."""
    stderr.print(text, soft_wrap=True, markup=False, highlight=False)


def _log_summary(result, quiet: bool) -> None:
    if quiet:
        return
    m = result.meta
    resumed = f" (+{m['resumed']} resumed from {m['output']})" if m.get("resumed") else ""
    _log(
        f"trained {m.get('trained', m['settings'])} settings{resumed} x {len(m['seeds'])} seeds x {m['steps']} steps "
        f"in {m['wall_time_s']:.2f} s on {m['backend']} ({m['compilations']} compilations{_peak_text(m)})"
    )


def _peak_text(meta: dict) -> str:
    peak = meta.get("peak_memory_mib") or {}
    value = peak.get("device_peak_mib") or peak.get("host_peak_mib")
    return f", peak memory {value:.0f} MiB" if value else ""


@app.command()
def grid(
    eps: EpsOpt = None,
    decay: DecayOpt = None,
    lr: LrOpt = None,
    momentum: MomentumOpt = None,
    convention: ConventionOpt = None,
    centered: CenteredOpt = False,
    optimizer: OptimizerOpt = None,
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
    resume: ResumeOpt = False,
    no_compile_cache: NoCompileCacheOpt = False,
    coordinator: CoordinatorOpt = None,
    num_processes: NumProcessesOpt = None,
    process_id: ProcessIdOpt = None,
) -> None:
    """Train a grid of RMSProp settings at once and print final loss and accuracy per setting.

    Example: epsweep grid --eps 1e-8 1 --lr 1e-3 1e-2 --seeds 3
    """
    from epsweep.sweep import RunConfig
    from epsweep.tasks import build_task

    _setup_logging(quiet)
    _setup_runtime(no_compile_cache, coordinator, num_processes, process_id)
    out_fmt, file_fmt = _output_format(fmt, output)
    the_grid = _grid(eps, decay, lr, momentum)
    config = RunConfig(
        steps=steps, epochs=epochs, batch_size=batch_size, seeds=seeds, first_seed=seed,
        conventions=_names(convention), centered=centered, chunk_size=chunk_size,
        optimizers=_names(optimizer, "rmsprop"),
    )
    the_task = build_task(task, dataset, val_split)
    run_sweep(the_task, the_grid, config, out_fmt=out_fmt, output=output, file_fmt=file_fmt, quiet=quiet,
              resume=resume)


@app.command()
def inception(
    dataset: Annotated[
        str, typer.Option("--dataset", help="An ImageFolder directory (one sub-folder per class), an .npz of "
                          "images and labels, or the built-in digits / synthetic sets.")
    ] = "digits",
    eps: EpsOpt = None,
    decay: DecayOpt = None,
    lr: LrOpt = None,
    momentum: MomentumOpt = None,
    convention: ConventionOpt = None,
    centered: CenteredOpt = False,
    optimizer: OptimizerOpt = None,
    preset: Annotated[
        Optional[str], typer.Option("--preset", help="szegedy2016: the Inception-v3 paper's recipe (RMSProp tf1, "
                                    "decay 0.9, eps 1, momentum 0.9, lr 0.045 x 0.94 every 2 epochs, clip 2, "
                                    "label smoothing 0.1). Explicit flags override it.")
    ] = None,
    image_size: Annotated[int, typer.Option("--image-size", help="Resize images to this square (>= 75).")] = 299,
    head: Annotated[str, typer.Option("--head", help="linear (the standard classifier) or mlp.")] = "linear",
    aux: Annotated[bool, typer.Option("--aux", help="Auxiliary classifier, loss weight 0.4 (needs 299).")] = False,
    dropout: Annotated[float, typer.Option("--dropout", help="Dropout before the linear classifier.")] = 0.5,
    weights: Annotated[
        Optional[Path], typer.Option("--weights", help="Pretrained .safetensors in torchvision/timm key layout.")
    ] = None,
    freeze_base: Annotated[bool, typer.Option("--freeze-base", help="Train only the head (needs --weights).")] = False,
    label_smoothing: Annotated[Optional[float], typer.Option("--label-smoothing", help="[default: 0]")] = None,
    clip_norm: Annotated[Optional[float], typer.Option("--clip-norm", help="Clip the gradient's global norm.")] = None,
    lr_decay_rate: Annotated[
        Optional[float], typer.Option("--lr-decay-rate", help="Multiply lr by this every --lr-decay-epochs.")
    ] = None,
    lr_decay_epochs: Annotated[Optional[float], typer.Option("--lr-decay-epochs", help="[default: 1]")] = None,
    dtype: Annotated[str, typer.Option("--dtype", help="Computation dtype: float32 or bfloat16.")] = "float32",
    steps: StepsOpt = None,
    epochs: EpochsOpt = None,
    batch_size: BatchOpt = None,
    seeds: SeedsOpt = 1,
    seed: SeedOpt = 0,
    val_split: ValSplitOpt = 0.2,
    fmt: FormatOpt = None,
    output: OutputOpt = None,
    quiet: QuietOpt = False,
    resume: ResumeOpt = False,
    chunk_size: ChunkOpt = None,
    no_compile_cache: NoCompileCacheOpt = False,
    coordinator: CoordinatorOpt = None,
    num_processes: NumProcessesOpt = None,
    process_id: ProcessIdOpt = None,
) -> None:
    """Sweep RMSProp settings on Inception-v3 over your images: every setting trained at once.

    Example: epsweep inception --dataset ./photos --image-size 75 --eps 1e-8 1 --epochs 2
    """
    from epsweep.grid import Grid
    from epsweep.images import load_image_dataset
    from epsweep.inception_task import InceptionOptions, check_image_size, inception_task
    from epsweep.presets import apply_preset
    from epsweep.sweep import RunConfig

    _setup_logging(quiet)
    _setup_runtime(no_compile_cache, coordinator, num_processes, process_id)
    out_fmt, file_fmt = _output_format(fmt, output)
    given = {
        "eps": _values(eps, "eps"), "decay": _values(decay, "decay"), "lr": _values(lr, "lr"),
        "momentum": _values(momentum, "momentum"), "convention": _names(convention) if convention else None,
        "lr_decay_rate": lr_decay_rate, "lr_decay_epochs": lr_decay_epochs, "clip_norm": clip_norm,
        "label_smoothing": label_smoothing,
    }
    values = apply_preset(preset, given)
    if values["lr_decay_epochs"] is not None and values["lr_decay_rate"] is None:
        raise UserError("--lr-decay-epochs needs --lr-decay-rate")
    the_grid = Grid(**{axis: values[axis] for axis in ("eps", "decay", "lr", "momentum") if values[axis] is not None})
    config = RunConfig(
        steps=steps, epochs=epochs, batch_size=batch_size, seeds=seeds, first_seed=seed,
        conventions=values["convention"] or ("optax",), centered=centered, chunk_size=chunk_size,
        optimizers=_names(optimizer, "rmsprop"),
        clip_norm=values["clip_norm"], lr_decay_rate=values["lr_decay_rate"], lr_decay_epochs=values["lr_decay_epochs"],
    )
    options = InceptionOptions(head=head, aux_logits=aux, dropout_rate=dropout, dtype=dtype,
                               label_smoothing=values["label_smoothing"] or 0.0, weights=weights,
                               freeze_base=freeze_base, preset=preset)
    check_image_size(image_size, options)  # before minutes of decoding images
    warn = None if quiet else (lambda message: _log(f"warning: {message}"))
    with _Progress(enabled=not quiet and stderr.is_terminal) as progress:
        on_image = (lambda done, total: progress("loading", done, total, "images")) if progress.callback else None
        data = load_image_dataset(dataset, image_size, val_split, progress=on_image, warn=warn)
    task = inception_task(data, options)
    if not quiet:
        _log(f"{data.name}: {len(data.x_train)} training and {len(data.x_val)} validation images, "
             f"{data.num_classes} classes, {image_size}x{image_size}")
    run_sweep(task, the_grid, config, out_fmt=out_fmt, output=output, file_fmt=file_fmt, quiet=quiet,
              resume=resume)


def run_sweep(
    task, grid, config, *, out_fmt: str, output: Path | None, file_fmt: str | None, quiet: bool, resume: bool = False
) -> None:
    """The part every training command shares: sweep with progress, log, present.

    A ``jsonl`` output file is streamed (a record per setting as each chunk finishes) and
    can be resumed; Ctrl-C exits at once with code 130 and one line saying what was saved.
    """
    from jax.errors import JaxRuntimeError

    from epsweep import parallel
    from epsweep.store import exit_on_interrupt, interrupted_message, stream_sweep
    from epsweep.sweep import sweep

    streaming = output is not None and file_fmt == "jsonl"
    if resume and output is None:
        raise UserError("--resume needs --output FILE.jsonl (the file to resume)")
    if resume and not streaming:
        raise UserError(f"--resume works with jsonl output only ({output} would be written whole, as {file_fmt})")
    if resume and parallel.process_count() > 1:
        raise UserError("--resume works in a single process (every process must train the same settings)")
    primary = parallel.is_primary()  # of several processes, process 0 logs and writes
    if streaming and not resume and config.chunk_size is None:
        # records arrive progressively; decided here so that every process runs the same chunks
        import dataclasses

        from epsweep.store import stream_chunk

        config = dataclasses.replace(config, chunk_size=stream_chunk(task, config, len(grid)))
    saved = {"saved": 0, "total": 0}
    # Not streamed: finished chunks are kept in memory and, if the sweep stops early (Ctrl-C,
    # out of memory), saved to a resumable .partial.jsonl rather than lost.
    finished: list[dict] = []
    chunk_sizes: list[int] = []  # records per finished chunk: the first is the sweep's chunk size
    partial: dict = {}

    def keep_chunk(records: list[dict]) -> None:
        chunk_sizes.append(len(records))
        finished.extend(records)

    def keep_partial() -> Path | None:
        if streaming or not primary or not finished:
            return None
        if "path" not in partial:  # once, whichever of Ctrl-C or an error comes first
            from epsweep.store import save_partial

            try:
                partial["path"] = save_partial(task, grid, config, list(finished), chunk_sizes[0], near=output)
            except OSError:
                partial["path"] = None
        return partial["path"]

    def message() -> str:
        path = keep_partial()
        if path is not None:
            total = len(grid) * len(config.programs())
            return (f"interrupted; {len(finished)} of {total} finished settings saved to {path} "
                    f"(finish with --output {path} --resume)")
        return interrupted_message(saved["saved"], saved["total"], output, file_fmt)

    try:
        with _Progress(enabled=not quiet and stderr.is_terminal) as progress:
            with exit_on_interrupt(message, cleanup=progress.stop):
                if streaming and primary:
                    result = stream_sweep(task, grid, config, output, resume=resume, progress=progress.callback,
                                          on_saved=lambda n, total: saved.update(saved=n, total=total))
                else:
                    result = sweep(task, grid, config, progress=progress.callback, on_records=keep_chunk)
    except KeyboardInterrupt:  # outside the main thread, or between compiled calls
        print(f"epsweep: {message()}", file=sys.stderr, flush=True)
        raise typer.Exit(130) from None
    except JaxRuntimeError as e:  # the device ran out of memory: the user's sizes, not a bug
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        kept = (f"; {saved['saved']} of {saved['total']} settings saved to {output} (resume with --resume)"
                if streaming and saved["saved"] else "")
        if (path := keep_partial()) is not None:
            kept = (f"; {len(finished)} finished settings saved to {path} (finish with --output {path} "
                    f"--resume)")
        raise UserError(f"out of memory while training: {str(e).splitlines()[0][:200]} (use a smaller "
                        f"--batch-size, --chunk-size, --image-size or fewer --seeds){kept}") from None
    if not primary:
        return
    _log_summary(result, quiet)
    if streaming and not quiet:
        _log(f"wrote {len(result.records)} records to {output}")
    present(result, out_fmt, None if streaming else output, None if streaming else file_fmt, quiet)


# --- looking at saved results ----------------------------------------------------------------

ResultsFileArg = Annotated[
    Path, typer.Argument(help="Results written by epsweep: .jsonl (also partial), .json or .csv.", show_default=False)
]
WhereOpt = Annotated[
    Optional[list[str]],
    typer.Option("--where", help="Keep settings where FIELD=VALUE (also !=, <, <=, >, >=; "
                                 "lr=0.01,0.1 for any of). Repeat to require several."),
]


@app.command()
def report(
    file: ResultsFileArg,
    sort: Annotated[Optional[str], typer.Option(
        "--sort", help="Order rows by a field: rank, val_accuracy, val_loss, final_loss, eps, lr, ... "
                       "(metrics best first, axes ascending).")] = None,
    reverse: Annotated[bool, typer.Option("--reverse", help="Reverse the --sort order.")] = False,
    top: Annotated[Optional[int], typer.Option(
        "--top", help="Only the first N rows (best first without --sort).")] = None,
    where: WhereOpt = None,
    fmt: FormatOpt = None,
    output: OutputOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Show a saved sweep again: its table, the best setting per axis value, and how much
    accuracy moves across the eps range at each lr/decay.

    Example: epsweep report sweep.jsonl --top 5 --where decay=0.9
    """
    from epsweep.report import build_report
    from epsweep.store import read_results

    out_fmt, file_fmt = _output_format(fmt, output)
    loaded = read_results(file)
    result = build_report(loaded, where=where or (), sort=sort, reverse=reverse, top=top)
    present_report(result, out_fmt, output, file_fmt, quiet)


def present_report(result, fmt: str, output: Path | None, file_fmt: str | None, quiet: bool) -> None:
    """A report to stdout in ``fmt`` and, when asked, atomically to ``output``."""
    from epsweep.render import best_per_axis_table, records_table, sensitivity_table
    from epsweep.results import render_machine
    from epsweep.store import write_atomic

    def text(kind: str) -> str:
        return result.to_json() if kind == "json" else render_machine(kind, result.meta, result.records)

    if not quiet:
        for note in result.notes:
            _log(note)
    if output is not None and file_fmt is not None:
        try:
            write_atomic(output, text(file_fmt))
        except OSError as e:
            raise UserError(f"--output: cannot write {output}: {e.strerror or e}") from None
        if not quiet:
            _log(f"wrote {len(result.records)} records to {output}")
    if fmt == "table":
        console = Console(highlight=False)
        console.print(records_table(result.records, result.meta, sparklines=True, note=result.title(),
                                    max_width=console.width))
        if result.best_per_axis:
            console.print(best_per_axis_table(result.best_per_axis))
        if result.sensitivity:
            console.print(sensitivity_table(result.sensitivity))
        if result.summary:
            console.print(result.summary)
    elif fmt in ("csv", "json", "jsonl"):
        sys.stdout.write(text(fmt))
        sys.stdout.flush()


@app.command()
def plot(
    file: ResultsFileArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="Image to write: .png, .svg or .pdf.",
                                         show_default=False)],
    where: WhereOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Draw a saved sweep: loss curves coloured by eps (a panel per lr/decay) and a heatmap
    of validation accuracy over eps x lr. Needs matplotlib: pip install 'epsweep[plot]'.

    Example: epsweep plot sweep.jsonl -o sweep.png
    """
    from epsweep.plot import save_plot
    from epsweep.report import build_report
    from epsweep.store import read_results

    loaded = read_results(file)
    selected = build_report(loaded, where=where or ())
    panels = save_plot(selected.meta, selected.records, output)
    if not quiet:
        for note in selected.notes:
            _log(note)
        _log(f"wrote {output}: {panels} loss-curve panel{'s' if panels != 1 else ''} and a heatmap")


def _error(message: str) -> None:
    """One plain line on stderr (never wrapped, never styled)."""
    print(f"epsweep: error: {' '.join(message.split())}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``epsweep`` executable; returns the exit code."""
    args = normalize_argv(list(sys.argv[1:] if argv is None else argv))
    _stdin_readers.clear()  # one invocation's state (main may run several times in a process)
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
