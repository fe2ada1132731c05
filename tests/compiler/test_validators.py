"""Value validation (`Validators.validate`): a plain check takes values of exactly the
declared types without pydantic, and must give back what pydantic gives, accept what it
accepts and word every error as it does. pydantic alone (`validate_by_pydantic`) is the
reference each value is compared against."""
from __future__ import annotations

import math
import subprocess
import sys

import pytest
from hypothesis import given, settings, strategies as st

from agentflow.compiler.types import (BOOL, FLOAT, INT, JSON, NULL, STR, ANY, ListT, LiteralT, OptionalT, RecordT,
                                      StructT, Type, TypeMismatch, Validators)

TABLE = {
    "Item": (("name", STR), ("score", INT), ("tags", ListT(STR)), ("note", OptionalT(STR))),
    "Tree": (("label", LiteralT(("leaf", "node"))), ("kids", ListT(RecordT("Tree"))), ("weight", FLOAT)),
}

SCALARS = [STR, INT, FLOAT, BOOL, JSON, NULL, ANY, LiteralT(("a", "b"))]
TYPES = st.recursive(
    st.sampled_from(SCALARS + [RecordT("Item"), RecordT("Tree"), RecordT("Missing")]),
    lambda inner: st.one_of(
        st.builds(ListT, inner), st.builds(OptionalT, inner),
        st.lists(st.tuples(st.sampled_from(["a", "b", "name"]), inner), min_size=1, max_size=3,
                 unique_by=lambda field: field[0]).map(lambda fields: StructT(tuple(fields)))),
    max_leaves=6)

NUMBERS = st.one_of(st.integers(), st.integers(min_value=2 ** 52, max_value=2 ** 80), st.floats(),
                    st.sampled_from([2 ** 53, 2 ** 53 + 1, -(2 ** 53) - 1, 10 ** 400, 0.0, -0.0, 3.0]))
LEAVES = st.one_of(st.none(), st.booleans(), NUMBERS, st.text(max_size=5),
                   st.sampled_from(["a", "b", "leaf", "node", "3", "true", "\ud800"]))
KEYS = st.one_of(st.sampled_from(["name", "score", "tags", "note", "label", "kids", "weight", "a", "b"]),
                 st.integers(0, 2))


def _records(children) -> st.SearchStrategy:
    """Dicts shaped like the table's records (every field, or one missing or extra)."""
    def shaped(fields: tuple) -> st.SearchStrategy:
        full = st.fixed_dictionaries({name: children for name, _ in fields})
        return st.one_of(full, full.map(lambda d: dict(list(d.items())[1:])), full.map(lambda d: {**d, "extra": 1}),
                         full.map(lambda d: dict(reversed(d.items()))))
    return st.one_of(*(shaped(fields) for fields in TABLE.values()))


VALUES = st.recursive(
    LEAVES,
    lambda children: st.one_of(st.lists(children, max_size=4), st.tuples(children, children),
                               st.dictionaries(KEYS, children, max_size=4), _records(children)),
    max_leaves=12)


def outcome(validate, t: Type, value, strict: bool) -> str:
    """What validating gives, as text that tells 3 from 3.0 and shows key order."""
    try:
        return "ok " + repr(validate(t, value, strict=strict))
    except TypeMismatch as err:
        return "error " + repr(err.errors())


@settings(max_examples=1500, deadline=None)
@given(t=TYPES, value=VALUES, strict=st.booleans())
def test_the_plain_check_agrees_with_pydantic(t: Type, value, strict: bool) -> None:
    validators = Validators(TABLE)
    assert outcome(validators.validate, t, value, strict) == \
        outcome(validators.validate_by_pydantic, t, value, strict)


EDGES = [None, True, 0, 1, -1, 2 ** 53, 2 ** 53 + 1, -(2 ** 53) - 1, 10 ** 400, 0.0, -0.0, 3.0, 1e308, float("inf"),
         float("nan"), "", "3", "a", "leaf", "\ud800", [], [1], (1,), {}, {1: 2}, {"a": 1}, b"x", {1, 2}]


@pytest.mark.parametrize("t", SCALARS + [ListT(FLOAT), OptionalT(INT), RecordT("Item"), RecordT("Missing")], ids=str)
@pytest.mark.parametrize("strict", [True, False])
def test_edge_values_agree_with_pydantic(t: Type, strict: bool) -> None:
    validators = Validators(TABLE)
    for value in EDGES:
        assert outcome(validators.validate, t, value, strict) == \
            outcome(validators.validate_by_pydantic, t, value, strict), repr(value)


@pytest.mark.parametrize("t,value", [
    (ListT(INT), list(range(10_000))),
    (ListT(STR), [str(i) for i in range(10_000)]),
    (ListT(FLOAT), [i / 2 for i in range(10_000)]),
    (ListT(RecordT("Item")), [{"name": "x", "score": i, "tags": ["a"], "note": None} for i in range(1000)]),
    (JSON, {"rows": [[i, str(i), i / 3, None, True] for i in range(1000)]}),
])
def test_large_plain_values_agree_with_pydantic(t: Type, value) -> None:
    validators = Validators(TABLE)
    assert outcome(validators.validate, t, value, True) == outcome(validators.validate_by_pydantic, t, value, True)


@pytest.mark.parametrize("t,value,loc,message", [
    (ListT(INT), [*range(9_999), "x"], (9_999,), "Input should be a valid integer"),
    (ListT(INT), [*range(5_000), True, *range(10)], (5_000,), "Input should be a valid integer"),
    (ListT(ListT(FLOAT)), [[1.5]] * 300 + [[0.5, "half"]], (300, 1), "Input should be a valid number"),
    (ListT(RecordT("Item")), [{"name": "x", "score": 1, "tags": []}], (0, "note"), "Field required"),
    (RecordT("Tree"), {"label": "node", "weight": 1, "kids": [{"label": "twig", "weight": 0, "kids": []}]},
     ("kids", 0, "label"), "Input should be 'leaf' or 'node'"),
])
def test_a_bad_value_deep_inside_is_located_and_worded_as_by_pydantic(t: Type, value, loc: tuple,
                                                                     message: str) -> None:
    validators = Validators(TABLE)
    with pytest.raises(TypeMismatch) as caught:
        validators.validate(t, value, strict=True)
    first = caught.value.errors()[0]
    assert (first["loc"], first["msg"]) == (loc, message)
    assert outcome(validators.validate, t, value, True) == outcome(validators.validate_by_pydantic, t, value, True)


def test_the_plain_check_converts_as_pydantic_does() -> None:
    validators = Validators(TABLE)
    assert repr(validators.validate(ListT(FLOAT), [1, 2.5], strict=True)) == "[1.0, 2.5]"
    assert list(validators.validate(RecordT("Item"), {"note": None, "tags": [], "score": 2, "name": "n"})) == \
        ["name", "score", "tags", "note"]  # a record's fields come back in their declared order
    assert validators.validate(INT, "3") == 3 and validators.validate(JSON, float("nan")) is None
    assert math.isinf(validators.validate(FLOAT, float("inf")))


def test_plain_values_need_no_pydantic() -> None:
    """Validating plain values (a run's inputs, a tool's plain arguments) imports no pydantic."""
    code = ("import sys\nfrom agentflow.compiler.types import INT, JSON, ListT, Validators\n"
            "v = Validators({})\nv.validate(ListT(INT), list(range(100)), strict=True)\n"
            "v.validate(JSON, {'a': [1, 2.5, None, 'x']})\nprint('pydantic' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, "False\n"), done.stderr
