"""Nesting across declarations (E003): a record type nests the types of its fields, and a
call of a choreography nests that choreography's body where the call is, since the plan
inlines it. The parser bounds each expression and each type on its own (MAX_NESTING);
these checks bound what records and inlining add, because the plan, the JSON schemas and
the runtime's validators recurse once per level. Both walk without recursion.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, Mapping, NamedTuple

from . import ast
from .codes import Code
from .diagnostics import DiagnosticSink
from .facts import children
from .parser import MAX_NESTING
from .symbols import Symbols

if TYPE_CHECKING:
    from .checks import Context


def _type_chain(texpr: ast.TypeExpr) -> tuple[int, str | None]:
    """(how many `list[...]`/`?` wrap the type, the name at its core or None)."""
    levels = 0
    while isinstance(texpr, (ast.GenericType, ast.OptionalType)):
        levels += 1
        texpr = texpr.arg if isinstance(texpr, ast.GenericType) else texpr.inner
    return levels, texpr.name if isinstance(texpr, ast.NamedType) else None


def _deepest(edges: Mapping[str, list[tuple[int, str | None]]]) -> dict[str | None, int]:
    """For a graph of `name -> [(levels, child)]`, each name's depth: its deepest
    `levels + depth(child)`. A child that is already on the walk's path (a cycle: a
    recursive record, or recursion that E403 reports) adds nothing."""
    depth: dict[str | None, int] = {}
    for root in edges:
        if root in depth:
            continue
        path: list[tuple[str, Iterator[tuple[int, str | None]]]] = [(root, iter(edges[root]))]
        on_path = {root}
        while path:
            name, pending = path[-1]
            child = next((c for _, c in pending if c in edges and c not in depth and c not in on_path), None)
            if child is not None:
                path.append((child, iter(edges[child])))
                on_path.add(child)
                continue
            depth[name] = max((levels + depth.get(c, 0) for levels, c in edges[name]), default=0)
            path.pop()
            on_path.discard(name)
    return depth


# ---------------------------------------------------------------- types

def _field_chain(f: ast.FieldDecl) -> tuple[int, str | None]:
    """A field is one level inside its record."""
    levels, core = _type_chain(f.type)
    return levels + 1, core


def _type_uses(program: ast.Program) -> Iterator[ast.TypeExpr]:
    """Every type written in the program: fields, parameters and return types."""
    for decl in program.decls:
        if isinstance(decl, ast.TypeDecl):
            yield from (f.type for f in decl.fields)
        elif isinstance(decl, ast.RoleDecl):
            for task in decl.tasks:
                yield from _signature_types(task)
        elif isinstance(decl, (ast.ToolDecl, ast.ChoreographyDecl)):
            yield from _signature_types(decl)


def _signature_types(decl) -> Iterator[ast.TypeExpr]:
    yield from (p.type for p in decl.params)
    if decl.returns is not None:
        yield decl.returns


def check_type_nesting(ctx: Context, sink: DiagnosticSink) -> None:
    """E003: the deepest type of the program, its record types' fields included, is
    nested at most MAX_NESTING levels."""
    edges = {name: [_field_chain(f) for f in decl.fields] for name, decl in ctx.symbols.types.items()}
    records = _deepest(edges)

    def depth(texpr: ast.TypeExpr) -> int:
        levels, core = _type_chain(texpr)
        return levels + records.get(core, 0)

    deepest = max(_type_uses(ctx.program), key=depth, default=None)
    if deepest is not None and depth(deepest) > MAX_NESTING:
        _, core = _type_chain(deepest)
        sink.report(Code.E003, f"type nested more than {MAX_NESTING} levels deep, counting the fields of its record types",
                    deepest.span, f"`{core}` has fields nested {records[core]} levels deep",
                    help="use `json` for the deeper part")


# ---------------------------------------------------------------- choreographies

class _Site(NamedTuple):
    """A call of a choreography: where, to what, how deep in its caller's body (a
    statement's value is level 1, the statements of a `for` or `repeat` body one more)."""

    caller: str
    level: int
    callee: str
    call: ast.Call


def _choreography_calls(caller: str, decl: ast.ChoreographyDecl, symbols: Symbols) -> list[_Site]:
    """The choreography calls in `decl`'s body. Only statements that hold one are walked
    (the body facts list every call): most hold none, and a long body is most of a program."""
    facts = symbols.facts
    calls = []
    stack = [(stmt.value, 1) for stmt in decl.body.statements
             if any(facts.target(call).kind == "choreography" for call in facts.of(stmt).calls)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, ast.Call):
            target = facts.target(node)
            if target.kind == "choreography":
                calls.append(_Site(caller, level, target.name, node))
        stack.extend((child, level + 1) for child in children(node))
    return calls


def check_inlining_depth(ctx: Context, sink: DiagnosticSink) -> None:
    """E003: a choreography with the choreographies it calls inlined, and theirs, nests
    at most MAX_NESTING levels. One error, for the deepest."""
    symbols = ctx.symbols
    calls = {name: _choreography_calls(name, decl, symbols) for name, decl in symbols.choreographies.items()}
    depth = _deepest({name: [(s.level, s.callee) for s in sites] for name, sites in calls.items()})

    def inlined(site: _Site) -> int:
        return site.level + depth.get(site.callee, 0)

    deepest = max((site for sites in calls.values() for site in sites), key=inlined, default=None)
    if deepest is not None and inlined(deepest) > MAX_NESTING:
        sink.report(Code.E003, f"choreography `{deepest.caller}` nests more than {MAX_NESTING} levels deep with the "
                    "choreographies it calls inlined", deepest.call.func.span,
                    f"`{deepest.callee}` is inlined here, {depth[deepest.callee]} levels deep",
                    help="each call inlines the called choreography's body; call fewer choreographies "
                         "from inside one another")
