"""Diagnostics as data (code, severity, message, spans, help) and their renderers.

Checks append `Diagnostic` records to a `DiagnosticSink`; presentation lives only in
`render_text` and `render_json`, so every format sees the same facts.
"""
from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Iterable, Mapping

from .source import SourceFile, Span

if TYPE_CHECKING:
    from .codes import Code


class Severity(str, Enum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True)
class Label:
    span: Span
    message: str = ""


@dataclass(frozen=True)
class Diagnostic:
    code: str
    severity: Severity
    message: str
    primary: Label
    secondary: tuple[Label, ...] = ()
    help: str | None = None

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR


@dataclass
class DiagnosticSink:
    """Collects the diagnostics of a phase; a phase with errors stops the pipeline."""

    diagnostics: list[Diagnostic] = field(default_factory=list)

    def report(self, code: Code, message: str, span: Span, label: str = "", *,
               secondary: Iterable[Label] = (), help: str | None = None) -> None:
        """Record a diagnostic under `code`, whose registry entry gives its severity."""
        self.diagnostics.append(Diagnostic(code.name, code.severity, message, Label(span, label), tuple(secondary), help))

    @property
    def has_errors(self) -> bool:
        return any(d.is_error for d in self.diagnostics)


def did_you_mean(name: str, candidates: Iterable[str]) -> str | None:
    """A help line naming the closest candidate, if any is close enough."""
    close = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.6)
    return f"did you mean `{close[0]}`?" if close else None


def sorted_diagnostics(diagnostics: Iterable[Diagnostic]) -> list[Diagnostic]:
    """Source order: file, then position, then code (stable for equal spans)."""
    return sorted(diagnostics, key=lambda d: (d.primary.span.file, d.primary.span.start, d.code))


# ---------------------------------------------------------------- text rendering

MAX_LINE_SHOWN = 120

def _caret_lines(source: SourceFile | None, label: Label, marker: str, gutter: int) -> list[str]:
    span = label.span
    pad = " " * gutter
    if source is None or span.line < 1 or span.line > len(source.line_starts):
        return []
    text = source.line_text(span.line).replace("\t", " ")
    end_col = span.end_column if span.end_line == span.line else len(text) + 1
    width = max(1, end_col - span.column)
    start_col = span.column
    if len(text) > MAX_LINE_SHOWN:  # show a window around the span, not a whole minified line
        cut = max(0, span.column - 1 - MAX_LINE_SHOWN // 4)
        text = ("..." if cut else "") + text[cut:cut + MAX_LINE_SHOWN] + "..."
        start_col = span.column - cut + (3 if cut else 0)
        width = min(width, MAX_LINE_SHOWN - (start_col - 1) + 3)
    underline = " " * (start_col - 1) + marker * width
    suffix = f" {label.message}" if label.message else ""
    return [f"{str(span.line).rjust(gutter)} | {text}", f"{pad} | {underline}{suffix}"]


def render_text(diagnostics: Iterable[Diagnostic], sources: Mapping[str, SourceFile]) -> str:
    """rustc/ruff-style blocks, one per diagnostic, in source order, then a summary line."""
    blocks = []
    diags = sorted_diagnostics(diagnostics)
    for diag in diags:
        span = diag.primary.span
        source = sources.get(span.file)
        labels = [diag.primary, *diag.secondary]
        gutter = max(len(str(l.span.line)) for l in labels)
        pad = " " * gutter
        lines = [f"{diag.severity.value}[{diag.code}]: {diag.message}",
                 f"{pad}--> {span.file}:{span.line}:{span.column}"]
        body = _caret_lines(source, diag.primary, "^", gutter)
        for label in diag.secondary:
            if label.span.file != span.file:
                body.append(f"{pad} ::: {label.span.file}:{label.span.line}:{label.span.column}")
            body.extend(_caret_lines(sources.get(label.span.file), label, "-", gutter))
        if body:
            lines.append(f"{pad} |")
            lines.extend(body)
            lines.append(f"{pad} |")
        if diag.help:
            lines.append(f"{pad} = help: {diag.help}")
        blocks.append("\n".join(lines))
    errors = sum(d.is_error for d in diags)
    warnings = len(diags) - errors
    if diags:
        blocks.append(_summary(errors, warnings))
    return "\n\n".join(blocks) + ("\n" if blocks else "")


def _summary(errors: int, warnings: int) -> str:
    parts = []
    if errors:
        parts.append(f"{errors} error{'s' * (errors != 1)}")
    if warnings:
        parts.append(f"{warnings} warning{'s' * (warnings != 1)}")
    verdict = "could not compile" if errors else "compiled"
    return f"{verdict}: {', '.join(parts)}"


# ---------------------------------------------------------------- JSON rendering

def _span_json(span: Span) -> dict:
    return {"file": span.file, "line": span.line, "column": span.column,
            "end_line": span.end_line, "end_column": span.end_column}


def to_json_obj(diagnostics: Iterable[Diagnostic]) -> dict:
    diags = sorted_diagnostics(diagnostics)
    items = []
    for d in diags:
        item = {"code": d.code, "severity": d.severity.value, "message": d.message,
                **_span_json(d.primary.span), "help": d.help,
                "labels": [{"message": l.message, "primary": l is d.primary, **_span_json(l.span)}
                           for l in (d.primary, *d.secondary)]}
        items.append(item)
    errors = sum(d.is_error for d in diags)
    return {"diagnostics": items, "errors": errors, "warnings": len(diags) - errors}


def render_json(diagnostics: Iterable[Diagnostic]) -> str:
    return json.dumps(to_json_obj(diagnostics), indent=2, sort_keys=True) + "\n"
