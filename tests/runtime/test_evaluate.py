"""The evaluator of the plan's expression IR, in process: every kind of `compiler/ir.py`, the
laziness the language promises (`and`, `or`, a conditional's unchosen side), null-safe reads,
and each run-time error as the ExpressionError a binding turns into a failed node."""
from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agentflow.compiler.ir import KINDS, make
from agentflow.runtime.evaluate import ExpressionError, evaluate

NAMES = {"n": 3, "items": [1, 2, 3, 4], "rec": {"a": 1, "b": None}, "nothing": None, "word": "hi"}
NODES = {"main/plan": {"title": "T"}}


class Resolver:
    """Names and nodes as the scheduler would give them, and a log of what was asked."""

    def __init__(self) -> None:
        self.asked: list[list] = []

    async def __call__(self, ref: list) -> Any:
        self.asked.append(ref)
        table = NAMES if ref[0] == "name" else NODES
        return table[ref[1]]


def value(expr: list, resolver: Resolver | None = None) -> Any:
    return asyncio.run(evaluate(expr, resolver or Resolver()))


def lit(v: Any) -> list:
    return make("lit", v)


def name(n: str) -> list:
    return make("name", n)


# One example per kind at least: a kind added to the IR without a case here fails below.
CASES = [
    ("lit", lit({"x": [1]}), {"x": [1]}),
    ("name", name("n"), 3),
    ("node", make("node", "main/plan"), {"title": "T"}),
    ("list", make("list", [lit(1), name("n")]), [1, 3]),
    ("record", make("record", [["a", lit(1)], ["b", lit(None)]]), {"a": 1, "b": None}),
    ("attr", make("attr", name("rec"), "a"), 1),
    ("attr", make("attr", name("rec"), "missing"), None),
    ("attr", make("attr", name("nothing"), "a"), None),  # a field of null is null
    ("index", make("index", name("items"), lit(-1)), 4),
    ("index", make("index", name("nothing"), lit(0)), None),  # an index into null is null
    ("index", make("index", name("rec"), lit("a")), 1),
    ("binop", make("binop", "+", name("n"), lit(2)), 5),
    ("binop", make("binop", "+", name("word"), lit("!")), "hi!"),
    ("binop", make("binop", "/", lit(7), lit(2)), 3.5),
    ("binop", make("binop", "%", lit(7), lit(2)), 1),
    ("binop", make("binop", "<=", name("n"), lit(3)), True),
    ("binop", make("binop", "in", lit(2), name("items")), True),
    ("binop", make("binop", "not in", lit(9), name("items")), True),
    ("binop", make("binop", "==", name("nothing"), lit(None)), True),
    ("binop", make("binop", "and", lit(1), lit(0)), 0),
    ("binop", make("binop", "or", lit(0), lit("x")), "x"),
    ("not", make("not", lit([])), True),
    ("neg", make("neg", name("n")), -3),
    ("cond", make("cond", lit(True), lit("yes"), lit("no")), "yes"),
    ("cond", make("cond", name("nothing"), lit("yes"), lit("no")), "no"),
    ("comp", make("comp", make("binop", "*", name("x"), lit(10)), "x", name("items"),
                  make("binop", ">", name("x"), lit(2))), [30, 40]),
    ("comp", make("comp", name("x"), "x", name("nothing"), None), []),  # over null: nothing
    ("builtin", make("builtin", "len", [name("items")]), 4),
    ("builtin", make("builtin", "len", [name("nothing")]), 0),
    ("builtin", make("builtin", "all", [make("list", [lit(1), lit(True)])]), True),
    ("builtin", make("builtin", "any", [name("nothing")]), False),
    ("builtin", make("builtin", "join", [make("list", [lit("a"), lit(None), lit(2)]), lit("-")]), "a--2"),
    ("builtin", make("builtin", "json", [make("record", [["b", lit(1)], ["a", lit("é")]])]), '{"a":"é","b":1}'),
]


