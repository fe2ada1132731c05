"""The plan's expression IR: every kind defined once, and the one walker over it.

An expression is a JSON list, `[kind, field...]`, so a plan stays plain data that travels
unchanged to a Temporal worker and hashes the same everywhere. Lowering builds expressions
with `make`; the runtime's evaluator and the graph read them with `walker`, one handler per
kind. This module imports nothing of the compiler: the runtime (and the Temporal sandbox)
loads it without loading the parser.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Literal, Mapping, TypeVar

Expr = list  # [kind, field...]: see KINDS

C = TypeVar("C")  # what a walk carries down (a resolver, the names bound so far...)
R = TypeVar("R")  # what a walk gives back


@dataclass(frozen=True)
class Field:
    """One field of a kind. `shape` says where sub-expressions are: "value" (none), "expr",
    "expr?" (an expression or null), "exprs" (a list of them), "named" ([[name, expr]])."""

    name: str
    shape: Literal["value", "expr", "expr?", "exprs", "named"] = "value"


@dataclass(frozen=True)
class Kind:
    """One kind of expression: its name (the list's first item), its fields in order, and
    what it means."""

    name: str
    fields: tuple[Field, ...]
    doc: str


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("lit", (Field("value"),), "A constant: a literal, a duration in seconds, an omitted argument's default."),
    Kind("name", (Field("id"),), "A name in scope: a binding, a parameter, a `for` variable, `prev`."),
    Kind("list", (Field("items", "exprs"),), "A list of its items' values."),
    Kind("record", (Field("fields", "named"),), "A record; fields a literal omits are present as null."),
    Kind("attr", (Field("value", "expr"), Field("field")), "A record's field; a field of null is null."),
    Kind("index", (Field("value", "expr"), Field("index", "expr")), "`value[index]`; an index into null is null."),
    Kind("binop", (Field("op"), Field("left", "expr"), Field("right", "expr")),
         "A binary operator; `and` and `or` evaluate `right` only when needed."),
    Kind("not", (Field("operand", "expr"),), "Logical negation."),
    Kind("neg", (Field("operand", "expr"),), "Arithmetic negation."),
    Kind("cond", (Field("cond", "expr"), Field("then", "expr"), Field("orelse", "expr")),
         "`then if cond else orelse`: only the chosen side is evaluated."),
    Kind("comp", (Field("elem", "expr"), Field("var"), Field("iter", "expr"), Field("cond", "expr?")),
         "`[elem for var in iter if cond]`; `var` is bound in `elem` and `cond`, not in `iter`."),
    Kind("builtin", (Field("name"), Field("args", "exprs")), "A builtin function (`len`, `join`...) of its arguments."),
    Kind("node", (Field("node_id"),), "The value of a plan node (a call, `for` or `repeat`), run by the scheduler."),
)}


_ARITY = {name: len(kind.fields) for name, kind in KINDS.items()}  # a kind -> how many fields it has


def make(kind: str, *fields: Any) -> Expr:
    """The expression `[kind, *fields]`, checked against KINDS (what lowering builds with)."""
    if _ARITY.get(kind) != len(fields):
        raise ValueError(f"not an expression: {[kind, *fields]!r}")
    return [kind, *fields]


def children(expr: Expr) -> Iterator[Expr]:
    """The sub-expressions of `expr`, in field order (never the inside of a `node`)."""
    kind = KINDS.get(expr[0])
    if kind is None:
        raise ValueError(f"not an expression: {expr!r}")
    for spec, value in zip(kind.fields, expr[1:]):
        if spec.shape == "expr" or spec.shape == "expr?" and value is not None:
            yield value
        elif spec.shape == "exprs":
            yield from value
        elif spec.shape == "named":
            yield from (e for _name, e in value)


def walker(handlers: Mapping[str, Callable[..., R]],
           otherwise: Callable[[Expr, C], R]) -> Callable[[Expr, C], R]:
    """The walk `walk(expr, context)`: `handlers[kind](*fields, context)` for the kinds it
    names, `otherwise(expr, context)` for every other expression (unknown kinds included).

    Handlers recurse by calling the walk on the fields they choose, so a handler decides
    what is evaluated and in which order (`cond` takes one side, `and` may stop early)."""
    unknown = set(handlers) - set(KINDS)
    if unknown:
        raise ValueError(f"handlers for kinds the IR does not have: {sorted(unknown)}")
    table = dict(handlers)

    def walk(expr: Expr, context: C) -> R:
        handler = table.get(expr[0])
        if handler is None:
            return otherwise(expr, context)
        return handler(*expr[1:], context)
    return walk
