"""Definite typing of choreography expressions (E201-E204) and templates (E205).

Names resolve through `scopes.Scope` (the same scopes as the name checks). A
binding's type is computed on first use and memoised, so each expression is typed
(and reports) exactly once. Anything unknown after an error is `AnyT`, which is
compatible with everything: one mistake gives one message.

Checking is bidirectional: where a type is expected (an argument, a `return`, a
parameter default), it is passed down into the expression (`Typer.check`), so a record
or string literal takes that type when it fits and otherwise says which field misses.
"""
from __future__ import annotations

import json as _json
from typing import Any, Callable, NamedTuple, get_args

from . import ast
from .codes import Code
from .diagnostics import DiagnosticSink, Label, did_you_mean
from .scopes import BINDING, PARAM, VAR, Scope
from .source import SourceFile, Span
from .symbols import Symbols, attr_value
from .templates import Placeholder, format_path, placeholder_span, placeholders
from .types import (ANY, BOOL, FLOAT, INT, JSON, NULL, STR, AnyT, ListT, LiteralT, NullT, OptionalT,
                    RecordT, StructT, Type, is_assignable, join, record_fields, strip_optional)

REPEAT_FIELDS = ("iterations", "converged")


# ---------------------------------------------------------------- scopes

class TypedScope(Scope):
    """A scope (see `scopes`) of AST bindings and parameters whose `for` or comprehension
    variable has a type."""

    def __init__(self, kind: str, parent: "TypedScope | None", block: ast.Block | None = None, *,
                 var: str | None = None, var_type: Type = ANY,
                 params: dict[str, ast.Param] | None = None) -> None:
        super().__init__(kind, parent, ((b.name, b) for b in block.bindings) if block else (), var=var, params=params)
        self.var_type = var_type


# ---------------------------------------------------------------- helpers

def dependency_order(nodes: list[str], deps: dict[str, list[str]]) -> list[str]:
    """Post-order of an iterative depth-first search: dependencies before dependents
    (cycles are cut anywhere; they are reported elsewhere)."""
    out: list[str] = []
    state: dict[str, int] = {}
    for root in nodes:
        if root in state:
            continue
        stack = [(root, iter(deps.get(root, ())))]
        state[root] = 1
        while stack:
            node, it = stack[-1]
            nxt = next((d for d in it if d not in state), None)
            if nxt is None:
                stack.pop()
                out.append(node)
            else:
                state[nxt] = 1
                stack.append((nxt, iter(deps.get(nxt, ()))))
    return out


def head_span(span: Span, width: int) -> Span:
    """The first `width` characters of a span (e.g. a keyword), on its first line."""
    if span.line == span.end_line:
        width = min(width, max(0, span.end - span.start))
    return Span(span.file, span.start, span.start + width, span.line, span.column, span.line, span.column + width)


def show(t: Type) -> str:
    return f"`{t}`"


def is_numeric(t: Type) -> bool:
    return t in (INT, FLOAT)


def is_strlike(t: Type) -> bool:
    return t == STR or isinstance(t, LiteralT)


def is_unknown(t: Type) -> bool:
    return isinstance(t, AnyT) or t == JSON


def describe_expr(e: ast.Expr) -> str:
    if isinstance(e, ast.Name):
        return f"`{e.id}`"
    if isinstance(e, ast.Attribute) and isinstance(e.value, ast.Name):
        return f"`{e.value.id}.{e.attr}`"
    return "this"


def param_signature(what: str, params: tuple[ast.Param, ...], symbols: Symbols) -> str:
    parts = []
    for p in params:
        text = f"{p.name}: {symbols.resolve_type(p.type)}"
        if p.default is not None:
            text += f" = {_json.dumps(attr_value(p.default))}"
        parts.append(text)
    return f"`{what}({', '.join(parts)})`"


NULL_HELP = "it may be null: give a fallback, e.g. `x if x != null else ...`"


def field_hint(name: str, names: list[str]) -> str:
    """The help line for a field a record type does not have."""
    return did_you_mean(name, names) or (f"its fields are {', '.join(f'`{n}`' for n in names)}"
                                         if names else "it has no fields")


def values_hint(value: str, union: LiteralT) -> str:
    """The help line for a string that is none of a literal union's values."""
    close = did_you_mean(value, union.values)
    values = ", ".join(f'`"{v}"`' for v in union.values)
    return (f'did you mean `"{close[14:-2]}"`? ' if close else "") + f"the possible values are {values}"


def string_literal(e: ast.Expr) -> str | None:
    """The text of a string literal; None for any other expression."""
    return e.value if isinstance(e, ast.Literal) and isinstance(e.value, str) else None


def takes_expectation(e: ast.Expr) -> bool:
    """Whether an expected type can change the type of `e`: literals, and the list
    literals and conditionals that pass an expectation on to them."""
    return isinstance(e, (ast.RecordExpr, ast.ListExpr, ast.Conditional)) or string_literal(e) is not None


class Misfit(NamedTuple):
    """Why a literal is not the type expected of it, said at the part that differs. The
    caller reports it, or drops it when the type was only suggested by a sibling."""
    code: Code
    message: str
    span: Span
    label: str
    help: str | None


Checked = tuple[Type, tuple[Misfit, ...]]  # a type, and why a literal misses the expected one


def expected_elem(want: Type | None) -> Type | None:
    """The item type expected of a list literal or a `for`, if a list is expected."""
    inner = strip_optional(want) if want is not None else None
    return inner.elem if isinstance(inner, ListT) else None


