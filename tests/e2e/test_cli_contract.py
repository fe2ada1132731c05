"""The `agentflow` command line contract (LANGUAGE.md section 6): exit codes, inputs, one
writer with readers alongside, Ctrl-C, --force, --no-cache, --dry-run, failure semantics and
`graph --run`. Every test drives real subprocesses on the scripted model."""
from __future__ import annotations

import hashlib
import json
import signal
import time

import pytest

from runtime_support import DB, af, af_start, last_run, ok, outputs, ran, result_json, reused, runs, show, stop, \
    wait_until, write

SPEC = """
defaults {
  model = "scripted:script.json"
  retries = 1
}

role a {
  replicas = 4
  task t(x: str) -> str { prompt = "T {x}" }
  task u(x: str) -> str { prompt = "U {x}" }
}

choreography main(topic: str, n: int = 1) -> json {
  first = a.t(topic)
  second = a.u(first)
  other = a.t("fixed")
  return {first: first, second: second, other: other, n: n}
}
"""
SCRIPT = {"rules": [{"contains": "boom", "error": "server", "message": "the model broke"}]}
ALL = {"main/first", "main/second", "main/other"}


@pytest.fixture
def flow(tmp_path):
    write(tmp_path / "flow.agentflow", SPEC)
    write(tmp_path / "script.json", json.dumps(SCRIPT))
    return tmp_path


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------ inputs and usage errors


def test_compile_error_exits_1(tmp_path):
    write(tmp_path / "bad.agentflow", SPEC.replace("a.u(first)", "a.u(frist)"))
    result = ok(af(tmp_path, "run", "bad.agentflow", "--input", "topic=x"), 1)
    assert "E101" in result.stderr and "frist" in result.stderr
    assert not (tmp_path / DB).exists()


@pytest.mark.parametrize("args, message", [
    (["--input", "topic=x", "--input", "n=many"], "`n`"),
    (["--input", "topic=x", "--input", "n=[1]"], "`n`"),
    (["--input", "n=3"], "missing input `topic`"),
    (["--input", "topic=x", "--input", "bogus=1"], "no parameter `bogus`"),
    (["--input", "topic=x", "--inputs", "missing.json"], "missing.json"),
    (["--input", "topic=@nowhere.txt"], "nowhere.txt"),
    (["--input", "topic=x", "--frobnicate"], "--frobnicate"),
    (["--input", "topic=x", "--detach"], "--detach applies to runs on Temporal; add --engine temporal"),
    (["--input", "topic=x", "--lookup-timeout", "5"], "--lookup-timeout applies to runs on Temporal"),
    (["--input", "topic=x", "--engine", "temporal", "--detach", "--dry-run"], "--detach applies to a run, and --dry-run"),
    (["--input", "topic=x", "--engine", "temporal", "--lookup-timeout", "-1"], "--lookup-timeout"),
])
def test_bad_inputs_exit_2_with_a_clear_message(flow, args, message):
    result = ok(af(flow, "run", "flow.agentflow", *args), 2)
    assert message in result.stderr
    assert result.stdout == ""
    assert not (flow / DB).exists()


def test_input_from_file_and_inputs_json(flow):
    write(flow / "topic.txt", "a topic\nfrom a file\n")
    value = result_json(ok(af(flow, "run", "flow.agentflow", "--input", "topic=@topic.txt", "--input", "n=5")))
    assert value["n"] == 5
    write(flow / "inputs.json", json.dumps({"topic": "a topic\nfrom a file\n", "n": 7}))
    again = result_json(ok(af(flow, "run", "flow.agentflow", "--inputs", "inputs.json")))
    assert again == {**value, "n": 7}  # the same topic text: every call reused
    assert reused(show(flow, last_run(flow)["run_id"])) == ALL
    # --input wins over --inputs
    third = result_json(ok(af(flow, "run", "flow.agentflow", "--inputs", "inputs.json", "--input", "n=9")))
    assert third["n"] == 9


# ------------------------------------------------------------------ reuse controls


