"""Facts about the statements of choreography bodies, found once per program.

The type checker, the checks and the plan all ask the same questions of every statement:
which names does its value read, which calls, `for`/`repeat` bodies and string literals
does it hold, and what does each call call. `BodyFacts` answers them from one walk of each
statement. `Symbols.facts` owns it, so it lives as long as the program: facts are keyed by
node identity (AST nodes compare by value, and two equal statements in two scopes are two
statements), and the program being alive keeps those keys valid.
"""
from __future__ import annotations

import weakref
from typing import Iterator, NamedTuple

from . import ast
from .symbols import CallTarget, Symbols, classify_call

_CHILDREN = {
    ast.ListExpr: lambda e: list(e.items),
    ast.RecordExpr: lambda e: [f.value for f in e.fields],
    ast.Attribute: lambda e: [e.value],
    ast.Index: lambda e: [e.value, e.index],
    ast.Call: lambda e: [e.func, *(a.value for a in e.args)],
    ast.BinOp: lambda e: [e.left, e.right],
    ast.UnaryOp: lambda e: [e.operand],
    ast.Conditional: lambda e: [e.then, e.cond, e.orelse],
    ast.Comprehension: lambda e: [e.elem, e.iter] + ([e.cond] if e.cond is not None else []),
    ast.ForExpr: lambda e: [e.iter, *(s.value for s in e.body.statements)],
    ast.RepeatExpr: lambda e: ([e.max] if e.max is not None else []) + [e.until, *(s.value for s in e.body.statements)],
}


def children(e: ast.Expr) -> list[ast.Expr]:
    """The direct sub-expressions of an expression, nested bodies included
    (a table by node class: this runs for every node of every check)."""
    get = _CHILDREN.get(type(e))
    return get(e) if get is not None else []


def walk(e: ast.Expr) -> Iterator[ast.Expr]:
    """Every expression under `e` (itself included), in source order, without recursion."""
    stack = [e]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(reversed(children(node)))


class StatementFacts(NamedTuple):
    """What a statement's value does, nested bodies included.

    `reads`: the names it reads and does not bind itself (callees and the `role.` of
    `role.task(...)` are not reads; `after` lists of nested bodies are). `calls`, `loops`
    (`for` and `repeat` expressions) and `strings` (string literals): in `walk` order."""

    reads: frozenset[str]
    calls: tuple[ast.Call, ...]
    loops: tuple[ast.ForExpr | ast.RepeatExpr, ...]
    strings: tuple[ast.Literal, ...]


class BodyFacts:
    """The facts of every statement of every choreography body, and the target of every
    call in them. Made by, and used through, `Symbols.facts`."""

    def __init__(self, symbols: Symbols) -> None:
        # weak: Symbols owns its facts, and a cycle would keep the whole program alive
        # until the cyclic garbage collector finds it
        self._symbols = weakref.ref(symbols)
        self._statements: dict[int, StatementFacts] = {}
        self._targets: dict[int, CallTarget] = {}
        scan = _Scan(self._statements)
        for decl in symbols.choreographies.values():
            for stmt in decl.body.statements:
                for call in scan.statement(stmt).calls:
                    self._targets[id(call)] = classify_call(call, symbols)

    def of(self, stmt: ast.Statement) -> StatementFacts:
        """The facts of a statement (one outside these bodies, in a parameter's default or
        a duplicate choreography, is walked on demand)."""
        found = self._statements.get(id(stmt))
        return found if found is not None else _Scan({}).statement(stmt)

    def target(self, call: ast.Call) -> CallTarget:
        """What a call calls (the calls of bodies are classified once)."""
        found = self._targets.get(id(call))
        if found is not None:
            return found
        symbols = self._symbols()
        assert symbols is not None, "the Symbols that own these facts outlive their use"
        return classify_call(call, symbols)


class _Found:
    """The nodes a walk of one statement collects, in walk order."""

    __slots__ = ("calls", "loops", "strings")

    def __init__(self) -> None:
        self.calls: list[ast.Call] = []
        self.loops: list[ast.ForExpr | ast.RepeatExpr] = []
        self.strings: list[ast.Literal] = []


class _Scan:
    """One walk of statements, filling `facts` for them and every statement nested in them."""

    def __init__(self, facts: dict[int, StatementFacts]) -> None:
        self.facts = facts

    def statement(self, stmt: ast.Statement) -> StatementFacts:
        reads: set[str] = set()
        found = _Found()
        self.expr(stmt.value, reads, found)
        facts = self.facts[id(stmt)] = StatementFacts(frozenset(reads), tuple(found.calls), tuple(found.loops),
                                                      tuple(found.strings))
        return facts

    def block(self, block: ast.Block, found: _Found) -> set[str]:
        """The names a nested block reads from outside; adds what its statements contain."""
        reads: set[str] = set()
        for stmt in block.statements:
            facts = self.statement(stmt)
            reads |= facts.reads
            found.calls += facts.calls
            found.loops += facts.loops
            found.strings += facts.strings
            if isinstance(stmt, ast.Binding):
                reads.update(a.name for a in stmt.after)
        return reads.difference(b.name for b in block.bindings)

    def expr(self, e: ast.Expr | None, reads: set[str], found: _Found) -> None:
        """Adds the free names of `e` to `reads`, and the nodes it contains to `found`."""
        if e is None:
            return
        if isinstance(e, ast.Name):
            reads.add(e.id)
        elif isinstance(e, ast.Literal):
            if isinstance(e.value, str):
                found.strings.append(e)
        elif isinstance(e, ast.Call):
            found.calls.append(e)
            func = e.func
            if not (isinstance(func, ast.Name) or isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)):
                self.expr(func, reads, found)
            for a in e.args:
                self.expr(a.value, reads, found)
        elif isinstance(e, ast.Comprehension):
            inner: set[str] = set()
            self.expr(e.elem, inner, found)
            self.expr(e.iter, reads, found)
            self.expr(e.cond, inner, found)
            inner.discard(e.var)
            reads |= inner
        elif isinstance(e, ast.ForExpr):
            found.loops.append(e)
            self.expr(e.iter, reads, found)
            inner = self.block(e.body, found)
            inner.discard(e.var)
            reads |= inner
        elif isinstance(e, ast.RepeatExpr):
            found.loops.append(e)
            self.expr(e.max, reads, found)
            inner = set()
            self.expr(e.until, inner, found)
            inner |= self.block(e.body, found)
            inner.difference_update(b.name for b in e.body.bindings)
            inner.discard("prev")
            reads |= inner
        else:
            for c in children(e):
                self.expr(c, reads, found)
