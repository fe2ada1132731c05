"""The static checks of LANGUAGE.md section 5, as phases of small check functions.

`PHASES` lists every check in order, in one place. Each check is `check(ctx, sink)`;
all checks of a phase run and report together, and the first phase that reports an
error stops the run, so one typo does not cascade into twenty messages.

  1. names & structure: E101-E104, E106 (bindings), E107, E108, E403, E003 (nesting), E404,
     attributes E302/E303, secrets E304, models E301/E305
  2. types: E201-E205
  3. deadlocks and warnings: E401, E402, W301, W302, W303, W501
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable, Iterator, cast

from . import ast
from .schema import SPAWN_TOOLS
from .deadlock import Waiter, delegation_cycles, find_cycles, wait_graph, waits_only_back
from .codes import Code
from .diagnostics import DiagnosticSink, Label, did_you_mean
from .facts import BodyFacts, children, walk
from .names import BUILTIN_TOOLS
from .schema import conversation
from .scopes import BINDING, PARAM, VAR, Scope
from .nesting import check_inlining_depth, check_type_nesting
from .source import SourceFile, Span
from .symbols import (BUILTIN_FUNCTIONS, DEFAULTS_ATTRS, MEMORY_MODES, ROLE_ATTRS, TASK_ATTRS, TOOL_ATTRS,
                      Symbols, attr_value)
from .templates import text_span
from .typecheck import REPEAT_FIELDS, check_templates, check_types, head_span


@dataclass
class Context:
    """What every check may read: the program, its symbols, the requested entry and the
    source text (optional: it only sharpens spans inside string literals)."""

    program: ast.Program
    symbols: Symbols
    requested_entry: str | None = None
    source: SourceFile | None = None
    entry: str | None = None
    # filled by the name checks: choreography -> [(callee choreography, call)]
    choreo_calls: dict[str, list[tuple[str, ast.Call]]] = field(default_factory=dict)

    @property
    def file(self) -> str:
        return self.program.span.file

    def file_start(self) -> Span:
        return Span(self.file, 0, 0, 1, 1, 1, 1)

    @cached_property
    def calls(self) -> list[tuple[str, ast.Call]]:
        """Every call in every choreography, with the calling choreography's name."""
        facts = self.symbols.facts
        return [(name, call) for name, decl in self.symbols.choreographies.items()
                for stmt in decl.body.statements for call in facts.of(stmt).calls]

    @cached_property
    def delegations(self) -> dict[str, list[tuple[str, str, ast.Attribute]]]:
        """role -> [(delegate role, task, tools entry)] for its `role.task` tools."""
        out: dict[str, list[tuple[str, str, ast.Attribute]]] = {r: [] for r in self.symbols.roles}
        for name, role in self.symbols.roles.items():
            for item in _tool_entries(role):
                if isinstance(item, ast.Attribute) and isinstance(item.value, ast.Name) \
                        and item.value.id in self.symbols.roles:
                    out[name].append((item.value.id, item.attr, item))
        return out

    @cached_property
    def reachable_roles(self) -> set[str]:
        """Roles called by any choreography, directly or through delegation."""
        targets = [self.symbols.facts.target(c) for _, c in self.calls]
        todo = [t.role for t in targets if t.kind == "task"]
        seen: set[str] = set()
        while todo:
            r = todo.pop()
            if r in seen or r not in self.symbols.roles:
                continue
            seen.add(r)
            todo += [d for d, _, _ in self.delegations[r]]
        return seen

    def role_attr(self, role: ast.RoleDecl, name: str):
        for a in role.attrs:
            if a.name == name:
                return a
        return self.symbols.defaults.get(name)

    def conversation(self, role: str) -> str | None:
        """The conversation `role`'s calls continue (see `symbols.conversation`), if any."""
        decl = self.symbols.roles.get(role)
        if decl is None:
            return None
        values = {n: attr_value(a.value) for n in ("memory", "agent") if (a := self.role_attr(decl, n)) is not None}
        return conversation(role, values)


def _tool_entries(role: ast.RoleDecl) -> list[ast.Expr]:
    for a in role.attrs:
        if a.name == "tools" and isinstance(a.value, ast.ListExpr):
            return list(a.value.items)
    return []


def _backticks(names) -> str:
    return ", ".join(f"`{n}`" for n in names)


# ================================================================ phase 1: names & structure

def check_entry(ctx: Context, sink: DiagnosticSink) -> None:
    """E107: no choreography, an unknown `--entry`, or several and none named `main`."""
    choreos = ctx.symbols.choreographies
    if ctx.requested_entry is not None:
        if ctx.requested_entry in choreos:
            ctx.entry = ctx.requested_entry
        else:
            hint = did_you_mean(ctx.requested_entry, choreos) or (
                f"the choreographies are {_backticks(choreos)}" if choreos else "this file declares no choreography")
            sink.report(Code.E107, f"no choreography named `{ctx.requested_entry}` (the requested entry)",
                        ctx.file_start(), "", help=hint)
        return
    if not choreos:
        sink.report(Code.E107, "no entry choreography: this file declares no choreography", ctx.file_start(), "",
                    help="add one, e.g. `choreography main(task: str) -> str { ... return ... }`")
    elif "main" in choreos:
        ctx.entry = "main"
    elif len(choreos) == 1:
        ctx.entry = next(iter(choreos))
    else:
        decls = list(choreos.values())
        sink.report(Code.E107, "no entry choreography: there are several and none is named `main`",
                    decls[0].name_span, "one of several choreographies",
                    secondary=[Label(d.name_span, "another one") for d in decls[1:]],
                    help="name the entry choreography `main`, or pick one with `--entry NAME`")


