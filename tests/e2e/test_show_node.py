"""`agentflow show RUN_ID NODE_ID`: one node's messages (system text and prompt, model answers,
tool calls and their results) and its result, as text or `--json`; a reused node shows the
conversation of the call that produced its result; an unknown node id is exit 2 with the
closest ids. Real `agentflow` subprocesses on a scripted model, a real DuckDB file."""
from __future__ import annotations

import json

import pytest

from runtime_support import af, last_run, ok, write

SPEC = """
defaults {
  model = "scripted:script.json"
}

tool lookup(word: str) -> str {
  python = "tools:lookup"
  description = "Looks a word up."
}

role writer {
  tools = [lookup]
  system = "You write short notes."
  task note(topic: str) -> str { prompt = "Write a note on {topic}" }
}

choreography main(topic: str) -> str {
  first = writer.note(topic)
  looked = lookup(topic)
  each = for w in ["a"] {
    l = lookup(w)
    yield l
  }
  return first
}
"""
SCRIPT = {"rules": [
    {"task": "writer.note", "turn": 1, "tool_calls": [{"name": "lookup", "arguments": {"word": "owls"}}]},
    {"task": "writer.note", "turn": 2, "content": "Owls hoot at night."},
]}
TOOLS = """
def lookup(word):
    return f"{word}: birds of prey"
"""


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    root = tmp_path_factory.mktemp("show-node")
    write(root / "flow.agentflow", SPEC)
    write(root / "script.json", json.dumps(SCRIPT))
    write(root / "tools.py", TOOLS)
    ok(af(root, "run", "flow.agentflow", "--input", "topic=owls"))
    first = last_run(root)["run_id"]
    ok(af(root, "run", "flow.agentflow", "--input", "topic=owls"))  # reuses the call
    return root, first, last_run(root)["run_id"]


def _node(root, run_id):
    return json.loads(ok(af(root, "show", run_id, "main/first", "--json")).stdout)


def test_json_holds_the_whole_conversation_and_the_result(flow):
    root, run_id, _ = flow
    node = _node(root, run_id)
    assert (node["node"], node["status"], node["cached"], node["result"]) == (
        "main/first", "succeeded", False, "Owls hoot at night.")
    messages = node["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert messages[0]["content"] == "You write short notes."
    assert messages[1]["content"] == "Write a note on owls"
    (call,) = messages[2]["tool_calls"]
    assert call["function"]["name"] == "lookup" and json.loads(call["function"]["arguments"]) == {"word": "owls"}
    assert messages[3]["content"] == "owls: birds of prey" and messages[3]["tool_call_id"] == call["id"]
    assert messages[4]["content"] == "Owls hoot at night."


def test_text_shows_each_message_then_the_result(flow):
    root, run_id, _ = flow
    text = ok(af(root, "show", run_id, "main/first")).stdout
    assert text.startswith("node main/first (role writer, succeeded, 1 attempt, ")
    assert text.splitlines()[1:] == [
        "--- system", "You write short notes.",
        "--- user", "Write a note on owls",
        "--- assistant", 'call lookup({"word": "owls"})  [call_1_1]',
        "--- tool result lookup  [call_1_1]", "owls: birds of prey",
        "--- assistant", "Owls hoot at night.",
        "--- result", '"Owls hoot at night."'], text


def test_a_reused_node_shows_the_conversation_that_produced_its_result(flow):
    root, first, rerun = flow
    node = _node(root, rerun)
    assert node["cached"] and node["result"] == "Owls hoot at night."
    assert node["messages"] == _node(root, first)["messages"]


def test_a_tool_node_shows_its_result_and_a_structure_only_its_row(flow):
    root, run_id, _ = flow
    looked = json.loads(ok(af(root, "show", run_id, "main/looked", "--json")).stdout)
    assert (looked["messages"], looked["result"]) == ([], "owls: birds of prey")
    each = json.loads(ok(af(root, "show", run_id, "main/each", "--json")).stdout)
    assert each["status"] == "succeeded" and each["messages"] == [] and "result" not in each


def test_an_unknown_node_is_exit_2_with_the_closest_ids(flow):
    root, run_id, _ = flow
    result = ok(af(root, "show", run_id, "main/frist"), 2)
    assert result.stdout == ""
    assert result.stderr == (f"error: run {run_id} has no node main/frist; did you mean main/first? "
                             f"`agentflow show {run_id}` lists its nodes\n")
    assert ok(af(root, "show", "nosuch", "main/first"), 2).stderr.startswith("error: there is no run nosuch")
