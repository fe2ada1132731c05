"""Reuse and resume at the edges of a task's journal and of session memory (scripted model):
a failed call re-run by `--resume` starts over with its full budget of repairs, and a rerun
of a flow with a `session` role reuses every call (the reused calls' conversations join the
new run's session, so later calls' keys match)."""
from __future__ import annotations

import json

from agentflow.runtime.store import Store
from runtime_support import DB, af, last_run, ok, ran, result_json, reused, show, write

REPAIR_SPEC = """
defaults {
  model = "scripted:script.json"
  retries = 1
}

type Score {
  score: int
}

role judge {
  task rate(q: str) -> Score { prompt = "RATE {q}" }
}

choreography main() -> json {
  s = judge.rate("x")
  return s
}
"""


def test_resume_of_a_failed_call_starts_it_over(tmp_path):
    write(tmp_path / "flow.agentflow", REPAIR_SPEC)
    write(tmp_path / "script.json", json.dumps({"rules": [{"node": "main/s", "raw": "not json"}]}))
    failed = ok(af(tmp_path, "run", "flow.agentflow"), 3)
    assert "did not match" in failed.stderr
    run_id = last_run(tmp_path)["run_id"]
    # the model answers well from its first request on: the resumed call must ask it again
    # (not replay the failed attempt's answers and give up on its spent repair budget)
    write(tmp_path / "script.json", json.dumps({"rules": [
        {"node": "main/s", "turn": 1, "content": {"score": 4}},
        {"node": "main/s", "raw": "still not json"}]}))
    resumed = ok(af(tmp_path, "run", "flow.agentflow", "--resume"))
    assert result_json(resumed) == {"score": 4}
    assert last_run(tmp_path)["run_id"] == run_id
    with Store.open_reader(tmp_path / DB) as store:
        assert store.check_consistency() == []


SESSION_SPEC = """
defaults {
  model = "scripted"
}

role scribe {
  memory = "session"
  task note(x: str) -> str { prompt = "NOTE {x}" }
}

choreography main(items: list[str]) -> json {
  a = scribe.note("one")
  b = scribe.note("two")
  each = for it in items {
    n = scribe.note(it)
    yield n
  }
  return {a: a, b: b, each: each}
}
"""


def test_rerun_of_a_session_flow_reuses_every_call(tmp_path):
    write(tmp_path / "flow.agentflow", SESSION_SPEC)
    args = ("run", "flow.agentflow", "--input", 'items=["p", "q"]')
    first = result_json(ok(af(tmp_path, *args)))
    calls = {"main/a", "main/b", "main/each[0]/n", "main/each[1]/n"}
    assert calls <= ran(show(tmp_path, last_run(tmp_path)["run_id"]))
    # the scripted answer is a hash of the whole request: a call that saw another transcript
    # would answer differently
    assert len({first["a"], first["b"], *first["each"]}) == 4

    dry = ok(af(tmp_path, *args, "--dry-run")).stdout
    assert all(line.startswith("reuse") for line in dry.splitlines()), dry
    second = result_json(ok(af(tmp_path, *args)))
    assert second == first
    run = last_run(tmp_path)
    assert reused(show(tmp_path, run["run_id"])) >= calls
    with Store.open_reader(tmp_path / DB) as store:
        # the new run's session holds all four calls, in program order
        session = store.load_session(run["run_id"], "scribe")
        assert [call[0]["content"] for call in session] == ["NOTE one", "NOTE two", "NOTE p", "NOTE q"]

    # a changed item re-runs its own call and the ones after it, which saw it in the session
    third = result_json(ok(af(tmp_path, "run", "flow.agentflow", "--input", 'items=["P", "q"]')))
    nodes = show(tmp_path, last_run(tmp_path)["run_id"])
    assert {"main/a", "main/b"} <= reused(nodes)
    assert {"main/each[0]/n", "main/each[1]/n"} <= ran(nodes)
    assert third["a"] == first["a"] and third["each"][1] != first["each"][1]


ORDER_SPEC = """
defaults {
  model = "scripted"
}

tool slow(x: str) -> str {
  python = "tools:slow"
}

role scribe {
  memory = "session"
  task note(x: str) -> str { prompt = "NOTE {x}" }
}

choreography main() -> json {
  ready = slow("one")
  a = scribe.note(ready)
  b = scribe.note("two")
  return [a, b]
}
"""


def test_session_calls_of_sibling_bindings_follow_program_order(tmp_path):
    write(tmp_path / "flow.agentflow", ORDER_SPEC)
    write(tmp_path / "tools.py", "import asyncio\n\nasync def slow(x):\n    await asyncio.sleep(0.3)\n    return x\n")
    ok(af(tmp_path, "run", "flow.agentflow"))
    with Store.open_reader(tmp_path / DB) as store:
        session = store.load_session(last_run(tmp_path)["run_id"], "scribe")
    assert [call[0]["content"] for call in session] == ["NOTE one", "NOTE two"]