def _value_kind(env: Scope, name: str) -> str | None:
    """"binding" or "value" (a parameter, loop variable or `prev`) if `name` is a local
    name: then it is a value, which cannot be called as a tool or a role."""
    kind = env.kind_of(name)
    return None if kind is None else "binding" if kind == BINDING else "value"


class _NameChecker:
    """Walks one choreography: names, calls, placement of `return`/`yield`, `repeat max`."""

    def __init__(self, ctx: Context, sink: DiagnosticSink, decl: ast.ChoreographyDecl) -> None:
        self.ctx, self.sink, self.decl = ctx, sink, decl
        self.symbols = ctx.symbols
        self.calls: list[tuple[str, ast.Call]] = []

    def run(self) -> None:
        self.block(self.decl.body, "choreography", None, params={p.name: p for p in self.decl.params})

    # -- blocks
    def block(self, block: ast.Block, kind: str, parent: Scope | None, *, var: tuple[str, Span] | None = None,
              params: dict[str, ast.Param] | None = None, head: Span | None = None) -> Scope:
        first: dict[str, ast.Binding] = {}
        for b in block.bindings:
            if b.name in first:
                self.sink.report(Code.E106, f"duplicate binding `{b.name}` in one scope", b.name_span,
                                 f"second definition of `{b.name}`",
                                 secondary=[Label(first[b.name].name_span, "first defined here")],
                                 help="each name is bound once per scope: rename one of them")
                continue
            if params and b.name in params:
                self.sink.report(Code.E106, f"`{b.name}` is already a parameter of `{self.decl.name}`", b.name_span,
                                 "binding with a parameter's name",
                                 secondary=[Label(params[b.name].span, "parameter defined here")],
                                 help="choose another name for the binding")
            elif var is not None and b.name == var[0]:
                self.sink.report(Code.E106, f"`{b.name}` is already the `for` variable", b.name_span,
                                 "binding with the loop variable's name",
                                 secondary=[Label(var[1], "`for` variable defined here")],
                                 help="choose another name for the binding")
            elif kind == "repeat" and b.name in ("prev", *REPEAT_FIELDS):
                self.sink.report(Code.E106, f"`{b.name}` is reserved in a `repeat` body", b.name_span, "reserved name",
                                 help="`prev` is the previous iteration, `iterations` and `converged` are fields of "
                                      "the repeat's value: choose another name")
            first[b.name] = b
        inner = Scope(kind, parent, first.items(), var=var[0] if var else None, params=params)
        self.placement(block, kind, head)
        for s in block.statements:
            self.expr(s.value, inner)
            if isinstance(s, ast.Binding):
                for ref in s.after:
                    what = inner.kind_of(ref.name)
                    if what != BINDING:
                        hint = (f"`{ref.name}` is a {'parameter' if what == PARAM else 'loop variable'}: it is "
                                "ready from the start, there is nothing to wait for" if what in (PARAM, VAR)
                                else did_you_mean(ref.name, [n for n in inner.visible() if inner.kind_of(n) == BINDING]))
                        self.sink.report(Code.E101, f"undefined binding `{ref.name}` in `after`", ref.span,
                                         "not a binding here", help=hint)
        return inner

    def placement(self, block: ast.Block, kind: str, head: Span | None) -> None:
        """E108: one `return` at the top of a choreography, one `yield` per `for` body."""
        returns = [s for s in block.statements if isinstance(s, ast.Return)]
        yields = [s for s in block.statements if isinstance(s, ast.Yield)]
        bodies: dict[str, tuple[list[ast.Return] | list[ast.Yield], list[ast.Return | ast.Yield]]] = {
            "choreography": (returns, [*yields]), "for": (yields, [*returns]), "repeat": ([], [*returns, *yields])}
        wanted, unwanted = bodies[kind]
        word = {"choreography": "return", "for": "yield"}.get(kind, "")
        if kind == "choreography" and not returns:
            self.sink.report(Code.E108, f"choreography `{self.decl.name}` has no `return`", self.decl.name_span,
                             "no `return` in this body", help="end the body with `return expr`: the choreography's result")
        if kind == "for" and not yields:
            self.sink.report(Code.E108, "this `for` body has no `yield`", head or self.decl.name_span,
                             "no `yield` in this body",
                             help="end the body with `yield expr`: the value of each item")
        for extra in wanted[1:]:
            self.sink.report(Code.E108, f"more than one `{word}` in one body", head_span(extra.span, len(word)),
                             f"second `{word}`", secondary=[Label(head_span(wanted[0].span, len(word)), f"first `{word}`")],
                             help=f"a body has exactly one `{word}`; bind intermediate values to names instead")
        for s in unwanted:
            kw = "return" if isinstance(s, ast.Return) else "yield"
            where = {"choreography": "at the top of a choreography", "for": "inside a `for` body",
                     "repeat": "inside a `repeat` body"}[kind]
            hint = {("choreography", "yield"): "`yield` gives the value of one `for` item; use `return` for the "
                                                "choreography's result",
                    ("for", "return"): "a `for` body ends with `yield expr`, the value of each item; `return` "
                                       "belongs to the choreography's top-level body",
                    ("repeat", "return"): "a `repeat` body has neither: its value is its bindings, read them as "
                                          "`result.name`",
                    ("repeat", "yield"): "a `repeat` body has neither: its value is its bindings, read them as "
                                         "`result.name`"}[(kind, kw)]
            self.sink.report(Code.E108, f"`{kw}` is not allowed {where}", head_span(s.span, len(kw)), f"misplaced `{kw}`",
                             help=hint)

    # -- expressions
    def expr(self, e: ast.Expr, env: Scope) -> None:
        stack: list[tuple[ast.Expr, Scope]] = [(e, env)]
        while stack:
            node, env = stack.pop()
            if isinstance(node, ast.Name):
                self.name(node, env)
            elif isinstance(node, ast.Call):
                self.call(node, env)
                stack += [(a.value, env) for a in reversed(node.args)]
                if not isinstance(node.func, (ast.Name, ast.Attribute)) or (
                        isinstance(node.func, ast.Attribute) and not isinstance(node.func.value, ast.Name)):
                    stack.append((node.func, env))
            elif isinstance(node, ast.Comprehension):
                inner = Scope("comprehension", env, var=node.var)
                stack.append((node.iter, env))
                stack += [(x, inner) for x in (node.elem, node.cond) if x is not None]
            elif isinstance(node, ast.ForExpr):
                stack.append((node.iter, env))
                self.block(node.body, "for", env, var=(node.var, node.var_span), head=head_span(node.span, 3))
            elif isinstance(node, ast.RepeatExpr):
                self.repeat_max(node)
                if node.max is not None:
                    stack.append((node.max, env))
                stack.append((node.until, self.block(node.body, "repeat", env)))
            else:
                stack += [(c, env) for c in reversed(children(node))]

    def repeat_max(self, e: ast.RepeatExpr) -> None:
        """E404: `repeat` needs `max N` with an integer literal N >= 1."""
        if e.max is None:
            self.sink.report(Code.E404, "`repeat` without `max`", head_span(e.span, 6), "unbounded loop",
                             help="bound it: `repeat max 3 until ... { ... }`")
            return
        value = attr_value(e.max) if isinstance(e.max, (ast.Literal, ast.UnaryOp)) else None
        if not isinstance(value, int) or isinstance(value, bool):
            self.sink.report(Code.E404, "`max` of a `repeat` must be an integer literal", e.max.span,
                             "not an integer literal", help="write a number of iterations, e.g. `repeat max 3 until ...`")
        elif value < 1:
            self.sink.report(Code.E404, f"`repeat max {value}` never runs its body", e.max.span, "must be at least 1",
                             help="use `max 1` or more")

    def name(self, e: ast.Name, env: Scope) -> None:
        if env.kind_of(e.id) is not None:
            return
        s = self.symbols
        if e.id == "prev":
            hint: str | None = "`prev` (the previous iteration) is only defined inside a `repeat` body"
        elif e.id in s.roles:
            task = s.roles[e.id].tasks[0].name if s.roles[e.id].tasks else "task"
            hint = f"`{e.id}` is a role, not a value: call one of its tasks, e.g. `{e.id}.{task}(...)`"
        elif e.id in s.tools or e.id in s.choreographies:
            kind = "tool" if e.id in s.tools else "choreography"
            hint = f"`{e.id}` is a {kind}, not a value: call it, e.g. `{e.id}(...)`"
        else:
            hint = did_you_mean(e.id, env.visible())
        self.sink.report(Code.E101, f"undefined name `{e.id}`", e.span, "not defined here", help=hint)

    def call(self, call: ast.Call, env: Scope) -> None:
        s = self.symbols
        func = call.func
        if isinstance(func, ast.Name):
            n = func.id
            if n in s.choreographies:
                self.calls.append((n, call))
                return
            if n in s.tools or n in BUILTIN_FUNCTIONS:
                return
            local = _value_kind(env, n)
            if local is not None:
                self.sink.report(Code.E104, f"`{n}` is a {local}, "
                                 "not a tool or choreography", func.span, "cannot be called",
                                 help="only tools, choreographies, builtins and `role.task` can be called")
                return
            if n in s.roles:
                task = s.roles[n].tasks[0].name if s.roles[n].tasks else "task"
                self.sink.report(Code.E104, f"`{n}` is a role, not a tool", func.span, "a role cannot be called",
                                 help=f"call one of its tasks, e.g. `{n}.{task}(...)`")
                return
            candidates = [*s.tools, *s.choreographies, *BUILTIN_FUNCTIONS]
            close = difflib.get_close_matches(n, sorted(set(candidates)), n=1, cutoff=0.6)
            if close and close[0] in s.choreographies:
                self.sink.report(Code.E107, f"undefined choreography `{n}`", func.span, "no such choreography",
                                 help=f"did you mean `{close[0]}`?")
            else:
                self.sink.report(Code.E104, f"undefined tool or choreography `{n}`", func.span, "not defined",
                                 help=f"did you mean `{close[0]}`?" if close else
                                 "declare it with `tool name(...) { ... }` or `choreography name(...) { ... }`")
            return
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            role, task = func.value.id, func.attr
            if role in s.roles:
                if (role, task) not in s.tasks:
                    tasks = [t.name for t in s.roles[role].tasks]
                    hint: str | None = did_you_mean(task, tasks) or (
                        f"the tasks of `{role}` are {_backticks(tasks)}" if tasks else f"`{role}` declares no task")
                    self.sink.report(Code.E103, f"role `{role}` has no task `{task}`", func.attr_span, "no such task",
                                     help=hint)
                return
            local = _value_kind(env, role)
            if local is not None:
                self.sink.report(Code.E102, f"`{role}` is a {local}, "
                                 "not a role", func.value.span, "not a role",
                                 help="values have no methods: only `role.task(...)` calls are allowed")
                return
            hint = did_you_mean(role, s.roles)
            if hint is None and role in s.tools:
                hint = f"`{role}` is a tool: call it as `{role}(...)`"
            self.sink.report(Code.E102, f"undefined role `{role}`", func.value.span, "no such role", help=hint)
            return
        self.sink.report(Code.E104, "this expression cannot be called", func.span, "not callable",
                         help="only tools, choreographies, builtins and `role.task` can be called")


