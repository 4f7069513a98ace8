"""The training commands, ``grid`` and ``inception``: parse options, build task, grid and config,
call the runner, present. Everything they share is :func:`run_training`."""

from __future__ import annotations

import contextlib
import functools
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from epsweep.cli import options as o
from epsweep.cli.app import app
from epsweep.cli.argv import stdin_for
from epsweep.cli.present import (
    kept_text,
    log,
    log_summary,
    output_format,
    present_records,
    prints_to_stderr,
    setup_logging,
    stderr,
    stop_text,
    warning,
)
from epsweep.cli.progress import ProgressDisplay
from epsweep.errors import UserError


def _values(tokens: list[str] | None, name: str) -> list[float] | None:
    from epsweep.grid import parse_values

    return None if tokens is None else parse_values(tokens, name, read_stdin=lambda: stdin_for(name))


def _names(tokens: list[str] | None, default: str) -> tuple[str, ...]:
    """Names given as values or comma lists, duplicates dropped; (default,) when none."""
    if tokens is None:
        return (default,)
    names = [piece.strip() for token in tokens for piece in token.split(",")]
    return tuple(dict.fromkeys(names))


def _runtime(no_compile_cache: bool, coordinator: str | None, num_processes: int | None, process_id: int | None,
             join_timeout: int):
    """The JAX runtime the flags ask for (checked now, applied by the runner's setup)."""
    from epsweep.engine.runtime import Runtime  # no JAX: an argument error must not wait for it

    return Runtime(compile_cache=not no_compile_cache, coordinator=coordinator, num_processes=num_processes,
                   process_id=process_id, join_timeout_s=join_timeout)


def _setup(runtime, quiet: bool) -> None:
    """Apply ``runtime``; joining other processes says so first, and gives up after
    ``--join-timeout`` with one line (JAX alone would end the process with a fatal error)."""
    from epsweep.cli.signals import deadline
    from epsweep.engine.devices import setup

    if not runtime.distributed:
        setup(runtime)
        return
    where = f"through {runtime.coordinator}" if runtime.coordinator else "as the cluster environment says"
    count = f"{runtime.num_processes} processes" if runtime.num_processes else "the other processes"
    if not quiet:
        log(f"joining {count} {where} (waiting up to {runtime.join_timeout_s} s)")
    role = "the other processes did not join" if runtime.process_id in (0, None) else "could not join the others"
    with deadline(runtime.join_timeout_s + 1, lambda: f"{role} within {runtime.join_timeout_s} s ({where}); "
                                                  f"{o.flag('join_timeout_s')} sets how long to wait"):
        setup(runtime)


def check_resume(resume: bool, output: Path | None, file_fmt: str | None) -> None:
    """``--resume`` needs a ``.jsonl`` output: said before any data is loaded or JAX imported
    (each command checks it right after reading its output options)."""
    if resume and output is None:
        raise UserError(f"{o.flag('resume')} needs {o.flag('output')} FILE.jsonl (the file to resume)")
    if resume and file_fmt != "jsonl":
        raise UserError(f"{o.flag('resume')} works with jsonl output only ({output} would be written whole, "
                        f"as {file_fmt})")


