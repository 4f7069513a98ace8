"""The ``epsweep`` command line: each command parses, calls one library function, presents.

Layout: :mod:`.app` (the Typer app and ``main``), :mod:`.options` (options shared by the
commands, and parameter -> flag names), :mod:`.argv` (multi-value flags, stdin),
:mod:`.train` (``grid``, ``inception``), :mod:`.saved` (``report``, ``plot``),
:mod:`.present` (stdout and stderr), :mod:`.progress`, :mod:`.signals` (Ctrl-C).
"""

from epsweep.cli.app import app, main, main_exit
from epsweep.cli.argv import normalize_argv

__all__ = ["app", "main", "main_exit", "normalize_argv"]