def test_force_no_cache_and_dry_run_reasons(flow):
    def dry(*args):
        before = _sha(flow / DB) if (flow / DB).exists() else None
        result = ok(af(flow, "run", "flow.agentflow", "--dry-run", *args))
        after = _sha(flow / DB) if (flow / DB).exists() else None
        assert before == after, "--dry-run wrote to the database"
        return {line.split()[1]: (line.split()[0], line.split("(", 1)[1].rstrip(")"))
                for line in result.stdout.splitlines() if line.strip()}

    fresh = dry("--input", "topic=x")
    assert fresh["main/first"] == ("run", "never run") and fresh["main/other"] == ("run", "never run")
    assert fresh["main/second"][0] == "run"
    assert not (flow / DB).exists()

    ok(af(flow, "run", "flow.agentflow", "--input", "topic=x"))
    assert ran(show(flow, last_run(flow)["run_id"])) == ALL
    same = dry("--input", "topic=x")
    assert {n: d[0] for n, d in same.items()} == {n: "reuse" for n in ALL}
    changed = dry("--input", "topic=y", "--force", "main/other")
    assert changed["main/first"] == ("run", "input `x` changed")
    assert changed["main/other"] == ("run", "forced")

    # --force re-runs that node; its output is the same, so nothing downstream of it re-runs
    ok(af(flow, "run", "flow.agentflow", "--input", "topic=x", "--force", "main/first"))
    nodes = show(flow, last_run(flow)["run_id"])
    assert ran(nodes) == {"main/first"} and reused(nodes) == {"main/second", "main/other"}
    # --no-cache re-runs everything
    ok(af(flow, "run", "flow.agentflow", "--input", "topic=x", "--no-cache"))
    assert ran(show(flow, last_run(flow)["run_id"])) == ALL

    # a failed node says so; an edited prompt says its definition changed
    ok(af(flow, "run", "flow.agentflow", "--input", "topic=boom"), 3)
    spec = flow / "flow.agentflow"
    spec.write_text(spec.read_text().replace('prompt = "T {x}"', 'prompt = "T2 {x}"'))
    last = dry("--input", "topic=boom")
    assert last["main/first"] == ("run", "failed last time")
    assert last["main/other"] == ("run", "definition changed")
    assert len(runs(flow)) == 4  # the dry runs recorded nothing


def test_dry_run_decides_every_item_of_a_large_fan_out(tmp_path):
    """More items than the engine keeps in flight: every one is still decided and listed."""
    write(tmp_path / "fan.agentflow", """
tool square(x: int) -> int { python = "sq:square" }

choreography main(items: list[int], salt: int = 0) -> int {
  results = for i in items {
    yield square(i + salt)
  }
  return len(results)
}
""")
    write(tmp_path / "sq.py", "def square(x):\n    return x * x\n")
    write(tmp_path / "in.json", json.dumps({"items": list(range(3000))}))
    assert result_json(ok(af(tmp_path, "run", "fan.agentflow", "--inputs", "in.json"))) == 3000
    # salt 5 shifts every argument: items 0..2994 find the values items 5..2999 stored
    dry = ok(af(tmp_path, "run", "fan.agentflow", "--inputs", "in.json", "--input", "salt=5", "--dry-run")).stdout
    actions = {line.split()[1]: line.split()[0] for line in dry.splitlines() if line.strip()}
    assert len(actions) == 3000
    assert [n for n, a in actions.items() if a == "run"] == [f"main/results[{i}]/yield@1" for i in range(2995, 3000)]


# ------------------------------------------------------------------ failure semantics

FAIL_SPEC = """
defaults {
  model = "scripted:script.json"
  retries = 1
}

tool wait(ms: int) -> int {
  python = "tools:wait"
}

role a {
  replicas = 4
  task t(x: str) -> str { prompt = "T {x}" }
}

role fragile {
  task t(x: str) -> str { prompt = "F {x}" }
}

choreography main() -> json {
  bad = fragile.t("boom")
  slow = wait(700)
  after_bad = a.t(bad)
  after_slow = a.t("slow done") after slow
  return {after_bad: after_bad, after_slow: after_slow}
}
"""
WAIT_TOOL = """
import asyncio
from pathlib import Path

async def wait(ms):
    if not Path(__file__).with_name("fast").exists():
        await asyncio.sleep(ms / 1000)
    return ms
"""