def check_choreographies(ctx: Context, sink: DiagnosticSink) -> None:
    """E101-E104, E106 (bindings), E107 (calls), E108 and E404 in every choreography."""
    for name, decl in ctx.symbols.choreographies.items():
        checker = _NameChecker(ctx, sink, decl)
        checker.run()
        ctx.choreo_calls[name] = checker.calls


def check_recursion(ctx: Context, sink: DiagnosticSink) -> None:
    """E403: choreographies are inlined, so they cannot call each other in a cycle."""
    names = list(ctx.symbols.choreographies)
    edges = {n: [callee for callee, _ in ctx.choreo_calls.get(n, ())] for n in names}
    for cycle in find_cycles(names, edges):
        def site(a: str, b: str) -> ast.Call:
            return next(c for callee, c in ctx.choreo_calls[a] if callee == b)
        if len(cycle) == 1:
            sink.report(Code.E403, f"choreography `{cycle[0]}` calls itself", site(cycle[0], cycle[0]).func.span,
                        "recursive call",
                        help="choreographies are inlined into the plan, so they cannot recurse; "
                             "use `repeat max N until ...` for a bounded loop")
            continue
        ring = cycle + [cycle[0]]
        chain = f"`{ring[0]}` calls " + ", which calls ".join(f"`{n}`" for n in ring[1:])
        pairs = list(zip(ring, ring[1:]))
        sink.report(Code.E403, f"recursion among choreographies: {chain}", site(*pairs[0]).func.span,
                    f"`{pairs[0][0]}` calls `{pairs[0][1]}`",
                    secondary=[Label(site(a, b).func.span, f"`{a}` calls `{b}`") for a, b in pairs[1:]],
                    help="choreographies are inlined into the plan, so they cannot recurse; "
                         "use `repeat max N until ...` for a bounded loop")


