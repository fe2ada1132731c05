"""Declaration tables: every global name of a file, its record types, and the
attribute vocabulary of defaults, roles, tasks and tools.

`collect` reports what can be known from declarations alone (E105 undefined types,
E106 duplicates); later checks and the plan look names up here.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Mapping

from . import ast
from .codes import Code
from .diagnostics import DiagnosticSink, Label, did_you_mean
from .types import ANY, PRIMITIVES, ListT, LiteralT, OptionalT, Prim, RecordT, Type, TypeTable

if TYPE_CHECKING:
    from .facts import BodyFacts

# Attribute vocabulary: name -> kind of value. Kinds: str, int, number, bool, duration,
# model (str), memory ("none"|"session"|"persistent"), agent (a persistent agent's name),
# delegate_failure ("fail"|"return"), tool_refs (list of names / role.task), argv (list of str),
# builtin (one of names.BUILTIN_TOOLS).
ROLE_ATTRS = {"model": "str", "system": "str", "tools": "tool_refs", "replicas": "int",
              "memory": "memory", "temperature": "number", "max_tokens": "int", "max_turns": "int",
              "retries": "int", "timeout": "duration", "api_base": "str", "api_key_env": "str",
              "max_context_tokens": "int", "programs": "bool", "program_max_chars": "int",
              "program_max_nodes": "int", "agent": "agent", "spawn": "bool", "max_spawn_depth": "int",
              "on_delegate_failure": "delegate_failure"}
TASK_ATTRS = {"prompt": "str", "retries": "int", "timeout": "duration", "temperature": "number",
              "max_tokens": "int", "max_turns": "int", "cache": "bool"}
TOOL_ATTRS = {"python": "str", "command": "argv", "builtin": "builtin", "description": "str",
              "timeout": "duration", "retries": "int", "cache": "bool", "cwd": "str",
              "idempotent": "bool"}
DEFAULTS_ATTRS = {**ROLE_ATTRS, **TASK_ATTRS, **{k: v for k, v in TOOL_ATTRS.items()
                                                 if k in ("timeout", "retries", "cache")}}
del DEFAULTS_ATTRS["prompt"], DEFAULTS_ATTRS["tools"], DEFAULTS_ATTRS["system"], DEFAULTS_ATTRS["agent"]
BUILTIN_FUNCTIONS = ("len", "all", "any", "join", "json")
ATTR_DEFAULTS = {"replicas": 1, "memory": "none", "max_turns": 8, "retries": 2, "cache": True,
                 "max_context_tokens": 8000}
MEMORY_MODES = ("none", "session", "persistent")



@dataclass(frozen=True)
class Symbols:
    types: Mapping[str, ast.TypeDecl]
    type_table: TypeTable
    tools: Mapping[str, ast.ToolDecl]
    roles: Mapping[str, ast.RoleDecl]
    tasks: Mapping[tuple[str, str], ast.TaskDecl]
    choreographies: Mapping[str, ast.ChoreographyDecl]
    defaults: Mapping[str, ast.Attr]

    def resolve_type(self, texpr: ast.TypeExpr | None) -> Type:
        return resolve_type(texpr, self.types)

    @cached_property
    def facts(self) -> "BodyFacts":
        """What the statements of the choreography bodies read and call, found once for
        the type checker, the checks and the plan."""
        from .facts import BodyFacts
        return BodyFacts(self)

    @cached_property
    def omitted_fields(self) -> dict[int, tuple[ast.RecordExpr, tuple[str, ...]]]:
        """The optional fields that a record literal leaves out where its record type is
        expected, by the literal's identity (kept with them, so the identity stays its own):
        the type checker finds them and the plan gives them null, so the value has every
        field of its type."""
        return {}


_PRIMS = {name: Prim(name) for name in PRIMITIVES}  # shared: types are immutable, and looked up per use


def resolve_type(texpr: ast.TypeExpr | None, types: Mapping[str, Any], sink: DiagnosticSink | None = None) -> Type:
    """An AST type as IR; unknown names become ANY (and E105 when a sink is given)."""
    if texpr is None:
        return ANY
    if isinstance(texpr, ast.NamedType):
        prim = _PRIMS.get(texpr.name)
        if prim is not None:
            return prim
        if texpr.name in types:
            return RecordT(texpr.name)
        if sink is not None:
            hint = did_you_mean(texpr.name, [*PRIMITIVES, *types])
            if texpr.name == "list":
                hint = "write the element type too, e.g. `list[str]`"
            sink.report(Code.E105, f"undefined type `{texpr.name}`", texpr.span, "not a known type", help=hint)
        return ANY
    if isinstance(texpr, ast.GenericType):
        elem = resolve_type(texpr.arg, types, sink)
        if texpr.name != "list":
            if sink is not None:
                sink.report(Code.E105, f"undefined generic type `{texpr.name}`", texpr.span,
                            "only `list[T]` takes a type argument", help=did_you_mean(texpr.name, ["list"]))
            return ANY
        return ListT(elem)
    if isinstance(texpr, ast.OptionalType):
        return OptionalT(resolve_type(texpr.inner, types, sink))
    return LiteralT(tuple(dict.fromkeys(texpr.values)))


def _first_wins(items, sink: DiagnosticSink, what: str, key=lambda d: d.name, span=lambda d: d.name_span):
    """A name -> declaration table; a second declaration of a name is E106."""
    table: dict = {}
    for item in items:
        k = key(item)
        if k in table:
            shown = k if isinstance(k, str) else ".".join(k)
            sink.report(Code.E106, f"duplicate {what} `{shown}`", span(item), f"second definition of `{shown}`",
                        secondary=[Label(span(table[k]), "first defined here")],
                        help="rename one of them or remove the duplicate")
        else:
            table[k] = item
    return table


def check_params(params: tuple[ast.Param, ...], sink: DiagnosticSink) -> None:
    _first_wins(params, sink, "parameter", span=lambda p: p.span)


def collect(program: ast.Program, sink: DiagnosticSink) -> Symbols:
    decls = program.decls
    types = _first_wins([d for d in decls if isinstance(d, ast.TypeDecl)], sink, "type")
    for name in types:
        if name in PRIMITIVES:
            sink.report(Code.E106, f"type `{name}` redefines a built-in type", types[name].name_span,
                        "built-in type name", help="choose another name")
    tools = _first_wins([d for d in decls if isinstance(d, ast.ToolDecl)], sink, "tool")
    roles = _first_wins([d for d in decls if isinstance(d, ast.RoleDecl)], sink, "role")
    choreos = _first_wins([d for d in decls if isinstance(d, ast.ChoreographyDecl)], sink, "choreography")
    tasks = _first_wins([(r.name, t) for r in roles.values() for t in r.tasks], sink, "task",
                        key=lambda rt: (rt[0], rt[1].name), span=lambda rt: rt[1].name_span)
    tasks = {k: rt[1] for k, rt in tasks.items()}
    for name in set(tools) & set(choreos):
        sink.report(Code.E106, f"`{name}` is both a tool and a choreography", choreos[name].name_span,
                    "choreography defined here", secondary=[Label(tools[name].name_span, "tool defined here")],
                    help="calls name one or the other: rename one of them")
    defaults_decls = [d for d in decls if isinstance(d, ast.DefaultsDecl)]
    for extra in defaults_decls[1:]:
        sink.report(Code.E106, "duplicate `defaults` block", extra.span, "second `defaults`",
                    secondary=[Label(defaults_decls[0].span, "first defined here")],
                    help="merge them into one `defaults` block")
    defaults = _first_wins(defaults_decls[0].attrs if defaults_decls else (), sink, "attribute")

    table: dict[str, tuple[tuple[str, Type], ...]] = {}
    for name, decl in types.items():
        fields = _first_wins(decl.fields, sink, "field", span=lambda f: f.span)
        table[name] = tuple((f.name, resolve_type(f.type, types, sink)) for f in fields.values())
    for decl in [*tools.values(), *tasks.values(), *choreos.values()]:
        check_params(decl.params, sink)
        for p in decl.params:
            resolve_type(p.type, types, sink)
        resolve_type(decl.returns, types, sink)
    for role in roles.values():
        _first_wins(role.attrs, sink, "attribute")
    for decl in [*tools.values(), *tasks.values()]:
        _first_wins(decl.attrs, sink, "attribute")
    return Symbols(types, table, tools, roles, tasks, choreos, defaults)


def attr_value(expr: ast.Expr) -> Any:
    """The constant value of an attribute: literals, durations (seconds), lists of them,
    and name references (`write_file`, `coder.implement`) as strings."""
    if isinstance(expr, ast.Literal):
        return expr.value
    if isinstance(expr, ast.Duration):
        return expr.seconds
    if isinstance(expr, ast.ListExpr):
        return [attr_value(e) for e in expr.items]
    if isinstance(expr, ast.Name):
        return expr.id
    if isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name):
        return f"{expr.value.id}.{expr.attr}"
    if isinstance(expr, ast.UnaryOp) and expr.op == "-" and isinstance(expr.operand, ast.Literal):
        value = expr.operand.value
        return -value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    return None


@dataclass(frozen=True)
class CallTarget:
    """What a call expression calls. `kind` is task, tool, choreography, builtin,
    unknown_role (`x.t()` where x is not a role), unknown (a plain name that is
    nothing callable) or not_callable (any other callee shape). `role` and `task` are
    empty unless the callee is `role.task`."""

    kind: str
    name: str
    role: str = ""
    task: str = ""


def classify_call(call: ast.Call, symbols: Symbols) -> CallTarget:
    func = call.func
    if isinstance(func, ast.Name):
        n = func.id
        if n in symbols.tools:
            return CallTarget("tool", n)
        if n in symbols.choreographies:
            return CallTarget("choreography", n)
        if n in BUILTIN_FUNCTIONS:
            return CallTarget("builtin", n)
        return CallTarget("unknown", n)
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        role = func.value.id
        kind = "task" if role in symbols.roles else "unknown_role"
        return CallTarget(kind, f"{role}.{func.attr}", role, func.attr)
    return CallTarget("not_callable", "")
