"""A table as plain data (:class:`Sheet`: a title, columns of cell texts, notes), fitted to a
terminal width and drawn with Rich, or written as a GitHub markdown table.

Every text in a sheet is shown literally: Rich markup (``[/x]``), emoji codes and markdown
syntax in a path or a name from a file come out as typed.

Fitting to a width never cuts a cell: columns that may go (``drop``) leave and those that
have shorter cells (``short``) switch to them, highest priority first; below priority
:data:`COMPACT` the table first loses its borders and padding. The note says what was left out.
"""

from __future__ import annotations

import dataclasses
import re

from rich import box
from rich.cells import cell_len
from rich.table import Table
from rich.text import Text

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # C0 but tab and newline, DEL, C1
_BIDI = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]")  # bidi controls, line breaks


def visible(text: str) -> str:
    """``text`` with its control characters written out (``\\x1b``, ``\\u202e``), so that a name
    from a file or a path shows as typed instead of steering the terminal (an escape sequence,
    a bell) or reordering the text around it (a bidirectional override)."""
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    return _BIDI.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def visible_line(text: str) -> str:
    """:func:`visible` on one line: line breaks, with the blanks around them, become one space;
    other spaces stay as they are (a name ``"a  b "`` keeps both of its inner and its last)."""
    return visible(re.sub(r"[ \t]*[\r\n]+[ \t]*", " ", text.strip("\r\n")))


COMPACT = 45
"""Steps of lower priority than this come after the table has lost its borders and padding."""

MIN_WIDTH = 20
"""The narrowest width a table is fitted to. No cell is cut at any width: a table that cannot
give way enough is printed wider than the terminal."""


@dataclasses.dataclass
class Column:
    """One column: a header, a text per row, and how it gives way when the terminal is narrow.

    ``drop`` and ``shorten`` are priorities (higher gives way first; None never): at ``drop``
    the column is left out and named in the note by its header; at ``shorten`` its cells become
    ``short`` (same length as ``cells``), named in the note as ``what`` when given.
    """

    header: str
    cells: list[str]
    justify: str = "right"
    drop: int | None = None
    short: list[str] | None = None
    shorten: int | None = None
    what: str | None = None
    crop: bool = False  # a drawing (sparkline): crop, never wrap
    wrap: bool = False  # words: may wrap at spaces (never used for numbers)
    squeeze: bool = False  # words that may wrap at spaces once the table is compact


@dataclasses.dataclass
class Sheet:
    """A table as data: ``head`` ("RMSProp sweep"), title ``parts`` (joined by commas, lines
    broken only between parts), ``held`` (what every row shares, after a semicolon), the
    columns, a style per row (Rich style names, ours only) and notes shown under the table."""

    head: str
    parts: list[str]
    columns: list[Column]
    styles: list[str | None] = dataclasses.field(default_factory=list)
    held: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def rows(self) -> int:
        return len(self.columns[0].cells) if self.columns else 0

    def title_pieces(self) -> list[str]:
        """The title as pieces that never break inside: ``head: part,``, ``part,``, ..."""
        tail = [*self.parts]
        if self.held:
            tail = [*tail[:-1], tail[-1] + ";"] if tail else []
            tail += self.held
        if not tail:
            return [self.head]
        pieces = [f"{p}," for p in tail[:-1]] + [tail[-1]]
        pieces = [p.replace(";,", ";") for p in pieces]
        return [f"{self.head}: {pieces[0]}", *pieces[1:]]

    def title(self) -> str:
        return " ".join(self.title_pieces())


def wrap_pieces(pieces: list[str], width: int) -> str:
    """Pieces joined by spaces, a new line before a piece that would pass ``width``."""
    lines: list[str] = []
    for piece in pieces:
        if lines and len(lines[-1]) + 1 + len(piece) <= width:
            lines[-1] += " " + piece
        else:
            lines.append(piece)
    return "\n".join(lines)


_GLUED = {"eps", "lr", "decay", "momentum", "b2", "optimizer", "convention"}


def prose(text: str, width: int) -> str:
    """A sentence wrapped to ``width`` at spaces, never between an axis and its value
    (``lr 0.1`` stays on one line)."""
    pieces: list[str] = []
    for word in text.split(" "):
        if pieces and pieces[-1].lstrip("(").split(" ")[-1] in _GLUED:
            pieces[-1] += " " + word
        else:
            pieces.append(word)
    return wrap_pieces(pieces, max(width, 1))


def _steps(sheet: Sheet) -> list[tuple[int, list[tuple[str, Column]]]]:
    """What gives way, in order: (priority, [(action, column), ...]) from the highest priority."""
    by_priority: dict[int, list[tuple[str, Column]]] = {}
    for column in sheet.columns:
        if column.shorten is not None and column.short is not None:
            by_priority.setdefault(column.shorten, []).append(("short", column))
        if column.drop is not None:
            by_priority.setdefault(column.drop, []).append(("drop", column))
    return sorted(by_priority.items(), key=lambda item: -item[0])


