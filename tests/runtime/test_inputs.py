"""A run's inputs checked in process (`validate_inputs`): long plain lists are checked in
bulk, and a bad item anywhere in one is reported as it was item by item."""
from __future__ import annotations

import pytest

import agentflow
from agentflow.runtime.inputs import InputError, validate_inputs

SPEC = '''
type Item {
  name: str
  score: int
}

tool total(xs: list[int]) -> int { python = "math:fsum" }

choreography main(ints: list[int] = [], floats: list[float] = [], texts: list[str] = [],
                  items: list[Item] = [], data: json = null) -> int {
  t = total(ints)
  return t
}
'''

N = 10_000


@pytest.fixture(scope="module")
def plan() -> dict:
    return agentflow.compile(SPEC).data


def test_long_plain_lists_pass_as_they_are(plan: dict) -> None:
    raw = {"ints": list(range(N)), "floats": [i / 4 for i in range(N)], "texts": [f"t{i}" for i in range(N)],
           "items": [{"score": i, "name": "n"} for i in range(1000)], "data": {"rows": [[1, "a", 0.5, None]] * N}}
    got = validate_inputs(plan, raw)
    assert got["ints"] == raw["ints"] and got["texts"] == raw["texts"] and got["data"] == raw["data"]
    assert got["floats"] == raw["floats"] and got["items"][7] == {"name": "n", "score": 7}
    assert repr(validate_inputs(plan, {"floats": [1, 2]})["floats"]) == "[1.0, 2.0]"


@pytest.mark.parametrize("raw,message", [
    ({"ints": [*range(N), "x"]}, f"input `ints` does not fit its type list[int]: {N}: Input should be a valid integer"),
    ({"ints": [*range(N), 1.5]}, f"input `ints` does not fit its type list[int]: {N}: Input should be a valid integer"),
    ({"ints": [*range(N), True]}, f"input `ints` does not fit its type list[int]: {N}: Input should be a valid integer"),
    ({"items": [{"name": "n", "score": 1}] * N + [{"name": "n"}]},
     f"input `items` does not fit its type list[Item]: {N}.score: Field required"),
    ({"floats": [0.5] * N + [float("nan")]},
     "input `floats` holds the number nan, but infinite and NaN numbers are not JSON values (1e999 overflows to "
     "inf); give a finite number"),
    ({"texts": ["ok"] * N + ["bad \ud800"]},
     "input `texts` holds a lone surrogate, U+D800 (an unpaired `\\ud800`-style escape), which is not Unicode "
     "text; give valid UTF-8"),
    ({"data": {"rows": [[1, 2]] * N + [[1, float("-inf")]]}}, "input `data` holds the number -inf"),
])
def test_a_bad_item_at_the_end_of_a_long_list_is_named(plan: dict, raw: dict, message: str) -> None:
    with pytest.raises(InputError) as caught:
        validate_inputs(plan, raw)
    assert str(caught.value).startswith(message)
