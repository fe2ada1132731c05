"""kill -9 of a real `agentflow run` in the middle of its work, then `--resume`: the database
opens and is consistent, nothing that finished is paid for again, and a task interrupted
between its turns continues at its turn."""
from __future__ import annotations

import signal

import duckdb

from agentflow.runtime.store import Store
from runtime_support import DB, af, af_start, assert_no_secret, llm_defaults, ok, outputs, ran, result_json, \
    reused, runs, show, stop, wait_until, write

BODY = """
tool note(text: str) -> str {
  python = "tools:note"
  description = "Writes a note."
}

role stepper {
  replicas = 4
  task step(x: str) -> str { prompt = "STEP {x}" }
}

role worker {
  tools = [note]
  task work(x: str) -> str { prompt = "WORK {x}" }
}

choreography main() -> json {
  s1 = stepper.step("one")
  s2 = stepper.step(s1)
  s3 = stepper.step(s2)
  w = worker.work("job")
  return {s3: s3, w: w}
}
"""
TOOLS = """
from pathlib import Path

def note(text):
    with open(Path(__file__).with_name("notes.log"), "a") as f:
        f.write(text + "\\n")
    return "NOTED " + text
"""


def _last_user(request: dict) -> str:
    return next(m["content"] for m in reversed(request["messages"]) if m["role"] == "user")


def test_kill_9_mid_run_then_resume(tmp_path, server):
    write(tmp_path / "tools.py", TOOLS)
    write(tmp_path / "flow.agentflow", llm_defaults(server) + BODY)
    # s2's answer and the worker's final turn are slow: the kill lands while they are in flight
    server.add_rule("STEP echo: STEP one", {"latency_ms": 8000}, times=1)
    server.add_rule("WORK job", {"tool_calls": [{"id": "call_n", "name": "note", "arguments": {"text": "x"}}]},
                    times=1)
    server.add_rule("WORK job", {"latency_ms": 8000}, times=1)

    proc = af_start(tmp_path, "run", "flow.agentflow")
    try:
        run_id = wait_until(lambda: (runs(tmp_path) or [{}])[0].get("run_id") if (tmp_path / DB).exists() else None,
                            what="the run to appear")
        # readers work while the run writes: poll `show` until s1 is stored and the worker's
        # second turn (after its tool call and tool result) is at the server
        wait_until(lambda: show(tmp_path, run_id).get("main/s1", {}).get("status") == "succeeded"
                   and sum("WORK job" == _last_user(r) for r in server.requests) == 2, timeout=30,
                   what="s1 stored and the worker in its second turn")
        assert proc.poll() is None
        # the CLI readers too, while the run writes
        live = runs(tmp_path, cli=True)[0]
        assert live["run_id"] == run_id and live["status"] == "running" and live["live"]
        assert show(tmp_path, run_id, cli=True)["main/s1"]["status"] == "succeeded"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        stop(proc)
    out, err = outputs(proc)
    assert proc.returncode == -signal.SIGKILL
    before = server.requests

    # the database opens (also to a plain DuckDB client) and is consistent
    with duckdb.connect(str(tmp_path / DB), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == 1
    with Store.open_reader(tmp_path / DB) as store:
        assert store.check_consistency() == []
    dead = runs(tmp_path)[0]
    assert dead["run_id"] == run_id and dead["status"] == "interrupted" and not dead["live"]

    resumed = ok(af(tmp_path, "run", "flow.agentflow", "--resume"))
    after = server.requests[len(before):]
    assert runs(tmp_path)[0]["run_id"] == run_id and runs(tmp_path)[0]["status"] == "succeeded"

    asked_before = [_last_user(r) for r in before]
    asked_after = [_last_user(r) for r in after]
    # s1 had finished: never asked again; each other call asked once after the resume
    assert asked_before.count("STEP one") == 1 and "STEP one" not in asked_after
    assert sorted(asked_after) == sorted(["STEP echo: STEP one", "STEP echo: STEP echo: STEP one", "WORK job"])
    # the worker resumed at its second turn: the journaled tool call and result were replayed,
    # the tool did not run again and its first turn was not paid for twice
    (work,) = [r for r in after if _last_user(r) == "WORK job"]
    assert [m["role"] for m in work["messages"]] == ["user", "assistant", "tool"]
    assert work["messages"][2]["content"] == "NOTED x"
    assert (tmp_path / "notes.log").read_text() == "x\n"
    assert asked_before.count("WORK job") == 2

    nodes = show(tmp_path, run_id)
    assert "main/s1" in reused(nodes)
    assert {"main/s2", "main/s3", "main/w"} <= ran(nodes)
    assert result_json(resumed) == {"s3": "echo: STEP echo: STEP echo: STEP one", "w": "echo: WORK job"}
    with Store.open_reader(tmp_path / DB) as store:
        assert store.check_consistency() == []
    assert_no_secret(tmp_path / DB, out, err, resumed.stdout, resumed.stderr)
