"""The template language of command arguments: `{expr}` where expr is `name`, `a.b.c`,
`xs[0]`, `xs[-1]` or `a.b[2].c`; `{{` and `}}` are literal braces; a lone `{` or `}` is an
error (as in Python's str.format). Parsed with the compiler's own template parser, so run
time and compile time agree on what a template says."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Mapping, cast

from agentflow.compiler.templates import format_path, placeholders


class TemplateError(Exception):
    """A template that cannot be parsed, or names something absent at run time."""

    def __init__(self, message: str, *, offset: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset  # character offset of the offending `{` in the template, if known

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class TemplateRef:
    """One `{expr}` of a template: `path[0]` is the name, then field names and int indexes."""

    expr: str  # normalized: `a.b[0]`, without braces and blanks
    path: tuple[str, *tuple[str | int, ...]]
    offset: int  # offset of the `{` in the template


class CompiledTemplate:
    """A parsed template: literal text and references, rendered many times."""

    __slots__ = ("source", "parts", "refs")

    def __init__(self, source: str, parts: tuple[str | TemplateRef, ...]) -> None:
        self.source = source
        self.parts = parts
        self.refs = tuple(p for p in parts if isinstance(p, TemplateRef))

    def render(self, values: Mapping[str, Any]) -> str:
        parts = self.parts
        if not self.refs:
            return cast(str, parts[0]) if parts else ""  # no references: the one part is text
        out = []
        for part in parts:
            if isinstance(part, str):
                out.append(part)
            else:
                out.append(_format_value(_lookup(part, values), part))
        return "".join(out)


@lru_cache(maxsize=4096)
def compile_template(template: str) -> CompiledTemplate:
    """Parse a template once (cached by its text), with the compiler's own template
    parser, so run time and compile time agree on what a template says."""
    parts: list[str | TemplateRef] = []
    last = 0
    for ph in placeholders(template):
        if ph.root is None:
            raise TemplateError(f"{ph.error} at offset {ph.start} (write `{{{{` and `}}}}` for literal "
                                f"braces)", offset=ph.start)
        literal = _unescape_braces(template[last:ph.start])
        if literal:
            parts.append(literal)
        parts.append(TemplateRef(expr=format_path(ph.root, ph.path), path=(ph.root, *ph.path), offset=ph.start))
        last = ph.end
    tail = _unescape_braces(template[last:])
    if tail or not parts:
        parts.append(tail)
    return CompiledTemplate(template, tuple(parts))


def _unescape_braces(literal: str) -> str:
    return literal.replace("{{", "{").replace("}}", "}")


def render_template(template: str, values: Mapping[str, Any]) -> str:
    """Fill `{expr}` references from `values`. Raises TemplateError."""
    return compile_template(template).render(values)


def _describe(path: tuple[str | int, ...]) -> str:
    return format_path(str(path[0]), path[1:])


def _lookup(ref: TemplateRef, values: Mapping[str, Any]) -> Any:
    path = ref.path
    try:
        value = values[path[0]]
    except KeyError:
        raise TemplateError(
            f"template refers to `{path[0]}`, which is not defined", offset=ref.offset
        ) from None
    for i in range(1, len(path)):
        if value is None:
            return None
        step = path[i]
        if isinstance(step, int):
            if isinstance(value, (list, tuple)):
                if -len(value) <= step < len(value):
                    value = value[step]
                    continue
                raise TemplateError(
                    f"template refers to `{_describe(path[: i + 1])}`, but "
                    f"`{_describe(path[:i])}` has only {len(value)} item(s)",
                    offset=ref.offset,
                )
            raise TemplateError(
                f"template refers to `{_describe(path[: i + 1])}`, but "
                f"`{_describe(path[:i])}` is {kind_of(value)}, not a list",
                offset=ref.offset,
            )
        value = _field(value, step, ref, path[: i + 1])
    return value


_MISSING = object()


def _field(value: Any, name: str, ref: TemplateRef, path: tuple[str | int, ...]) -> Any:
    if isinstance(value, Mapping):
        found = value.get(name, _MISSING)
    elif hasattr(type(value), "model_fields"):  # a pydantic model
        found = getattr(value, name) if name in type(value).model_fields else _MISSING
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        names = {f.name for f in dataclasses.fields(value)}
        found = getattr(value, name) if name in names else _MISSING
    else:
        raise TemplateError(
            f"template refers to `{_describe(path)}`, but `{_describe(path[:-1])}` is "
            f"{kind_of(value)}, which has no fields",
            offset=ref.offset,
        )
    if found is _MISSING:
        raise TemplateError(
            f"template refers to `{_describe(path)}`, but `{_describe(path[:-1])}` has no "
            f"field `{name}`",
            offset=ref.offset,
        )
    return found


def kind_of(value: Any) -> str:
    if isinstance(value, bool):
        return "a bool"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, Mapping):
        return "a record"
    return f"a {type(value).__name__}"


def _json_default(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"a {type(value).__name__} is not JSON-compatible")


def _format_value(value: Any, ref: TemplateRef) -> str:
    if value.__class__ is str:
        return value
    if value is None:
        return ""
    if isinstance(value, str):
        return str.__str__(value)
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise TemplateError(f"cannot render `{ref.expr}`: {exc}", offset=ref.offset) from None