def test_failed_node_fails_run_running_nodes_finish_nothing_downstream_and_resume(tmp_path):
    write(tmp_path / "flow.agentflow", FAIL_SPEC)
    write(tmp_path / "script.json", json.dumps(SCRIPT))
    write(tmp_path / "tools.py", WAIT_TOOL)
    result = ok(af(tmp_path, "run", "flow.agentflow"), 3)
    assert "main/bad" in result.stderr and "fragile" in result.stderr and "the model broke" in result.stderr
    run = last_run(tmp_path)
    assert run["status"] == "failed"
    nodes = show(tmp_path, run["run_id"])
    assert nodes["main/bad"]["status"] == "failed" and nodes["main/bad"]["role"] == "fragile"
    assert nodes["main/bad"]["attempts"] == 2 and "the model broke" in nodes["main/bad"]["error"]
    assert nodes["main/slow"]["status"] == "succeeded"  # it was running: it finished and was stored
    assert "main/after_bad" not in nodes or nodes["main/after_bad"]["status"] in ("pending", "cancelled")
    assert "main/after_slow" not in nodes or nodes["main/after_slow"]["status"] != "succeeded"

    # graph --run colours the instances of that run by status
    graph = ok(af(tmp_path, "graph", "flow.agentflow", "--run", run["run_id"], "--format", "json")).stdout
    statuses = {n["id"]: n.get("status") for n in json.loads(graph)["nodes"]}
    assert statuses["main/bad"] == "failed" and statuses["main/slow"] == "succeeded"
    assert ok(af(tmp_path, "graph", "flow.agentflow", "--run", "no-such-run"), 2).stderr.startswith("error:")

    # fix the cause, resume: the failed node runs again, the finished one is reused
    write(tmp_path / "script.json", json.dumps({"rules": []}))
    value = result_json(ok(af(tmp_path, "run", "flow.agentflow", "--resume")))
    assert set(value) == {"after_bad", "after_slow"}
    resumed = last_run(tmp_path)
    assert resumed["run_id"] == run["run_id"] and resumed["status"] == "succeeded"
    nodes = show(tmp_path, run["run_id"])
    assert ran(nodes) >= {"main/bad", "main/after_bad", "main/after_slow"}
    assert "main/slow" in reused(nodes)


# ------------------------------------------------------------------ a live run

LIVE_SPEC = """
defaults {
  model = "scripted"
}

tool wait(ms: int) -> int {
  python = "tools:wait"
}

role a {
  task t(x: int) -> str { prompt = "T {x}" }
}

choreography main() -> json {
  quick = wait(10)
  long = wait(20000)
  last = a.t(long)
  return {quick: quick, last: last}
}
"""


def test_live_run_readers_second_writer_ctrl_c_and_resume(tmp_path):
    write(tmp_path / "flow.agentflow", LIVE_SPEC)
    write(tmp_path / "tools.py", WAIT_TOOL)
    proc = af_start(tmp_path, "run", "flow.agentflow")
    try:
        # readers work while the run writes
        run_id = wait_until(lambda: (tmp_path / DB).exists() and runs(tmp_path, cli=True)[0]["run_id"],
                            what="the run")
        wait_until(lambda: show(tmp_path, run_id, cli=True).get("main/quick", {}).get("status") == "succeeded",
                   what="`quick` stored")
        live = runs(tmp_path)[0]
        assert live["status"] == "running" and live["live"] and live["pid"] == proc.pid
        assert show(tmp_path, run_id, cli=True)["main/long"]["status"] == "running"
        assert ok(af(tmp_path, "show", run_id)).stdout.count("main/") >= 2

        # a second writer is refused, naming the database and the pid holding it
        second = ok(af(tmp_path, "run", "flow.agentflow", "--resume"), 2)
        assert "agentflow.duckdb" in second.stderr and str(proc.pid) in second.stderr

        # Ctrl-C: exit 130, state saved, run cancelled
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 130
        assert time.monotonic() - started < 5
    finally:
        stop(proc)
    _, err = outputs(proc)
    assert "--resume" in err and "Traceback" not in err
    cancelled = runs(tmp_path)[0]
    assert cancelled["run_id"] == run_id and cancelled["status"] == "cancelled"
    nodes = show(tmp_path, run_id)
    assert nodes["main/quick"]["status"] == "succeeded" and nodes["main/long"]["status"] == "cancelled"

    # --resume completes it, reusing what had finished
    (tmp_path / "fast").touch()
    value = result_json(ok(af(tmp_path, "run", "flow.agentflow", "--resume")))
    assert value["quick"] == 10 and value["last"].startswith("scripted answer to a.t")
    done = runs(tmp_path)
    assert len(done) == 1 and done[0]["status"] == "succeeded"
    nodes = show(tmp_path, run_id)
    assert "main/quick" in reused(nodes) and {"main/long", "main/last"} <= ran(nodes)