def run_training(runtime, task, grid, config, *, out_fmt: str, output: Path | None, file_fmt: str | None, quiet: bool,
                 resume: bool = False, force: bool = False) -> None:
    """The part every training command shares: run with progress, log, present.

    A ``jsonl`` output file is streamed (a record per setting as each chunk finishes) and
    can be resumed; Ctrl-C exits at once with code 130 and one line saying what was kept.
    """
    from epsweep.cli.signals import exit_on_interrupt
    from epsweep.engine.devices import is_primary
    from epsweep.results.formats import render_machine
    from epsweep.results.writers import writer_for
    from epsweep.runner import Runner, SweepInterrupted, SweepStopped, WriteFailed

    _setup(runtime, quiet)
    writers = [writer_for(output, file_fmt, resume=resume, force=force)] if output is not None and file_fmt else []
    display = ProgressDisplay(stderr, enabled=not quiet and stderr.is_terminal)
    runner = Runner(task, grid, config, writers=writers, progress=display.sweep_callback, resume=resume)
    try:
        interrupts = exit_on_interrupt(lambda: stop_text(runner.save_partial(), output), cleanup=display.stop)
        with prints_to_stderr(), display, interrupts:
            result = runner.run()
    except SweepInterrupted as stopped:  # between compiled calls, or outside the main thread
        print(f"epsweep: {stop_text(stopped.report, output)}", file=sys.stderr, flush=True)
        raise typer.Exit(130) from None
    except SweepStopped as error:  # out of memory, an output that failed: what finished is kept
        kept = stop_text(error.report, output, interrupted=False).split("; ", 1)[1]
        raise UserError(f"{error.message}; {kept}") from None
    except WriteFailed as error:
        with contextlib.suppress(UserError):  # the error says where the results went
            present_records(error.result, out_fmt)  # the results still reach stdout
        raise
    if not is_primary():
        return
    log_summary(result.meta, quiet)
    saved = output if output is not None and file_fmt else None
    if saved is not None and not quiet:
        log(_saved_text(result, output, writers[0].others_kept if resume else 0))
    unread = "interrupted while the results went to standard output; {}"
    as_json = functools.partial(render_machine, "json", result.meta, result.records)
    with exit_on_interrupt(lambda: unread.format(kept_text(saved, as_json))):  # a slow reader (`| less`)
        present_records(result, out_fmt, kept=saved)


def _saved_text(result: Any, output: Path, others: int) -> str:
    """What the output file now holds (after a resume, not all of it written now)."""
    count = len(result.records)
    if not result.meta.get("resumed") and not others:
        return f"wrote {count} record{'s' * (count != 1)} to {output}"
    return (f"{output} holds {count} record{'s' * (count != 1)} of this grid"
            + (f" and {others} other{'s' * (others != 1)} it held before" if others else ""))


def _grid_task(task: str | None, model: str | None, dataset: str, val_split: float, loss: str | None,
               metric: str | None, image_size: int | None, quiet: bool, features: str | None = None):
    """A built-in ``task``, or the user's ``model`` (with ``loss``, ``metric``, ``image_size``,
    and a frozen extractor, ``features``, in front of it)."""
    if model is None:
        from epsweep.tasks import build_task

        given = [o.flag(name) for name, value in (("loss", loss), ("metric", metric), ("image_size", image_size),
                                                  ("features_spec", features)) if value is not None]
        if given:
            raise UserError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to {o.flag('model')} only")
        return build_task(task or "mlp", dataset, val_split)
    from epsweep.tasks.model_file import model_task
    from epsweep.tasks.scoring import CLASSIFICATION_LOSSES, LOSSES

    if task is not None:
        raise UserError(f"give {o.flag('task')} or {o.flag('model')}, not both")
    loss = loss or "cross_entropy"
    if loss not in LOSSES:
        raise UserError(f"{o.flag('loss')}: unknown loss {loss!r}; choose from {', '.join(LOSSES)}")
    if metric is None:
        metric = "accuracy" if loss in CLASSIFICATION_LOSSES else "none"
    if metric not in ("accuracy", "none"):
        raise UserError(f"{o.flag('metric')}: unknown metric {metric!r}; choose accuracy or none")
    warn = None if quiet else warning
    return model_task(model, dataset, loss=loss, metric=None if metric == "none" else metric, val_split=val_split,
                      image_size=image_size, warn=warn, features_spec=features)


