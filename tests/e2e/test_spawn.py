"""Agents created at run time (`spawn = true`) and failures returned to the caller, through the
real CLI: the scripted model plays the creators, our OpenAI-protocol server (through litellm)
some of the created agents; recipes in a real DuckDB file, a real `kill -9`."""
from __future__ import annotations

import json
import signal
from pathlib import Path

import duckdb

from agentflow.runtime.history import node_detail
from agentflow.runtime.store import Store
from runtime_support import DB, KEY_ENV, af, af_start, call_agent, create_agent, last_run, ok, outputs, ran, \
    result_json, reused, runs, show, stop, wait_until, write

TOOLS = """
def add(a, b):
    return a + b

def shout(text):
    return text.upper()
"""


def spec(server_url: str = "http://127.0.0.1:9", architect: str = "") -> str:
    """An architect that may create agents, granted `add` only; `helper` declares the model
    created agents may name (the test server), and holds `shout`."""
    return f"""
tool add(a: int, b: int) -> int {{ python = "tools:add"  description = "a + b" }}
tool shout(text: str) -> str {{ python = "tools:shout" }}

role architect {{
  model = "scripted:script.json"
  spawn = true
  tools = [add]
  retries = 0
  {architect}
  task plan(goal: str) -> str {{ prompt = "PLAN {{goal}}" }}
}}

role helper {{
  model = "openai/gpt-4o-mini"
  api_base = "{server_url}"
  api_key_env = "{KEY_ENV}"
  tools = [shout]
  task help(x: str) -> str {{ prompt = "HELP {{x}}" }}
}}

choreography main(goal: str = "sum") -> str {{
  p = architect.plan(goal)
  return p
}}
"""


def script(*rules: dict) -> str:
    return json.dumps({"rules": list(rules)})


def project(tmp_path: Path, rules: list[dict], **kw) -> Path:
    write(tmp_path / "tools.py", TOOLS)
    write(tmp_path / "script.json", script(*rules))
    return write(tmp_path / "flow.agentflow", spec(**kw))


def tool_results(run_id: str, node: str, cwd: Path) -> list[str]:
    detail = node_detail(str(cwd / DB), run_id, node)
    return [m["content"] for m in detail["messages"] if m["role"] == "tool"]


def agents(cwd: Path) -> list[tuple]:
    with duckdb.connect(str(cwd / DB), read_only=True) as con:
        return con.execute("SELECT name, creator, version, instructions, tools, model, depth FROM agents "
                           "ORDER BY name, version").fetchall()


def llm_calls(cwd: Path, run_id: str) -> list[tuple]:
    with duckdb.connect(str(cwd / DB), read_only=True) as con:
        return con.execute("SELECT node_id, model FROM llm_calls WHERE run_id = ? ORDER BY created_at",
                           [run_id]).fetchall()


# ---------------------------------------------------------------- creating, refusing

def test_an_agent_with_a_tool_or_model_its_creator_may_not_give_is_refused_and_the_model_sees_why(tmp_path):
    project(tmp_path, [
        {"node": "main/p", "turn": 1, "tool_calls": [
            create_agent("loud", "Shout.", ["shout"]),
            create_agent("pricey", "Think.", [], model="openai/gpt-5"),
            create_agent("bad name", "x", []),
            call_agent("nobody", "hi")]},
        {"node": "main/p", "turn": 2, "content": "gave up"}])
    assert result_json(ok(af(tmp_path, "run", "flow.agentflow"))) == "gave up"
    results = tool_results(last_run(tmp_path)["run_id"], "main/p", tmp_path)
    assert results == [
        "error: create_agent: agent loud may not have shout: an agent gets only tools its creator has, and yours "
        "are add",
        "error: create_agent: model 'openai/gpt-5' is not allowed; use one of openai/gpt-4o-mini, "
        "scripted:script.json (or leave `model` out for yours)",
        "error: create_agent: the agent name must be letters, digits and _ (not starting with a digit, at most 64), "
        "got 'bad name'",
        "error: call_agent: you have no agent named 'nobody'; create it first with create_agent"]
    assert agents(tmp_path) == []


# ---------------------------------------------------------------- calling: a node, journaled, reused

