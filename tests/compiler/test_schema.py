"""The plan schema says what plans are: every example's plan conforms to `compiler/schema.py`
exactly (each required key there, no key the schema lacks, values of the declared types), and
every expression in it is well-formed IR (a kind of `compiler/ir.py` with its fields)."""
from __future__ import annotations

import json
import types
import typing
from pathlib import Path
from typing import Any

import pytest

from agentflow.compiler import ir, schema
from agentflow.compiler.pipeline import compile_source
from agentflow.compiler.source import SourceFile

ROOT = Path(__file__).resolve().parents[2]
SPECS = sorted(ROOT.joinpath("specs").glob("*.agentflow")) + [ROOT / "tests/temporal/specs/work.agentflow"]


def problems(value: Any, tp: Any, path: str = "plan") -> list[str]:
    """Where `value` (JSON data) does not conform to the type `tp` of the schema."""
    if tp is Any:
        return []
    if tp is ir.Expr:
        return expression_problems(value, path)
    if typing.is_typeddict(tp):
        if not isinstance(value, dict):
            return [f"{path}: {type(value).__name__}, not a {tp.__name__}"]
        hints = typing.get_type_hints(tp)
        out = [f"{path}.{k}: missing from {tp.__name__}" for k in tp.__required_keys__ - value.keys()]
        out += [f"{path}.{k}: not in {tp.__name__}" for k in value.keys() - hints.keys()]
        for k in value.keys() & hints.keys():
            out += problems(value[k], hints[k], f"{path}.{k}")
        return out
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return min((problems(value, option, path) for option in args), key=len)  # the nearest option's
    if origin is typing.Literal:
        return [] if value in args else [f"{path}: {value!r} is not one of {args}"]
    if origin is list:
        if not isinstance(value, list):
            return [f"{path}: {type(value).__name__}, not a list"]
        return [p for i, item in enumerate(value) for p in problems(item, args[0] if args else Any, f"{path}[{i}]")]
    if origin is dict:
        if not isinstance(value, dict):
            return [f"{path}: {type(value).__name__}, not a dict"]
        return [p for k, item in value.items() for p in problems(item, args[1], f"{path}[{k!r}]")]
    if tp is type(None):
        return [] if value is None else [f"{path}: {value!r:.80} is not null"]
    if tp is float:  # a JSON number
        return [] if isinstance(value, (int, float)) and not isinstance(value, bool) else [f"{path}: not a number"]
    ok = isinstance(value, tp) and (tp is bool or not isinstance(value, bool))
    return [] if ok else [f"{path}: {value!r:.80} is not a {tp.__name__}"]


def expression_problems(expr: Any, path: str) -> list[str]:
    """An expression is `[kind, fields...]` with the kind's fields, down to its leaves."""
    kind = ir.KINDS.get(expr[0]) if isinstance(expr, list) and expr else None
    if kind is None or len(expr) != 1 + len(kind.fields):
        return [f"{path}: {expr!r:.80} is not an expression"]
    return [p for i, child in enumerate(ir.children(expr)) for p in expression_problems(child, f"{path}<{i}>")]


# What the examples leave out: every attribute set, session ordering, `list`, `index`, `neg`.
EVERYTHING = """
defaults { model = "scripted"  retries = 1  timeout = 5s  temperature = 0.5  cache = false }
type Pair { a: int  b: str? }
tool run(cmd: str) -> str { command = ["sh", "-c", "{cmd}"]  cwd = "work"  description = "Runs."  retries = 0 }
tool peek(path: str) -> str { builtin = "fs.read" }
role scribe {
  model = "openai/gpt-4o-mini"  system = "Be brief."  memory = "session"  replicas = 1  max_tokens = 100
  max_turns = 3  api_base = "http://127.0.0.1:1/v1"  api_key_env = "SCRIBE_KEY"  max_context_tokens = 500
  tools = [run, peek, helper.help]
  task note(x: str, n: int = 2) -> Pair { prompt = "NOTE {x}"  retries = 4  timeout = 1m  max_turns = 2  cache = true }
}
role helper { replicas = 2  task help(q: str) -> str { prompt = "{q}" } }
choreography main(xs: list[int]) -> json {
  first = scribe.note("first")
  second = scribe.note("second", n = -xs[0])
  return {pairs: [first, second], last: [x * 2 for x in xs if x > 0][-1]}
}
"""


def plan_data(spec: Path | str) -> dict:
    source = SourceFile("everything.agentflow", spec) if isinstance(spec, str) else \
        SourceFile(spec.name, spec.read_text())
    result = compile_source(source)
    assert result.ok, [d.message for d in result.diagnostics]
    return json.loads(result.plan.to_json())


@pytest.mark.parametrize("spec", [*SPECS, EVERYTHING], ids=lambda p: p.stem if isinstance(p, Path) else "everything")
def test_every_example_plan_conforms_to_the_schema(spec: Path | str) -> None:
    assert problems(plan_data(spec), schema.Plan) == []


def test_the_inline_spec_reaches_what_the_examples_do_not() -> None:
    text = json.dumps(plan_data(EVERYTHING))
    for shape in ('["list", ', '["index", ', '["neg", ', '"session_after": ["first"]', '"cwd": "work"',
                  '"api_key_env": "SCRIBE_KEY"', '"max_tokens": 100'):
        assert shape in text


def test_the_check_finds_what_does_not_conform() -> None:
    plan = plan_data(SPECS[0])
    node_id, node = next((k, n) for k, n in plan["nodes"].items() if n["kind"] == "task")
    node["extra"] = 1
    del node["line"]
    node["args"]["x"] = ["binop", "+", ["lit", 1]]
    plan["roles"][next(iter(plan["roles"]))]["memory"] = "forever"
    found = problems(plan, schema.Plan)
    assert f"plan.nodes[{node_id!r}].extra: not in CallNode" in " ".join(found)
    assert any(p.endswith(".line: missing from CallNode") for p in found)
    assert any("['x']" in p and "is not an expression" in p for p in found)
    assert any("'forever' is not one of" in p for p in found)


def test_the_plan_format_is_the_schemas() -> None:
    assert plan_data(SPECS[0])["format"] == schema.PLAN_FORMAT