# -- attributes

_KIND_WORDS = {"str": "a string", "int": "an integer", "number": "a number", "bool": "`true` or `false`",
               "duration": "a duration such as `30s` or `2m`", "memory": '`"none"`, `"session"` or `"persistent"`',
               "agent": "an agent name (letters, digits, `_`, `-`, `.`)",
               "delegate_failure": '`"fail"` or `"return"`',
               "tool_refs": "a list of tools and `role.task` names", "argv": "a list of strings",
               "builtin": "one of " + ", ".join(f'`"{b}"`' for b in BUILTIN_TOOLS)}


_EXAMPLES = {"replicas": "`replicas = 2` lets two calls of this role run at once (the default is 1)",
             "temperature": "e.g. `temperature = 0.2`", "max_tokens": "e.g. `max_tokens = 1024`",
             "max_turns": "e.g. `max_turns = 8` (model/tool round trips per task call)",
             "retries": "e.g. `retries = 2` (`0` for none)", "max_context_tokens": "e.g. `max_context_tokens = 8000`",
             "max_spawn_depth": "e.g. `max_spawn_depth = 2` (how deep agents created at run time may nest)",
             "on_delegate_failure": '`"return"` gives a failed delegation to the model as the tool\'s result; '
                                    '`"fail"` (the default) fails the run',
             "tools": "e.g. `tools = [write_file, reviewer.review_module]`", "model": 'e.g. `model = "scripted"`'}


def _example(name: str, kind: str) -> str | None:
    return _EXAMPLES.get(name) or {"duration": "e.g. `30s`, `2m` or `500ms`", "bool": "write `true` or `false`",
                                   "str": f'e.g. `{name} = "..."`'}.get(kind)


def _found(e: ast.Expr) -> str:
    if isinstance(e, ast.Literal):
        v = e.value
        return ("`null`" if v is None else "`true`/`false`" if isinstance(v, bool) else
                "an integer" if isinstance(v, int) else "a number" if isinstance(v, float) else "a string")
    return {ast.Duration: "a duration", ast.ListExpr: "a list", ast.Name: "a name",
            ast.RecordExpr: "a record"}.get(type(e), "an expression")


