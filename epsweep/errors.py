"""Errors a user can cause. The CLI turns each into exit code 2 and one line.

Library messages name *parameters* (``steps``, ``batch_size``), not command-line flags. A
message marks each parameter name with :func:`param`; ``str(error)`` shows the bare name (what a
Python caller passed) and :meth:`UserError.render` lets the CLI show its flag (``--steps``)
instead, so no flag spelling lives outside :mod:`epsweep.cli`.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Callable

_OPEN, _CLOSE = "\ue000", "\ue001"  # private-use characters: never typed, never in a flag
_MARKED = re.compile(f"{_OPEN}([A-Za-z_][A-Za-z0-9_]*){_CLOSE}")


def param(name: str) -> str:
    """``name`` marked as a parameter inside a :class:`UserError` message.

    Args:
        name: the parameter's Python name, e.g. ``"batch_size"``.

    Returns:
        Text to put in a message; it reads as ``name`` in Python and as the flag on the CLI.

    Example:
        >>> str(UserError(f"{param('steps')}: 0 must be a positive integer"))
        'steps: 0 must be a positive integer'
    """
    return f"{_OPEN}{name}{_CLOSE}"


class UserError(ValueError):
    """Bad input from the user: a number, a file, a name. Its message is one clear line.

    Example:
        >>> error = UserError(f"{param('batch_size')}: 0 must be a positive integer")
        >>> error.render(lambda name: "--" + name.replace("_", "-"))
        '--batch-size: 0 must be a positive integer'
    """

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    @property
    def params(self) -> list[str]:
        """The parameters the message names, in order."""
        return _MARKED.findall(self.message)

    def render(self, name_of: Callable[[str], str] = lambda name: name) -> str:
        """The message with every marked parameter shown as ``name_of(parameter)``."""
        return _MARKED.sub(lambda m: name_of(m.group(1)), self.message)

    def __str__(self) -> str:
        return self.render()


SHOWN_CHARACTERS = 40  # of a value echoed in a message (a token of a megabyte makes no line to read)


def quoted(value: object, limit: int = SHOWN_CHARACTERS) -> str:
    """``repr(value)``, for text longer than ``limit`` characters its first ``limit`` and its length:
    what a message echoes of a value the user gave (a whole line of standard input may be one).

    Example:
        >>> quoted("1e-8"), quoted("x" * 1000, limit=3)
        ("'1e-8'", "'xxx'… (1,000 characters)")
    """
    if not isinstance(value, str) or len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}… ({len(value):,} characters)"


def first_line(error: BaseException, limit: int = 300) -> str:
    """``Type: first line`` of an exception a user's code raised, at most ``limit`` characters:
    what a one-line message says of it.

    Example:
        >>> first_line(ValueError("bad shape\\nmore detail")), first_line(KeyError())
        ('ValueError: bad shape', 'KeyError')
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


_ABSENT = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EBADF)  # what ``Path.exists()`` calls "not there"


def looked_up(path: str | os.PathLike, where: str) -> os.stat_result | None:
    """``path``'s status (links followed), None when nothing is there (as ``Path.exists()``
    says), or a UserError ``where: cannot read (reason)`` when the system cannot even look the
    name up (a name too long for it), where ``Path.exists()`` would raise."""
    try:
        return os.stat(path)
    except OSError as e:
        if e.errno in _ABSENT:
            return None
        raise UserError(f"{where}: cannot read ({e.strerror or e})") from None
