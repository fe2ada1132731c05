"""The one name-scope builder the name checks, the type checker and the graph share."""
from __future__ import annotations

from agentflow.compiler.scopes import BINDING, PARAM, PREV, VAR, Scope


def test_a_name_resolves_innermost_scope_first() -> None:
    top = Scope("choreography", None, [("spec", "b-spec"), ("plan", "b-plan")], params={"n": "p-n"})
    loop = Scope("for", top, [("plan", "inner-plan")], var="item")
    assert loop.lookup("plan") == (BINDING, loop)
    assert loop.lookup("spec") == (BINDING, top)
    assert loop.lookup("n") == (PARAM, top)
    assert loop.lookup("item") == (VAR, loop)
    assert top.lookup("item") is None
    assert loop.bindings["plan"] == "inner-plan"


def test_prev_is_defined_only_in_a_repeat_body() -> None:
    top = Scope("choreography", None, [("x", 1)])
    body = Scope("repeat", top, [("code", 2)])
    assert body.lookup("prev") == (PREV, body)
    assert Scope("for", top, var="i").lookup("prev") is None
    assert body.visible() == {"prev", "code", "x"}


def test_the_first_binding_of_a_name_wins_and_params_and_variables_come_before_bindings() -> None:
    top = Scope("choreography", None, [("a", "first"), ("a", "second"), ("n", "binding")], params={"n": "param"})
    assert top.bindings["a"] == "first"
    assert top.kind_of("n") == PARAM  # E106 reports the clash; the parameter keeps its meaning
    assert Scope("for", top, [("i", "binding")], var="i").kind_of("i") == VAR