# ---------------------------------------------------------------- the typer

class Typer:
    """Types every expression of every choreography, reporting E201-E204."""

    def __init__(self, symbols: Symbols, sink: DiagnosticSink, source: SourceFile | None = None) -> None:
        self.symbols = symbols
        self.facts = symbols.facts
        self.table = symbols.type_table
        self.real_sink = sink
        self.sink = sink
        self.memo: dict[int, Type] = {}
        self.param_memo: dict[int, tuple[Type, Type]] = {}
        self.quiet_memo: dict[int, Type] | None = None
        self.in_progress: set[int] = set()
        self.binding_scope: dict[int, TypedScope] = {}
        self.choreo_types: dict[str, Type] = {}
        self.choreo_progress: set[str] = set()
        self.pure = 0  # > 0 inside a comprehension

    # -- declarations
    def check_all(self) -> None:
        callees = {name: sorted({c.func.id for stmt in decl.body.statements for c in self.facts.of(stmt).calls
                                 if isinstance(c.func, ast.Name) and c.func.id in self.symbols.choreographies})
                   for name, decl in self.symbols.choreographies.items()}
        for name in dependency_order(list(self.symbols.choreographies), callees):
            self.choreography_type(name)
        with_params: list[ast.ToolDecl | ast.TaskDecl | ast.ChoreographyDecl] = [
            *self.symbols.tools.values(), *self.symbols.tasks.values(), *self.symbols.choreographies.values()]
        for decl in with_params:
            self.check_defaults(decl.params)

    def check_defaults(self, params: tuple[ast.Param, ...]) -> None:
        for p in params:
            if p.default is None:
                continue
            want = self.symbols.resolve_type(p.type)
            value = p.default
            if isinstance(value, ast.Literal) or (isinstance(value, (ast.ListExpr, ast.UnaryOp))
                                                  and attr_value(value) is not None):
                got = self.misfit(value, TypedScope("choreography", None), want)
                if got is not None:
                    self.sink.report(Code.E201, f"default of `{p.name}` does not fit its type {show(want)}",
                                     value.span, f"this is {show(got)}",
                                     help=f"give a default of type {show(want)}, or change the parameter's type")
            else:
                self.sink.report(Code.E201, f"default of `{p.name}` must be a literal value", value.span,
                                 "not a literal", help="use a string, number, `true`/`false`, `null` or a list of them")

    def choreography_type(self, name: str) -> Type:
        if name in self.choreo_types:
            return self.choreo_types[name]
        if name in self.choreo_progress:
            return ANY
        decl = self.symbols.choreographies[name]
        self.choreo_progress.add(name)
        saved = self.sink, self.quiet_memo, self.pure
        self.sink, self.quiet_memo, self.pure = self.real_sink, None, 0
        try:
            scope = TypedScope("choreography", None, decl.body, params={p.name: p for p in decl.params})
            self.check_block(scope)
            ret = next((s for s in decl.body.statements if isinstance(s, ast.Return)), None)
            if decl.returns is None:
                result = self.expr(ret.value, scope) if ret is not None else ANY
            else:
                result = declared = self.symbols.resolve_type(decl.returns)
                got = self.misfit(ret.value, scope, declared) if ret is not None else None
                if ret is not None and got is not None:
                    self.sink.report(Code.E201, f"`{name}` returns {show(declared)}, but this is {show(got)}",
                                     ret.value.span, f"this is {show(got)}",
                                     secondary=[Label(decl.returns.span, "declared here")],
                                     help=self._mismatch_help(got, declared))
        finally:
            self.sink, self.quiet_memo, self.pure = saved
            self.choreo_progress.discard(name)
        self.choreo_types[name] = result
        return result

    def register(self, scope: TypedScope) -> TypedScope:
        for b in scope.bindings.values():
            self.binding_scope[id(b)] = scope
        return scope

    def check_block(self, scope: TypedScope) -> None:
        """Types the bindings of a block, dependencies first (so lazy typing stays shallow)."""
        self.register(scope)
        deps = {n: [d for d in sorted(self.facts.of(b).reads) if d in scope.bindings and d != n]
                for n, b in scope.bindings.items()}
        for name in dependency_order(list(scope.bindings), deps):
            self.binding_type(scope.bindings[name])

    def binding_type(self, b: ast.Binding) -> Type:
        key = id(b)
        if key in self.memo:
            return self.memo[key]
        if self.quiet_memo is not None and key in self.quiet_memo:
            return self.quiet_memo[key]
        if key in self.in_progress or key not in self.binding_scope:
            return ANY  # a cycle: E401 reports it
        self.in_progress.add(key)
        saved_pure = self.pure
        self.pure = 0
        try:
            t = self.expr(b.value, self.binding_scope[key])
        finally:
            self.pure = saved_pure
            self.in_progress.discard(key)
        (self.memo if self.quiet_memo is None else self.quiet_memo)[key] = t
        return t

    def quietly(self, fn):
        """Types something without reporting or memoising (for `prev`, whose fields may
        be typed before their bindings are checked for real)."""
        outer = self.quiet_memo
        saved_sink = self.sink
        self.quiet_memo = {} if outer is None else outer
        self.sink = DiagnosticSink()
        try:
            return fn()
        finally:
            self.sink = saved_sink
            self.quiet_memo = outer

    # -- expressions
    def expr(self, e: ast.Expr, scope: TypedScope) -> Type:
        """The type of `e` where no type is expected of it."""
        checker = _CHECK_METHODS.get(type(e))
        if checker is not None:
            return self.reported(checker(self, e, scope, None))
        method = _EXPR_METHODS.get(type(e))
        return method(self, e, scope) if method is not None else ANY

    # -- expected types (bidirectional checking)
    def check(self, e: ast.Expr, scope: TypedScope, want: Type | None) -> Checked:
        """Types `e` where a `want` is expected (None: nothing is): a record literal whose
        fields fit a record type is that type, a string literal in a literal union is a
        member of it, and list literals, `for` and both sides of `if ... else` pass the
        expectation on. Also returns why a literal misses `want`, for the caller to report.
        (Literals nest as deep as the parser allows: two frames a level, as `expr` takes.)"""
        checker = _CHECK_METHODS.get(type(e))
        if checker is not None:
            return checker(self, e, scope, want)
        text = string_literal(e)
        if want is not None and text is not None:
            union = strip_optional(want)
            if isinstance(union, LiteralT) and text in union.values:
                return union, ()
        return self.expr(e, scope), ()

    def misfit(self, e: ast.Expr, scope: TypedScope, want: Type) -> Type | None:
        """Checks `e` against `want` and reports where a literal misses it. Returns the type
        of anything else that does not fit, for the caller to report in its own words."""
        t, misfits = self.check(e, scope, want)
        if misfits:
            self.reported((t, misfits))
        return t if not misfits and not is_assignable(t, want, self.table) else None

    def suggested(self, e: ast.Expr, scope: TypedScope, hint: Type) -> Checked:
        """Types `e` where a sibling (the other side of `if ... else`, another item of a list)
        suggests `hint`: a literal that fits takes it, one that misses a declared record
        type says why, and anything else keeps its own type for the caller to join."""
        t, misfits = self.check(e, scope, hint)
        if misfits and isinstance(strip_optional(hint), RecordT):
            return hint, misfits
        return t, ()

    def reported(self, checked: Checked) -> Type:
        t, misfits = checked
        for m in misfits:
            self.sink.report(m.code, m.message, m.span, m.label, help=m.help)
        return t

    def e_Literal(self, e: ast.Literal, scope: TypedScope) -> Type:
        v = e.value
        if v is None:
            return NULL
        if isinstance(v, bool):
            return BOOL
        if isinstance(v, int):
            return INT
        if isinstance(v, float):
            return FLOAT
        return STR

    def e_Duration(self, e, scope) -> Type:
        return FLOAT

    def e_Name(self, e: ast.Name, scope: TypedScope) -> Type:
        found = scope.lookup(e.id)
        if found is None:
            return ANY  # E101, reported in phase 1
        kind, owner = found
        if kind == BINDING:
            return self.binding_type(owner.bindings[e.id])
        if kind == VAR:
            return owner.var_type
        if kind == PARAM:
            return self.symbols.resolve_type(owner.params[e.id].type)
        # prev: the previous iteration's bindings, or null
        fields = self.quietly(lambda: tuple((b.name, self.binding_type(b)) for b in owner.bindings.values()))
        return OptionalT(StructT(fields))

    def list_type(self, e: ast.ListExpr, scope: TypedScope, want: Type | None) -> Checked:
        """A list literal. Where a list is expected its items are checked against the element
        type; otherwise a literal item takes the record type of a sibling item (so
        `[editor.write(x), {title: ...}]` is a `list[Report]`) when it fits."""
        elem = expected_elem(want)
        types: list[Type | None] = [None] * len(e.items)
        if elem is None:  # the other items first: their record type is the suggestion
            for i, item in enumerate(e.items):
                if not takes_expectation(item):
                    types[i] = self.expr(item, scope)
            elem = next((t for t in types if t is not None and isinstance(strip_optional(t), RecordT)), None)
        misfits: list[Misfit] = []
        item_types: list[Type] = []
        for item, t in zip(e.items, types):
            if t is None:
                t, item_misfits = self.check(item, scope, elem)
                misfits.extend(item_misfits)
            item_types.append(t)
        if misfits and elem is not None:
            return ListT(elem), tuple(misfits)
        return ListT(self.join_items(e, item_types)), tuple(misfits)

    def join_items(self, e: ast.ListExpr, types: list[Type]) -> Type:
        """The element type of a list literal: the join of its items' types."""
        elem: Type | None = None
        for item, t in zip(e.items, types):
            if elem is None:
                elem = t
                continue
            joined = join(elem, t, self.table)
            if joined is None:
                self.sink.report(Code.E201, f"list items have different types: {show(elem)} and {show(t)}",
                                 item.span, f"this is {show(t)}", secondary=[Label(e.items[0].span, f"this is {show(elem)}")],
                                 help="all items of a list must have one type")
                elem = ANY
            else:
                elem = joined
        return elem if elem is not None else ANY

    def record_type(self, e: ast.RecordExpr, scope: TypedScope, want: Type | None) -> Checked:
        """A record literal. Where a record type is expected it is of that type when its
        fields fit, and otherwise each extra, missing or wrong field says why. A field given
        twice is reported (E106) and its second value ignored."""
        record = strip_optional(want) if want is not None else ANY
        expected = None if is_unknown(record) else record_fields(record, self.table)
        wanted = dict(expected or ())
        fields: dict[str, Type] = {}
        first: dict[str, ast.RecordField] = {}
        misfits: list[Misfit] = []
        for f in e.fields:
            field_want = wanted.get(f.name)
            t, nested = self.check(f.value, scope, field_want)
            if f.name in fields:
                self.sink.report(Code.E106, f"duplicate field `{f.name}` in a record", f.span, "second definition",
                                 secondary=[Label(first[f.name].span, "first defined here")],
                                 help="give each field once")
                continue
            fields[f.name], first[f.name] = t, f
            misfits.extend(nested)
            if expected is None:
                continue
            if field_want is None:
                misfits.append(Misfit(Code.E202, f"no field `{f.name}` on type {show(record)}", f.span,
                                      "no such field", field_hint(f.name, list(wanted))))
            elif not nested and not is_assignable(t, field_want, self.table):
                misfits.append(self.wrong_field(record, f.name, f.value, t, field_want))
        missing = [n for n, t in wanted.items() if n not in fields and not isinstance(t, OptionalT)]
        if missing:
            names = ", ".join(f"`{n}`" for n in missing)
            misfits.append(Misfit(Code.E201, f"missing field{'s' * (len(missing) > 1)} {names} of {show(record)}",
                                  e.span, f"no {names}",
                                  f"give every field of {show(record)} that is not optional (`T?`)"))
        if expected is None or misfits:
            return StructT(tuple(fields.items())), tuple(misfits)
        omitted = tuple(n for n in wanted if n not in fields)
        if omitted:
            self.symbols.omitted_fields[id(e)] = e, omitted
        return record, ()

    def wrong_field(self, record: Type, name: str, value: ast.Expr, t: Type, want: Type) -> Misfit:
        """A field of the wrong type; a string literal is named, with the union's values."""
        union = strip_optional(want)
        text = string_literal(value)
        if text is not None and isinstance(union, LiteralT):
            found = f'`"{text}"`'
            hint: str | None = values_hint(text, union)
        else:
            found, hint = show(t), self._mismatch_help(t, want)
        return Misfit(Code.E201, f"field `{name}` of {show(record)} expects {show(want)}, found {found}",
                      value.span, f"this is {found}", hint)

    def field_type(self, base: Type, name: str, span: Span, what: str | ast.Expr) -> Type:
        """The type of `base.name`; field access on an optional gives an optional. `what`
        names the value in hints: a word, or the expression it is read from (described only
        when a hint needs it: most reads need none)."""
        if is_unknown(strip_optional(base)):
            return base if base == JSON else ANY
        if isinstance(base, NullT):
            return NULL
        optional = isinstance(base, OptionalT)
        fields = record_fields(base, self.table)
        if fields is None:
            hint = None
            inner = strip_optional(base)
            if not isinstance(what, str):
                what = describe_expr(what).strip("`") if isinstance(what, (ast.Name, ast.Attribute)) else "xs"
            if isinstance(inner, ListT) and record_fields(inner.elem, self.table):
                hint = f"it is a list: index it (`{what}[0].{name}`) or use `[x.{name} for x in {what}]`"
            elif isinstance(inner, ListT) or is_strlike(inner):
                hint = f"use `len({what})` for its length, or index it: `{what}[0]`"
            self.sink.report(Code.E202, f"{show(base)} has no field `{name}`", span, f"{show(base)} has no fields",
                             help=hint)
            return ANY
        t = dict(fields).get(name)
        if t is None:
            self.sink.report(Code.E202, f"no field `{name}` on type {show(strip_optional(base))}", span,
                             "no such field", help=field_hint(name, [n for n, _ in fields]))
            return ANY
        if optional and not isinstance(t, (OptionalT, NullT, AnyT)) and t != JSON:
            return OptionalT(t)
        return t

    def e_Attribute(self, e: ast.Attribute, scope: TypedScope) -> Type:
        base = self.expr(e.value, scope)
        return self.field_type(base, e.attr, e.attr_span, e.value)

    def e_Index(self, e: ast.Index, scope: TypedScope) -> Type:
        base = self.expr(e.value, scope)
        index = self.expr(e.index, scope)
        inner = strip_optional(base)
        if is_unknown(inner):
            return ANY if isinstance(inner, AnyT) else JSON
        if isinstance(inner, ListT) or is_strlike(inner):
            if not is_assignable(index, INT, self.table):
                self.sink.report(Code.E201, f"an index must be `int`, found {show(index)}", e.index.span,
                                 f"this is {show(index)}")
            elem = inner.elem if isinstance(inner, ListT) else STR
            return OptionalT(elem) if isinstance(base, OptionalT) and not isinstance(elem, OptionalT) else elem
        if record_fields(inner, self.table) is not None and isinstance(e.index, ast.Literal) \
                and isinstance(e.index.value, str):
            return self.field_type(base, e.index.value, e.index.span, "x")
        self.sink.report(Code.E201, f"cannot index a value of type {show(base)}", e.value.span,
                         f"this is {show(base)}", help="only lists and strings can be indexed")
        return ANY

    def e_UnaryOp(self, e: ast.UnaryOp, scope: TypedScope) -> Type:
        t = self.expr(e.operand, scope)
        if e.op == "not":
            self.require_bool(t, e.operand, "the operand of `not`")
            return BOOL
        if is_unknown(t):
            return ANY
        if not is_numeric(t):
            self.sink.report(Code.E201, f"cannot negate a value of type {show(t)}", e.operand.span,
                             f"this is {show(t)}", help=NULL_HELP if isinstance(t, OptionalT) else None)
            return ANY
        return t

    def require_bool(self, t: Type, e: ast.Expr, what: str) -> None:
        if not is_assignable(t, BOOL, self.table):
            self.sink.report(Code.E201, f"{what} must be `bool`, found {show(t)}", e.span, f"this is {show(t)}",
                             help=NULL_HELP if isinstance(t, OptionalT) else
                             "compare it to produce a `bool`, e.g. `x == \"...\"` or `len(x) > 0`")

    def e_BinOp(self, e: ast.BinOp, scope: TypedScope) -> Type:
        lt = self.expr(e.left, scope)
        rt = self.expr(e.right, scope)
        op = e.op
        if op in ("and", "or"):
            self.require_bool(lt, e.left, f"the left operand of `{op}`")
            self.require_bool(rt, e.right, f"the right operand of `{op}`")
            return BOOL
        if is_unknown(lt) or is_unknown(rt):
            return BOOL if op in ("==", "!=", "<", "<=", ">", ">=", "in", "not in") else ANY
        if op in ("==", "!="):
            self.check_literal_compare(e.left, lt, e.right) or self.check_literal_compare(e.right, rt, e.left)
            if join(lt, rt, self.table) is None and not (is_numeric(strip_optional(lt)) and is_numeric(strip_optional(rt))):
                self.binop_error(e, lt, rt, f"cannot compare {show(lt)} with {show(rt)}",
                                 "values of these types are never equal")
            return BOOL
        if op in ("<", "<=", ">", ">="):
            if not ((is_numeric(lt) and is_numeric(rt)) or (is_strlike(lt) and is_strlike(rt))):
                self.binop_error(e, lt, rt, f"cannot order {show(lt)} and {show(rt)} with `{op}`",
                                 NULL_HELP if OptionalT in (type(lt), type(rt)) else
                                 "`<`, `<=`, `>`, `>=` compare two numbers or two strings")
            return BOOL
        if op in ("in", "not in"):
            inner = strip_optional(rt)
            if isinstance(inner, ListT):
                if join(lt, inner.elem, self.table) is None:
                    self.binop_error(e, lt, rt, f"cannot look for {show(lt)} in {show(rt)}",
                                     f"the items of this list are {show(inner.elem)}")
            elif is_strlike(inner):
                if not is_strlike(strip_optional(lt)):
                    self.binop_error(e, lt, rt, f"cannot look for {show(lt)} in a string",
                                     "`in` on a string looks for a substring")
            else:
                self.binop_error(e, lt, rt, f"`{op}` needs a list or a string on its right, found {show(rt)}", None)
            if isinstance(rt, OptionalT):
                self.binop_error(e, lt, rt, f"the right operand of `{op}` may be null", NULL_HELP)
            return BOOL
        # arithmetic
        if op == "+":
            if is_numeric(lt) and is_numeric(rt):
                return INT if lt == rt == INT else FLOAT
            if is_strlike(lt) and is_strlike(rt):
                return STR
            if isinstance(lt, ListT) and isinstance(rt, ListT):
                joined = join(lt.elem, rt.elem, self.table)
                if joined is not None:
                    return ListT(joined)
            self.binop_error(e, lt, rt, f"cannot add {show(lt)} and {show(rt)}",
                             NULL_HELP if OptionalT in (type(lt), type(rt)) else
                             "`+` adds two numbers, joins two strings or two lists; "
                             "use `json(x)` to turn a value into a string")
            return ANY
        if is_numeric(lt) and is_numeric(rt):
            return FLOAT if op == "/" or FLOAT in (lt, rt) else INT
        self.binop_error(e, lt, rt, f"`{op}` needs two numbers, found {show(lt)} and {show(rt)}",
                         NULL_HELP if OptionalT in (type(lt), type(rt)) else None)
        return ANY

    def binop_error(self, e: ast.BinOp, lt: Type, rt: Type, message: str, help: str | None) -> None:
        self.sink.report(Code.E201, message, e.left.span, f"this is {show(lt)}",
                         secondary=[Label(e.right.span, f"this is {show(rt)}")], help=help)

    def check_literal_compare(self, side: ast.Expr, t: Type, other: ast.Expr) -> bool:
        """`review.verdict == "PAS"`: a string that is none of a literal union's values."""
        inner = strip_optional(t)
        if isinstance(inner, LiteralT) and isinstance(other, ast.Literal) and isinstance(other.value, str) \
                and other.value not in inner.values:
            self.sink.report(Code.E201, f'`"{other.value}"` is never equal to {describe_expr(side)}',
                             other.span, f"not one of {show(inner)}",
                             secondary=[Label(side.span, f"this is {show(t)}")], help=values_hint(other.value, inner))
            return True
        return False

    def conditional_type(self, e: ast.Conditional, scope: TypedScope, want: Type | None) -> Checked:
        """`a if c else b`: both sides are checked against `want` when a type is expected;
        otherwise a literal side is told the other side's type."""
        ct = self.expr(e.cond, scope)
        self.require_bool(ct, e.cond, "the condition of `if`")
        else_misfits: tuple[Misfit, ...]
        if want is None and takes_expectation(e.then) and not takes_expectation(e.orelse):
            b, else_misfits = self.expr(e.orelse, scope), ()
            a, then_misfits = self.suggested(e.then, scope, b)
        else:
            a, then_misfits = self.check(e.then, scope, want)
            b, else_misfits = self.check(e.orelse, scope, want) if want is not None else self.suggested(e.orelse, scope, a)
        misfits = then_misfits + else_misfits
        joined = join(a, b, self.table)
        if joined is None and misfits:
            return (want if want is not None else ANY), misfits
        if joined is None:
            self.sink.report(Code.E201, f"the two sides of `if ... else` have different types: {show(a)} and {show(b)}",
                             e.orelse.span, f"this is {show(b)}", secondary=[Label(e.then.span, f"this is {show(a)}")],
                             help="both sides must have one type")
            return ANY, ()
        return joined, misfits

    def elem_type(self, t: Type, iter_expr: ast.Expr, what: str) -> Type:
        if is_unknown(t):
            return ANY if isinstance(t, AnyT) else JSON
        if isinstance(t, ListT):
            return t.elem
        hint = None
        if isinstance(t, OptionalT) and isinstance(t.inner, ListT):
            name = describe_expr(iter_expr).strip("`")
            hint = f"it may be null: iterate over `{name} if {name} != null else []`" if name != "this" else NULL_HELP
        else:
            lists = [n for n, ft in record_fields(t, self.table) or () if isinstance(strip_optional(ft), ListT)]
            if lists and isinstance(iter_expr, (ast.Name, ast.Attribute)):
                hint = f"did you mean `{describe_expr(iter_expr).strip('`')}.{lists[0]}`?"
        self.sink.report(Code.E204, f"{what} needs a list, but {describe_expr(iter_expr)} is {show(t)}",
                         iter_expr.span, f"this is {show(t)}, not a list", help=hint)
        return ANY

    def e_Comprehension(self, e: ast.Comprehension, scope: TypedScope) -> Type:
        it = self.expr(e.iter, scope)
        inner = TypedScope("comprehension", scope, var=e.var, var_type=self.elem_type(it, e.iter, "a comprehension"))
        self.pure += 1
        try:
            if e.cond is not None:
                self.require_bool(self.expr(e.cond, inner), e.cond, "the condition of a comprehension")
            elem = self.expr(e.elem, inner)
        finally:
            self.pure -= 1
        return ListT(elem)

    def impure(self, span: Span, what: str) -> None:
        self.sink.report(Code.E201, f"a comprehension must be pure: it cannot contain {what}", span,
                         "not allowed in a comprehension",
                         help="use a `for` expression for work per item: `xs = for x in items { y = ...  yield y }`")

    def for_type(self, e: ast.ForExpr, scope: TypedScope, want: Type | None) -> Checked:
        """`for`: the list of its yields, each checked against the element type when a list is expected."""
        if self.pure:
            self.impure(head_span(e.span, 3), "a `for` expression")
        it = self.expr(e.iter, scope)
        inner = TypedScope("for", scope, e.body, var=e.var, var_type=self.elem_type(it, e.iter, "`for`"))
        self.check_block(inner)
        y = next((s for s in e.body.statements if isinstance(s, ast.Yield)), None)
        if y is None:
            return ListT(ANY), ()
        t, misfits = self.check(y.value, inner, expected_elem(want))
        return ListT(t), misfits

    def e_RepeatExpr(self, e: ast.RepeatExpr, scope: TypedScope) -> Type:
        if self.pure:
            self.impure(head_span(e.span, 6), "a `repeat` expression")
        if e.max is not None:
            mt = self.expr(e.max, scope)
            if not is_assignable(mt, INT, self.table):
                self.sink.report(Code.E201, f"`max` must be `int`, found {show(mt)}", e.max.span, f"this is {show(mt)}")
        inner = TypedScope("repeat", scope, e.body)
        self.check_block(inner)
        self.require_bool(self.expr(e.until, inner), e.until, "the `until` condition")
        fields = [(b.name, self.binding_type(b)) for b in inner.bindings.values() if b.name not in REPEAT_FIELDS]
        return StructT((*fields, ("iterations", INT), ("converged", BOOL)))

    # -- calls
    def e_Call(self, e: ast.Call, scope: TypedScope) -> Type:
        target = self.facts.target(e)
        if target.kind in ("task", "tool", "choreography") and self.pure:
            self.impure(e.func.span, f"a call of `{target.name}`")
        if target.kind == "task":
            task = self.symbols.tasks.get((target.role, target.task))
            if task is None:
                self.args_only(e, scope)
                return ANY
            self.bind_args(e, target.name, task.params, scope)
            return self.returns(task)
        if target.kind == "tool":
            tool = self.symbols.tools[target.name]
            self.bind_args(e, target.name, tool.params, scope)
            return self.returns(tool)
        if target.kind == "choreography":
            decl = self.symbols.choreographies[target.name]
            self.bind_args(e, target.name, decl.params, scope)
            return self.choreography_type(target.name)
        if target.kind == "builtin":
            return self.builtin(e, target.name, scope)
        self.args_only(e, scope)
        return ANY

    def returns(self, decl: ast.TaskDecl | ast.ToolDecl) -> Type:
        """What a call of a task or tool gives: its declared type, `str` when it declares none."""
        return self.symbols.resolve_type(decl.returns) if decl.returns is not None else STR

    def args_only(self, e: ast.Call, scope: TypedScope) -> None:
        for a in e.args:
            self.expr(a.value, scope)

    def bind_args(self, call: ast.Call, what: str, params: tuple[ast.Param, ...], scope: TypedScope) -> None:
        by_name = {p.name: p for p in params}
        given: dict[str, ast.Arg] = {}
        seen_keyword = False
        too_many_reported = False

        def signature() -> str:  # only a message needs it: built when one is reported
            return param_signature(what, params, self.symbols)

        for i, arg in enumerate(call.args):
            p: ast.Param | None = None
            if arg.name is None:
                if seen_keyword:
                    self.sink.report(Code.E203, "a positional argument cannot follow a keyword argument", arg.span,
                                     "positional argument after `name = ...`",
                                     help="put positional arguments first, or name this one too")
                elif i >= len(params):
                    if not too_many_reported:
                        n = len(call.args)
                        self.sink.report(Code.E203, f"too many arguments: `{what}` takes {len(params)}, but {n} were given",
                                         arg.span, "unexpected argument", help=f"its signature is {signature()}")
                        too_many_reported = True
                else:
                    p = params[i]
            else:
                seen_keyword = True
                p = by_name.get(arg.name)
                if p is None:
                    hint = did_you_mean(arg.name, by_name) or f"its signature is {signature()}"
                    self.sink.report(Code.E203, f"`{what}` has no parameter `{arg.name}`", arg.span,
                                     "unknown keyword argument", help=hint)
            if p is not None and p.name in given:
                self.sink.report(Code.E203, f"argument `{p.name}` of `{what}` is given twice", arg.span,
                                 "second value", secondary=[Label(given[p.name].span, "first value")],
                                 help="give each argument once")
                p = None
            if p is None:
                self.expr(arg.value, scope)
                continue
            given[p.name] = arg
            want, accepted = self.param_types(p)
            t = self.misfit(arg.value, scope, accepted)  # null gives the default
            if t is not None:
                self.sink.report(Code.E201, f"argument `{p.name}` of `{what}` expects {show(want)}, found {show(t)}",
                                 arg.value.span, f"this is {show(t)}",
                                 help=self._mismatch_help(t, want) or f"its signature is {signature()}")
        missing = [p.name for p in params if p.default is None and p.name not in given]
        if missing:
            names = ", ".join(f"`{n}`" for n in missing)
            plural = "s" if len(missing) > 1 else ""
            self.sink.report(Code.E203, f"missing argument{plural} {names} for `{what}`", call.span,
                             f"missing {names}", help=f"its signature is {signature()}")

    def param_types(self, p: ast.Param) -> tuple[Type, Type]:
        """(its declared type, what an argument may be: null too when it has a default),
        resolved once per parameter, not once per call (by identity: params outlive the check)."""
        found = self.param_memo.get(id(p))
        if found is None:
            want = self.symbols.resolve_type(p.type)
            accepted = OptionalT(want) if p.default is not None and not isinstance(want, OptionalT) else want
            found = self.param_memo[id(p)] = (want, accepted)
        return found

    def _mismatch_help(self, got: Type, want: Type) -> str | None:
        if isinstance(got, (OptionalT, NullT)) and not isinstance(want, OptionalT):
            return NULL_HELP + "; or give the parameter a default"
        if isinstance(strip_optional(got), ListT) and not isinstance(strip_optional(want), ListT):
            return "this is a list; index it (`xs[0]`) or iterate over it with `for`"
        fields = record_fields(got, self.table)
        if fields:
            fits = [n for n, ft in fields if is_assignable(ft, want, self.table)]
            if fits:
                return "did you mean one of its fields: " + " or ".join(f"`.{n}`" for n in fits[:3]) + "?"
        if want == STR:
            return "use `json(x)` to turn a value into a string"
        return None

    def builtin(self, e: ast.Call, name: str, scope: TypedScope) -> Type:
        arity = 2 if name == "join" else 1
        types = []
        for a in e.args:
            t = self.expr(a.value, scope)
            if a.name is not None:
                self.sink.report(Code.E203, f"`{name}` takes no keyword arguments", a.span, "keyword argument",
                                 help=f"pass it by position: `{name}(...)`")
                return ANY
            types.append(t)
        sig = {"len": "len(x)", "all": "all(xs)", "any": "any(xs)", "join": "join(xs, sep)", "json": "json(x)"}[name]
        if len(types) != arity:
            span = e.args[arity].span if len(types) > arity else e.span
            self.sink.report(Code.E203, f"`{name}` takes {arity} argument{'s' * (arity > 1)}, but {len(types)} "
                             f"{'was' if len(types) == 1 else 'were'} given", span,
                             "unexpected argument" if len(types) > arity else "missing argument",
                             help=f"write `{sig}`")
            return {"len": INT, "all": BOOL, "any": BOOL, "join": STR, "json": STR}[name]

        def bad(i: int, want: str) -> None:
            t = types[i]
            self.sink.report(Code.E201, f"`{name}` needs {want}, found {show(t)}", e.args[i].value.span,
                             f"this is {show(t)}", help=NULL_HELP if isinstance(t, OptionalT) else f"write `{sig}`")

        t0 = types[0]
        if name == "len":
            if not (is_unknown(t0) or isinstance(t0, ListT) or is_strlike(t0)):
                bad(0, "a list or a string")
            return INT
        if name in ("all", "any"):
            if not (is_unknown(t0) or (isinstance(t0, ListT) and is_assignable(t0.elem, BOOL, self.table))):
                bad(0, "a `list[bool]`")
            return BOOL
        if name == "join":
            if not (is_unknown(t0) or (isinstance(t0, ListT) and is_assignable(t0.elem, STR, self.table))):
                bad(0, "a `list[str]`")
            if not is_assignable(types[1], STR, self.table):
                bad(1, "a `str` separator")
            return STR
        return STR  # json(x)


