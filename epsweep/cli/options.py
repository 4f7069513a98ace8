"""Options shared by the commands, each defined once, and the map from library parameter names
to the flags that set them (library errors name parameters; the CLI shows flags)."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Optional

import typer

from epsweep.vocabulary import EPS_DOM_DEFINITION


def path_value(text: str) -> Path:
    """A path argument; an empty one is refused (``Path("")`` would be the current folder)."""
    if not text:
        raise typer.BadParameter("an empty path")
    return Path(text)


# Library parameter -> flag, where the flag is not simply --name-with-dashes.
FLAG_NAMES = {
    "first_seed": "--seed",
    "conventions": "--convention",
    "optimizers": "--optimizer",
    "aux": "--aux",
    "model_spec": "--model",
    "features_spec": "--features",
    "join_timeout_s": "--join-timeout",
}


def flag(name: str) -> str:
    """The flag that sets library parameter ``name`` (``batch_size`` -> ``--batch-size``)."""
    return FLAG_NAMES.get(name, "--" + name.replace("_", "-"))


COLUMNS_HELP = (
    "Columns: final loss is the mean training loss over the last 1/50 of training (the loss curve's last point); "
    "val loss and val acc are measured on "
    f"the held-out split; {EPS_DOM_DEFINITION}; status says what went wrong: diverged (a loss or update became "
    "inf or NaN), collapsed (finite, but the final loss ended more than 5% above the curve's first point), at "
    "chance (val acc no "
    "better than always answering the most common class). The star marks the best setting that is none of these; "
    "numbers show 4 significant digits and shares (eps-dom) 3 decimals; the --where of report, plot and compare "
    "matches a number as shown."
)


def with_columns_help(command):
    """Put :data:`COLUMNS_HELP` into a command's help, before its example."""
    doc = inspect.cleandoc(command.__doc__ or "")
    head, example, tail = doc.rpartition("\n\nExample:")
    command.__doc__ = f"{head}\n\n{COLUMNS_HELP}{example}{tail}" if example else f"{doc}\n\n{COLUMNS_HELP}"
    return command


VALUES_HELP = ("Several values: 1e-8 1, 1e-8,1, log:1e-10:1:11, lin:0.8:0.99:5, rand:log:1e-10:1:64 (a seeded "
               "random sample; rand:lin:... too), or - for stdin.")
VALUES = "VALUES"
NAMES = "NAMES"

EpsOpt = Annotated[Optional[list[str]], typer.Option(
    "--eps", metavar=VALUES, help=f"Epsilon values [default: 1e-8 1]. {VALUES_HELP}")]
DecayOpt = Annotated[Optional[list[str]], typer.Option(
    "--decay", metavar=VALUES, help="Decay (rho) values; Adam's b2 [default: 0.9; adam 0.999].")]
LrOpt = Annotated[Optional[list[str]], typer.Option("--lr", metavar=VALUES, help="Learning rates [default: 1e-3].")]
MomentumOpt = Annotated[Optional[list[str]], typer.Option(
    "--momentum", metavar=VALUES, help="Momentum values [default: 0].")]
ConventionOpt = Annotated[Optional[list[str]], typer.Option(
    "--convention", metavar=NAMES,
    help="Update rule: optax, pytorch, tf1, keras (several allowed) [default: optax].")]
CenteredOpt = Annotated[bool, typer.Option("--centered", help="Centered RMSProp (divide by the running std).")]
OptimizerOpt = Annotated[Optional[list[str]], typer.Option(
    "--optimizer", metavar=NAMES,
    help="rmsprop, adam (--decay is b2, b1 = 0.9; no momentum), adagrad (no decay or momentum) or sgd "
         "(momentum; no eps or decay); several allowed; an axis an optimizer does not use does not multiply "
         "its rows; --convention and --centered apply to rmsprop only [default: rmsprop].")]
StepsOpt = Annotated[Optional[int], typer.Option("--steps", metavar="N", help="Training steps per setting.")]
EpochsOpt = Annotated[Optional[int], typer.Option(
    "--epochs", metavar="N", help="Epochs per setting [default: the task's].")]
BatchOpt = Annotated[Optional[int], typer.Option("--batch-size", metavar="N", help="Minibatch size [default: 32].")]
SeedsOpt = Annotated[int, typer.Option("--seeds", metavar="N", help="Seeds per setting (mean ± std over them).")]
SeedOpt = Annotated[int, typer.Option("--seed", metavar="N", help="First seed (the seeds are N, N+1, ...).")]
ValSplitOpt = Annotated[float, typer.Option(
    "--val-split", metavar="FRACTION", help="Fraction held out for validation.")]
FormatOpt = Annotated[Optional[str], typer.Option(
    "--format", "-f", metavar="FORMAT", help="table, markdown (a GitHub table), csv, json or jsonl [default: table].")]
OutputOpt = Annotated[Optional[Path], typer.Option(
    "--output", "-o", metavar="FILE", parser=path_value,
    help="Also write the records to FILE (.csv, .json or .jsonl); with a csv, json or jsonl --format, to FILE only.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or log lines on stderr.")]
ChunkOpt = Annotated[Optional[int], typer.Option(
    "--chunk-size", metavar="N",
    help="Settings per compiled call, rounded up to a multiple of the device count "
         "[default: what fits the device, estimated from the model].")]
ForceOpt = Annotated[bool, typer.Option(
    "--force", help="Let --output replace a file holding another sweep's results (or anything that is not "
                    "this sweep's).")]
ResumeOpt = Annotated[bool, typer.Option(
    "--resume", help="With --output FILE.jsonl: train only the settings missing from FILE.")]
NoCompileCacheOpt = Annotated[bool, typer.Option(
    "--no-compile-cache",
    help="Do not read or write the persistent compilation cache ($EPSWEEP_COMPILE_CACHE, else ~/.cache/epsweep/jax).")]
CoordinatorOpt = Annotated[Optional[str], typer.Option(
    "--coordinator", metavar="HOST:PORT", help="Address of process 0, to run as one of several processes.")]
NumProcessesOpt = Annotated[Optional[int], typer.Option(
    "--num-processes", metavar="N", help="How many processes share the sweep.")]
ProcessIdOpt = Annotated[Optional[int], typer.Option(
    "--process-id", metavar="N", help="This process's rank (0 writes results).")]
JoinTimeoutOpt = Annotated[int, typer.Option(
    "--join-timeout", metavar="SECONDS",
    help="With several processes: how long to wait for the coordinator and the others before giving up.")]

ResultsFileArg = Annotated[Path, typer.Argument(
    metavar="FILE", parser=path_value, help="Results written by epsweep: .jsonl (also partial), .json or .csv.",
    show_default=False)]
WhereOpt = Annotated[Optional[list[str]], typer.Option(
    "--where", metavar="EXPR",
    help="Keep settings where FIELD=VALUE (also !=, <, <=, >, >=; lr=0.01,0.1 for any of). "
         "Repeat to require several.")]
