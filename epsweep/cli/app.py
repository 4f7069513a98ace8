"""The ``epsweep`` application: the Typer app, ``--version``, and :func:`main`, which turns
every error a user can cause into exit code 2 and one line on stderr."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from epsweep.cli import argv
from epsweep.cli.options import flag
from epsweep.errors import UserError, quoted

try:  # Typer >= 0.20 bundles its own Click; its errors are not the standalone Click's
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover - older Typer on the standalone Click
    from click.exceptions import ClickException

def _plain_argument_names() -> None:
    """Help names an argument by its metavar alone: ``FILE`` in the usage line (Typer writes
    ``{FILE}`` for a required one) and in the list of arguments (not ``FILE <path>``)."""
    from typer import core

    argument = getattr(core, "TyperArgument", None)
    if argument is None or not hasattr(argument, "_usage_display_name"):  # pragma: no cover - other Typer
        return

    def usage_name(self) -> str:
        name = self.display_name_raw if self.required else f"[{self.display_name_raw}]"
        return name + ("..." if self.nargs != 1 else "")

    def type_name(self, ctx):
        return None if self.metavar is not None else core._TyperParameter.display_type_rich(self, ctx)

    argument._usage_display_name = usage_name
    argument.display_type_rich = type_name


_plain_argument_names()

app = typer.Typer(
    name="epsweep",
    help="Sweep RMSProp's epsilon, decay and learning rate: every setting trained at once.",
    no_args_is_help=True,
    add_completion=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            text = version("epsweep")
        except PackageNotFoundError:  # pragma: no cover - run from a source tree
            text = "unknown"
        sys.stdout.write(f"epsweep {text}\n")
        raise typer.Exit(0)


@app.callback()
def _commands(
    version: Annotated[bool, typer.Option("--version", help="Show the version and exit.", callback=_version,
                                          is_eager=True)] = False,
) -> None:
    """Sweep RMSProp's epsilon, decay and learning rate: every setting trained at once.

    Example: epsweep grid --eps 1e-8 1
    """


def error_line(message: str) -> None:
    """One plain line on stderr (never wrapped, never styled, control characters written out)."""
    from epsweep.views.sheet import visible_line

    print(f"epsweep: error: {visible_line(message)}", file=sys.stderr, flush=True)


_NOT_PARSED = {"int_parsing": "is not a whole number", "float_parsing": "is not a number"}


def _click_message(error: ClickException) -> str:
    """Click's message, or for a value Typer could not parse (its pydantic check, whose own
    words are "Input should be a valid integer, unable to parse string as an integer") the
    value and what it should be: ``--steps: '1e3' is not a whole number``."""
    parameter, cause = getattr(error, "param", None), error.__cause__
    problems = cause.errors() if hasattr(cause, "errors") and callable(cause.errors) else []
    if parameter is not None and len(problems) == 1 and problems[0].get("type") in _NOT_PARSED:
        return f"{_shown_name(parameter)}: {quoted(problems[0].get('input'))} {_NOT_PARSED[problems[0]['type']]}"
    if parameter is not None and type(error).__name__ == "BadParameter" and cause is None:  # ours (path_value)
        return f"{_shown_name(parameter)}: {error.message}"
    return error.format_message()


def _shown_name(parameter) -> str:
    """An option's longest flag (``--steps``), an argument's metavar (``FILE``)."""
    flags = [name for name in getattr(parameter, "opts", ()) if name.startswith("-")]
    return max(flags, key=len) if flags else parameter.metavar or parameter.human_readable_name


def main(args: list[str] | None = None) -> int:
    """Entry point of the ``epsweep`` executable; returns the exit code."""
    from epsweep.cli.present import open_standard_streams

    restore = open_standard_streams()
    try:
        return _main(args)
    finally:
        restore()


def _main(args: list[str] | None) -> int:
    import importlib

    for module in ("epsweep.cli.train", "epsweep.cli.saved"):  # registers the commands, in this order
        importlib.import_module(module)

    arguments = argv.normalize_argv(list(sys.argv[1:] if args is None else args))
    argv.reset()  # one invocation's state (main may run several times in a process)
    try:
        code = app(args=arguments, prog_name="epsweep", standalone_mode=False)
    except UserError as e:
        error_line(e.render(flag))
        return 2
    except ValueError as e:  # JAX refused an environment variable's value when it read its flags
        from epsweep.engine.runtime import jax_environment_error

        if (error := jax_environment_error(e)) is None:
            raise
        error_line(error.render(flag))
        return 2
    except ClickException as e:
        if type(e).__name__ == "NoArgsIsHelpError":
            sys.stdout.write(e.ctx.get_help() + "\n")
            return 0
        error_line(_click_message(e))
        return 2
    except KeyboardInterrupt:
        print("epsweep: interrupted", file=sys.stderr, flush=True)
        return 130
    except BrokenPipeError:  # a closed pipe outside the commands' own handling (present.reader_left)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return code if isinstance(code, int) else 0


def main_exit() -> None:
    """Console-script wrapper: exit with :func:`main`'s code. Ctrl-C before training (while JAX
    imports, say) exits at once with code 130 and ``epsweep: interrupted``: a KeyboardInterrupt
    raised inside an extension's initialisation could abort the process or be swallowed."""
    from epsweep.cli.signals import exit_on_interrupt

    with exit_on_interrupt(lambda: "interrupted"):
        code = main()
    sys.exit(code)
