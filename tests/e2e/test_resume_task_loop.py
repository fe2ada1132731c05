"""Resume inside the task loop (real `agentflow run` subprocesses, a real DuckDB file, `kill -9`
and Ctrl-C of the real process): a resumed run gives exactly what an uninterrupted run gives.

- A `session` role's memory is rebuilt in program order on resume: calls that finished are
  reused (not asked again), and the stored session holds each call once.
- A model turn that asked for several tools runs every one of them before the next turn, also
  when the process died while one of them ran.
- Tool results are matched to the calls of the current turn only (ids repeat across calls), and
  `max_turns` bounds a model that never stops calling tools.
"""
from __future__ import annotations

import json
import signal
from pathlib import Path

import duckdb
import pytest

from agentflow.runtime.store import Store
from runtime_support import DB, af, af_start, last_run, llm_defaults, ok, outputs, result_json, runs, show, \
    stop, wait_until, write

# A tool that blocks while the file `hold-<x>` exists, after writing `waiting-<x>`: a test
# kills the run at that precise point. Every start and end is logged to tools.log.
TOOLS = """
import asyncio
from pathlib import Path

HERE = Path(__file__).parent

def log(line):
    with open(HERE / "tools.log", "a") as f:
        f.write(line + "\\n")

async def gate(x):
    log(f"start {x}")
    if (HERE / f"hold-{x}").exists():
        (HERE / f"waiting-{x}").write_text("")
        while (HERE / f"hold-{x}").exists():
            await asyncio.sleep(0.05)
    log(f"end {x}")
    return f"GATE {x}"
"""


def _flow(tmp: Path, spec: str, rules: list[dict] | None = None) -> Path:
    write(tmp / "flow.agentflow", spec)
    write(tmp / "tools.py", TOOLS)
    if rules is not None:
        write(tmp / "script.json", json.dumps({"rules": rules}))
    return tmp


def _tool_log(tmp: Path) -> list[str]:
    path = tmp / "tools.log"
    return path.read_text().splitlines() if path.exists() else []


def _interrupt_at_gate(tmp: Path, gate: str, sig: int = signal.SIGKILL) -> tuple[str, int]:
    """Starts the run, waits until the tool call `gate` blocks, then sends `sig`:
    (the run's id, the exit status). The gate is open again afterwards. Strict durability: what
    these tests count is every step journaled before the gate (a group-commit run may lose the
    last 100 ms of them, which the resume matrix covers)."""
    (tmp / f"hold-{gate}").write_text("")
    proc = af_start(tmp, "run", "flow.agentflow", "--durability", "strict")
    try:
        wait_until(lambda: (tmp / f"waiting-{gate}").exists() or proc.poll() is not None, timeout=60,
                   what=f"the tool call {gate} to block")
        assert proc.poll() is None, outputs(proc)
        proc.send_signal(sig)
        proc.wait(30)
    finally:
        stop(proc)
        (tmp / f"hold-{gate}").unlink()
    outputs(proc)
    return last_run(tmp)["run_id"], proc.returncode


def _llm_calls(tmp: Path, run_id: str) -> int:
    with duckdb.connect(str(tmp / DB), read_only=True) as con:
        return con.execute("SELECT count(*) FROM llm_calls WHERE run_id = $1", [run_id]).fetchone()[0]


def _session(tmp: Path, run_id: str, role: str) -> list:
    with Store.open_reader(tmp / DB) as store:
        assert store.check_consistency() == []
        return store.load_session(run_id, role)


# ---------------------------------------------------------------- 1. session memory across a crash

SCRIBE = """
defaults {
  model = "scripted:script.json"
}

tool gate(x: str) -> str {
  python = "tools:gate"
}

role scribe {
  memory = "session"
  tools = [gate]
  task note(x: str) -> str { prompt = "NOTE {x}" }
}
"""

SESSION_SPEC = SCRIBE + """

choreography main() -> json {
  a = scribe.note("a")
  b = scribe.note("b")
  c = scribe.note("c")
  d = scribe.note("d")
  return {a: a, b: b, c: c, d: d}
}
"""
# c asks for the gate (where the test kills the run); every answer is synthesized from a hash
# of the whole request: a call that saw another session would answer differently.
SESSION_RULES = [{"node": "main/c", "turn": 1, "tool_calls": [{"name": "gate", "arguments": {"x": "c"}}]}]


