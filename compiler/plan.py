"""Lowering a checked program to the plan: node templates with stable ids, the
executable expression IR the runtime interprets, and a networkx DAG for display.

Node template ids come from structure only: `main/plan`, `main/reviews[*]/attempt#*/review`.
A call nested inside a binding's expression is `<binding>@<n>` in evaluation order; a
sub-choreography is inlined under its call site's id. The plan is plain JSON data
(`Plan.data`, typed by `schema`), so it travels unchanged to a Temporal worker; its
expressions are built with `ir.make`, the one definition of the expression IR.
"""
from __future__ import annotations

from pathlib import PurePath
from typing import Any, cast

from . import ast, ir, schema
from .compiled import GraphParts, Plan
from .hashing import definition_hash
from .symbols import ATTR_DEFAULTS, Symbols, attr_value
from .types import STR, RecordT, json_schema, type_to_json

# Attributes that change what a call returns; retries, timeouts, endpoints and keys do not.
_RESULT_ATTRS = ("model", "system", "temperature", "max_tokens", "max_turns", "memory", "max_context_tokens")


def _literal_or_none(expr: ast.Expr | None) -> Any:
    return None if expr is None else attr_value(expr)


def _attrs(attrs) -> dict[str, Any]:
    return {a.name: attr_value(a.value) for a in attrs}


def _params(params: tuple[ast.Param, ...], symbols: Symbols) -> list[schema.Param]:
    return [{"name": p.name, "type": type_to_json(symbols.resolve_type(p.type)),
             "has_default": p.default is not None, "default": _literal_or_none(p.default)}
            for p in params]


def _spawn_attrs(role: schema.Role) -> dict[str, Any]:
    """The definition entries of `spawn` and `on_delegate_failure`, present only when set, so
    the definitions (and keys) of roles that use neither stay as they were."""
    out: dict[str, Any] = {}
    if role.get("spawn"):
        out["spawn"] = {"max_depth": role.get("max_spawn_depth", schema.DEFAULT_MAX_SPAWN_DEPTH), "depth": 0}
    if role.get("on_delegate_failure") == "return":
        out["on_delegate_failure"] = "return"
    return out


def _returns(texpr, symbols: Symbols):
    return symbols.resolve_type(texpr) if texpr is not None else STR


