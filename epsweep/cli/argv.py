"""The command line's arguments before Typer sees them, and standard input as a value source.

Typer bundles a Click that refuses options taking several values, so :func:`normalize_argv`
rewrites ``--eps 1e-8 1`` into ``--eps 1e-8 --eps 1`` first.
"""

from __future__ import annotations

import re
import sys

from epsweep.errors import UserError, param

MAX_STDIN_BYTES = 16 << 20  # values on standard input: far more than any grid, far less than /dev/zero

MULTI_VALUE_OPTIONS = frozenset({"--eps", "--decay", "--lr", "--momentum", "--convention", "--optimizer"})
_NEGATIVE_NUMBER = re.compile(r"^-(\d|\.\d|inf|nan)", re.IGNORECASE)

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


_stdin_cache: list[str] = []


def _stdin_text() -> str:
    """Standard input, read once, at most :data:`MAX_STDIN_BYTES`."""
    if _stdin_cache:
        return _stdin_cache[0]
    if sys.stdin is None or sys.stdin.isatty():
        raise UserError("'-' reads values from standard input, but nothing is piped in")
    data = sys.stdin.buffer.read(MAX_STDIN_BYTES + 1)
    if len(data) > MAX_STDIN_BYTES:
        raise UserError(f"standard input holds more than {MAX_STDIN_BYTES >> 20} MiB; values for '-' must be "
                        f"less (a grid never needs that much)")
    _stdin_cache.append(data.decode("utf-8", "replace").removeprefix("\ufeff"))  # PowerShell writes a BOM
    return _stdin_cache[0]


def reset() -> None:
    """Forget one invocation's standard-input state (``main`` may run several times in a process)."""
    _stdin_readers.clear()
    _stdin_cache.clear()


def stdin_for(name: str) -> str:
    """Standard input's values for option ``--name``; only one option may read them."""
    _stdin_readers.add(name)
    if len(_stdin_readers) > 1:
        raise UserError(f"only one option can read values from standard input ('-'); "
                        f"got {' and '.join(param(n) for n in sorted(_stdin_readers))}")
    return _stdin_text()