class SheetTable(Table):
    """A Rich table whose title and notes wrap at the width it is printed in (between title
    pieces, never inside one), not at the table's own width."""

    pieces: list[str]
    notes: list[str]

    def __rich_console__(self, console, options):
        width = options.max_width
        yield Text(wrap_pieces([visible(p) for p in self.pieces], width), no_wrap=False)
        if self.columns:  # never narrower than its cells: wider than the terminal, not cut
            yield from super().__rich_console__(console, options.update(max_width=max(width, measure(self))))
        if self.notes:
            yield Text(prose(visible(" ".join(self.notes)), width))

    @property
    def title_text(self) -> str:
        """The title in one line."""
        return " ".join(self.pieces)


def _build(sheet: Sheet, columns: list[tuple[Column, list[str]]], compact: bool, notes: list[str]) -> SheetTable:
    table = SheetTable(header_style="bold", box=box.SIMPLE_HEAD if compact else box.HEAVY_HEAD,
                       padding=(0, 1) if not compact else (0, 0), pad_edge=not compact, collapse_padding=compact,
                       show_edge=not compact)
    table.pieces, table.notes = sheet.title_pieces(), list(notes)
    for column, _ in columns:
        wraps = column.wrap or (column.squeeze and compact)
        table.add_column(Text(visible(column.header)), justify=column.justify, no_wrap=not wraps,
                         overflow="crop" if column.crop else "fold")
    for i in range(sheet.rows):
        style = sheet.styles[i] if i < len(sheet.styles) else None
        table.add_row(*(Text(visible(cells[i])) for _, cells in columns), style=style)
    return table


def measure(table: Table) -> int:
    """The narrowest ``table`` can be without cutting a cell or a header (only wrapping
    columns break, at spaces)."""
    widths = []
    for column in table.columns:
        texts = [column.header, *column.cells]
        plain = [t.plain if isinstance(t, Text) else str(t) for t in texts]
        if column.no_wrap:
            widths.append(max(cell_len(line) for t in plain for line in t.split("\n")))
        else:
            widths.append(max((cell_len(word) for t in plain for word in t.split()), default=1))
    if not table.columns:
        return 0
    padding = sum(table._get_padding_width(i) for i in range(len(table.columns)))
    return sum(widths) + padding + table._extra_width


def rich_table(sheet: Sheet, width: int | None = None) -> SheetTable:
    """``sheet`` as a Rich table no wider than ``width`` (at least :data:`MIN_WIDTH`) where
    it can be, giving way as the columns allow; None: everything."""
    columns = [(c, c.cells) for c in sheet.columns]
    if width is None:
        return _build(sheet, columns, False, sheet.notes)
    width = max(width, MIN_WIDTH)
    left_out: list[str] = []
    compact = False
    table = _build(sheet, columns, compact, sheet.notes)
    for priority, actions in _steps(sheet):
        if measure(table) <= width:
            return table
        if priority < COMPACT and not compact:
            compact = True
            table = _build(sheet, columns, compact, _with_left_out(sheet.notes, left_out, width))
            if measure(table) <= width:
                return table
        for action, column in actions:
            if action == "drop":
                columns = [(c, cells) for c, cells in columns if c is not column]
                left_out.append(column.header)
            else:
                columns = [(c, column.short if c is column else cells) for c, cells in columns]
                if column.what:
                    left_out.append(column.what)
        table = _build(sheet, columns, compact, _with_left_out(sheet.notes, left_out, width))
    if measure(table) > width and not compact:
        table = _build(sheet, columns, True, _with_left_out(sheet.notes, left_out, width))
    return table


def _with_left_out(notes: list[str], left_out: list[str], width: int) -> list[str]:
    if not left_out:
        return notes
    names = list(dict.fromkeys(left_out))
    return [*notes, f"Left out at {width} columns: {', '.join(names)} (a wider terminal shows "
                    f"{'them' if len(names) > 1 else 'it'}; the json format holds every field)."]


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>|~$&])")


def markdown_text(text: str) -> str:
    """``text`` for markdown, shown literally (every special character escaped)."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", visible(text)).replace("\n", " ")


def markdown(sheet: Sheet) -> str:
    """``sheet`` as a GitHub markdown table, everything in it, under its title in bold."""
    columns = [c for c in sheet.columns if not c.crop]
    lines = [f"**{markdown_text(sheet.title())}**", ""]
    if not columns:
        return "\n".join(lines + [markdown_text(" ".join(sheet.notes))]) + "\n"
    lines.append("| " + " | ".join(markdown_text(c.header) for c in columns) + " |")
    lines.append("|" + "|".join("---:" if c.justify == "right" else ":---" for c in columns) + "|")
    for i in range(sheet.rows):
        lines.append("| " + " | ".join(markdown_text(c.cells[i]) or " " for c in columns) + " |")
    if sheet.notes:
        lines += ["", markdown_text(" ".join(sheet.notes))]
    return "\n".join(lines) + "\n"
