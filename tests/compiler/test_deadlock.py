"""The wait-graph and delegation-cycle analysis on small graphs."""
from __future__ import annotations

from agentflow.compiler.deadlock import Waiter, delegation_cycles, find_cycles, wait_graph


def wait_cycles(waiters: list[Waiter]) -> list[list[str]]:
    """The cycles of one scope's wait graph, as the compiler's E401 check finds them."""
    graph = wait_graph(waiters)
    return find_cycles([w.name for w in waiters], {n: [w.target for w in ws] for n, ws in graph.items()})


def test_no_cycle() -> None:
    assert find_cycles(["a", "b", "c"], {"a": ["b"], "b": ["c"], "c": []}) == []
    assert wait_cycles([Waiter("a"), Waiter("b", uses=frozenset({"a"})), Waiter("c", after=("a", "b"))]) == []


def test_self_loop() -> None:
    assert find_cycles(["a", "b"], {"a": ["a"], "b": ["a"]}) == [["a"]]
    assert wait_cycles([Waiter("a", after=("a",))]) == [["a"]]


def test_three_cycle_is_reported_in_waiting_order_from_the_first_node() -> None:
    # c waits for a, a waits for b, b waits for c: reported starting at `a` (first in order)
    edges = {"c": ["a"], "a": ["b"], "b": ["c"]}
    assert find_cycles(["a", "b", "c"], edges) == [["a", "b", "c"]]
    assert find_cycles(["b", "a", "c"], edges) == [["b", "c", "a"]]


def test_two_disjoint_cycles_are_both_reported() -> None:
    edges = {"a": ["b"], "b": ["a"], "x": ["y"], "y": ["z"], "z": ["x"], "free": ["a"]}
    assert find_cycles(["free", "x", "y", "z", "a", "b"], edges) == [["x", "y", "z"], ["a", "b"]]


def test_only_one_shortest_cycle_per_component() -> None:
    # a <-> b and a -> c -> a share a component: one report, the shortest cycle from `a`
    edges = {"a": ["c", "b"], "b": ["a"], "c": ["a"]}
    assert find_cycles(["a", "b", "c"], edges) == [["a", "b"]]


def test_edges_to_unknown_nodes_are_ignored() -> None:
    assert find_cycles(["a"], {"a": ["outer"], "outer": ["a"]}) == []


def test_session_order_edge_closes_a_cycle_with_a_data_edge() -> None:
    # `answer` calls the session role first (position 10) but uses `context`, which calls it second.
    answer = Waiter("answer", uses=frozenset({"context"}), session_calls=((10, "tutor"),))
    context = Waiter("context", session_calls=((50, "tutor"),))
    graph = wait_graph([answer, context])
    assert [(w.target, w.reason) for w in graph["context"]] == [("answer", "session:tutor")]
    assert [(w.target, w.reason) for w in graph["answer"]] == [("context", "data")]
    assert wait_cycles([answer, context]) == [["answer", "context"]]


def test_session_order_alone_is_no_deadlock() -> None:
    first = Waiter("first", session_calls=((1, "tutor"),))
    second = Waiter("second", uses=frozenset({"first"}), session_calls=((2, "tutor"),))
    third = Waiter("third", session_calls=((3, "tutor"), (4, "tutor")))
    assert wait_cycles([first, second, third]) == []
    graph = wait_graph([first, second, third])
    assert [w.target for w in graph["third"]] == ["second"]


def test_session_edges_link_consecutive_calls_of_one_role_only() -> None:
    a = Waiter("a", session_calls=((1, "r"),))
    b = Waiter("b", session_calls=((2, "s"),))
    c = Waiter("c", session_calls=((3, "r"),))
    graph = wait_graph([a, b, c])
    assert [w.target for w in graph["c"]] == ["a"] and graph["b"] == [] and graph["a"] == []


def test_delegation_cycles() -> None:
    roles = ["planner", "researcher", "writer", "solo"]
    grants = {"planner": ["researcher"], "researcher": ["planner"], "writer": ["planner"], "solo": ["solo"]}
    assert delegation_cycles(roles, grants) == [["planner", "researcher"], ["solo"]]
    assert delegation_cycles(["a", "b"], {"a": ["b"]}) == []


def test_large_chain_does_not_recurse() -> None:
    n = 5000
    names = [f"n{i}" for i in range(n)]
    edges = {names[i]: [names[i + 1]] for i in range(n - 1)}
    assert find_cycles(names, edges) == []
    edges[names[-1]] = [names[0]]
    assert find_cycles(names, edges) == [names]