@pytest.mark.parametrize("kind, expr, expected", CASES, ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(CASES)])
def test_each_kind_evaluates_to_its_value(kind: str, expr: list, expected: Any) -> None:
    assert expr[0] == kind
    assert value(expr) == expected


def test_every_kind_of_the_ir_has_a_case() -> None:
    assert {kind for kind, _, _ in CASES} == set(KINDS)


def test_names_and_nodes_go_to_the_resolver_and_nothing_else_does() -> None:
    resolver = Resolver()
    value(make("list", [name("n"), make("node", "main/plan"), lit(1), make("attr", name("rec"), "a")]), resolver)
    assert resolver.asked == [["name", "n"], ["node", "main/plan"], ["name", "rec"]]


@pytest.mark.parametrize("expr", [
    make("binop", "and", lit(False), name("boom")),
    make("binop", "or", lit(1), name("boom")),
    make("cond", lit(True), lit(1), name("boom")),
    make("cond", lit(False), name("boom"), lit(1)),
    make("comp", name("boom"), "x", make("list", []), None),
    make("comp", name("boom"), "x", make("list", [lit(1)]), lit(False)),
])
def test_what_is_not_needed_is_not_evaluated(expr: list) -> None:
    resolver = Resolver()
    value(expr, resolver)  # `boom` is unbound: asking for it would raise KeyError
    assert ["name", "boom"] not in resolver.asked


def test_a_comprehension_variable_shadows_an_outer_name_only_inside() -> None:
    # [n + 1 for n in items if n > 2] + [n]: the last `n` is the outer one
    comp = make("comp", make("binop", "+", name("n"), lit(1)), "n", name("items"),
                make("binop", ">", name("n"), lit(2)))
    assert value(make("binop", "+", comp, make("list", [name("n")]))) == [4, 5, 3]


def test_nested_comprehensions_see_both_variables() -> None:
    inner = make("comp", make("list", [name("x"), name("y")]), "y", make("list", [lit("a"), lit("b")]), None)
    outer = make("comp", inner, "x", make("list", [lit(1), lit(2)]), None)
    assert value(outer) == [[[1, "a"], [1, "b"]], [[2, "a"], [2, "b"]]]


@pytest.mark.parametrize("expr, message", [
    (make("attr", name("items"), "a"), "cannot read field `a` of a list"),
    (make("attr", name("n"), "a"), "cannot read field `a` of a int"),
    (make("index", name("items"), lit(4)), "index 4 is out of range for a value of length 4"),
    (make("index", name("rec"), lit("zz")), "index 'zz' is out of range for a value of length 2"),
    (make("index", name("n"), lit(0)), "index 0 is out of range for a value of length ?"),
    (make("binop", "/", lit(1), lit(0)), "`/` failed: division by zero"),
    (make("binop", "%", lit(1), lit(0)), "`%` failed: integer modulo by zero"),
    (make("binop", "+", lit(1), lit("a")), "`+` failed: unsupported operand"),
    (make("binop", "<", lit(1), lit(None)), "`<` failed: '<' not supported"),
    (make("binop", "in", lit(1), lit(2)), "`in` failed: argument of type 'int' is not iterable"),
    (make("builtin", "nope", []), "unknown builtin `nope`"),
    (["mystery", 1], "unknown expression 'mystery'"),
])
def test_run_time_errors_are_expression_errors(expr: list, message: str) -> None:
    with pytest.raises(ExpressionError) as err:
        value(expr)
    assert str(err.value).startswith(message)


def test_an_error_deep_inside_reaches_the_caller() -> None:
    expr = make("list", [make("record", [["a", make("cond", lit(True), make("binop", "/", lit(1), lit(0)), lit(0))]])])
    with pytest.raises(ExpressionError, match="division by zero"):
        value(expr)


def test_expressions_as_deep_as_the_compiler_allows_evaluate() -> None:
    from agentflow.compiler.parser import MAX_NESTING
    expr = lit(0)
    for _ in range(MAX_NESTING):
        expr = make("binop", "+", expr, lit(1))
    assert value(expr) == MAX_NESTING
