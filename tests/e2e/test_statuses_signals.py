"""Statuses that are always final and signals that stop a run cleanly: SIGTERM behaves like
Ctrl-C (exit 143 instead of 130), a run whose process died reads `interrupted`, no node is
left `running` once a run has ended, and a rerun that reuses everything says so for the
`for`/`repeat`/sub-choreography nodes too. Real `agentflow` subprocesses, a real DuckDB file,
real signals."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import duckdb
import pytest

from agentflow.compiler.pipeline import compile_source, read_source
from agentflow.runtime.engine import RunOptions
from agentflow.runtime.history import list_runs
from agentflow.runtime.progress import SilentReporter
from agentflow.runtime.runner import RunRequest, execute, run_stoppable
from agentflow.runtime.store import Store, StoreError
from runtime_support import DB, af, af_start, ok, outputs, result_json, runs, show, stop, wait_until, write

SPEC = """
defaults {
  model = "scripted"
}

tool hold(name: str, text: str) -> str {
  python = "tools:hold"
}

tool check(x: str) -> str {
  python = "tools:check"
}

role a {
  replicas = 4
  task t(x: str) -> str { prompt = "T {x}" }
}

choreography pair(x: str) -> str {
  first = a.t(x)
  return check(first)
}

choreography main(items: list[str]) -> json {
  each = for item in items {
    answer = a.t(item)
    held = hold(item, answer)
    yield held
  }
  loop = repeat max 2 until done == "ok" {
    done = check(a.t("loop"))
  }
  sub = pair("sub")
  return {each: each, loop: loop.done, sub: sub}
}
"""
# `hold` marks that it started, then waits for a `go` file; a `fail-<x>` file makes it fail.
TOOLS = """
import asyncio
from pathlib import Path

HERE = Path(__file__).parent


async def hold(name, text):
    (HERE / f"started-{name}").touch()
    while not (HERE / "go").exists():
        await asyncio.sleep(0.02)
    if (HERE / f"fail-{name}").exists():
        raise ValueError(f"boom {name}")
    return "held " + text


def check(x):
    return "ok"
"""
INPUTS = ("--input", 'items=["p", "q"]')
STRUCTURES = {"main/each", "main/loop", "main/sub"}


def _flow(tmp_path: Path, *markers: str) -> Path:
    write(tmp_path / "flow.agentflow", SPEC)
    write(tmp_path / "tools.py", TOOLS)
    for marker in markers:
        (tmp_path / marker).touch()
    return tmp_path


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The result of an uninterrupted run, to compare resumed runs with."""
    path = _flow(tmp_path_factory.mktemp("reference"), "go")
    return result_json(ok(af(path, "run", "flow.agentflow", *INPUTS)))


def _graph_statuses(cwd: Path, run_id: str) -> dict[str, str]:
    """`graph --run` as JSON: instance node id -> its colour's status (the legend left out)."""
    text = ok(af(cwd, "graph", "flow.agentflow", "--run", run_id, "--format", "json")).stdout
    return {n["id"]: n["status"] for n in json.loads(text)["nodes"] if n["kind"] != "status" and n["status"]}


def _run_id(cwd: Path) -> str | None:
    """The newest run's id; None while its database does not exist or is being created."""
    try:
        found = runs(cwd)
    except StoreError:
        return None
    return found[0]["run_id"] if found else None


def _start_and_hold(tmp_path: Path):
    """Starts a run and returns (process, run id) once both `hold` calls are waiting and the
    independent structures have finished."""
    proc = af_start(tmp_path, "run", "flow.agentflow", *INPUTS)
    run_id = wait_until(lambda: _run_id(tmp_path), what="the run")
    wait_until(lambda: (tmp_path / "started-p").exists() and (tmp_path / "started-q").exists()
               and show(tmp_path, run_id).get("main/sub", {}).get("status") == "succeeded"
               and show(tmp_path, run_id).get("main/loop", {}).get("status") == "succeeded",
               what="both holds waiting")
    assert proc.poll() is None
    return proc, run_id


def _assert_nothing_running(cwd: Path, run_id: str) -> dict[str, dict]:
    nodes = show(cwd, run_id, cli=True)
    assert not [n for n, r in nodes.items() if r["status"] == "running"], nodes
    assert "running" not in _graph_statuses(cwd, run_id).values()
    return nodes


def _resume_matches(cwd: Path, run_id: str, reference: dict) -> None:
    (cwd / "go").touch()
    for marker in cwd.glob("fail-*"):
        marker.unlink()
    assert result_json(ok(af(cwd, "run", "flow.agentflow", *INPUTS, "--resume"))) == reference
    done = runs(cwd, cli=True)
    assert [(r["run_id"], r["status"]) for r in done] == [(run_id, "succeeded")]
    nodes = _assert_nothing_running(cwd, run_id)
    assert all(r["status"] == "succeeded" for r in nodes.values()), nodes
    with Store.open_reader(cwd / DB) as store:
        assert store.check_consistency() == []


