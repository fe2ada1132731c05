"""Deadlock analysis as pure functions over small graphs.

An edge `a -> b` means "a waits for b". `find_cycles` reports one cycle per strongly
connected component that has one, as the list of its nodes in waiting order, starting
at the node that comes first in the given node order (source order, for bindings).
`wait_graph` builds the wait graph of one scope's bindings (data, `after`, session
order); `delegation_graph` the graph of roles that can call each other.
"""
from __future__ import annotations

from typing import Hashable, Iterable, Iterator, Mapping, NamedTuple, Sequence, TypeVar

N = TypeVar("N", bound=Hashable)


def strongly_connected(nodes: Sequence[N], edges: Mapping[N, Iterable[N]]) -> list[list[N]]:
    """Tarjan's algorithm, iterative; components listed in no particular order."""
    index: dict[N, int] = {}
    low: dict[N, int] = {}
    on_stack: set[N] = set()
    stack: list[N] = []
    comps: list[list[N]] = []
    known = set(nodes)
    work: list[tuple[N, Iterator[N]]] = []  # the depth-first path, each node with its edges left

    def enter(node: N) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        work.append((node, iter([m for m in edges.get(node, ()) if m in known])))

    for root in nodes:
        if root in index:
            continue
        enter(root)
        while work:
            node, it = work[-1]
            advanced = False
            for nxt in it:
                if nxt not in index:
                    enter(nxt)
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    comp.append(m)
                    if m == node:
                        break
                comps.append(comp)
    return comps


def find_cycles(nodes: Sequence[N], edges: Mapping[N, Iterable[N]]) -> list[list[N]]:
    """One shortest cycle per cyclic component, in waiting order, each starting at its
    earliest node in `nodes` order; cycles sorted by that node. Self-loops are cycles
    of one node.

    A graph whose every edge points back in `nodes` order (bindings that read the ones
    written before them, the usual case) has no cycle: that is checked first, in one pass."""
    order = {n: i for i, n in enumerate(nodes)}
    if all(order.get(m, -1) < i for n, i in order.items() for m in edges.get(n, ())):
        return []
    cycles = []
    for comp in strongly_connected(nodes, edges):
        members = set(comp)
        start = min(comp, key=order.__getitem__)
        if len(comp) == 1 and start not in set(edges.get(start, ())):
            continue

        def succ(n):
            return sorted({m for m in edges.get(n, ()) if m in members}, key=order.__getitem__)

        if start in succ(start):
            cycles.append([start])
            continue
        # breadth-first search from `start` back to `start`, inside the component
        parent: dict[N, N] = {}
        frontier, seen, last = [start], {start}, None
        while frontier and last is None:
            nxt_frontier = []
            for n in frontier:
                for m in succ(n):
                    if m == start:
                        last = n
                        break
                    if m not in seen:
                        seen.add(m)
                        parent[m] = n
                        nxt_frontier.append(m)
                if last is not None:
                    break
            frontier = nxt_frontier
        assert last is not None, "a strongly connected component has a cycle through each node"
        path = [last]
        while path[-1] != start:
            path.append(parent[path[-1]])
        cycles.append(path[::-1])
    cycles.sort(key=lambda c: order[c[0]])
    return cycles


class Waiter(NamedTuple):
    """A binding (or the scope's `return`/`yield`) as the wait graph sees it (named
    tuples, here and for `Wait`: a scope makes one per binding and per edge).

    `uses`: bindings of the same scope its value reads (data edges); `after`: its
    `after` list; `session_calls`: (program-order position, role) for each call it makes
    to a `memory = "session"` role, nested bodies included."""

    name: str
    uses: frozenset[str] = frozenset()
    after: tuple[str, ...] = ()
    session_calls: tuple[tuple[int, str], ...] = ()


class Wait(NamedTuple):
    target: str
    reason: str  # "data" | "after" | "session:<role>"


def waits_only_back(waiters: Sequence[Waiter]) -> bool:
    """Whether every data and `after` edge points to a waiter earlier in `waiters` order
    (the usual case): then the wait graph has no cycle and need not be built, because its
    session edges point back too (a call waits for the call before it in program order)."""
    order = {w.name: i for i, w in enumerate(waiters)}
    return all(order.get(m, -1) < i for i, w in enumerate(waiters) for m in (*w.uses, *w.after))


def wait_graph(waiters: Sequence[Waiter]) -> dict[str, list[Wait]]:
    """The wait graph of one scope: data, `after`, and session-order edges. For each
    session role, its calls in program order; each call waits for the previous one,
    so a waiter waits for the waiter that made the previous call (when it is another)."""
    names = {w.name for w in waiters}
    graph: dict[str, list[Wait]] = {w.name: [] for w in waiters}
    linked: set[tuple[str, str]] = set()

    def add(src: str, dst: str, reason: str) -> None:
        if dst in names and (src, dst) not in linked:
            linked.add((src, dst))
            graph[src].append(Wait(dst, reason))

    for w in waiters:
        for u in sorted(w.uses):
            add(w.name, u, "data")
        for a in w.after:
            add(w.name, a, "after")
    calls: dict[str, list[tuple[int, str]]] = {}
    for w in waiters:
        for pos, role in w.session_calls:
            calls.setdefault(role, []).append((pos, w.name))
    for role in sorted(calls):
        seq = sorted(calls[role])
        for (_, prev), (_, cur) in zip(seq, seq[1:]):
            if prev != cur:
                add(cur, prev, f"session:{role}")
    return graph


def delegation_cycles(roles: Sequence[str], delegates: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Cycles of roles that can call each other through `role.task` tools (self-delegation
    included), each starting at its earliest role in `roles` order."""
    return find_cycles(roles, delegates)
