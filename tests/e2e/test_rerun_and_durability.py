"""Durability modes and the no-op rerun, through the real CLI: `--durability group` (the
default) lets dependents start before their inputs commit and loses at most the last commit
window to a kill; a rerun whose plan, inputs and tool code equal a finished run's does no work."""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import duckdb

from agentflow.runtime.store import Store
from runtime_support import DB, af, base_env, last_run, ok, result_json, runs, show, write

TOOLS = """
from pathlib import Path

def step(k, prev):
    with open(Path(__file__).with_name("calls.log"), "a") as f:
        f.write(f"step {k}\\n")
    return {"count": prev + k}
"""


def chain(steps: int) -> str:
    """`s{k} = step(k, s{k-1}.count)`: each step needs the one before."""
    lines = ["type Count {\n  count: int\n}\n",
             'tool step(k: int, prev: int) -> Count {\n  python = "tools:step"\n}\n',
             "choreography main(base: int = 0) -> json {", "  s0 = step(0, base)"]
    lines += [f"  s{k} = step({k}, s{k - 1}.count)" for k in range(1, steps)]
    lines += [f"  return {{last: s{steps - 1}.count, first: s0.count}}", "}"]
    return "\n".join(lines) + "\n"


def calls(cwd) -> list[str]:
    log = cwd / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


def committed_results(cwd) -> int:
    con = duckdb.connect(str(cwd / DB), read_only=True)
    try:
        return con.execute("SELECT count(*) FROM node_runs WHERE status = 'succeeded'").fetchone()[0]
    finally:
        con.close()


def project(cwd, steps: int = 30):
    write(cwd / "tools.py", TOOLS)
    write(cwd / "flow.agentflow", chain(steps))


# ---------------------------------------------------------------- durability


def test_group_durability_dependents_start_before_a_commit_and_a_kill_loses_only_that(tmp_path):
    project(tmp_path)
    # the 20th commit point: well inside the first 100 ms commit window of a 30-step chain
    killed = af(tmp_path, "run", "flow.agentflow", env=base_env(AGENTFLOW_FAULT="kill@20"))
    assert killed.returncode == -9, killed.stderr
    ran_before_kill, committed = len(calls(tmp_path)), committed_results(tmp_path)
    # steps ran one after another without waiting for their results to commit: the kill
    # lost the results not yet committed (strict durability would have committed each)
    assert committed < ran_before_kill
    with Store.open_reader(tmp_path / DB) as store:
        assert store.check_consistency() == []
    resumed = ok(af(tmp_path, "run", "flow.agentflow", "--resume"))
    assert result_json(resumed) == {"last": sum(range(30)), "first": 0}
    assert last_run(tmp_path)["status"] == "succeeded"
    # the committed steps were reused; the lost window's ran again, and every later step
    assert len(calls(tmp_path)) == ran_before_kill + 30 - committed


BUSY_TOOLS = """
import asyncio, sys, time

async def mark(i):
    if i % 100 == 0:  # a slow call (20 ms): a result worth keeping
        await asyncio.sleep(0.02)
        print(f"slow {i}", file=sys.stderr, flush=True)
        return i
    end = time.perf_counter() + 0.0001  # a trivial call: it keeps the event loop busy
    while time.perf_counter() < end:
        pass
    return i
"""

BUSY_FLOW = """
tool mark(i: int) -> int {
  python = "tools:mark"
}

choreography main(items: list[int]) -> int {
  marks = for i in items {
    yield mark(i)
  }
  return len(marks)
}
"""