def _check_attr(attr: ast.Attr, vocab: dict[str, str], owner: str, sink: DiagnosticSink, ctx: Context) -> None:
    kind = vocab.get(attr.name)
    if kind is None:
        others = [("role", ROLE_ATTRS), ("task", TASK_ATTRS), ("tool", TOOL_ATTRS)]
        where = next((w for w, v in others if attr.name in v), None)
        hint = did_you_mean(attr.name, vocab) or (
            f"`{attr.name}` is a {where} attribute" if where else f"known attributes: {_backticks(sorted(vocab))}")
        sink.report(Code.E302, f"unknown attribute `{attr.name}` for {owner}", attr.name_span, "unknown attribute",
                    help=hint)
        return
    v = attr.value
    value = attr_value(v)
    ok = {"str": lambda: isinstance(v, ast.Literal) and isinstance(value, str),
          "int": lambda: isinstance(value, int) and not isinstance(value, bool) and not isinstance(v, ast.Duration),
          "number": lambda: isinstance(value, (int, float)) and not isinstance(value, bool)
          and not isinstance(v, ast.Duration),
          "bool": lambda: isinstance(value, bool),
          "duration": lambda: isinstance(v, ast.Duration),
          "memory": lambda: isinstance(v, ast.Literal) and value in MEMORY_MODES,
          "agent": lambda: isinstance(v, ast.Literal) and isinstance(value, str)
          and re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", value) is not None,
          "delegate_failure": lambda: isinstance(v, ast.Literal) and value in ("fail", "return"),
          "builtin": lambda: isinstance(v, ast.Literal) and value in BUILTIN_TOOLS,
          "argv": lambda: isinstance(v, ast.ListExpr) and bool(v.items) and all(
              isinstance(i, ast.Literal) and isinstance(i.value, str) for i in v.items),
          "tool_refs": lambda: isinstance(v, ast.ListExpr)}[kind]()
    if not ok:
        if kind == "builtin" and isinstance(value, str):
            sink.report(Code.E302, f"unknown builtin `{value}`", v.span, "no such builtin",
                        help=did_you_mean(value, BUILTIN_TOOLS) or f"the builtins are {_backticks(BUILTIN_TOOLS)}")
        elif kind == "memory" and isinstance(value, str):
            sink.report(Code.E302, f'`memory` must be "none", "session" or "persistent", not "{value}"', v.span,
                        "unknown memory mode", help=did_you_mean(value, MEMORY_MODES) or
                        '`"session"` keeps one conversation per role for a run, `"persistent"` one per agent '
                        'across runs; `"none"` starts fresh on each call')
        elif kind == "agent" and isinstance(value, str):
            sink.report(Code.E302, f'`agent` must be a name of letters, digits, `_`, `-` and `.`, not "{value}"',
                        v.span, "not an agent name", help='e.g. `agent = "tutor"`; `agentflow agents` lists agents by it')
        elif kind == "argv" and isinstance(v, ast.ListExpr):
            bad = next((i for i in v.items if not (isinstance(i, ast.Literal) and isinstance(i.value, str))), None)
            if bad is None:
                sink.report(Code.E302, "`command` is empty", v.span, "no program to run",
                            help='name the program and its arguments, e.g. `["python", "-m", "pytest"]`')
            else:
                sink.report(Code.E302, "every element of `command` must be a string", bad.span, f"this is {_found(bad)}",
                            help='write placeholders inside strings, e.g. `"{path}"`')
        else:
            sink.report(Code.E302, f"`{attr.name}` must be {_KIND_WORDS[kind]}, found {_found(v)}", v.span,
                        f"expected {_KIND_WORDS[kind]}", help=_example(attr.name, kind))
        return
    if kind == "tool_refs" and isinstance(v, ast.ListExpr):
        _check_tool_refs(v, sink, ctx)
    minimum = {"replicas": 1, "max_turns": 1, "max_tokens": 1, "max_context_tokens": 1, "retries": 0,
               "program_max_chars": 1, "program_max_nodes": 1, "max_spawn_depth": 1}.get(attr.name)
    if minimum is not None and value < minimum:
        sink.report(Code.E302, f"`{attr.name}` must be at least {minimum}, found {value}", v.span,
                    f"must be >= {minimum}", help=_example(attr.name, kind))
    if attr.name == "temperature" and value < 0:
        sink.report(Code.E302, f"`temperature` cannot be negative, found {value}", v.span, "must be >= 0")
    if kind == "duration" and value <= 0:
        sink.report(Code.E302, f"`{attr.name}` must be a positive duration", v.span, "must be > 0")
    if attr.name == "python" and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", value):
        sink.report(Code.E302, f'`python` must be "module.path:function", found "{value}"', v.span,
                    "not `module:function`", help='e.g. `python = "tools.files:write_file"`')


def _check_tool_refs(v: ast.ListExpr, sink: DiagnosticSink, ctx: Context) -> None:
    s = ctx.symbols
    for item in v.items:
        if isinstance(item, ast.Name):
            if item.id in s.tools:
                continue
            if item.id in s.roles:
                tasks = [t.name for t in s.roles[item.id].tasks]
                sink.report(Code.E104, f"`{item.id}` is a role, not a tool", item.span, "not a tool",
                            help=f"grant one of its tasks as `{item.id}.{tasks[0] if tasks else 'task'}`")
                continue
            sink.report(Code.E104, f"undefined tool `{item.id}`", item.span, "no such tool",
                        help=did_you_mean(item.id, s.tools) or (f"the tools are {_backticks(s.tools)}" if s.tools
                                                                else "declare it with `tool name(...) { ... }`"))
        elif isinstance(item, ast.Attribute) and isinstance(item.value, ast.Name):
            role, task = item.value.id, item.attr
            if role not in s.roles:
                sink.report(Code.E102, f"undefined role `{role}`", item.value.span, "no such role",
                            help=did_you_mean(role, s.roles))
            elif (role, task) not in s.tasks:
                tasks = [t.name for t in s.roles[role].tasks]
                sink.report(Code.E103, f"role `{role}` has no task `{task}`", item.attr_span, "no such task",
                            help=did_you_mean(task, tasks) or (f"the tasks of `{role}` are {_backticks(tasks)}"
                                                               if tasks else f"`{role}` declares no task"))
        else:
            sink.report(Code.E302, "`tools` entries must be tool names or `role.task`", item.span,
                        f"this is {_found(item)}", help="e.g. `tools = [write_file, reviewer.review_module]`")