def test_a_created_agent_runs_as_a_journaled_node_and_a_rerun_reuses_it_without_a_model_call(tmp_path):
    project(tmp_path, [
        {"node": "main/p", "turn": 1, "tool_calls": [create_agent("math_solver", "You add {numbers}.", ["add"])]},
        {"node": "main/p", "turn": 2, "tool_calls": [{"name": "list_agents"}, call_agent("math_solver", "2 + 3?")]},
        {"node": "main/p", "turn": 3, "echo": "last"},
        {"node": "main/p/agent:math_solver#1", "turn": 1, "tool_calls": [
            {"name": "add", "arguments": {"a": 2, "b": 3}}]},
        {"node": "main/p/agent:math_solver#1", "turn": 2, "content": "it is 5"}])
    assert result_json(ok(af(tmp_path, "run", "flow.agentflow"))) == "it is 5"
    run_id = last_run(tmp_path)["run_id"]
    nodes = show(tmp_path, run_id, cli=True)
    assert nodes["main/p/agent:math_solver#1"]["role"] == "architect/math_solver"
    assert ran(nodes) == {"main/p", "main/p/agent:math_solver#1"}
    created, listed, answer = tool_results(run_id, "main/p", tmp_path)
    assert json.loads(created) == {"agent": "architect/math_solver", "version": 1} and answer == "it is 5"
    assert json.loads(listed) == [{"name": "math_solver", "version": 1, "instructions": "You add {numbers}.",
                                   "tools": ["add"], "model": None}]
    agent = node_detail(str(tmp_path / DB), run_id, "main/p/agent:math_solver#1")
    assert [m["role"] for m in agent["messages"]] == ["system", "user", "assistant", "tool", "assistant"]
    assert agent["messages"][0]["content"] == "You add {numbers}."  # the text as written, no template
    assert agent["messages"][1]["content"] == "2 + 3?"
    assert agent["messages"][3]["content"] == "5" and agent["result"] == "it is 5"
    assert [n for n, _ in llm_calls(tmp_path, run_id)].count("main/p/agent:math_solver#1") == 2
    assert agents(tmp_path) == [("architect/math_solver", "architect", 1, "You add {numbers}.", '["add"]', None, 1)]

    # the architect runs again (another goal); its call of the agent has the same key: reused,
    # no model call
    again = ok(af(tmp_path, "run", "flow.agentflow", "--input", "goal=again"))
    assert result_json(again) == "it is 5"
    rerun = last_run(tmp_path)["run_id"]
    nodes = show(tmp_path, rerun)
    assert ran(nodes) == {"main/p"} and reused(nodes) == {"main/p/agent:math_solver#1"}
    assert {n for n, _ in llm_calls(tmp_path, rerun)} == {"main/p"}
    assert len(agents(tmp_path)) == 1  # the same recipe again: no new version


# ---------------------------------------------------------------- recipes outlive kill -9, resume and runs

