"""Source files and spans: positions live beside AST nodes, never in their equality."""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import NamedTuple


class Span(NamedTuple):
    """A half-open character range [start, end) in one file, with 1-based line/column.
    A named tuple, not a dataclass: the parser makes one per token and node it keeps,
    and a tuple is four times cheaper to make."""

    file: str
    start: int
    end: int
    line: int
    column: int
    end_line: int
    end_column: int


NO_SPAN = Span("<none>", 0, 0, 0, 0, 0, 0)


@dataclass(frozen=True)
class SourceFile:
    """A file's text plus a line index, so any offset maps to line and column. The text is
    kept with LF line endings: CRLF and a lone CR end a line as well (editors on every
    platform write them), and the lexer, comments and line numbers then need know only LF."""

    name: str
    text: str
    line_starts: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "text", unified_newlines(self.text))
        starts = [0]
        find = self.text.find
        pos = find("\n")
        while pos != -1:
            starts.append(pos + 1)
            pos = find("\n", pos + 1)
        object.__setattr__(self, "line_starts", tuple(starts))

    def position(self, offset: int) -> tuple[int, int]:
        """1-based (line, column) of an offset."""
        line = bisect.bisect_right(self.line_starts, offset) - 1
        return line + 1, offset - self.line_starts[line] + 1

    def span(self, start: int, end: int) -> Span:
        line, column = self.position(start)
        end_line, end_column = self.position(max(start, end))
        return Span(self.name, start, end, line, column, end_line, end_column)

    def line_text(self, line: int) -> str:
        start = self.line_starts[line - 1]
        end = self.line_starts[line] - 1 if line < len(self.line_starts) else len(self.text)
        return self.text[start:end]


def unified_newlines(text: str) -> str:
    """`text` with every CRLF and lone CR as LF."""
    if "\r" not in text:
        return text
    return text.replace("\r\n", "\n").replace("\r", "\n")