# The expressions an expected type can change, and `Typer.e_<Class>` for every other
# expression class: found once rather than by name per expression
_CHECK_METHODS: dict[type, Callable[[Typer, Any, TypedScope, Type | None], Checked]] = {ast.RecordExpr: Typer.record_type, ast.ListExpr: Typer.list_type,
                  ast.Conditional: Typer.conditional_type, ast.ForExpr: Typer.for_type}
_EXPR_METHODS: dict[type, Callable[[Typer, Any, TypedScope], Type]] = {cls: getattr(Typer, f"e_{cls.__name__}") for cls in get_args(ast.Expr) if cls not in _CHECK_METHODS}


# ---------------------------------------------------------------- templates (E205)

def _path_type(t: Type, path: tuple[str | int, ...], table) -> tuple[Type, str | None, str | None]:
    """Follows a template's field path; returns (type, error message, help)."""
    for step in path:
        inner = strip_optional(t)
        if is_unknown(inner):
            return ANY, None, None
        if isinstance(step, int):
            if isinstance(inner, ListT) or is_strlike(inner):
                t = inner.elem if isinstance(inner, ListT) else STR
                continue
            return ANY, f"{show(t)} cannot be indexed", "only lists and strings can be indexed"
        fields = record_fields(inner, table)
        if fields is None:
            return ANY, f"{show(t)} has no field `{step}`", (
                "it is a list: index it first, e.g. `[0]`" if isinstance(inner, ListT) else None)
        ft = dict(fields).get(step)
        if ft is None:
            names = [n for n, _ in fields]
            return ANY, f"no field `{step}` on type {show(inner)}", did_you_mean(step, names) or (
                f"its fields are {', '.join(f'`{n}`' for n in names)}")
        t = ft
    return t, None, None