def check_attributes(ctx: Context, sink: DiagnosticSink) -> None:
    """E302 (names, kinds and values of attributes, tool implementations, prompts), E303."""
    s = ctx.symbols
    for a in s.defaults.values():
        _check_attr(a, DEFAULTS_ATTRS, "`defaults`", sink, ctx)
    for name, role in s.roles.items():
        for a in role.attrs:
            _check_attr(a, ROLE_ATTRS, f"role `{name}`", sink, ctx)
        for task in role.tasks:
            for a in task.attrs:
                _check_attr(a, TASK_ATTRS, f"task `{name}.{task.name}`", sink, ctx)
            if not any(a.name == "prompt" for a in task.attrs):
                sink.report(Code.E302, f"task `{name}.{task.name}` has no `prompt`", task.name_span, "no `prompt`",
                            help='add `prompt = "..."`: the request sent to the model, with `{param}` placeholders')
        replicas, memory = ctx.role_attr(role, "replicas"), ctx.role_attr(role, "memory")
        mode = attr_value(memory.value) if memory is not None else "none"
        agent = next((a for a in role.attrs if a.name == "agent"), None)
        if agent is not None and mode != "persistent":
            sink.report(Code.E302, f"role `{name}` names an agent but its memory is not persistent", agent.name_span,
                        "`agent` without persistent memory",
                        help='add `memory = "persistent"` to keep the agent\'s conversation across runs, '
                             "or drop `agent`")
        if mode in ("session", "persistent") and replicas is not None:
            n = attr_value(replicas.value)
            if isinstance(n, int) and not isinstance(n, bool) and n > 1:
                own = any(a is replicas for a in role.attrs)
                assert memory is not None  # mode is not "none"
                sink.report(Code.E303, f"{mode} role `{name}` cannot have `replicas = {n}`",
                            replicas.value.span if own else memory.value.span,
                            "more than one replica" if own else f"{mode} memory",
                            secondary=[Label(memory.value.span if own else replicas.value.span,
                                             f"{mode} memory" if own else f"`replicas = {n}` from `defaults`")],
                            help=f"a {mode} role keeps one conversation answered in program order: set "
                                 '`replicas = 1`, or use `memory = "none"`')
        _check_spawn_names(name, role, sink, ctx)
    for name, tool in s.tools.items():
        for a in tool.attrs:
            _check_attr(a, TOOL_ATTRS, f"tool `{name}`", sink, ctx)
        impls = [a for a in tool.attrs if a.name in ("python", "command", "builtin")]
        if not impls:
            sink.report(Code.E302, f"tool `{name}` has no implementation", tool.name_span, "no `python`, `command` or `builtin`",
                        help='give it exactly one of `python = "module:function"`, `command = [...]` or `builtin = "fs.read"`')
        for extra in impls[1:]:
            sink.report(Code.E302, f"tool `{name}` has both `{impls[0].name}` and `{extra.name}`", extra.name_span,
                        "second implementation", secondary=[Label(impls[0].name_span, "first implementation")],
                        help="a tool has exactly one of `python`, `command` or `builtin`")


def _check_spawn_names(name: str, role: ast.RoleDecl, sink: DiagnosticSink, ctx: Context) -> None:
    """E302: a role with `spawn = true` is offered `create_agent`, `call_agent` and
    `list_agents`; a granted tool of one of those names would be ambiguous."""
    spawn = ctx.role_attr(role, "spawn")
    if spawn is None or attr_value(spawn.value) is not True:
        return
    for item in _tool_entries(role):
        if isinstance(item, ast.Name) and item.id in SPAWN_TOOLS:
            sink.report(Code.E302, f"role `{name}` grants a tool named `{item.id}`, which `spawn = true` "
                        f"already offers", item.span, "clashes with a spawn tool",
                        secondary=[Label(spawn.value.span, "offers create_agent, call_agent, list_agents")],
                        help=f"rename the tool `{item.id}`")


_SECRETS = (
    (re.compile(r"sk-[A-Za-z0-9_\-]{16,}"), "an API key (`sk-...`)"),
    (re.compile(r"AKIA[0-9A-Z]{16}"), "an AWS access key (`AKIA...`)"),
    (re.compile(r"(?<![A-Za-z0-9])[A-Za-z0-9]{32,}(?![A-Za-z0-9])"), "a long key or token"),
)

_DROP_DIGITS = str.maketrans("", "", "0123456789")


def find_secret(text: str) -> tuple[int, int, str] | None:
    """The first secret-looking substring of a string: (start, end, what)."""
    for pattern, what in _SECRETS:
        for m in pattern.finditer(text):
            token = m.group(0)
            if what == "a long key or token":  # letters and digits only; counted in C, keys may be long
                digits = len(token) - len(token.translate(_DROP_DIGITS))
                if digits < 4 or len(token) - digits < 4:
                    continue
            return m.start(), m.end(), what
    return None


def _string_literals(decl, facts: BodyFacts) -> Iterator[ast.Literal]:
    """The string literals of a declaration, in source order: in parameter defaults,
    attribute values (its tasks' too) and its body."""
    roots = [p.default for p in getattr(decl, "params", ()) if p.default is not None]
    roots += [a.value for a in getattr(decl, "attrs", ())]
    yield from (e for root in roots for e in walk(root) if isinstance(e, ast.Literal) and isinstance(e.value, str))
    for task in getattr(decl, "tasks", ()):
        yield from _string_literals(task, facts)
    if isinstance(decl, ast.ChoreographyDecl):
        for stmt in decl.body.statements:
            yield from facts.of(stmt).strings


def check_secrets(ctx: Context, sink: DiagnosticSink) -> None:
    """E304: string literals that look like API keys."""
    for decl in ctx.program.decls:
        for lit in _string_literals(decl, ctx.symbols.facts):
            text = cast(str, lit.value)  # _string_literals yields string literals only
            hit = find_secret(text)
            if hit is not None:
                start, end, what = hit
                sink.report(Code.E304, f"this string looks like a secret: {what}",
                            text_span(lit.span, text, start, end, ctx.source), "looks like a secret",
                            help="keys never belong in a spec: put the key in an environment variable and name "
                                 'it with `api_key_env = "OPENAI_API_KEY"` on the role')


def check_models(ctx: Context, sink: DiagnosticSink) -> None:
    """E301: a role that some choreography uses has no model, neither its own nor `defaults`.
    E305: a role answered by a person (`model = "human"`) is granted tools."""
    for name in ctx.symbols.roles:
        role = ctx.symbols.roles[name]
        model = ctx.role_attr(role, "model")
        if name in ctx.reachable_roles and model is None:
            sink.report(Code.E301, f"role `{name}` has no model", role.name_span, "used, but no `model`",
                        help='set `model = "openai/gpt-4o-mini"` (or "scripted") on the role, or a default in '
                             "`defaults { model = ... }`")
        tools = ctx.role_attr(role, "tools")
        if model is not None and attr_value(model.value) == "human" and tools is not None \
                and isinstance(tools.value, ast.ListExpr) and tools.value.items:
            own = any(a is tools for a in role.attrs)
            sink.report(Code.E305, f"role `{name}` is answered by a person and cannot be granted tools",
                        tools.value.span if own else model.value.span,
                        "tools for a person" if own else "a person answers this role",
                        secondary=[Label(model.value.span if own else tools.value.span,
                                         "a person answers this role" if own else "`tools` from `defaults`")],
                        help='a person answers the prompt directly: remove `tools` from the role, or give it a '
                             'model instead of "human"')