def test_a_session_role_killed_mid_call_resumes_to_the_uninterrupted_result(tmp_path):
    plain = _flow(tmp_path / "plain", SESSION_SPEC, SESSION_RULES)
    expected = ok(af(plain, "run", "flow.agentflow")).stdout
    plain_run = last_run(plain)["run_id"]

    crash = _flow(tmp_path / "crash", SESSION_SPEC, SESSION_RULES)
    run_id, status = _interrupt_at_gate(crash, "c")
    assert status == -signal.SIGKILL
    resumed = ok(af(crash, "run", "flow.agentflow", "--resume"))
    assert last_run(crash)["run_id"] == run_id

    assert resumed.stdout == expected
    assert json.dumps(_session(crash, run_id, "scribe")) == json.dumps(_session(plain, plain_run, "scribe"))
    assert [call[0]["content"] for call in _session(crash, run_id, "scribe")] == [
        "NOTE a", "NOTE b", "NOTE c", "NOTE d"]
    # a and b were not asked again, c resumed at its second turn: nothing paid twice
    assert _llm_calls(crash, run_id) == _llm_calls(plain, plain_run) == 5
    # a second resume of the finished run changes nothing and asks nothing
    again = ok(af(crash, "run", "flow.agentflow", "--resume", run_id))
    assert again.stdout == expected
    assert json.dumps(_session(crash, run_id, "scribe")) == json.dumps(_session(plain, plain_run, "scribe"))
    assert _llm_calls(crash, run_id) == 5


UNCACHED_SPEC = """
defaults {
  model = "scripted"
}

role scribe {
  memory = "session"
  task note(x: str) -> str {
    prompt = "NOTE {x}"
    cache = false
  }
}

choreography main() -> json {
  a = scribe.note("a")
  b = scribe.note("b")
  return [a, b]
}
"""


def test_a_call_that_died_after_journaling_its_session_step_adds_it_once(tmp_path):
    """The process died after call a journaled what it adds to its session, before its result
    was stored. That window is too short to hit with a kill, so the state a crash leaves there
    is made through the store: a is running again, its journal complete. The resumed call
    continues from its journal (no model call) and journals its session step once, so every
    later reuse replays it once."""
    flow = _flow(tmp_path, UNCACHED_SPEC)
    expected = result_json(ok(af(flow, "run", "flow.agentflow")))
    run_id = last_run(flow)["run_id"]
    with Store.open_writer(flow / DB) as store:
        key = store.run_progress(run_id)["main/a"].key
        store.node_started(run_id, "main/a", role="scribe", key=key)
        store.flush()

    for _ in range(2):  # the resume that re-enters a, then one that reuses it
        assert result_json(ok(af(flow, "run", "flow.agentflow", "--resume", run_id))) == expected
        assert [call[0]["content"] for call in _session(flow, run_id, "scribe")] == ["NOTE a", "NOTE b"]
    assert _llm_calls(flow, run_id) == 2


# ---------------------------------------------------------------- 2. a turn that asked for several tools

TOOLS_SPEC = """
tool gate(x: str) -> str {
  python = "tools:gate"
}

role worker {
  tools = [gate]
  task work(x: str) -> str { prompt = "WORK {x}" }
}

choreography main() -> json {
  w = worker.work("job")
  return w
}
"""
THREE_CALLS = [{"name": "gate", "arguments": {"x": str(n)}} for n in (1, 2, 3)]


@pytest.mark.parametrize("sig, code", [(signal.SIGKILL, -signal.SIGKILL), (signal.SIGINT, 130)],
                         ids=["kill-9", "ctrl-c"])
def test_a_turn_interrupted_in_its_second_tool_runs_the_rest_on_resume(tmp_path, sig, code):
    rules = [{"turn": 1, "tool_calls": THREE_CALLS}, {"turn": 2, "echo": "last"}]
    flow = _flow(tmp_path, 'defaults {\n  model = "scripted:script.json"\n}\n' + TOOLS_SPEC, rules)
    run_id, status = _interrupt_at_gate(flow, "2", sig)
    assert status == code
    assert _tool_log(flow) == ["start 1", "end 1", "start 2"]

    resumed = ok(af(flow, "run", "flow.agentflow", "--resume"))
    assert last_run(flow)["run_id"] == run_id
    # the final answer comes after all three results (echo of the last), not after tool 1's
    assert result_json(resumed) == "GATE 3"
    assert _tool_log(flow) == ["start 1", "end 1", "start 2", "start 2", "end 2", "start 3", "end 3"]
    assert _llm_calls(flow, run_id) == 2