@pytest.mark.parametrize("signum, code, said", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")])
def test_a_signal_cancels_the_run_saves_its_state_and_resume_completes_it(tmp_path, reference, signum, code, said):
    _flow(tmp_path)
    proc, run_id = _start_and_hold(tmp_path)
    try:
        proc.send_signal(signum)
        assert proc.wait(15) == code
    finally:
        stop(proc)
    _, err = outputs(proc)
    assert "Traceback" not in err
    message = err.strip().splitlines()[-1]
    assert message.startswith(said) and "state saved" in message and "--resume" in message, err

    (run,) = runs(tmp_path, cli=True)
    assert run["run_id"] == run_id and run["status"] == "cancelled"
    nodes = _assert_nothing_running(tmp_path, run_id)
    assert nodes["main/each"]["status"] == "cancelled"
    assert nodes["main/each[0]/held"]["status"] == "cancelled"
    assert nodes["main/loop"]["status"] == "succeeded" and nodes["main/sub"]["status"] == "succeeded"
    _resume_matches(tmp_path, run_id, reference)


def test_a_failed_run_leaves_no_node_running_and_its_for_node_failed(tmp_path, reference):
    _flow(tmp_path, "go", "fail-q")
    result = ok(af(tmp_path, "run", "flow.agentflow", *INPUTS), 3)
    assert "boom q" in result.stderr
    (run,) = runs(tmp_path, cli=True)
    assert run["status"] == "failed"
    nodes = _assert_nothing_running(tmp_path, run["run_id"])
    assert nodes["main/each[1]/held"]["status"] == "failed"
    assert nodes["main/each"]["status"] == "failed"
    assert nodes["main/each[0]/held"]["status"] == "succeeded"
    assert _graph_statuses(tmp_path, run["run_id"])["main/each"] == "failed"
    _resume_matches(tmp_path, run["run_id"], reference)


def test_a_failure_inside_a_sub_choreography_and_a_repeat_fails_them(tmp_path):
    write(tmp_path / "flow.agentflow", """
        defaults {
          model = "scripted"
        }

        tool bad(x: str) -> str {
          python = "tools:bad"
        }

        choreography inner(x: str) -> str {
          return bad(x)
        }

        choreography main() -> json {
          loop = repeat max 2 until v == "ok" {
            v = inner("in loop")
          }
          return loop
        }
        """)
    write(tmp_path / "tools.py", "def bad(x):\n    raise ValueError('bad ' + x)\n")
    ok(af(tmp_path, "run", "flow.agentflow"), 3)
    (run,) = runs(tmp_path, cli=True)
    nodes = _assert_nothing_running(tmp_path, run["run_id"])
    assert {n: r["status"] for n, r in nodes.items()} == {
        "main/loop": "failed", "main/loop#1/v": "failed", "main/loop#1/v/return@1": "failed"}


def test_a_killed_run_reads_interrupted_a_live_one_running_and_resume_completes_it(tmp_path, reference):
    _flow(tmp_path)
    proc, run_id = _start_and_hold(tmp_path)
    try:
        # really running: `running`, in the CLI's JSON and text, and its nodes too
        (live,) = runs(tmp_path, cli=True)
        assert live["status"] == "running" and live["live"]
        assert show(tmp_path, run_id, cli=True)["main/each[0]/held"]["status"] == "running"
        assert "running" in ok(af(tmp_path, "show", run_id)).stdout.splitlines()[0]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        stop(proc)

    # dead: `interrupted` once the lock holder is gone, before any other writer came by
    (dead,) = runs(tmp_path, cli=True)
    assert dead["run_id"] == run_id and dead["status"] == "interrupted" and not dead["live"]
    assert "interrupted" in ok(af(tmp_path, "runs")).stdout
    assert "interrupted" in ok(af(tmp_path, "show", run_id)).stdout.splitlines()[0]
    nodes = _assert_nothing_running(tmp_path, run_id)
    assert nodes["main/each[0]/held"]["status"] == "cancelled"
    with Store.open_reader(tmp_path / DB) as store:  # as `agentflow ui` colours them
        assert store.run_statuses(run_id) == {n: (r["status"], r["cached"]) for n, r in nodes.items()}

    # the next writer records it: the public view says so too
    ok(af(tmp_path, "run", "flow.agentflow", "--entry", "pair", "--input", "x=other"))
    with duckdb.connect(str(tmp_path / DB), read_only=True) as con:
        assert con.execute("SELECT status FROM runs WHERE run_id = $1", [run_id]).fetchone() == ("interrupted",)
        assert con.execute("SELECT count(*) FROM node_runs WHERE status = 'running'").fetchone() == (0,)
    with Store.open_reader(tmp_path / DB) as store:
        assert store.check_consistency() == []

    (tmp_path / "go").touch()
    resumed = ok(af(tmp_path, "run", "flow.agentflow", *INPUTS, "--resume", run_id))
    assert result_json(resumed) == reference
    assert {r["run_id"]: r["status"] for r in runs(tmp_path, cli=True)}[run_id] == "succeeded"


def test_a_full_reuse_rerun_shows_every_node_reused_and_counts_them_alike(tmp_path):
    _flow(tmp_path, "go")
    ok(af(tmp_path, "run", "flow.agentflow", *INPUTS))
    rerun = ok(af(tmp_path, "run", "flow.agentflow", *INPUTS))
    run = runs(tmp_path, cli=True)[0]
    nodes = show(tmp_path, run["run_id"], cli=True)
    assert STRUCTURES <= set(nodes)
    assert {n for n, r in nodes.items() if not r["cached"]} == set(), nodes
    # nothing changed: the finished run is copied whole, and `run` says so
    assert rerun.stderr.strip().splitlines()[-2].startswith("no work to do: "), rerun.stderr
    assert run["nodes"] == run["cached"] == len(nodes)


def test_a_structure_with_a_node_that_ran_is_not_reused(tmp_path):
    _flow(tmp_path, "go")
    ok(af(tmp_path, "run", "flow.agentflow", *INPUTS))
    ok(af(tmp_path, "run", "flow.agentflow", "--input", 'items=["p", "r"]'))
    nodes = show(tmp_path, runs(tmp_path)[0]["run_id"])
    assert not nodes["main/each"]["cached"] and nodes["main/each[1]/held"]["status"] == "succeeded"
    assert nodes["main/loop"]["cached"] and nodes["main/sub"]["cached"]


def test_sigterm_as_the_run_begins_leaves_it_cancelled_not_running(tmp_path):
    """In this process: SIGTERM lands at the run's first wait (while it records its start),
    before any node: `run_stoppable` reports it and the run is recorded cancelled."""
    _flow(tmp_path, "go")
    plan = compile_source(read_source(tmp_path / "flow.agentflow")).plan
    options = RunOptions(run_id="", spec_dir=tmp_path, workspace=tmp_path / "workspace")
    request = RunRequest(plan=plan.data, plan_hash=plan.plan_hash, inputs={"items": ["p"]},
                         db_path=tmp_path / DB, options=options)

    async def signalled_run():
        os.kill(os.getpid(), signal.SIGTERM)  # handled once this task first waits
        return await execute(request, SilentReporter())

    _, terminated = run_stoppable(signalled_run())
    assert terminated
    (run,) = list_runs(str(tmp_path / DB))
    assert run["status"] == "cancelled" and run["nodes"] == 0


def test_a_for_over_an_empty_list_reused_nothing(tmp_path):
    _flow(tmp_path, "go")
    for _ in range(2):
        ok(af(tmp_path, "run", "flow.agentflow", "--input", "items=[]"))
        each = show(tmp_path, runs(tmp_path)[0]["run_id"])["main/each"]
        assert each["status"] == "succeeded" and not each["cached"]


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_during_a_command_tool_stops_the_run_without_a_traceback(tmp_path, signum, code):
    write(tmp_path / "flow.agentflow", """
        tool nap(seconds: str) -> str {
          command = ["python", "-c", "import pathlib, time; pathlib.Path('napping').touch(); time.sleep(float('{seconds}'))"]
        }
        choreography main() -> str {
          a = nap("30")
          return a
        }
        """)
    proc = af_start(tmp_path, "run", "flow.agentflow")
    try:
        wait_until(lambda: list(tmp_path.rglob("napping")), what="the command to start")
        proc.send_signal(signum)
        proc.wait(30)
    finally:
        stop(proc)
    _, err = outputs(proc)
    assert proc.returncode == code, err
    assert "Traceback" not in err and "never retrieved" not in err, err


def test_a_node_kept_from_starting_by_a_failure_ends_the_run_with_that_failure(tmp_path):
    """With one slot, `good` waits while `bad` fails, then never starts; the result waits on
    `good`, yet the run fails with `bad`'s failure (exit 3), not a traceback."""
    write(tmp_path / "two.agentflow", """
        defaults {
          model = "scripted"
        }

        tool read(path: str) -> str {
          builtin = "fs.read"
        }

        role a {
          task t(x: str) -> str { prompt = "T {x}" }
        }

        choreography main() -> str {
          bad = read("missing.txt")
          good = a.t("x")
          return good
        }
    """)
    result = ok(af(tmp_path, "run", "two.agentflow", "--concurrency", "1"), 3)
    assert "failed at main/bad: tool read: no such file: missing.txt" in result.stderr
    assert show(tmp_path, runs(tmp_path)[0]["run_id"])["main/bad"]["status"] == "failed"