@app.command(short_help="Train a grid of settings at once: a row of results per setting.")
@o.with_columns_help
def grid(
    eps: o.EpsOpt = None,
    decay: o.DecayOpt = None,
    lr: o.LrOpt = None,
    momentum: o.MomentumOpt = None,
    convention: o.ConventionOpt = None,
    centered: o.CenteredOpt = False,
    optimizer: o.OptimizerOpt = None,
    task: Annotated[Optional[str], typer.Option(
        "--task", metavar="NAME", help="mlp, cnn, toy or quadratic [default: mlp].")] = None,
    model: Annotated[Optional[str], typer.Option(
        "--model", metavar="FILE.py:NAME", help="Your own Flax model instead of --task: a linen module or class, "
        "an NNX module class or a factory, NAME in FILE.py or package.module (docs/own-model.md).")] = None,
    features: Annotated[Optional[str], typer.Option(
        "--features", metavar="FILE.py:NAME", help="With --model: a frozen feature extractor in front of it, an "
        "epsweep.Features NAME in FILE.py or package.module; every input's features are computed once and the "
        "model trains on them (docs/own-model.md).")] = None,
    loss: Annotated[Optional[str], typer.Option(
        "--loss", metavar="NAME", help="With --model: cross_entropy, binary_cross_entropy or mse "
        "[default: cross_entropy].")] = None,
    metric: Annotated[Optional[str], typer.Option(
        "--metric", metavar="NAME", help="With --model: accuracy or none [default: accuracy; none with mse].")
    ] = None,
    dataset: Annotated[str, typer.Option(
        "--dataset", metavar="DATA", help="digits, synthetic, an .npz file, or an MNIST IDX file/directory; "
        "with --model also an ImageFolder directory.")] = "digits",
    image_size: Annotated[Optional[int], typer.Option(
        "--image-size", metavar="PIXELS", help="With --model and an ImageFolder --dataset: resize its images "
        "to this square.")] = None,
    steps: o.StepsOpt = None,
    epochs: o.EpochsOpt = None,
    batch_size: o.BatchOpt = None,
    seeds: o.SeedsOpt = 1,
    seed: o.SeedOpt = 0,
    val_split: o.ValSplitOpt = 0.2,
    fmt: o.FormatOpt = None,
    output: o.OutputOpt = None,
    quiet: o.QuietOpt = False,
    chunk_size: o.ChunkOpt = None,
    resume: o.ResumeOpt = False,
    force: o.ForceOpt = False,
    no_compile_cache: o.NoCompileCacheOpt = False,
    coordinator: o.CoordinatorOpt = None,
    num_processes: o.NumProcessesOpt = None,
    process_id: o.ProcessIdOpt = None,
    join_timeout: o.JoinTimeoutOpt = 300,
) -> None:
    """Train a grid of RMSProp settings at once and print final loss and accuracy per setting.

    Example: epsweep grid --eps 1e-8 1 --lr 1e-3 1e-2 --seeds 3
    """
    from epsweep.config import RunConfig
    from epsweep.grid import Grid

    setup_logging(quiet)
    runtime = _runtime(no_compile_cache, coordinator, num_processes, process_id, join_timeout)
    out_fmt, file_fmt = output_format(fmt, output)
    check_resume(resume, output, file_fmt)
    axes = {"eps": eps, "decay": decay, "lr": lr, "momentum": momentum}
    the_grid = Grid(**{name: _values(tokens, name) for name, tokens in axes.items() if tokens is not None})
    config = RunConfig(
        steps=steps, epochs=epochs, batch_size=batch_size, seeds=seeds, first_seed=seed,
        conventions=_names(convention, "optax"), centered=centered, chunk_size=chunk_size,
        optimizers=_names(optimizer, "rmsprop"),
    )
    with prints_to_stderr():  # a model file may print as it is imported and traced
        the_task = _grid_task(task, model, dataset, val_split, loss, metric, image_size, quiet, features)
    run_training(runtime, the_task, the_grid, config, out_fmt=out_fmt, output=output, file_fmt=file_fmt, quiet=quiet,
                 resume=resume, force=force)