def test_a_resumed_turn_sends_a_reply_for_every_tool_call_through_litellm(tmp_path, server):
    calls = [{**call, "id": f"call_{n}"} for n, call in enumerate(THREE_CALLS, start=1)]
    server.add_rule("WORK job", {"tool_calls": calls}, times=1)
    flow = _flow(tmp_path, llm_defaults(server) + TOOLS_SPEC)
    run_id, status = _interrupt_at_gate(flow, "2")
    assert status == -signal.SIGKILL
    before = len(server.requests)

    ok(af(flow, "run", "flow.agentflow", "--resume"))
    (request,) = server.requests[before:]  # the first turn is not asked again
    messages = request["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "tool", "tool"]
    assert [c["id"] for c in messages[1]["tool_calls"]] == ["call_1", "call_2", "call_3"]
    assert [(m["tool_call_id"], m["content"]) for m in messages[2:]] == [
        ("call_1", "GATE 1"), ("call_2", "GATE 2"), ("call_3", "GATE 3")]
    assert _tool_log(flow).count("end 2") == 1 and _tool_log(flow).count("start 1") == 1
    assert runs(flow)[0]["status"] == "succeeded"


DELEGATION_SPEC = """
defaults {
  model = "scripted:script.json"
}

tool gate(x: str) -> str {
  python = "tools:gate"
}

role helper {
  tools = [gate]
  task assist(q: str) -> str { prompt = "ASSIST {q}" }
}

role boss {
  tools = [helper.assist]
  task lead(q: str) -> str { prompt = "LEAD {q}" }
}

choreography main() -> json {
  w = boss.lead("team")
  return w
}
"""
DELEGATION_RULES = [
    {"task": "boss.lead", "turn": 1, "tool_calls": [{"name": "helper__assist", "arguments": {"q": "1"}},
                                                    {"name": "helper__assist", "arguments": {"q": "2"}}]},
    {"task": "helper.assist", "turn": 1, "contains": "ASSIST 1", "tool_calls": [{"name": "gate", "arguments": {"x": "1"}}]},
    {"task": "helper.assist", "turn": 1, "contains": "ASSIST 2", "tool_calls": [{"name": "gate", "arguments": {"x": "2"}}]},
    {"turn": 2, "echo": "last"}]


def test_a_turn_interrupted_in_its_second_delegation_resumes_that_delegation(tmp_path):
    """The second delegated call keeps its node id (`#2`) on resume, so it continues from its own
    journal (its first turn is not paid twice) instead of starting over as `#1`."""
    flow = _flow(tmp_path, DELEGATION_SPEC, DELEGATION_RULES)
    run_id, status = _interrupt_at_gate(flow, "2")
    assert status == -signal.SIGKILL

    assert result_json(ok(af(flow, "run", "flow.agentflow", "--resume"))) == "GATE 2"
    nodes = show(flow, run_id)
    assert {n: nodes[n]["status"] for n in nodes} == {
        "main/w": "succeeded", "main/w/helper.assist#1": "succeeded", "main/w/helper.assist#2": "succeeded"}
    assert _llm_calls(flow, run_id) == 2 + 2 + 2  # boss, then each helper: a tool turn and an answer
    assert _tool_log(flow) == ["start 1", "end 1", "start 2", "start 2", "end 2"]


# ---------------------------------------------------------------- 3. repeating tool-call ids, max_turns

REPEAT_SPEC = SCRIBE + """

choreography main() -> json {
  a = scribe.note("a")
  b = scribe.note("b")
  return [a, b]
}
"""


def test_tool_call_ids_that_repeat_across_session_calls_do_not_hang(tmp_path):
    # the scripted model's ids are call_<turn>_<i>: both calls ask for call_1_1
    rules = [{"turn": 1, "tool_calls": [{"name": "gate", "arguments": {"x": "x"}}]}, {"turn": 2, "echo": "last"}]
    flow = _flow(tmp_path, REPEAT_SPEC, rules)
    result = ok(af(flow, "run", "flow.agentflow", timeout=30))
    assert result_json(result) == ["GATE x", "GATE x"]
    assert _tool_log(flow) == ["start x", "end x"] * 2


def test_a_model_that_never_stops_calling_tools_fails_with_max_turns(tmp_path):
    # a answers after one tool call; b calls the tool on every turn, with the ids a used too
    rules = [{"node": "main/a", "turn": 2, "echo": "last"},
             {"tool_calls": [{"name": "gate", "arguments": {"x": "x"}}]}]
    flow = _flow(tmp_path, REPEAT_SPEC, rules)
    failed = ok(af(flow, "run", "flow.agentflow", timeout=30), 3)
    assert "main/b" in failed.stderr and "max_turns" in failed.stderr
    run_id = last_run(flow)["run_id"]
    assert _llm_calls(flow, run_id) == 2 + 8  # a's two turns, b's default max_turns of 8
    assert _tool_log(flow).count("end x") == 1 + 8