def test_slow_results_commit_within_the_window_beside_an_event_loop_busy_with_trivial_calls(tmp_path):
    """The store's commit thread gets the GIL late beside a loop of trivial coroutine calls:
    results once waited 0.5-1.9 s for their commit, and a kill lost them. Trivial results may
    still wait (they cost as little to redo); a slow call's may not."""
    write(tmp_path / "tools.py", BUSY_TOOLS)
    write(tmp_path / "flow.agentflow", BUSY_FLOW)
    write(tmp_path / "in.json", json.dumps({"items": list(range(300_000))}))
    proc = subprocess.Popen([sys.executable, "-m", "agentflow", "run", "flow.agentflow", "--inputs", "in.json"],
                            cwd=tmp_path, env=base_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    finished: dict[int, float] = {}  # slow item -> when its call's line arrived
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if line.startswith("slow "):
                finished[int(line.split()[1])] = time.monotonic()
                if time.monotonic() - min(finished.values()) >= 2.5:
                    break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed_at = time.monotonic()
    assert proc.returncode == -signal.SIGKILL, "the run ended before the kill"
    assert any(killed_at - at > 0.5 for at in finished.values()), "no slow call finished in time to be checked"
    with duckdb.connect(str(tmp_path / DB), read_only=True) as con:
        stored = {int(re.search(r"\[(\d+)\]", node).group(1)) for (node,) in con.execute(
            "SELECT node_id FROM node_runs WHERE status = 'succeeded' AND node_id LIKE 'main/marks[%'").fetchall()}
    # the window is 100 ms; the commit's own time and a loaded machine add some (the lag was
    # 0.03-0.25 s here, also beside two busy processes; 0.75-2.5 s without `_keep_up`)
    late = {i: round(killed_at - at, 2) for i, at in finished.items() if killed_at - at > 0.5 and i not in stored}
    assert not late, f"slow results finished this long before the kill (s) were not committed: {late}"


def test_strict_durability_commits_each_result_before_its_dependents_start(tmp_path):
    project(tmp_path)
    killed = af(tmp_path, "run", "flow.agentflow", "--durability", "strict",
                env=base_env(AGENTFLOW_FAULT="kill@20"))
    assert killed.returncode == -9, killed.stderr
    # the begin commit, then one commit per step before the next step starts
    assert committed_results(tmp_path) == len(calls(tmp_path)) == 19


def test_durability_rejects_an_unknown_mode(tmp_path):
    project(tmp_path)
    bad = ok(af(tmp_path, "run", "flow.agentflow", "--durability", "eventual"), 2)
    assert "--durability" in bad.stderr and "eventual" in bad.stderr
    assert not (tmp_path / DB).exists()


# ---------------------------------------------------------------- no-op rerun


def test_a_rerun_of_an_unchanged_flow_does_no_work_and_prints_the_stored_value(tmp_path):
    project(tmp_path, steps=5)
    first = ok(af(tmp_path, "run", "flow.agentflow"))
    assert calls(tmp_path) and "no work to do" not in first.stderr
    before = len(calls(tmp_path))
    again = ok(af(tmp_path, "run", "flow.agentflow"))
    assert again.stdout == first.stdout  # byte for byte, key order included
    assert list(result_json(again)) == ["last", "first"]
    first_id = runs(tmp_path)[1]["run_id"]
    assert f"no work to do: plan, inputs and tool code are those of run {first_id}" in again.stderr
    assert len(calls(tmp_path)) == before  # nothing ran
    newest = last_run(tmp_path)
    assert newest["status"] == "succeeded" and newest["run_id"] != first_id
    nodes = show(tmp_path, newest["run_id"])
    assert set(nodes) == set(show(tmp_path, first_id))
    assert all(r["status"] == "succeeded" and r["cached"] and r["attempts"] == 0 for r in nodes.values())
    with Store.open_reader(tmp_path / DB) as store:
        assert store.check_consistency() == []


def test_a_no_op_rerun_leaves_its_copy_in_the_log_and_the_next_run_reads_it(tmp_path):
    """A run that did work checkpoints at its end; a no-op rerun ends without one, its copy
    durable in the database's write-ahead log, which the next open replays."""
    project(tmp_path, steps=5)
    wal = tmp_path / (DB + ".wal")
    first = ok(af(tmp_path, "run", "flow.agentflow"))
    assert not wal.exists() or wal.stat().st_size == 0
    again = ok(af(tmp_path, "run", "flow.agentflow"))
    assert "no work to do" in again.stderr and wal.stat().st_size > 0
    third = ok(af(tmp_path, "run", "flow.agentflow"))
    assert "no work to do" in third.stderr and third.stdout == first.stdout
    assert [r["status"] for r in runs(tmp_path)] == ["succeeded"] * 3
    assert set(show(tmp_path, last_run(tmp_path)["run_id"])) == set(show(tmp_path, runs(tmp_path)[2]["run_id"]))
    with Store.open_reader(tmp_path / DB) as store:
        assert store.check_consistency() == []


# `agentflow run` as the process's command line, after a finalizer that marks whether the
# interpreter's teardown ran and an atexit handler that must run all the same.
MARKED_RUN = """
import atexit, runpy, sys
from pathlib import Path

class Finalized:
    def __del__(self, mark=Path("teardown-ran").write_text):
        mark("yes")

KEEP = Finalized()
atexit.register(Path("atexit-ran").write_text, "yes")
sys.argv = ["agentflow", "run", "flow.agentflow"]
runpy.run_module("agentflow", run_name="__main__")
"""


def test_a_no_op_rerun_ends_without_the_interpreters_teardown(tmp_path):
    """It runs no user code: the teardown would only free agentflow's modules (~50-80 ms)."""
    project(tmp_path, steps=3)
    first = subprocess.run([sys.executable, "-c", MARKED_RUN], cwd=tmp_path, env=base_env(),
                           capture_output=True, text=True, timeout=60)
    assert first.returncode == 0 and "no work to do" not in first.stderr, first.stderr
    assert (tmp_path / "teardown-ran").exists() and (tmp_path / "atexit-ran").exists()  # a run that did work
    (tmp_path / "teardown-ran").unlink()
    (tmp_path / "atexit-ran").unlink()
    again = subprocess.run([sys.executable, "-c", MARKED_RUN], cwd=tmp_path, env=base_env(),
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "no work to do" in again.stderr, again.stderr
    assert again.stdout == first.stdout and again.stderr.rstrip().endswith("succeeded")
    assert (tmp_path / "atexit-ran").exists() and not (tmp_path / "teardown-ran").exists()


def test_a_change_of_input_or_tool_code_or_force_does_work_again(tmp_path):
    project(tmp_path, steps=3)
    ok(af(tmp_path, "run", "flow.agentflow"))
    other_input = ok(af(tmp_path, "run", "flow.agentflow", "--input", "base=5"))
    assert "no work to do" not in other_input.stderr and result_json(other_input)["first"] == 5
    forced = ok(af(tmp_path, "run", "flow.agentflow", "--force", "main/s1"))
    assert "no work to do" not in forced.stderr
    assert calls(tmp_path)[-1] == "step 1"
    write(tmp_path / "tools.py", TOOLS + "\n# edited\n")
    edited = ok(af(tmp_path, "run", "flow.agentflow"))
    assert "no work to do" not in edited.stderr
    dry = ok(af(tmp_path, "run", "flow.agentflow", "--dry-run"))
    assert "no work to do" not in dry.stderr and "reuse  main/s0" in dry.stdout
    assert "no work to do" in ok(af(tmp_path, "run", "flow.agentflow")).stderr