@app.command(short_help="The same on Inception-v3 over your own images.")
@o.with_columns_help
def inception(
    dataset: Annotated[str, typer.Option(
        "--dataset", metavar="DATA", help="An ImageFolder directory (one sub-folder per class), an .npz of "
        "images and labels, or the built-in digits / synthetic sets.")] = "digits",
    eps: o.EpsOpt = None,
    decay: o.DecayOpt = None,
    lr: o.LrOpt = None,
    momentum: o.MomentumOpt = None,
    convention: o.ConventionOpt = None,
    centered: o.CenteredOpt = False,
    optimizer: o.OptimizerOpt = None,
    preset: Annotated[Optional[str], typer.Option(
        "--preset", metavar="NAME", help="szegedy2016: the Inception-v3 paper's recipe (RMSProp tf1, decay 0.9, "
        "eps 1, momentum 0.9, lr 0.045 x 0.94 every 2 epochs, clip 2, label smoothing 0.1). Explicit flags "
        "override it.")] = None,
    image_size: Annotated[int, typer.Option(
        "--image-size", metavar="PIXELS", help="Resize images to this square (>= 75).")] = 299,
    head: Annotated[str, typer.Option("--head", metavar="NAME", help="linear (the standard classifier) or mlp.")
                    ] = "linear",
    aux: Annotated[bool, typer.Option("--aux", help="Auxiliary classifier, loss weight 0.4 (needs 299).")] = False,
    dropout: Annotated[float, typer.Option(
        "--dropout", metavar="RATE", help="Dropout before the linear classifier.")] = 0.5,
    weights: Annotated[Optional[Path], typer.Option(
        "--weights", metavar="FILE", parser=o.path_value,
        help="Pretrained .safetensors in torchvision/timm key layout.")] = None,
    freeze_base: Annotated[bool, typer.Option(
        "--freeze-base", help="Train only the head, on the base's features computed once (base in inference "
        "mode, as Keras; needs --weights).")] = False,
    label_smoothing: Annotated[Optional[float], typer.Option(
        "--label-smoothing", metavar="AMOUNT",
        help="Mix this much of the uniform distribution into the targets [default: 0].")] = None,
    clip_norm: Annotated[Optional[float], typer.Option(
        "--clip-norm", metavar="NORM", help="Clip the gradient's global norm to this.")] = None,
    lr_decay_rate: Annotated[Optional[float], typer.Option(
        "--lr-decay-rate", metavar="RATE", help="Multiply lr by this every --lr-decay-epochs.")] = None,
    lr_decay_epochs: Annotated[Optional[float], typer.Option(
        "--lr-decay-epochs", metavar="EPOCHS", help="How often --lr-decay-rate applies [default: 1].")] = None,
    dtype: Annotated[str, typer.Option("--dtype", metavar="DTYPE", help="Computation dtype: float32 or bfloat16.")
                     ] = "float32",
    steps: o.StepsOpt = None,
    epochs: o.EpochsOpt = None,
    batch_size: o.BatchOpt = None,
    seeds: o.SeedsOpt = 1,
    seed: o.SeedOpt = 0,
    val_split: o.ValSplitOpt = 0.2,
    fmt: o.FormatOpt = None,
    output: o.OutputOpt = None,
    quiet: o.QuietOpt = False,
    resume: o.ResumeOpt = False,
    force: o.ForceOpt = False,
    chunk_size: o.ChunkOpt = None,
    no_compile_cache: o.NoCompileCacheOpt = False,
    coordinator: o.CoordinatorOpt = None,
    num_processes: o.NumProcessesOpt = None,
    process_id: o.ProcessIdOpt = None,
    join_timeout: o.JoinTimeoutOpt = 300,
) -> None:
    """Sweep RMSProp settings on Inception-v3 over your images: every setting trained at once.

    Example: epsweep inception --dataset ./photos --image-size 75 --eps 1e-8 1 --epochs 2
    """
    from epsweep.config import RunConfig
    from epsweep.data.images import load_image_dataset
    from epsweep.grid import Grid
    from epsweep.presets import apply_preset
    from epsweep.tasks.inception_options import InceptionOptions, check_image_size

    setup_logging(quiet)
    runtime = _runtime(no_compile_cache, coordinator, num_processes, process_id, join_timeout)
    out_fmt, file_fmt = output_format(fmt, output)
    check_resume(resume, output, file_fmt)
    given = {
        "eps": _values(eps, "eps"), "decay": _values(decay, "decay"), "lr": _values(lr, "lr"),
        "momentum": _values(momentum, "momentum"), "convention": _names(convention, "optax") if convention else None,
        "lr_decay_rate": lr_decay_rate, "lr_decay_epochs": lr_decay_epochs, "clip_norm": clip_norm,
        "label_smoothing": label_smoothing,
    }
    values = apply_preset(preset, given)
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
    warn = None if quiet else warning
    with ProgressDisplay(stderr, enabled=not quiet and stderr.is_terminal) as display:
        on_image = (lambda done, total: display.items("loading", done, total, "images")) if display.enabled else None
        data = load_image_dataset(dataset, image_size, val_split, progress=on_image, warn=warn)
    # imports JAX: after every check above and the images, so that their errors come at once
    from epsweep.tasks.inception import inception_task

    task = inception_task(data, options)
    if not quiet:
        log(f"{data.name}: {len(data.x_train)} training and {len(data.x_val)} validation images, "
            f"{data.num_classes} classes, {image_size}x{image_size}")
    run_training(runtime, task, the_grid, config, out_fmt=out_fmt, output=output, file_fmt=file_fmt, quiet=quiet,
                 resume=resume, force=force)