def test_recipes_survive_kill_9_resume_and_later_runs_and_a_changed_recipe_is_a_new_version(tmp_path, server):
    """The architect (scripted) creates an agent on the test server's model and calls it; the
    process is killed while the agent's model call is in flight."""
    def rules(instructions: str) -> list[dict]:
        return [
            {"node": "main/p", "turn": 1, "tool_calls": [
                create_agent("math_solver", instructions, ["add"], model="openai/gpt-4o-mini")]},
            {"node": "main/p", "turn": 2, "tool_calls": [call_agent("math_solver", "SOLVE 2+3")]},
            {"node": "main/p", "turn": 3, "echo": "last"}]

    project(tmp_path, rules("You add."), server_url=server.base_url)
    server.add_rule("SOLVE 2+3", {"latency_ms": 8000}, times=1)
    server.add_rule("SOLVE 2+3", {"tool_calls": [{"name": "add", "arguments": {"a": 2, "b": 3}}]}, times=1)
    proc = af_start(tmp_path, "run", "flow.agentflow")
    try:
        wait_until(lambda: any("SOLVE 2+3" in json.dumps(r["messages"]) for r in server.requests), timeout=30,
                   what="the created agent's first model call")
        assert proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        stop(proc)
    outputs(proc)
    with Store.open_reader(tmp_path / DB) as store:
        assert store.check_consistency() == []
    expected_v1 = ("architect/math_solver", "architect", 1, "You add.", '["add"]', "openai/gpt-4o-mini", 1)
    assert agents(tmp_path) == [expected_v1]  # stored as it was created, before the kill
    run_id = last_run(tmp_path)["run_id"]

    resumed = ok(af(tmp_path, "run", "flow.agentflow", "--resume"))
    assert result_json(resumed) == "echo: SOLVE 2+3"
    assert last_run(tmp_path)["run_id"] == run_id and last_run(tmp_path)["status"] == "succeeded"
    agent_node = "main/p/agent:math_solver#1"
    assert show(tmp_path, run_id)[agent_node]["status"] == "succeeded"
    assert tool_results(run_id, agent_node, tmp_path) == ["5"]
    assert agents(tmp_path) == [expected_v1]
    paid = len(server.requests)
    assert paid == 3  # the killed call, then the agent's two turns

    # a later run creates the same recipe: a no-op, and the agent's call is reused by key
    ok(af(tmp_path, "run", "flow.agentflow", "--input", "goal=again"))
    assert agents(tmp_path) == [expected_v1]
    assert reused(show(tmp_path, last_run(tmp_path)["run_id"])) == {agent_node}
    assert len(server.requests) == paid

    # a changed recipe is a new version, called afresh
    write(tmp_path / "script.json", script(*rules("You add carefully.")))
    assert result_json(ok(af(tmp_path, "run", "flow.agentflow", "--input", "goal=third"))) == "echo: SOLVE 2+3"
    assert [(n, v, i) for n, _, v, i, *_ in agents(tmp_path)] == [
        ("architect/math_solver", 1, "You add."), ("architect/math_solver", 2, "You add carefully.")]
    assert agent_node in ran(show(tmp_path, last_run(tmp_path)["run_id"]))
    assert len(server.requests) == paid + 1
    assert server.requests[-1]["messages"][0] == {"role": "system", "content": "You add carefully."}

    tree = ok(af(tmp_path, "agents", "--tree")).stdout
    assert tree == "architect\n└── architect/math_solver  (v1, v2; add; openai/gpt-4o-mini)\n"
    [root] = json.loads(ok(af(tmp_path, "agents", "--tree", "--json")).stdout)
    assert root["name"] == "architect"
    assert [(a["name"], a["versions"], a["instructions"]) for a in root["created"]] == [
        ("architect/math_solver", [1, 2], "You add carefully.")]


# ---------------------------------------------------------------- depth

def test_created_agents_create_agents_down_to_max_spawn_depth(tmp_path):
    a, b = "main/p/agent:a#1", "main/p/agent:a#1/agent:b#1"
    project(tmp_path, [
        {"node": "main/p", "turn": 1, "tool_calls": [create_agent("a", "Level one.", ["add"]), call_agent("a", "go")]},
        {"node": "main/p", "turn": 2, "echo": "last"},
        {"node": a, "turn": 1, "tool_calls": [create_agent("b", "Level two.", []), call_agent("b", "deeper")]},
        {"node": a, "turn": 2, "echo": "last"},
        {"node": b, "turn": 1, "tool_calls": [create_agent("c", "Level three.", [])]},
        {"node": b, "turn": 2, "echo": "last"}])
    refused = ok(af(tmp_path, "run", "flow.agentflow"))
    assert result_json(refused) == (
        "error: create_agent is not available: agent architect/a/b is at depth 2 and max_spawn_depth = 2, "
        "so it cannot create agents; do the work with your own tools")
    assert ran(show(tmp_path, last_run(tmp_path)["run_id"])) == {"main/p", a, b}
    assert [(n, c, d) for n, c, _, _, _, _, d in agents(tmp_path)] == [
        ("architect/a", "architect", 1), ("architect/a/b", "architect/a", 2)]
    assert ok(af(tmp_path, "agents", "--tree")).stdout == (
        "architect\n"
        "└── architect/a  (v1; add; its creator's model)\n"
        "    └── architect/a/b  (v1; no tools; its creator's model)\n")


# ---------------------------------------------------------------- failures stay with the caller

