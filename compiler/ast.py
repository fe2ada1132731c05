"""The AST: frozen dataclasses, one per grammar construct, each with a span.

Spans are keyword-only and excluded from equality, so two trees that mean the same
thing compare equal wherever they were written.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Union

from .source import NO_SPAN, Span


def _span() -> Span:
    return field(default=NO_SPAN, compare=False, repr=False, kw_only=True)


# ---------------------------------------------------------------- types

@dataclass(frozen=True)
class NamedType:
    name: str
    span: Span = _span()


@dataclass(frozen=True)
class GenericType:
    """`name[arg]`; only `list[T]` is meaningful, the checker says so otherwise."""
    name: str
    arg: "TypeExpr"
    span: Span = _span()


@dataclass(frozen=True)
class OptionalType:
    inner: "TypeExpr"
    span: Span = _span()


@dataclass(frozen=True)
class LiteralUnion:
    values: tuple[str, ...]
    span: Span = _span()


TypeExpr = Union[NamedType, GenericType, OptionalType, LiteralUnion]


# ---------------------------------------------------------------- expressions

@dataclass(frozen=True)
class Name:
    id: str
    span: Span = _span()


@dataclass(frozen=True)
class Literal:
    """A str, int, float, bool or None."""
    value: object
    span: Span = _span()


@dataclass(frozen=True)
class Duration:
    seconds: float
    text: str
    span: Span = _span()


@dataclass(frozen=True)
class ListExpr:
    items: tuple["Expr", ...]
    span: Span = _span()


@dataclass(frozen=True)
class RecordField:
    name: str
    value: "Expr"
    span: Span = _span()


@dataclass(frozen=True)
class RecordExpr:
    fields: tuple[RecordField, ...]
    span: Span = _span()


@dataclass(frozen=True)
class Attribute:
    value: "Expr"
    attr: str
    span: Span = _span()
    attr_span: Span = _span()


@dataclass(frozen=True)
class Index:
    value: "Expr"
    index: "Expr"
    span: Span = _span()


@dataclass(frozen=True)
class Arg:
    name: str | None
    value: "Expr"
    span: Span = _span()


@dataclass(frozen=True)
class Call:
    func: "Expr"
    args: tuple[Arg, ...]
    span: Span = _span()


@dataclass(frozen=True)
class BinOp:
    """Arithmetic, comparison and boolean operators; `op` is the source spelling."""
    op: str
    left: "Expr"
    right: "Expr"
    span: Span = _span()


@dataclass(frozen=True)
class UnaryOp:
    op: str  # "not" | "-"
    operand: "Expr"
    span: Span = _span()


@dataclass(frozen=True)
class Conditional:
    then: "Expr"
    cond: "Expr"
    orelse: "Expr"
    span: Span = _span()


@dataclass(frozen=True)
class Comprehension:
    elem: "Expr"
    var: str
    iter: "Expr"
    cond: "Expr | None"
    span: Span = _span()


@dataclass(frozen=True)
class ForExpr:
    var: str
    iter: "Expr"
    body: "Block"
    span: Span = _span()
    var_span: Span = _span()


@dataclass(frozen=True)
class RepeatExpr:
    max: "Expr | None"
    until: "Expr"
    body: "Block"
    span: Span = _span()


Expr = Union[Name, Literal, Duration, ListExpr, RecordExpr, Attribute, Index, Call, BinOp,
             UnaryOp, Conditional, Comprehension, ForExpr, RepeatExpr]


# ---------------------------------------------------------------- statements

@dataclass(frozen=True)
class AfterRef:
    name: str
    span: Span = _span()


@dataclass(frozen=True)
class Binding:
    name: str
    value: Expr
    after: tuple[AfterRef, ...] = ()
    span: Span = _span()
    name_span: Span = _span()


@dataclass(frozen=True)
class Return:
    value: Expr
    span: Span = _span()


@dataclass(frozen=True)
class Yield:
    value: Expr
    span: Span = _span()


Statement = Union[Binding, Return, Yield]


@dataclass(frozen=True)
class Block:
    statements: tuple[Statement, ...]
    span: Span = _span()

    @cached_property
    def bindings(self) -> tuple[Binding, ...]:
        """The bindings among the statements (found once: every check asks)."""
        return tuple(s for s in self.statements if isinstance(s, Binding))


# ---------------------------------------------------------------- declarations

@dataclass(frozen=True)
class Attr:
    name: str
    value: Expr
    span: Span = _span()
    name_span: Span = _span()


@dataclass(frozen=True)
class Param:
    name: str
    type: TypeExpr
    default: Expr | None = None
    span: Span = _span()


@dataclass(frozen=True)
class FieldDecl:
    name: str
    type: TypeExpr
    span: Span = _span()


@dataclass(frozen=True)
class DefaultsDecl:
    attrs: tuple[Attr, ...]
    span: Span = _span()


@dataclass(frozen=True)
class TypeDecl:
    name: str
    fields: tuple[FieldDecl, ...]
    span: Span = _span()
    name_span: Span = _span()


@dataclass(frozen=True)
class ToolDecl:
    name: str
    params: tuple[Param, ...]
    returns: TypeExpr | None
    attrs: tuple[Attr, ...]
    span: Span = _span()
    name_span: Span = _span()


@dataclass(frozen=True)
class TaskDecl:
    name: str
    params: tuple[Param, ...]
    returns: TypeExpr | None
    attrs: tuple[Attr, ...]
    span: Span = _span()
    name_span: Span = _span()


@dataclass(frozen=True)
class RoleDecl:
    name: str
    attrs: tuple[Attr, ...]
    tasks: tuple[TaskDecl, ...]
    span: Span = _span()
    name_span: Span = _span()


@dataclass(frozen=True)
class ChoreographyDecl:
    name: str
    params: tuple[Param, ...]
    returns: TypeExpr | None
    body: Block
    span: Span = _span()
    name_span: Span = _span()


Decl = Union[DefaultsDecl, TypeDecl, ToolDecl, RoleDecl, ChoreographyDecl]


@dataclass(frozen=True)
class Program:
    decls: tuple[Decl, ...]
    span: Span = _span()