def check_templates(symbols: Symbols, sink: DiagnosticSink, source: SourceFile | None = None) -> None:
    """Placeholders must name parameters (and fields of them) of what fills them."""
    table = symbols.type_table

    def params_of(decl) -> dict[str, Type]:
        return {p.name: symbols.resolve_type(p.type) for p in decl.params}

    def malformed(ph: Placeholder, span: Span, text: str, where: str) -> None:
        sink.report(Code.E205, f"malformed placeholder in {where}: {ph.error}", placeholder_span(span, text, ph, source),
                    "not a placeholder", help="write `{{` and `}}` for literal braces; a placeholder is "
                    "`{name}`, `{name.field}` or `{name[0]}`")

    def check_literal(lit: ast.Expr, params: dict[str, Type], where: str, owner: str) -> None:
        if not (isinstance(lit, ast.Literal) and isinstance(lit.value, str)):
            return
        for ph in placeholders(lit.value):
            if ph.root is None:
                malformed(ph, lit.span, lit.value, where)
                continue
            span = placeholder_span(lit.span, lit.value, ph, source)
            if ph.root not in params:
                hint: str | None = did_you_mean(ph.root, params) or (
                    f"the parameters of `{owner}` are {', '.join(f'`{n}`' for n in params)}" if params
                    else f"`{owner}` has no parameters")
                sink.report(Code.E205, f"`{{{ph.root}}}` in {where} is not a parameter", span,
                            f"not a parameter of `{owner}`", help=hint)
                continue
            _, error, hint = _path_type(params[ph.root], ph.path, table)
            if error:
                sink.report(Code.E205, f"`{{{format_path(ph.root, ph.path)}}}` in {where}: {error}", span,
                            "cannot be indexed" if "indexed" in error else "no such field", help=hint)

    for (role, task), decl in symbols.tasks.items():
        for a in decl.attrs:
            if a.name == "prompt":
                check_literal(a.value, params_of(decl), f"the prompt of `{role}.{task}`", f"{role}.{task}")
                break
    for name, tool in symbols.tools.items():
        for a in tool.attrs:
            if a.name == "command" and isinstance(a.value, ast.ListExpr):
                for item in a.value.items:
                    check_literal(item, params_of(tool), f"the command of `{name}`", name)
                break
    for name, role_decl in symbols.roles.items():
        system = next((a.value for a in role_decl.attrs if a.name == "system"), None)
        if not (isinstance(system, ast.Literal) and isinstance(system.value, str)) or not role_decl.tasks:
            continue
        for ph in placeholders(system.value):
            if ph.root is None:
                malformed(ph, system.span, system.value, f"the system prompt of `{name}`")
                continue
            lacking = [t.name for t in role_decl.tasks if ph.root not in {p.name for p in t.params}]
            span = placeholder_span(system.span, system.value, ph, source)
            if lacking:
                sink.report(Code.E205, f"`{{{ph.root}}}` in the system prompt of `{name}` is not a parameter of every task",
                            span, "not a parameter of " + ", ".join(f"`{name}.{t}`" for t in lacking),
                            help="a system prompt may only use parameters that every task of the role has")
                continue
            for t in role_decl.tasks:
                task_params = params_of(t)
                _, error, hint = _path_type(task_params[ph.root], ph.path, table)
                if error:
                    sink.report(Code.E205, f"`{{{format_path(ph.root, ph.path)}}}` in the system prompt of `{name}`: "
                                f"{error}", span, "no such field", help=hint)
                    break


def check_types(symbols: Symbols, sink: DiagnosticSink, source: SourceFile | None = None) -> Typer:
    typer = Typer(symbols, sink, source)
    typer.check_all()
    return typer