# ================================================================ phase 2: types

def check_expression_types(ctx: Context, sink: DiagnosticSink) -> None:
    """E201-E204 over every choreography and parameter default."""
    check_types(ctx.symbols, sink, ctx.source)


def check_template_names(ctx: Context, sink: DiagnosticSink) -> None:
    """E205 over prompts, `system` and `command` elements."""
    check_templates(ctx.symbols, sink, ctx.source)


# ================================================================ phase 3: deadlocks and warnings

def _blocks(ctx: Context, decl: ast.ChoreographyDecl) -> Iterator[tuple[str, ast.Block, ast.Expr | None]]:
    """Every block of a choreography: (kind, block, the `until` of a repeat body)."""
    yield "choreography", decl.body, None
    for stmt in decl.body.statements:
        for e in ctx.symbols.facts.of(stmt).loops:
            if isinstance(e, ast.ForExpr):
                yield "for", e.body, None
            else:
                yield "repeat", e.body, e.until


def _session_roles_of(ctx: Context) -> dict[str, set[str]]:
    """choreography -> conversations (session roles, persistent agents) it continues,
    sub-choreographies included."""
    direct: dict[str, set[str]] = {}
    callees: dict[str, set[str]] = {}
    for caller, call in ctx.calls:
        t = ctx.symbols.facts.target(call)
        if t.kind == "task" and (conv := ctx.conversation(t.role)) is not None:
            direct.setdefault(caller, set()).add(conv)
        elif t.kind == "choreography":
            callees.setdefault(caller, set()).add(t.name)
    out: dict[str, set[str]] = {}
    for name in ctx.symbols.choreographies:
        seen, todo, roles = set(), [name], set()
        while todo:
            n = todo.pop()
            if n in seen:
                continue
            seen.add(n)
            roles |= direct.get(n, set())
            todo += callees.get(n, ())
        out[name] = roles
    return out


def check_wait_cycles(ctx: Context, sink: DiagnosticSink) -> None:
    """E401: cycles in the wait graph of each scope (data, `after`, session order)."""
    session_of = _session_roles_of(ctx)
    facts = ctx.symbols.facts

    def session_calls(stmt: ast.Statement) -> tuple[tuple[int, str], ...]:
        out: list[tuple[int, str]] = []
        for e in facts.of(stmt).calls:
            t = facts.target(e)
            if t.kind == "task" and (conv := ctx.conversation(t.role)) is not None:
                out.append((e.span.start, conv))
            elif t.kind == "choreography":
                out += [(e.span.start, r) for r in sorted(session_of.get(t.name, ()))]
        return tuple(out)

    for decl in ctx.symbols.choreographies.values():
        reaches_session_roles = bool(session_of[decl.name])  # else no statement makes session calls
        for kind, block, _ in _blocks(ctx, decl):
            names = {b.name for b in block.bindings}
            waiters, spans, seen = [], {}, set()
            for s in block.statements:
                if isinstance(s, ast.Binding):
                    if s.name in seen:
                        continue
                    seen.add(s.name)
                    name, span = s.name, s.name_span
                else:
                    name = "return" if isinstance(s, ast.Return) else "yield"
                    span = head_span(s.span, len(name))
                after = tuple(a.name for a in s.after) if isinstance(s, ast.Binding) else ()
                session = session_calls(s) if reaches_session_roles else ()
                waiters.append(Waiter(name, facts.of(s).reads & names, after, session))
                spans[name] = span
            if waits_only_back(waiters):
                continue
            graph = wait_graph(waiters)
            order = [w.name for w in waiters]
            for cycle in find_cycles(order, {n: [w.target for w in ws] for n, ws in graph.items()}):
                _report_wait_cycle(cycle, graph, spans, sink)


def _report_wait_cycle(cycle: list[str], graph, spans: dict[str, Span], sink: DiagnosticSink) -> None:
    ring = cycle + [cycle[0]]

    def why(a: str, b: str) -> str:
        reason = next(w.reason for w in graph[a] if w.target == b)
        if reason == "data":
            return f"waits for `{b}` (uses its value)"
        if reason == "after":
            return f"waits for `{b}` (`after {b}`)"
        conv = reason.split(":", 1)[1]
        if conv.startswith("agent "):
            return f"waits for `{b}` (its earlier call to persistent agent `{conv.removeprefix('agent ')}`)"
        return f"waits for `{b}` (its earlier call to session role `{conv}`)"

    on_cycle = [next(w.reason for w in graph[a] if w.target == b) for a, b in zip(ring, ring[1:])]
    reasons = {r.split(":")[0] for r in on_cycle}
    if len(cycle) == 1:
        message = f"deadlock: `{cycle[0]}` waits for itself"
    else:
        message = "deadlock: " + f"`{ring[0]}` waits for " + ", which waits for ".join(f"`{n}`" for n in ring[1:])
    if "session" in reasons:
        kind = "a persistent agent" if any(r.startswith("session:agent ") for r in on_cycle) else "a session role"
        hint = (f"calls to {kind} run one at a time in program order (textual order): "
                "move the call whose result is needed earlier in the text")
    elif "after" in reasons:
        hint = "remove the `after` that closes the cycle"
    else:
        hint = "a value cannot depend on itself: compute one of these from the others' inputs instead"
    sink.report(Code.E401, message, spans[cycle[0]], why(ring[0], ring[1]),
                secondary=[Label(spans[a], why(a, b)) for a, b in zip(ring[1:-1], ring[2:])], help=hint)


