"""Pure evaluation of the plan's expression IR (everything except nodes and names).

The scheduler supplies `resolve(kind, arg)` for `name` and `node` references; every
other operation is a pure function of values, with Python semantics except that
field access on null gives null.
"""
from __future__ import annotations

import operator
from typing import Any, Awaitable, Callable

from agentflow.compiler.hashing import canonical_json

Resolver = Callable[[list], Awaitable[Any]]


class ExpressionError(Exception):
    """A pure expression failed at run time (index out of range, division by zero...)."""


_BINOPS: dict[str, Callable[[Any, Any], Any]] = {
    "+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv, "%": operator.mod,
    "==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt,
    ">=": operator.ge, "in": lambda a, b: a in b, "not in": lambda a, b: a not in b,
}


def _builtin(name: str, args: list) -> Any:
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


async def evaluate(e: list, resolve: Resolver) -> Any:
    """The value of an IR expression; `resolve` handles `name` and `node`."""
    op = e[0]
    if op == "lit":
        return e[1]
    if op in ("name", "node"):
        return await resolve(e)
    if op == "attr":
        value = await evaluate(e[1], resolve)
        if value is None:
            return None
        if isinstance(value, dict):
            return value.get(e[2])
        raise ExpressionError(f"cannot read field `{e[2]}` of a {type(value).__name__}")
    if op == "index":
        value, index = await evaluate(e[1], resolve), await evaluate(e[2], resolve)
        if value is None:
            return None
        try:
            return value[index]
        except (IndexError, KeyError, TypeError) as err:
            raise ExpressionError(f"index {index!r} is out of range for a value of length "
                                  f"{len(value) if hasattr(value, '__len__') else '?'}") from err
    if op == "binop":
        name = e[1]
        left = await evaluate(e[2], resolve)
        if name == "and":
            return left and await evaluate(e[3], resolve)
        if name == "or":
            return left or await evaluate(e[3], resolve)
        right = await evaluate(e[3], resolve)
        try:
            return _BINOPS[name](left, right)
        except (TypeError, ZeroDivisionError) as err:
            raise ExpressionError(f"`{name}` failed: {err}") from err
    if op == "not":
        return not await evaluate(e[1], resolve)
    if op == "neg":
        return -(await evaluate(e[1], resolve))
    if op == "cond":
        chosen = e[2] if await evaluate(e[1], resolve) else e[3]
        return await evaluate(chosen, resolve)
    if op == "list":
        return [await evaluate(x, resolve) for x in e[1]]
    if op == "record":
        return {name: await evaluate(x, resolve) for name, x in e[1]}
    if op == "builtin":
        return _builtin(e[1], [await evaluate(x, resolve) for x in e[2]])
    if op == "comp":
        _, elem, var, iter_expr, cond = e
        items = await evaluate(iter_expr, resolve) or []
        out = []
        for item in items:
            bound = _bind(resolve, var, item)
            if cond is None or await evaluate(cond, bound):
                out.append(await evaluate(elem, bound))
        return out
    raise ExpressionError(f"unknown expression {op!r}")


def _bind(resolve: Resolver, var: str, value: Any) -> Resolver:
    async def inner(ref: list) -> Any:
        if ref[0] == "name" and ref[1] == var:
            return value
        return await resolve(ref)
    return inner
