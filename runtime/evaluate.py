"""Pure evaluation of the plan's expression IR (everything except nodes and names).

The scheduler supplies `resolve(ref)` for `name` and `node` references; every other kind
is a pure function of values, with Python semantics except that field access on null
gives null. One handler per kind of `agentflow.compiler.ir`, walked by its `walker`.
"""
from __future__ import annotations

import operator
from typing import Any, Awaitable, Callable

from agentflow.compiler.hashing import canonical_json
from agentflow.compiler.ir import Expr, walker

Resolver = Callable[[Expr], Awaitable[Any]]


class ExpressionError(Exception):
    """A pure expression failed at run time (index out of range, division by zero...)."""


_BINOPS: dict[str, Callable[[Any, Any], Any]] = {
    "+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv, "%": operator.mod,
    "==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt,
    ">=": operator.ge, "in": lambda a, b: a in b, "not in": lambda a, b: a not in b,
}


def _builtin_value(name: str, args: list) -> Any:
    if name == "len":
        return len(args[0]) if args[0] is not None else 0
    if name == "all":
        return all(args[0] or [])
    if name == "any":
        return any(args[0] or [])
    if name == "join":
        return args[1].join("" if x is None else str(x) for x in args[0] or [])
    if name == "json":
        return canonical_json(args[0])
    raise ExpressionError(f"unknown builtin `{name}`")


async def _lit(value: Any, resolve: Resolver) -> Any:
    return value


async def _attr(e: Expr, field: str, resolve: Resolver) -> Any:
    return field_of(await evaluate(e, resolve), field)


def field_of(value: Any, field: str) -> Any:
    """`value.field`: a record's field; a field of null is null."""
    if value is None:
        return None
    if isinstance(value, dict):
        return value.get(field)
    raise ExpressionError(f"cannot read field `{field}` of a {type(value).__name__}")


async def _index(e: Expr, i: Expr, resolve: Resolver) -> Any:
    value, index = await evaluate(e, resolve), await evaluate(i, resolve)
    if value is None:
        return None
    try:
        return value[index]
    except (IndexError, KeyError, TypeError) as err:
        raise ExpressionError(f"index {index!r} is out of range for a value of length "
                              f"{len(value) if hasattr(value, '__len__') else '?'}") from err


async def _binop(name: str, left_e: Expr, right_e: Expr, resolve: Resolver) -> Any:
    left = await evaluate(left_e, resolve)
    if name == "and":
        return left and await evaluate(right_e, resolve)
    if name == "or":
        return left or await evaluate(right_e, resolve)
    right = await evaluate(right_e, resolve)
    try:
        return _BINOPS[name](left, right)
    except (TypeError, ZeroDivisionError) as err:
        raise ExpressionError(f"`{name}` failed: {err}") from err


async def _not(e: Expr, resolve: Resolver) -> Any:
    return not await evaluate(e, resolve)


async def _neg(e: Expr, resolve: Resolver) -> Any:
    return -(await evaluate(e, resolve))


async def _cond(c: Expr, then: Expr, orelse: Expr, resolve: Resolver) -> Any:
    return await evaluate(then if await evaluate(c, resolve) else orelse, resolve)


async def _list(items: list[Expr], resolve: Resolver) -> Any:
    return [await evaluate(x, resolve) for x in items]


async def _record(fields: list, resolve: Resolver) -> Any:
    return {name: await evaluate(x, resolve) for name, x in fields}


async def _builtin(name: str, args: list[Expr], resolve: Resolver) -> Any:
    return _builtin_value(name, [await evaluate(x, resolve) for x in args])


async def _comp(elem: Expr, var: str, iter_e: Expr, cond: Expr | None, resolve: Resolver) -> Any:
    out = []
    for item in await evaluate(iter_e, resolve) or []:
        bound = _bind(resolve, var, item)
        if cond is None or await evaluate(cond, bound):
            out.append(await evaluate(elem, bound))
    return out


def _bind(resolve: Resolver, var: str, value: Any) -> Resolver:
    async def inner(ref: Expr) -> Any:
        if ref[0] == "name" and ref[1] == var:
            return value
        return await resolve(ref)
    return inner


async def _reference(ref: Expr, resolve: Resolver) -> Any:
    """`name` and `node`: the scheduler's business; anything else is not an expression."""
    if ref[0] in ("name", "node"):
        return await resolve(ref)
    raise ExpressionError(f"unknown expression {ref[0]!r}")


# `await evaluate(e, resolve)`: the value of an IR expression; `resolve` handles `name` and `node`.
evaluate: Callable[[Expr, Resolver], Awaitable[Any]] = walker({
    "lit": _lit, "attr": _attr, "index": _index, "binop": _binop, "not": _not, "neg": _neg,
    "cond": _cond, "list": _list, "record": _record, "builtin": _builtin, "comp": _comp,
}, _reference)
