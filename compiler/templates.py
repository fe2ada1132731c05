"""Static template parsing: `{expr}` placeholders in prompts, `system` and `command` elements.

A placeholder is a name followed by field accesses and integer indexes (`{mod.path}`,
`{xs[0].name}`); `{{` and `}}` are literal braces. `placeholders` returns every
placeholder with its offsets so diagnostics can point inside the string; the runtime
renders templates from the same parse (`runtime/tools.py`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .source import SourceFile, Span

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SEGMENT = re.compile(r"\s*(?:\.\s*([A-Za-z_][A-Za-z0-9_]*)|\[\s*(-?[0-9]+)\s*\])")


@dataclass(frozen=True)
class Placeholder:
    """One `{...}` of a template. `path` holds field names (str) and indexes (int).
    `error` says why it is malformed (then `root` is None)."""

    text: str
    start: int
    end: int
    root: str | None
    path: tuple[str | int, ...] = ()
    error: str | None = None


def _parse_expr(inner: str) -> tuple[str | None, tuple[str | int, ...], str | None]:
    body = inner.strip()
    m = _NAME.match(body)
    if not m:
        what = "an empty placeholder" if not body else f"`{{{body}}}` is not a name or field path"
        return None, (), what
    root, pos, path = m.group(0), m.end(), []
    while pos < len(body):
        seg = _SEGMENT.match(body, pos)
        if not seg:
            return None, (), f"`{{{body}}}` is not a name or field path"
        path.append(seg.group(1) if seg.group(1) is not None else int(seg.group(2)))
        pos = seg.end()
    return root, tuple(path), None


def placeholders(template: str) -> list[Placeholder]:
    """Every placeholder of a template, in order, including malformed ones (with `error`)."""
    out: list[Placeholder] = []
    i, n = 0, len(template)
    while i < n:
        c = template[i]
        if c == "{":
            if template.startswith("{{", i):
                i += 2
                continue
            close = template.find("}", i + 1)
            nested = template.find("{", i + 1)
            if close == -1 or (nested != -1 and nested < close):
                out.append(Placeholder(template[i:i + 1], i, i + 1, None,
                                       error="`{` is never closed"))
                i += 1
                continue
            text = template[i:close + 1]
            root, path, error = _parse_expr(template[i + 1:close])
            out.append(Placeholder(text, i, close + 1, root, path, error))
            i = close + 1
        elif c == "}":
            if template.startswith("}}", i):
                i += 2
                continue
            out.append(Placeholder("}", i, i + 1, None, error="`}` has no matching `{`"))
            i += 1
        else:
            i += 1
    return out


def format_path(root: str, path: tuple[str | int, ...]) -> str:
    return root + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)


def placeholder_span(literal_span: Span, value: str, ph: Placeholder, source: SourceFile | None) -> Span:
    """The source span of a placeholder of a string literal's value: the raw `{...}`
    text found inside the literal's source slice, else the whole literal."""
    if source is not None and source.name == literal_span.file and literal_span.end <= len(source.text):
        raw = source.text[literal_span.start:literal_span.end]
        wanted = [p for p in placeholders(value)]
        found = placeholders(raw)
        index = next((k for k, p in enumerate(wanted) if p.start == ph.start), None)
        if index is not None and len(found) == len(wanted) and all(
                a.text == b.text for a, b in zip(found, wanted)):
            hit = found[index]
            return source.span(literal_span.start + hit.start, literal_span.start + hit.end)
        at = raw.find(ph.text)
        if at != -1:
            return source.span(literal_span.start + at, literal_span.start + at + len(ph.text))
    return text_span(literal_span, value, ph.start, ph.end, source)


def text_span(literal_span: Span, value: str, start: int, end: int, source: SourceFile | None) -> Span:
    """The span of `value[start:end]` inside a string literal, when it can be located."""
    if source is not None and source.name == literal_span.file and literal_span.end <= len(source.text):
        raw = source.text[literal_span.start:literal_span.end]
        at = raw.find(value[start:end])
        if at != -1:
            return source.span(literal_span.start + at, literal_span.start + at + end - start)
        return literal_span
    # Without the source text: a one-line literal without escapes maps one to one.
    if (literal_span.line == literal_span.end_line and literal_span.line > 0
            and literal_span.end - literal_span.start == len(value) + 2 and "\\" not in value):
        offset = literal_span.start + 1
        return Span(literal_span.file, offset + start, offset + end, literal_span.line,
                    literal_span.column + 1 + start, literal_span.line, literal_span.column + 1 + end)
    return literal_span
