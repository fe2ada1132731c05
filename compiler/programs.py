"""Programs a model writes (`programs = true` on a role): a choreography body, checked before
anything runs with every check of a spec, in the scope of one task call.

That scope holds exactly the task's parameters, the tools granted to its role and the
`role.task`s it may delegate to. It is rebuilt from the plan (plain data), so a program
compiles wherever the plan is: in this process, or in a Temporal activity. What compiles is
lowered to plan data (node templates and a body in the expression IR) that the engine runs
as nested nodes under the task call; the runtime never needs the parser to run it.
"""
from __future__ import annotations

from dataclasses import fields, is_dataclass
from typing import Any, Iterator

from . import ast, schema
from .checks import check_program
from .codes import Code
from .diagnostics import Diagnostic, DiagnosticSink, render_text
from .names import template_id
from .parser import parse_body
from .plan import build_plan
from .source import SourceFile
from .symbols import collect

PROGRAM_FILE = "<program>"  # the file name diagnostics give a program's lines and columns
_ENTRY = "program"  # the choreography a program's body becomes


def program_limits(plan: schema.Plan, target: str) -> schema.ProgramLimits:
    """The limits of the `run_program` tool of task `target` ("role.task")."""
    grant = next(t for t in plan["tasks"][target]["definition"]["tools"] if "program" in t)
    return grant["program"]


def compile_program(source: str, plan: schema.Plan, target: str, call_id: str) -> schema.CompiledProgram | str:
    """Checks `source` in the scope of one call of task `target` (node `call_id`) and lowers
    it with node ids under `<call template>/program#*`; or, when it does not compile, its
    errors as rustc-style text, with the program's own lines and columns."""
    limits = program_limits(plan, target)
    role = target.split(".")[0]
    if len(source) > limits["max_chars"]:
        return (f"error: the program is {len(source)} characters long; role `{role}` allows at most "
                f"{limits['max_chars']} (`program_max_chars`); write a shorter program")
    file = SourceFile(PROGRAM_FILE, source)
    sink = DiagnosticSink()
    body = parse_body(file, sink)
    if body is None or sink.has_errors:
        return _rejected(sink, file)
    grants = plan["roles"][role]["tools"]
    for call, name in _calls(body):
        if name not in grants and (name in plan["tools"] or name in plan["tasks"]):
            granted = ", ".join(f"`{g}`" for g in grants) or "none"
            sink.report(Code.E104, f"`{name}` is not granted to role `{role}`", call.func.span,
                        "not granted", help=f"a program may call only its role's tools: {granted}")
    if sink.has_errors:
        return _rejected(sink, file)
    whole = file.span(0, len(file.text))  # where a message about the program as a whole points
    program = ast.Program(_declarations(plan, grants) + (ast.ChoreographyDecl(
        _ENTRY, _params(plan["tasks"][target]["definition"]["params"]), ast.NamedType("json"), body,
        span=whole, name_span=whole),))
    symbols = collect(program, sink)
    if not sink.has_errors:
        check_program(program, symbols, sink, entry=_ENTRY, source=file)
    if sink.has_errors:
        return _rejected(sink, file)
    prefix = template_id(call_id) + "/program#*"
    lowered = build_plan(program, symbols, _ENTRY, PROGRAM_FILE, prefix=prefix).data
    nodes = lowered["nodes"]
    for node in nodes.values():  # the spec's own definitions, not the stand-ins declared here
        if node["kind"] == "task" or node["kind"] == "tool":
            node["definition_hash"] = plan[f"{node['kind']}s"][node["target"]]["definition_hash"]  # type: ignore[literal-required]
    return {"prefix": prefix, "body": lowered["body"], "nodes": nodes, "max_nodes": limits["max_nodes"]}


def _rejected(sink: DiagnosticSink, file: SourceFile) -> str:
    """The program's errors as rustc-style text (its warnings are not the model's concern)."""
    errors: list[Diagnostic] = [d for d in sink.diagnostics if d.is_error]
    return render_text(errors, {file.name: file})


def _calls(block: ast.Block) -> Iterator[tuple[ast.Call, str]]:
    """Every call of a tool (`name(...)`) or task (`role.task(...)`) in a body, nested ones too."""
    stack: list[Any] = [block]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name):
                yield node, func.id
            elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                yield node, f"{func.value.id}.{func.attr}"
        if isinstance(node, tuple):
            stack.extend(node)
        elif is_dataclass(node):
            stack.extend(getattr(node, f.name) for f in fields(node))


def _declarations(plan: schema.Plan, grants: list[str]) -> tuple[ast.Decl, ...]:
    """The spec's declarations a program can see: its record types, and stand-ins with the
    signatures of the granted tools and tasks (their bodies are the spec's, not checked here)."""
    types = tuple(ast.TypeDecl(name, tuple(ast.FieldDecl(f, _type(t)) for f, t in record))
                  for name, record in plan["type_table"].items())
    tools = tuple(ast.ToolDecl(name, _params(plan["tools"][name]["definition"]["params"]),
                               _type(plan["tools"][name]["definition"]["returns"]),
                               (ast.Attr("builtin", ast.Literal("fs.read")),))
                  for name in grants if name in plan["tools"])
    tasks: dict[str, list[ast.TaskDecl]] = {}
    for ref in grants:
        if ref in plan["tasks"]:
            d = plan["tasks"][ref]["definition"]
            tasks.setdefault(d["role"], []).append(ast.TaskDecl(
                d["task"], _params(d["params"]), _type(d["returns"]), (ast.Attr("prompt", ast.Literal("")),)))
    roles = tuple(ast.RoleDecl(role, _role_attrs(plan, role), tuple(decls)) for role, decls in tasks.items())
    return types + tools + roles


def _role_attrs(plan: schema.Plan, role: str) -> tuple[ast.Attr, ...]:
    """What the checks need of a delegate role: its model (E301), memory and replicas (E401)."""
    attrs = plan["roles"][role]
    model = next((t["definition"]["model"] for t in plan["tasks"].values() if t["definition"]["role"] == role), None)
    return ((ast.Attr("model", ast.Literal(model)),) if model else ()) + (
        ast.Attr("memory", ast.Literal(attrs["memory"])), ast.Attr("replicas", ast.Literal(attrs["replicas"])))


def _params(params: list[schema.Param]) -> tuple[ast.Param, ...]:
    return tuple(ast.Param(p["name"], _type(p["type"]), _literal(p["default"]) if p["has_default"] else None)
                 for p in params)


def _literal(value: Any) -> ast.Expr:
    """A parameter's default (a JSON value) as the literal that writes it."""
    if isinstance(value, list):
        return ast.ListExpr(tuple(_literal(v) for v in value))
    if isinstance(value, dict):
        return ast.RecordExpr(tuple(ast.RecordField(k, _literal(v)) for k, v in value.items()))
    return ast.Literal(value)


def _type(data: schema.TypeJson) -> ast.TypeExpr:
    """A type's plan spelling (`types.type_to_json`) as the type expression that writes it."""
    if isinstance(data, str):
        return ast.NamedType(data)
    (kind, value), = data.items()
    if kind == "list":
        return ast.GenericType("list", _type(value))
    if kind == "record":
        return ast.NamedType(value)
    if kind == "literal":
        return ast.LiteralUnion(tuple(value))
    return ast.OptionalType(_type(value))