class _Lowering:
    def __init__(self, symbols: Symbols, source_name: str) -> None:
        self.symbols = symbols
        self.facts = symbols.facts
        self.source_name = source_name
        self.nodes: dict[str, schema.Node] = {}
        self.graph = GraphParts()
        self.defaults = {k: attr_value(a.value) for k, a in symbols.defaults.items()}
        # role -> the conversation its calls continue (a session role's, a persistent agent's)
        self.conversations = {name: conv for name, role in symbols.roles.items() if (conv := schema.conversation(
            name, {**ATTR_DEFAULTS, **self.defaults, **_attrs(role.attrs)})) is not None}
        self._session_calls: list[set[str]] = []  # the conversations each open binding continues

    # ------------------------------------------------------------ declarations

    def roles(self) -> dict[str, schema.Role]:
        out = {}
        for name, role in self.symbols.roles.items():
            attrs = {**ATTR_DEFAULTS, **{k: v for k, v in self.defaults.items() if k != "cache"}, **_attrs(role.attrs)}
            attrs.setdefault("system", "")
            attrs["tools"] = list(attrs.get("tools") or [])
            for drop in ("python", "command", "builtin", "description", "cwd", "cache", "prompt"):
                attrs.pop(drop, None)
            out[name] = cast(schema.Role, attrs)
        return out

    def tasks(self, roles: dict[str, schema.Role], tools: dict[str, schema.Tool]) -> dict[str, schema.Task]:
        out = {}
        for (role, task_name), task in self.symbols.tasks.items():
            task_attrs = _attrs(task.attrs)
            returns = _returns(task.returns, self.symbols)
            role_def = roles[role]
            definition = cast(schema.TaskDefinition, {
                "kind": "task", "role": role, "task": task_name,
                "prompt": task_attrs.get("prompt", ""),
                "params": _params(task.params, self.symbols),
                "returns": type_to_json(returns),
                "output_schema": None if returns == STR else json_schema(returns, self.symbols.type_table),
                **{k: task_attrs.get(k, role_def.get(k)) for k in _RESULT_ATTRS},
                "tools": [self.tool_schema(ref, tools) for ref in role_def["tools"]] + program_grant(role_def),
                **_spawn_attrs(role_def),
            })
            runtime = {k: task_attrs.get(k, role_def.get(k)) for k in ("retries", "timeout", "api_base", "api_key_env")}
            runtime["cache"] = task_attrs.get("cache", self.defaults.get("cache", ATTR_DEFAULTS["cache"]))
            out[f"{role}.{task_name}"] = cast(schema.Task, {
                "definition": definition, "definition_hash": definition_hash(definition),
                **runtime, "replicas": role_def["replicas"]})
        return out

    def tools(self) -> dict[str, schema.Tool]:
        out = {}
        for name, tool in self.symbols.tools.items():
            attrs = _attrs(tool.attrs)
            returns = _returns(tool.returns, self.symbols)
            kind = next((k for k in ("python", "command", "builtin") if k in attrs), "builtin")
            definition = cast(schema.ToolDefinition, {
                "kind": "tool", "tool": name, "impl": kind, "target": attrs.get(kind),
                "params": _params(tool.params, self.symbols), "returns": type_to_json(returns),
                "cwd": attrs.get("cwd")})
            out[name] = cast(schema.Tool, {
                "definition": definition, "definition_hash": definition_hash(definition),
                "description": attrs.get("description", ""),
                "parameters": self._params_schema(tool.params),
                "timeout": attrs.get("timeout", self.defaults.get("timeout")),
                "retries": attrs.get("retries", self.defaults.get("retries", ATTR_DEFAULTS["retries"])),
                "cache": attrs.get("cache", self.defaults.get("cache", ATTR_DEFAULTS["cache"])),
                **({"idempotent": False} if attrs.get("idempotent") is False else {})})
        return out

    def _params_schema(self, params) -> dict:
        props = {p.name: json_schema(self.symbols.resolve_type(p.type), self.symbols.type_table) for p in params}
        return {"type": "object", "properties": props,
                "required": [p.name for p in params if p.default is None]}

    def tool_schema(self, ref: str, tools: dict[str, schema.Tool]) -> schema.ToolGrant:
        """What a role's model is told about one granted tool (part of the task's definition)."""
        if "." in ref:
            role, task_name = ref.split(".", 1)
            task = self.symbols.tasks[(role, task_name)]
            return {"name": f"{role}__{task_name}", "delegate": ref,
                    "description": f"Ask the `{role}` agent to do `{task_name}`.",
                    "parameters": self._params_schema(task.params)}
        return {"name": ref, "tool": ref, "description": tools[ref]["description"],
                "parameters": tools[ref]["parameters"],
                "definition_hash": tools[ref]["definition_hash"]}

    # ------------------------------------------------------------ choreographies

    def choreography(self, name: str, prefix: str, cluster: str | None) -> schema.Body:
        decl = self.symbols.choreographies[name]
        return self.block(decl.body, prefix, cluster)

    def block(self, block: ast.Block, prefix: str, cluster: str | None) -> schema.Body:
        bindings: dict[str, schema.Binding] = {}
        local_ids = {b.name: f"{prefix}/{b.name}" for b in block.bindings}
        last_caller: dict[str, str] = {}  # conversation -> the latest binding (in text order) continuing it
        for b in block.bindings:
            node_id = local_ids[b.name]
            roles, expr = self.collecting_session_calls(lambda: self.binding_expr(b, node_id, cluster))
            bindings[b.name] = {"expr": expr, "after": [a.name for a in b.after], "line": b.span.line}
            previous = sorted({last_caller[r] for r in roles if r in last_caller})
            if previous:
                # a session role sees its calls in program order (the E401 wait graph has these edges)
                bindings[b.name]["session_after"] = previous
            last_caller.update({r: b.name for r in roles})
            for a in b.after:
                if a.name in local_ids:
                    self.edge(local_ids[a.name], node_id, "after")
        result = None
        for stmt in block.statements:
            if isinstance(stmt, (ast.Return, ast.Yield)):
                kind = "return" if isinstance(stmt, ast.Return) else "yield"
                rid = f"{prefix}/{kind}"
                self.graph.add_node(rid, kind=kind, label=kind, cluster=cluster)
                result = self.expr(stmt.value, rid, cluster, [0])
        self.link_names(block, local_ids, prefix)
        return {"bindings": bindings, "result": result}

    def link_names(self, block: ast.Block, local_ids: dict[str, str], prefix: str) -> None:
        """Data edges between sibling bindings, labelled with the name they carry."""
        for stmt in block.statements:
            target = local_ids[stmt.name] if isinstance(stmt, ast.Binding) else \
                f"{prefix}/{'return' if isinstance(stmt, ast.Return) else 'yield'}"
            for used in sorted(self.facts.of(stmt).reads):
                if used in local_ids and local_ids[used] != target:
                    self.edge(local_ids[used], target, used)

    def collecting_session_calls(self, lower):
        """(conversations continued while `lower()` runs, nested bodies included; its result)."""
        roles: set[str] = set()
        self._session_calls.append(roles)
        try:
            return roles, lower()
        finally:
            self._session_calls.pop()

    def edge(self, src: str, dst: str, label: str) -> None:
        self.graph.add_edge(src, dst, label)

    def binding_expr(self, b: ast.Binding, node_id: str, cluster: str | None) -> ir.Expr:
        value = b.value
        if isinstance(value, ast.Call) and self.facts.target(value).kind in ("task", "tool", "choreography"):
            self.call_node(value, node_id, node_id, cluster, [0])
            return ir.make("node", node_id)
        if isinstance(value, (ast.ForExpr, ast.RepeatExpr)):
            self.loop_node(value, node_id, cluster)
            return ir.make("node", node_id)
        self.graph.add_node(node_id, kind="value", label=b.name, cluster=cluster)
        return self.expr(value, node_id, cluster, [0])

    def call_node(self, call: ast.Call, node_id: str, slot: str, cluster: str | None, counter: list) -> None:
        target = self.facts.target(call)
        if target.kind == "task":
            params = self.symbols.tasks[(target.role, target.task)].params
        elif target.kind == "tool":
            params = self.symbols.tools[target.name].params
        else:
            params = self.symbols.choreographies[target.name].params
        args = self.bind_args(call, params, slot, cluster, counter)
        node: dict[str, Any] = {"kind": target.kind, "target": target.name, "args": args,
                                "line": call.span.line, "scope": cluster}
        label = target.name
        if target.kind == "task":
            node["role"] = target.role
            if target.role in self.conversations:
                for convs in self._session_calls:
                    convs.add(self.conversations[target.role])
        if target.kind == "choreography":
            node["body"] = self.choreography(target.name, node_id, node_id)
            self.graph.add_node(node_id, kind="choreography", label=label, cluster=cluster, subgraph=True)
        else:
            self.graph.add_node(node_id, kind=target.kind, label=label, cluster=cluster,
                                role=target.role, target=target.name)
        self.nodes[node_id] = cast(schema.Node, node)
        if slot != node_id:
            self.edge(node_id, slot, "value")

    def bind_args(self, call: ast.Call, params, slot, cluster, counter) -> dict[str, ir.Expr]:
        """Arguments by parameter name: positional then keyword, defaults for the rest."""
        by_name: dict[str, ir.Expr] = {}
        names = [p.name for p in params]
        for i, arg in enumerate(call.args):
            pname = arg.name if arg.name is not None else (names[i] if i < len(names) else f"_{i}")
            by_name[pname] = self.expr(arg.value, slot, cluster, counter)
        for p in params:
            if p.name not in by_name:
                by_name[p.name] = ir.make("lit", _literal_or_none(p.default))
        return {n: by_name[n] for n in names if n in by_name}

    def loop_node(self, loop: ast.ForExpr | ast.RepeatExpr, node_id: str, cluster: str | None) -> None:
        if isinstance(loop, ast.ForExpr):
            body_prefix = f"{node_id}[*]"
            iter_expr = self.expr(loop.iter, node_id, cluster, [0])
            self.graph.add_node(node_id, kind="for", label=f"for {loop.var}", cluster=cluster)
            self.graph.add_node(body_prefix, kind="cluster", label=f"for {loop.var} in ...", cluster=cluster)
            roles, body = self.collecting_session_calls(
                lambda: self.block(loop.body, body_prefix, body_prefix))
            for_node: schema.ForNode = {"kind": "for", "var": loop.var, "iter": iter_expr, "body": body,
                                        "line": loop.span.line, "scope": cluster}
            if roles:
                # a session role's calls happen in program order: list order across items
                for_node["sequential"] = True
            self.nodes[node_id] = for_node
        else:
            body_prefix = f"{node_id}#*"
            self.graph.add_node(node_id, kind="repeat", label="repeat", cluster=cluster)
            self.graph.add_node(body_prefix, kind="cluster", label="repeat", cluster=cluster)
            body = self.block(loop.body, body_prefix, body_prefix)
            until = self.expr(loop.until, f"{body_prefix}/until", body_prefix, [0])
            max_iter = cast(int, loop.max.value) if isinstance(loop.max, ast.Literal) else 1  # checked: an int
            self.nodes[node_id] = {"kind": "repeat", "max": max_iter, "until": until, "body": body,
                                   "line": loop.span.line, "scope": cluster}
        self.graph.add_node(body_prefix, parent=node_id)

    def expr(self, e: ast.Expr, slot: str, cluster: str | None, counter: list) -> ir.Expr:
        """Expression IR; each nested call becomes node `<slot>@<n>`."""
        if isinstance(e, ast.Literal):
            return ir.make("lit", e.value)
        if isinstance(e, ast.Name):
            return ir.make("name", e.id)
        r = lambda x: self.expr(x, slot, cluster, counter)  # noqa: E731
        if isinstance(e, ast.BinOp):
            return ir.make("binop", e.op, r(e.left), r(e.right))
        if isinstance(e, ast.Duration):
            return ir.make("lit", e.seconds)
        if isinstance(e, ast.ListExpr):
            return ir.make("list", [r(i) for i in e.items])
        if isinstance(e, ast.RecordExpr):
            _, omitted = self.symbols.omitted_fields.get(id(e), (e, ()))
            return ir.make("record", [[f.name, r(f.value)] for f in e.fields]
                           + [[n, ir.make("lit", None)] for n in omitted])
        if isinstance(e, ast.Attribute):
            return ir.make("attr", r(e.value), e.attr)
        if isinstance(e, ast.Index):
            return ir.make("index", r(e.value), r(e.index))
        if isinstance(e, ast.UnaryOp):
            return ir.make("not" if e.op == "not" else "neg", r(e.operand))
        if isinstance(e, ast.Conditional):
            return ir.make("cond", r(e.cond), r(e.then), r(e.orelse))
        if isinstance(e, ast.Comprehension):
            return ir.make("comp", r(e.elem), e.var, r(e.iter), r(e.cond) if e.cond is not None else None)
        if isinstance(e, ast.Call):
            target = self.facts.target(e)
            if target.kind == "builtin":
                return ir.make("builtin", target.name, [r(a.value) for a in e.args])
            counter[0] += 1
            node_id = f"{slot}@{counter[0]}"
            self.call_node(e, node_id, slot, cluster, counter)
            return ir.make("node", node_id)
        if isinstance(e, (ast.ForExpr, ast.RepeatExpr)):
            counter[0] += 1
            node_id = f"{slot}@{counter[0]}"
            self.loop_node(e, node_id, cluster)
            self.edge(node_id, slot, "value")
            return ir.make("node", node_id)
        raise TypeError(f"cannot lower {type(e).__name__}")


