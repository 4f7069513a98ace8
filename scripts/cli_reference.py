"""Regenerate (or, with --check, verify) the generated parts of docs/usage.md: the output of
``epsweep COMMAND --help`` for every command, between markers of the form

    <!-- generated: epsweep grid --help -->
    ...
    <!-- end generated -->

Run ``python scripts/cli_reference.py`` after changing an option; tests/test_docs.py fails
while the page and the commands disagree (as sqlite-utils checks its docs with cog).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import sys
from pathlib import Path

USAGE = Path(__file__).resolve().parents[1] / "docs" / "usage.md"
BLOCK = re.compile(r"(<!-- generated: (?P<command>[^>]+?) -->\n)(?P<body>.*?)(<!-- end generated -->)", re.DOTALL)
WIDTH = "100"


def help_text(command: str) -> str:
    """What ``command`` (``epsweep ... --help``) prints, at a fixed width."""
    from epsweep.cli import main

    args = shlex.split(command)[1:]
    out = io.StringIO()
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        with contextlib.redirect_stdout(out):
            main(args)
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved
    return out.getvalue().rstrip() + "\n"


def render(text: str) -> str:
    """``text`` with every generated block filled from the commands' help."""
    def fill(match: re.Match) -> str:
        body = f"```text\n$ {match['command']}\n{help_text(match['command'])}```\n"
        return match.group(1) + body + match.group(4)

    return BLOCK.sub(fill, text)


def main(argv: list[str]) -> int:
    current = USAGE.read_text()
    fresh = render(current)
    if "--check" in argv:
        if fresh != current:
            print(f"{USAGE} is out of date: run python scripts/cli_reference.py", file=sys.stderr)
            return 1
        return 0
    USAGE.write_text(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