def check_delegation(ctx: Context, sink: DiagnosticSink) -> None:
    """E402: roles that can call each other through `role.task` tools."""
    roles = list(ctx.symbols.roles)
    edges = {r: [d for d, _, _ in ctx.delegations[r]] for r in roles}
    for cycle in delegation_cycles(roles, edges):
        ring = cycle + [cycle[0]]

        def entry(a: str, b: str) -> ast.Attribute:
            return next(item for d, _, item in ctx.delegations[a] if d == b)

        def text(a: str, b: str) -> str:
            e = entry(a, b)
            return f"`{a}` can call `{b}.{e.attr}`"

        if len(cycle) == 1:
            message = f"deadlock: delegation cycle: role `{cycle[0]}` can call itself"
        else:
            message = "deadlock: delegation cycle: " + f"`{ring[0]}` can call " + \
                ", which can call ".join(f"`{n}`" for n in ring[1:])
        pairs = list(zip(ring, ring[1:]))
        sink.report(Code.E402, message, entry(*pairs[0]).span, text(*pairs[0]),
                    secondary=[Label(entry(a, b).span, text(a, b)) for a, b in pairs[1:]],
                    help="a role's slot is held while it waits for its delegate, so the roles can wait for each "
                         "other forever: remove one of these `role.task` tools")
    for a in roles:  # a call holds its agent's conversation while its delegate runs
        agent = ctx.conversation(a)
        for d, task, item in ctx.delegations[a]:
            if d != a and agent is not None and ctx.conversation(d) == agent:
                sink.report(Code.E402, f"deadlock: `{a}` can call `{d}.{task}`, and both continue persistent agent "
                                       f"`{agent.removeprefix('agent ')}`", item.span, "same agent",
                            help="a call keeps its agent's conversation until it ends, so a delegate continuing "
                                 "it would wait forever: give the roles different agents, or remove this tool")


def check_unused_declarations(ctx: Context, sink: DiagnosticSink) -> None:
    """W301 unreachable roles, W302 unused tools, W303 tasks called nowhere."""
    s = ctx.symbols
    called_tools = set()
    called_tasks = set()
    for _, call in ctx.calls:
        t = s.facts.target(call)
        if t.kind == "tool":
            called_tools.add(t.name)
        elif t.kind == "task":
            called_tasks.add((t.role, t.task))
    granted = {item.id for role in s.roles.values() for item in _tool_entries(role) if isinstance(item, ast.Name)}
    delegated = {(d, task) for ds in ctx.delegations.values() for d, task, _ in ds}
    for name, role_decl in s.roles.items():
        if name not in ctx.reachable_roles:
            sink.report(Code.W301, f"role `{name}` is never used", role_decl.name_span, "reachable from no choreography",
                        help="call one of its tasks from a choreography, grant a task to a used role as "
                             "`role.task`, or remove the role")
    for name, tool in s.tools.items():
        if name not in called_tools and name not in granted:
            sink.report(Code.W302, f"tool `{name}` is never used", tool.name_span, "granted to no role, called nowhere",
                        help=f"grant it to a role with `tools = [{name}]`, call it from a choreography, or remove it")
    for (role, task), decl in s.tasks.items():
        if role not in ctx.reachable_roles:
            continue  # W301 already says the whole role is unused
        if (role, task) not in called_tasks and (role, task) not in delegated:
            sink.report(Code.W303, f"task `{role}.{task}` is never called", decl.name_span, "called nowhere",
                        help=f"call it as `{role}.{task}(...)` from a choreography, grant it to another role as "
                             f"`tools = [{role}.{task}]`, or remove it")


def check_unused_bindings(ctx: Context, sink: DiagnosticSink) -> None:
    """W501: a binding nobody reads, waits for, returns or yields."""
    for decl in ctx.symbols.choreographies.values():
        for kind, block, until in _blocks(ctx, decl):
            if kind == "repeat":
                continue  # fields of the repeat's value
            used: set[str] = set()
            for s in block.statements:
                names = ctx.symbols.facts.of(s).reads
                if isinstance(s, ast.Binding):
                    names = names - {s.name}
                    used |= {a.name for a in s.after}
                used |= names
            seen: set[str] = set()
            for b in block.bindings:
                if b.name in used or b.name in seen:
                    continue
                seen.add(b.name)
                sink.report(Code.W501, f"binding `{b.name}` is never used", b.name_span, "never used",
                            help="use it, return it, or remove it; to only order work after it, name it in "
                                 "another binding's `after`")


# ================================================================ the phases, in order

Check = Callable[[Context, DiagnosticSink], None]

PHASES: tuple[tuple[str, tuple[Check, ...]], ...] = (
    ("names and structure", (check_entry, check_choreographies, check_recursion, check_type_nesting,
                             check_inlining_depth, check_attributes, check_secrets, check_models)),
    ("types", (check_expression_types, check_template_names)),
    ("deadlocks and warnings", (check_wait_cycles, check_delegation, check_unused_declarations,
                                check_unused_bindings)),
)


def check_program(program: ast.Program, symbols: Symbols, sink: DiagnosticSink, *, entry: str | None = None,
                  source: SourceFile | None = None) -> str | None:
    """Runs every check phase in order, stopping after the first phase that reports errors.
    Returns the entry choreography name (None if there is none / errors).

    `source` is optional; with it, diagnostics point inside string literals (template
    placeholders, secrets) even in triple-quoted strings."""
    ctx = Context(program, symbols, entry, source)
    for _, checks in PHASES:
        for check in checks:
            check(ctx, sink)
        if sink.has_errors:
            return None
    return ctx.entry
