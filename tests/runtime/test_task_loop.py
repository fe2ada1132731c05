"""The task loop (TaskCall) in this process, turn by turn: the scripted model (a real script
file) asks for tools, several in one turn, too many turns, or answers badly and is asked to
repair; tools run in the real workspace, the journal goes to the real Ledger and Store."""
from __future__ import annotations

import asyncio
import json

from agentflow.runtime.engine import NodeFailure, NodeJob, NodeOutcome
from agentflow.runtime.ledger import PROMPT_STEP
from agentflow.runtime.task import TaskCall
from engine_support import compiled, engine_over

PLAN = compiled("""
    defaults {
      model = "scripted:script.json"
    }

    type Answer {
      n: int
    }

    tool read(path: str) -> str {
      builtin = "fs.read"
    }

    role a {
      tools = [read]
      max_turns = 3
      task talk(x: str) -> str { prompt = "T {x}" }
      task count(x: str) -> Answer {
        prompt = "C {x}"
        retries = 1
      }
    }

    choreography main(x: str) -> str {
      said = a.talk(x)
      return said
    }
""")
REPAIR = "Your answer was not valid"
RULES = [
    {"node": "main/one", "turn": 1, "tool_calls": [{"name": "read", "arguments": {"path": "a.txt"}}]},
    {"node": "main/two", "turn": 1, "tool_calls": [{"name": "read", "arguments": {"path": "a.txt"}},
                                                   {"name": "read", "arguments": {"path": "b.txt"}}]},
    {"node": "main/wrong", "turn": 1, "tool_calls": [{"name": "read", "arguments": {"path": "none.txt"}},
                                                     {"name": "write", "arguments": {}}]},
    {"node": "main/spin", "tool_calls": [{"name": "read", "arguments": {"path": "a.txt"}}]},
    {"node": "main/repaired", "contains": REPAIR, "content": {"n": 7}},
    {"node": "main/repaired", "raw": "not json {"},
    {"node": "main/stubborn", "raw": "still not json"},
    {"node": "main/flaky", "attempt": 1, "error": "rate_limit"},
    {"turn": 2, "echo": "last"},
]


def run_call(tmp_path, node_id: str, target: str = "a.talk") -> tuple[NodeOutcome | NodeFailure, list[dict]]:
    """One task call, run by TaskCall itself, and the journal it left after its prompt step
    (the system text and prompt the call started with, which `show` prints)."""
    (tmp_path / "script.json").write_text(json.dumps({"rules": RULES}))
    workspace = tmp_path / "workspace"
    workspace.mkdir(exist_ok=True)
    (workspace / "a.txt").write_text("A")
    (workspace / "b.txt").write_text("B")

    async def main():
        async with engine_over(PLAN, tmp_path) as engine:
            args = engine.with_defaults("task", target, {"x": "hi"})
            job = NodeJob(node_id, "task", target, args, engine.node_key("task", target, args)[0])
            try:
                result: NodeOutcome | NodeFailure = await TaskCall(engine, job).run()
            except NodeFailure as failure:
                result = failure
            steps = [t.payload for t in engine.ledger.store.load_turns("run-1", node_id)]
            assert steps[0]["role"] == PROMPT_STEP and steps[0]["messages"][-1]["role"] == "user"
            return result, steps[1:]

    return asyncio.run(main())


def test_a_tool_call_is_answered_before_the_model_is_asked_again(tmp_path):
    outcome, journal = run_call(tmp_path, "main/one")
    assert isinstance(outcome, NodeOutcome) and outcome.value == "A" and outcome.attempts == 1
    assert [m["role"] for m in journal] == ["assistant", "tool", "assistant"]
    assert journal[1]["tool_call_id"] == journal[0]["tool_calls"][0]["id"] and journal[1]["content"] == "A"


def test_every_tool_call_of_one_turn_is_answered_in_order(tmp_path):
    outcome, journal = run_call(tmp_path, "main/two")
    assert isinstance(outcome, NodeOutcome) and outcome.value == "B"  # the model echoes the last result
    assert [m["role"] for m in journal] == ["assistant", "tool", "tool", "assistant"]
    assert [(m["tool_call_id"], m["content"]) for m in journal[1:3]] == [("call_1_1", "A"), ("call_1_2", "B")]


def test_a_failing_or_unknown_tool_is_an_error_message_for_the_model_not_a_failed_call(tmp_path):
    outcome, journal = run_call(tmp_path, "main/wrong")
    assert isinstance(outcome, NodeOutcome)
    assert journal[1]["content"].startswith("error: ") and "none.txt" in journal[1]["content"]
    assert journal[2]["content"] == "error: there is no tool named 'write'"
    assert outcome.value == journal[2]["content"]


def test_a_call_without_a_final_answer_within_max_turns_fails(tmp_path):
    failure, journal = run_call(tmp_path, "main/spin")
    assert isinstance(failure, NodeFailure) and failure.node_id == "main/spin" and failure.role == "a"
    assert "no final answer within max_turns = 3 model turns" in failure.message
    assert sum(1 for m in journal if m["role"] == "assistant") == 3


def test_an_invalid_answer_is_repaired_within_the_task_retries(tmp_path):
    outcome, journal = run_call(tmp_path, "main/repaired", "a.count")
    assert isinstance(outcome, NodeOutcome) and outcome.value == {"n": 7}
    assert [m["role"] for m in journal] == ["assistant", "user", "assistant"]
    assert journal[1]["repair"] and REPAIR in journal[1]["content"]


def test_an_answer_still_invalid_once_the_retries_are_spent_fails_the_call(tmp_path):
    failure, journal = run_call(tmp_path, "main/stubborn", "a.count")
    assert isinstance(failure, NodeFailure)
    assert "did not match Answer after 2 tries" in failure.message
    assert sum(1 for m in journal if m.get("repair")) == 1  # retries = 1: one repair request


def test_a_transient_model_error_is_retried_as_a_new_attempt(tmp_path):
    outcome, journal = run_call(tmp_path, "main/flaky")
    assert isinstance(outcome, NodeOutcome) and outcome.attempts == 2
    assert [m["role"] for m in journal] == ["assistant"]  # a failed try leaves no message
