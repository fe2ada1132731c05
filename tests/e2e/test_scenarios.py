"""A matrix of execution scenarios on the scripted model (`model = "scripted:script.json"`):
one spec holds them all as independent bindings and runs once in a real subprocess; each test
checks one scenario in the result and in `agentflow show`."""
from __future__ import annotations

import json

import pytest

from runtime_support import af, last_run, ok, result_json, show, write

SPEC = """
defaults {
  model = "scripted:script.json"
  retries = 2
}

type Score {
  score: int
}

tool inc(x: int = 0) -> int {
  python = "tools:inc"
}

tool broken() -> str {
  python = "tools:broken"
  description = "Always fails."
}

role flaky {
  task ask(q: str) -> str { prompt = "ASK {q}" }
}

role judge {
  task rate(q: str) -> Score { prompt = "RATE {q}" }
}

role fixer {
  tools = [broken]
  task fix(q: str) -> str { prompt = "FIX {q}" }
}

role helper {
  task assist(q: str) -> str { prompt = "ASSIST {q}" }
}

role boss {
  tools = [helper.assist]
  task lead(q: str) -> str { prompt = "LEAD {q}" }
}

role side {
  task yes(q: str) -> str { prompt = "YES {q}" }
  task no(q: str) -> str { prompt = "NO {q}" }
}

choreography main(flag: bool, empty: list[str]) -> json {
  retried = flaky.ask("again")
  repaired = judge.rate("thing")
  tool_error = fixer.fix("it")
  delegated = boss.lead("team")
  converged = repeat max 5 until c >= 3 {
    c = inc(prev.c)
  }
  exhausted = repeat max 2 until c >= 10 {
    c = inc(prev.c)
  }
  branch = side.yes("a") if flag else side.no("b")
  fanout = for x in empty {
    y = flaky.ask(x)
    yield y
  }
  return {retried: retried, repaired: repaired, tool_error: tool_error, delegated: delegated,
          converged: converged, exhausted: exhausted, branch: branch, fanout: fanout}
}
"""

SCRIPT = {"rules": [
    {"node": "main/retried", "error": "rate_limit", "times": 2},
    {"node": "main/retried", "content": "finally"},
    {"node": "main/repaired", "turn": 1, "raw": "this is not json"},
    {"node": "main/repaired", "contains": "Your answer was not valid", "content": {"score": 7}},
    {"task": "fixer.fix", "turn": 1, "tool_calls": [{"name": "broken", "arguments": {}}]},
    {"task": "fixer.fix", "turn": 2, "echo": "last"},
    {"task": "boss.lead", "turn": 1, "tool_calls": [{"name": "helper__assist", "arguments": {"q": "sub"}}]},
    {"task": "boss.lead", "turn": 2, "echo": "last"},
    {"task": "helper.assist", "content": "HELPED with the sub-task"},
]}

TOOLS = """
def inc(x=0):
    return x + 1

def broken():
    raise ValueError("disk on fire")
"""


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scenarios")
    write(tmp / "flow.agentflow", SPEC)
    write(tmp / "script.json", json.dumps(SCRIPT))
    write(tmp / "tools.py", TOOLS)
    result = ok(af(tmp, "run", "flow.agentflow", "--input", "flag=true", "--input", "empty=[]"))
    run = last_run(tmp)
    return dict(tmp=tmp, value=result_json(result), nodes=show(tmp, run["run_id"]), run=run)


def test_transient_error_retried(scenario):
    assert scenario["value"]["retried"] == "finally"
    node = scenario["nodes"]["main/retried"]
    assert node["status"] == "succeeded" and node["attempts"] == 3


def test_invalid_answer_repaired_with_the_error_sent_back(scenario):
    # the second rule only answers a request whose last message is the repair request
    assert scenario["value"]["repaired"] == {"score": 7}
    assert scenario["nodes"]["main/repaired"]["status"] == "succeeded"


def test_tool_error_is_seen_by_the_model(scenario):
    assert scenario["value"]["tool_error"] == "error: tool broken raised ValueError: disk on fire"
    assert scenario["nodes"]["main/tool_error"]["status"] == "succeeded"


def test_delegation_runs_the_delegate_as_a_sub_call(scenario):
    assert scenario["value"]["delegated"] == "HELPED with the sub-task"
    sub = scenario["nodes"]["main/delegated/helper.assist#1"]
    assert sub["status"] == "succeeded" and sub["role"] == "helper"


def test_repeat_converges_before_max(scenario):
    assert scenario["value"]["converged"] == {"c": 3, "iterations": 3, "converged": True}
    nodes = scenario["nodes"]
    assert {f"main/converged#{i}/c" for i in (1, 2, 3)} <= set(nodes)
    assert "main/converged#4/c" not in nodes


def test_repeat_exhausts_max(scenario):
    assert scenario["value"]["exhausted"] == {"c": 2, "iterations": 2, "converged": False}
    assert "main/exhausted#3/c" not in scenario["nodes"]


def test_unchosen_branch_is_skipped(scenario):
    assert scenario["value"]["branch"].startswith("scripted answer to side.yes")
    nodes = scenario["nodes"]
    assert nodes["main/branch@1"]["status"] == "succeeded"
    assert nodes["main/branch@2"]["status"] == "skipped"


def test_empty_fan_out_gives_empty_list(scenario):
    assert scenario["value"]["fanout"] == []
    assert not [n for n in scenario["nodes"] if n.startswith("main/fanout[")]


def test_whole_run_succeeded_and_is_reused(scenario):
    assert scenario["run"]["status"] == "succeeded"
    again = ok(af(scenario["tmp"], "run", "flow.agentflow", "--input", "flag=true", "--input", "empty=[]"))
    assert result_json(again) == scenario["value"]
    nodes = show(scenario["tmp"], last_run(scenario["tmp"])["run_id"])
    calls = [n for n, r in nodes.items() if r["role"] is not None]
    assert calls and all(nodes[n]["cached"] for n in calls if nodes[n]["status"] != "skipped")
