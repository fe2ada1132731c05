"""Name scopes: what a name in a body means. One builder for the name checks (E101-E106),
the type checker and the graph, so all three resolve a name alike.

Scopes are declarative: a name resolves, innermost scope first, to the scope's parameters
(at the top of a choreography), its `for` variable, `prev` (in a `repeat` body) or one of
its bindings, whatever the binding's textual position; then to the enclosing scope's.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Self

PARAM, VAR, PREV, BINDING = "param", "var", "prev", "binding"


class Scope:
    """One body's names. `kind` is "choreography", "for", "repeat" or "comprehension";
    `bindings` and `params` map a name to whatever the caller resolves it to (an AST node,
    a plan binding, a graph node id); the first binding of a name wins."""

    def __init__(self, kind: str, parent: Self | None = None, bindings: Iterable[tuple[str, Any]] = (), *,
                 var: str | None = None, params: Mapping[str, Any] | None = None) -> None:
        self.kind = kind
        self.parent: Self | None = parent
        self.var = var
        self.params = dict(params or {})
        self.bindings: dict[str, Any] = {}
        for name, binding in bindings:
            self.bindings.setdefault(name, binding)

    def own(self, name: str) -> str | None:
        """What `name` is in this scope alone: PARAM, VAR, PREV, BINDING or None."""
        if name in self.params:
            return PARAM
        if name == self.var:
            return VAR
        if name == "prev" and self.kind == "repeat":
            return PREV
        if name in self.bindings:
            return BINDING
        return None

    def lookup(self, name: str) -> tuple[str, Self] | None:
        """What `name` means here and the scope that defines it, or None if it is undefined."""
        scope: Self | None = self
        while scope is not None:
            what = scope.own(name)
            if what is not None:
                return what, scope
            scope = scope.parent
        return None

    def kind_of(self, name: str) -> str | None:
        found = self.lookup(name)
        return found[0] if found else None

    def visible(self) -> set[str]:
        """Every name defined here (for "did you mean" hints)."""
        names: set[str] = set()
        scope: Scope | None = self
        while scope is not None:
            names |= set(scope.params) | set(scope.bindings) | ({scope.var} if scope.var else set())
            if scope.kind == "repeat":
                names.add("prev")
            scope = scope.parent
        return names