def test_a_created_agent_that_fails_returns_the_error_to_its_caller_and_the_run_succeeds(tmp_path):
    project(tmp_path, [
        {"node": "main/p", "turn": 1, "tool_calls": [create_agent("flaky", "Fail.", []), call_agent("flaky", "try")]},
        {"node": "main/p", "turn": 2, "contains": "failed", "content": "recovered without it"},
        {"node": "main/p/agent:flaky#1", "error": "fatal", "message": "the agent broke"}])
    result = ok(af(tmp_path, "run", "flow.agentflow"))
    assert result_json(result) == "recovered without it"
    run_id = last_run(tmp_path)["run_id"]
    assert last_run(tmp_path)["status"] == "succeeded"
    nodes = show(tmp_path, run_id, cli=True)
    assert nodes["main/p"]["status"] == "succeeded"
    failed = nodes["main/p/agent:flaky#1"]
    assert failed["status"] == "failed" and "the agent broke" in failed["error"]
    assert tool_results(run_id, "main/p", tmp_path)[1] == (
        "error: call_agent: agent architect/flaky failed: model scripted:script.json: scripted model "
        "(main/p/agent:flaky#1): the agent broke")


DELEGATION = """
role worker {{
  model = "scripted:script.json"
  retries = 0
  task work(x: str) -> str {{ prompt = "WORK {{x}}" }}
}}

role boss {{
  model = "scripted:script.json"
  tools = [worker.work]
  {attr}
  task lead(x: str) -> str {{ prompt = "LEAD {{x}}" }}
}}

choreography main() -> str {{
  r = boss.lead("job")
  return r
}}
"""
DELEGATION_SCRIPT = script(
    {"node": "main/r", "turn": 1, "tool_calls": [{"name": "worker__work", "arguments": {"x": "job"}}]},
    {"node": "main/r", "turn": 2, "echo": "last"},
    {"node": "main/r/worker.work#1", "error": "fatal", "message": "the worker broke"})


def test_on_delegate_failure_return_gives_a_failed_delegation_to_the_model(tmp_path):
    write(tmp_path / "script.json", DELEGATION_SCRIPT)
    write(tmp_path / "flow.agentflow", DELEGATION.format(attr='on_delegate_failure = "return"'))
    result = ok(af(tmp_path, "run", "flow.agentflow"))
    assert result_json(result) == ("error: the delegated task worker.work failed: model scripted:script.json: "
                                   "scripted model (main/r/worker.work#1): the worker broke")
    nodes = show(tmp_path, last_run(tmp_path)["run_id"])
    assert nodes["main/r"]["status"] == "succeeded" and nodes["main/r/worker.work#1"]["status"] == "failed"


def test_static_delegation_still_fails_the_run_by_default(tmp_path):
    write(tmp_path / "script.json", DELEGATION_SCRIPT)
    write(tmp_path / "flow.agentflow", DELEGATION.format(attr=""))
    failed = ok(af(tmp_path, "run", "flow.agentflow"), 3)
    assert "the worker broke" in failed.stderr
    assert last_run(tmp_path)["status"] == "failed"


# ---------------------------------------------------------------- the example

def test_the_specialist_example_runs_out_of_the_box_and_a_second_run_adds_no_version(tmp_path):
    example = Path(__file__).resolve().parents[2] / "specs" / "specialist.agentflow"
    first = result_json(ok(af(tmp_path, "run", str(example))))
    assert first == {"question": "What is (2 + 3) * 4?", "answer": "20", "worked_by": "architect/math_solver"}
    nodes = show(tmp_path, last_run(tmp_path)["run_id"])
    assert ran(nodes) == {"main/report", "main/report/agent:math_solver#1"}
    assert tool_results(last_run(tmp_path)["run_id"], "main/report/agent:math_solver#1", tmp_path) == ["5", "20"]
    assert json.loads((tmp_path / ".agentflow" / "workspace" / "report.json").read_text())["answer"] == "20"
    ok(af(tmp_path, "run", str(example), "--input", "question=And again?"))
    assert len(runs(tmp_path)) == 2 and [(n, v) for n, _, v, *_ in agents(tmp_path)] == [("architect/math_solver", 1)]
    assert ok(af(tmp_path, "agents", "--tree")).stdout == (
        "architect\n└── architect/math_solver  (v1; add, multiply; its creator's model)\n")
