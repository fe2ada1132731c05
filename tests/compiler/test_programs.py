"""Programs a model writes (`programs = true`), compiled in process: the scope holds exactly the
task's parameters, its role's granted tools and `role.task`s, and the record types; every check
of a spec applies; what compiles is plain plan data with node ids under the task call."""
from __future__ import annotations

import json

import pytest

from agentflow.compiler import schema
from agentflow.compiler.pipeline import compile_source
from agentflow.compiler.programs import compile_program
from agentflow.compiler.source import SourceFile

SPEC = """
defaults {
  model = "scripted"
}

type Item {
  name: str
  size: int
}

tool sizes(items: list[Item], scale: int = 1) -> list[int] {
  python = "tools:sizes"
}

tool label(x: int) -> str {
  command = ["echo", "{x}"]
}

tool hidden(x: str) -> str {
  python = "tools:hidden"
}

role helper {
  task explain(n: int) -> str { prompt = "Explain {n}" }
}

role scribe {
  memory = "session"
  task note(x: str) -> str { prompt = "Note {x}" }
}

role worker {
  tools = [sizes, label, helper.explain, scribe.note]
  programs = true
  task work(items: list[Item], title: str) -> str { prompt = "Work on {title}" }
}

role outsider {
  tools = [hidden]
  task peek(x: str) -> str { prompt = "{x}" }
}

choreography main(items: list[Item], title: str) -> json {
  w = worker.work(items, title)
  p = outsider.peek(title)
  return [w, p]
}
"""


@pytest.fixture(scope="module")
def plan() -> schema.Plan:
    result = compile_source(SourceFile("spec.agentflow", SPEC))
    assert result.plan is not None, [d.message for d in result.diagnostics]
    return result.plan.data


def compiled(plan: schema.Plan, source: str) -> schema.CompiledProgram | str:
    return compile_program(source, plan, "worker.work", "main/rs[3]/w")


def test_a_program_reads_its_tasks_parameters_and_calls_its_grants(plan) -> None:
    program = compiled(plan, 'ss = sizes(items, scale = 2)\n'
                             'labels = for s in ss {\n  l = label(s)\n  why = helper.explain(s)\n  yield l + why\n}\n'
                             'return {title: title, labels: labels, first: items[0].name}')
    assert not isinstance(program, str), program
    assert program["prefix"] == "main/rs[*]/w/program#*"
    assert sorted(program["nodes"]) == ["main/rs[*]/w/program#*/labels", "main/rs[*]/w/program#*/labels[*]/l",
                                        "main/rs[*]/w/program#*/labels[*]/why", "main/rs[*]/w/program#*/ss"]
    ss = program["nodes"]["main/rs[*]/w/program#*/ss"]
    assert ss["args"] == {"items": ["name", "items"], "scale": ["lit", 2]}
    assert ss["definition_hash"] == plan["tools"]["sizes"]["definition_hash"]  # the spec's tool, not a stand-in
    why = program["nodes"]["main/rs[*]/w/program#*/labels[*]/why"]
    assert (why["kind"], why["target"], why["role"]) == ("task", "helper.explain", "helper")
    assert why["definition_hash"] == plan["tasks"]["helper.explain"]["definition_hash"]
    assert json.loads(json.dumps(program)) == program  # plain data: it travels to a Temporal worker
    assert program["max_nodes"] == schema.PROGRAM_MAX_NODES


@pytest.mark.parametrize("source, expected", [
    ('x = hidden("a")\nreturn x', "error[E104]: `hidden` is not granted to role `worker`"),
    ('x = outsider.peek("a")\nreturn x', "error[E104]: `outsider.peek` is not granted to role `worker`"),
    ('x = nosuch("a")\nreturn x', "error[E104]"),
    ('x = main(items, title)\nreturn x', "error[E104]: undefined tool or choreography `main`"),
    ('x = label("a")\nreturn x', "error[E201]"),
    ('x = label(1, 2)\nreturn x', "error[E203]"),
    ('x = items.size\nreturn x', "error[E202]"),
    ('x = titel\nreturn x', "did you mean `title`?"),
    ('x = w\nreturn x', "error[E101]: undefined name `w`"),  # the spec's bindings are not in scope
    ('r = repeat max 0 until true {\n  a = 1\n}\nreturn r', "error[E404]"),
    ('a = scribe.note(b)\nb = scribe.note("x")\nreturn a', "error[E401]"),
    ('x = label(1)', "error[E108]: choreography `program` has no `return`\n --> <program>:1:1"),
    ('x = = 1', "error[E001]"),
    ('x = "abc', "error[E002]"),
    ('k = "sk-abcdefghijklmnopqrstuvwxyz123456"\nreturn k', "error[E304]"),
], ids=["ungranted-tool", "ungranted-task", "no-such-tool", "choreography", "type", "arguments", "field",
        "did-you-mean", "spec-binding", "unbounded", "deadlock", "no-return", "syntax", "string", "secret"])
def test_a_program_that_fails_a_check_gives_its_diagnostics_with_its_own_lines(plan, source: str,
                                                                              expected: str) -> None:
    text = compiled(plan, source)
    assert isinstance(text, str)
    assert expected in text and "--> <program>:" in text
    assert "warning" not in text


def test_a_program_longer_than_the_limit_is_rejected_before_parsing(plan) -> None:
    limits = plan["tasks"]["worker.work"]["definition"]["tools"][-1]
    assert limits["name"] == schema.RUN_PROGRAM
    text = compiled(plan, "x = " * 10_000)
    assert isinstance(text, str) and "role `worker` allows at most 20000 (`program_max_chars`)" in text


def test_the_limits_are_role_attributes_and_part_of_the_tasks_definition() -> None:
    def tools(attrs: str) -> tuple[list, str]:
        result = compile_source(SourceFile("s.agentflow", SPEC.replace("programs = true", attrs)))
        assert result.plan is not None, [d.message for d in result.diagnostics]
        task = result.plan.data["tasks"]["worker.work"]
        return [t["name"] for t in task["definition"]["tools"]], task["definition_hash"]

    names, default = tools("programs = true")
    assert names[-1] == "run_program"
    assert tools("programs = true\n  program_max_nodes = 5")[1] != default
    assert "run_program" not in tools("programs = false")[0]


@pytest.mark.parametrize("attr, message", [
    ("programs = 1", "`programs` must be `true` or `false`"),
    ("program_max_nodes = 0", "`program_max_nodes` must be at least 1"),
    ('program_max_chars = "many"', "`program_max_chars` must be an integer"),
])
def test_bad_program_attributes_are_e302(attr: str, message: str) -> None:
    result = compile_source(SourceFile("s.agentflow", SPEC.replace("programs = true", attr)))
    assert [(d.code, d.message.split(", found")[0]) for d in result.diagnostics if d.is_error] == [("E302", message)]
