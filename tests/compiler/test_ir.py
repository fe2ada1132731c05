"""The expression IR's one definition: `make` builds only the kinds it lists, `children`
follows their fields, and `walker` dispatches on them (tables naming a kind the IR lacks
are refused when built, not when a plan first reaches them)."""
from __future__ import annotations

import pytest

from agentflow.compiler import ir


def test_every_kind_is_documented_and_named_as_listed() -> None:
    for name, kind in ir.KINDS.items():
        assert kind.name == name and kind.doc and kind.fields


@pytest.mark.parametrize("kind, fields", [("binop", ("+", ["lit", 1])), ("lit", ()), ("nope", (1,))])
def test_make_refuses_unknown_kinds_and_wrong_arity(kind: str, fields: tuple) -> None:
    with pytest.raises(ValueError, match="not an expression"):
        ir.make(kind, *fields)


def test_children_are_the_sub_expressions_in_field_order() -> None:
    a, b, c = ir.make("name", "a"), ir.make("name", "b"), ir.make("name", "c")
    assert list(ir.children(ir.make("comp", a, "x", b, c))) == [a, b, c]
    assert list(ir.children(ir.make("comp", a, "x", b, None))) == [a, b]
    assert list(ir.children(ir.make("record", [["f", a], ["g", b]]))) == [a, b]
    assert list(ir.children(ir.make("builtin", "join", [a, b]))) == [a, b]
    assert list(ir.children(ir.make("attr", a, "f"))) == [a]
    assert list(ir.children(ir.make("node", "main/x"))) == []
    assert list(ir.children(ir.make("lit", [["name", "not an expression"]]))) == []
    with pytest.raises(ValueError, match="not an expression"):
        list(ir.children(["nope"]))


def test_a_walker_dispatches_on_kinds_and_hands_the_rest_to_otherwise() -> None:
    def names(expr, bound):
        return walk(expr, bound)

    walk = ir.walker(
        {"name": lambda id_, bound: [] if id_ in bound else [id_],
         "comp": lambda elem, var, it, cond, bound: names(elem, bound | {var}) + names(it, bound)},
        lambda expr, bound: [n for child in ir.children(expr) for n in names(child, bound)])
    expr = ir.make("list", [ir.make("name", "a"),
                            ir.make("comp", ir.make("name", "x"), "x", ir.make("name", "x"), None)])
    assert walk(expr, frozenset()) == ["a", "x"]  # the comprehension's `x` is bound inside only


def test_a_walker_refuses_handlers_for_kinds_the_ir_lacks() -> None:
    with pytest.raises(ValueError, match=r"\['lambda'\]"):
        ir.walker({"lambda": lambda *a: None}, lambda expr, ctx: None)