def program_grant(role: schema.Role) -> list[schema.ToolGrant]:
    """The `run_program` tool of a role with `programs = true` (none otherwise): part of its
    tasks' definitions, so changing a limit changes their keys."""
    if not role.get("programs"):
        return []
    limits: schema.ProgramLimits = {
        "max_chars": role.get("program_max_chars", schema.PROGRAM_MAX_CHARS),
        "max_nodes": role.get("program_max_nodes", schema.PROGRAM_MAX_NODES)}
    return [{"name": schema.RUN_PROGRAM, "program": limits, "description": _RUN_PROGRAM_HELP.format(**limits),
             "parameters": {"type": "object", "properties": {"source": {"type": "string"}},
                            "required": ["source"]}}]


_RUN_PROGRAM_HELP = (
    "Run an agentflow program: a choreography body (bindings `name = expr`, `for x in xs {{ ... yield e }}`, "
    "`repeat max N until cond {{ ... }}`, `a if c else b`, and one `return expr`) that calls your tools and "
    "`role.task`s and reads this task's parameters by name. It is checked before it runs; errors come back "
    "as the result, fix them and call again. At most {max_chars} characters and {max_nodes} calls; the "
    "result is the returned value as JSON.")


def build_plan(program: ast.Program, symbols: Symbols, entry: str, source_name: str,
               prefix: str | None = None) -> Plan:
    """The plan of a program that passed every check; its node ids start with `prefix`
    (the entry's name unless given: a model's program names them under its task call)."""
    lowering = _Lowering(symbols, source_name)
    tools = lowering.tools()
    roles = lowering.roles()
    tasks = lowering.tasks(roles, tools)
    decl = symbols.choreographies[entry]
    body = lowering.choreography(entry, prefix or entry, None)
    data: schema.Plan = {
        "format": schema.PLAN_FORMAT,
        "source": PurePath(source_name).name,
        "flow": PurePath(source_name).stem,
        "entry": entry,
        "params": _params(decl.params, symbols),
        "returns": type_to_json(symbols.resolve_type(decl.returns)) if decl.returns else None,
        "types": {name: json_schema(RecordT(name), symbols.type_table) for name in sorted(symbols.type_table)},
        "type_table": {name: [[n, type_to_json(t)] for n, t in fields] for name, fields in symbols.type_table.items()},
        "roles": roles,
        "tasks": tasks,
        "tools": tools,
        "body": body,
        "nodes": lowering.nodes,
    }
    for node_id, node in lowering.nodes.items():
        if node["kind"] == "task" or node["kind"] == "tool":
            table = tasks if node["kind"] == "task" else tools
            node["definition_hash"] = table[node["target"]]["definition_hash"]
            lowering.graph.add_node(node_id, definition_hash=node["definition_hash"])
    return Plan.of(data, lowering.graph)
