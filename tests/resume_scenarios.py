"""The resume matrix's scenarios and what a run leaves, shared by the local engine's matrix
(`tests/e2e/test_resume_matrix.py`) and Temporal's (`tests/temporal/test_temporal_resume_matrix.py`).

Each scenario is a small spec on the scripted model. `observe` reads what a finished run left
(its printed result, node rows, stored sessions and the calls paid), so an interrupted and
resumed run can be compared with an uninterrupted one field by field.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import duckdb

DB = ".agentflow/agentflow.duckdb"

TOOLS = """
from pathlib import Path

def mark(x):
    with open(Path(__file__).with_name("calls.log"), "a") as f:
        f.write(f"mark {x}\\n")
    return f"marked {x}"
"""

HEAD = """
defaults {
  model = "scripted:script.json"
  retries = 1
}

tool mark(x: str) -> str {
  python = "tools:mark"
  description = "Marks a value (and counts the call)."
}

role w {
  task ask(q: str = "start") -> str { prompt = "ASK {q}" }
}
"""


@dataclass(frozen=True)
class Scenario:
    body: str
    rules: tuple = ()
    fails_at: str = ""  # the node whose model call fails in the "failing node" stop


SCENARIOS = {
    "plain task": Scenario("""
        choreography main() -> json {
          a = w.ask("one")
          t = mark(a)
          b = w.ask(t)
          return {a: a, b: b}
        }
        """, fails_at="main/b"),
    "session role": Scenario("""
        role s {
          memory = "session"
          task say(q: str) -> str { prompt = "SAY {q}" }
        }
        choreography main() -> json {
          a = s.say("a")
          b = s.say("b")
          c = s.say(b)
          return [a, b, c]
        }
        """, fails_at="main/c"),
    "multi-tool turn": Scenario("""
        role m {
          tools = [mark]
          task work(q: str) -> str { prompt = "WORK {q}" }
        }
        choreography main() -> json {
          r = m.work("go")
          return r
        }
        """, rules=(
        {"task": "m.work", "turn": 1, "tool_calls": [{"name": "mark", "arguments": {"x": str(n)}} for n in (1, 2, 3)]},
        {"task": "m.work", "turn": 2, "content": "three marks done"},
    ), fails_at="main/r"),
    "delegation": Scenario("""
        role helper {
          task assist(q: str) -> str { prompt = "ASSIST {q}" }
        }
        role boss {
          tools = [helper.assist]
          task lead(q: str) -> str { prompt = "LEAD {q}" }
        }
        choreography main() -> json {
          r = boss.lead("plan")
          return r
        }
        """, rules=(
        {"task": "boss.lead", "turn": 1, "tool_calls": [{"name": "helper__assist", "arguments": {"q": "part"}}]},
        {"task": "boss.lead", "turn": 2, "echo": "last"},
    ), fails_at="main/r/helper.assist#1"),
    "repeat": Scenario("""
        choreography main() -> json {
          loop = repeat max 3 until x == "never" {
            x = w.ask(prev.t)
            t = mark(x)
          }
          return loop
        }
        """, fails_at="main/loop#2/x"),
    "sub-choreography": Scenario("""
        choreography twice(q: str) -> str {
          a = w.ask(q)
          b = w.ask(a)
          return b
        }
        choreography main() -> json {
          r = twice("x")
          s = twice(r)
          return [r, s]
        }
        """, fails_at="main/s/b"),
}

@dataclass
class Observed:
    """What a finished run left: its printed result, node rows, sessions and paid calls."""

    result: str
    nodes: dict
    sessions: list
    model_calls: dict  # node id -> model calls paid, over every run of the database
    tool_calls: list


def project(tmp: Path, name: str, scenario: Scenario, failing: bool = False) -> Path:
    """A fresh folder with the scenario's spec, tools and script."""
    root = tmp / name
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    (root / "flow.agentflow").write_text(HEAD + textwrap.dedent(scenario.body))
    (root / "tools.py").write_text(TOOLS)
    script(root, scenario, failing)
    return root


def script(root: Path, scenario: Scenario, failing: bool) -> None:
    fail = [{"node": scenario.fails_at, "error": "fatal", "message": "the matrix's failing node"}] if failing else []
    (root / "script.json").write_text(json.dumps({"rules": fail + list(scenario.rules)}))


def run(root: Path, env: dict, *extra: str, fault: str = "") -> subprocess.CompletedProcess:
    """`agentflow run flow.agentflow EXTRA` in `root`, stopped at a commit if `fault` says so."""
    env = {**env, "AGENTFLOW_FAULT": fault} if fault else {k: v for k, v in env.items() if k != "AGENTFLOW_FAULT"}
    return subprocess.run([sys.executable, "-m", "agentflow", "run", "flow.agentflow", "--db", DB, *extra],
                          cwd=root, env=env, capture_output=True, text=True, timeout=180)


def observe(root: Path, result: str) -> Observed:
    from agentflow.runtime.history import list_runs, run_nodes
    db = str(root / DB)
    run_id = list_runs(db)[0]["run_id"]
    nodes = {r["node"]: r["status"] for r in run_nodes(db, run_id)}
    con = duckdb.connect(db, read_only=True)
    try:
        sessions = con.execute("select role, seq, message from _sessions where run_id = ? order by role, seq",
                               [run_id]).fetchall()
        model_calls = dict(con.execute("select node_id, count(*) from llm_calls where not cached "
                                       "group by node_id order by node_id").fetchall())
    finally:
        con.close()
    log = root / "calls.log"
    return Observed(result, nodes, sessions, model_calls, log.read_text().splitlines() if log.exists() else [])


def differences(got: Observed, want: Observed, lossy: bool = False) -> list[str]:
    """How `got` differs from `want`. `lossy`: the stopped run lost its last commit window
    (group durability), whose calls then ran again: each tool call is counted once, and a
    node's model calls may number more than the reference's (a call's record can commit
    in an earlier window than its result), never fewer."""
    if lossy:
        got = replace(got, tool_calls=list(dict.fromkeys(got.tool_calls)), model_calls={
            node: min(n, want.model_calls.get(node, n)) for node, n in got.model_calls.items()})
    return [f"{field}: {getattr(got, field)!r} != {getattr(want, field)!r}"
            for field in ("result", "nodes", "sessions", "model_calls", "tool_calls")
            if getattr(got, field) != getattr(want, field)]


EXIT_CODES = {"kill": -9, "int": 130, "term": 143}


def reference(tmp: Path, scenario: Scenario, env: dict, engine: tuple[str, ...] = ()) -> Observed:
    """What an uninterrupted run of the scenario leaves."""
    root = project(tmp, "reference", scenario)
    done = run(root, env, *engine)
    assert done.returncode == 0, done.stderr
    return observe(root, done.stdout)


def stopped_then_resumed(tmp: Path, scenario: Scenario, want: Observed, env: dict, fault: str,
                         engine: tuple[str, ...] = (), lossy: bool = False) -> list[str] | None:
    """Stops a run with `fault` (`kill@3`), resumes it, and lists how the outcome differs
    from `want` ([] when it does not); None when the run finished before the fault fired.
    `lossy`: see `differences`."""
    root = project(tmp, "cell-" + fault.replace("@", "-"), scenario)
    first = run(root, env, *engine, fault=fault)
    if first.returncode == 0:
        return None
    problems = []
    if first.returncode != EXIT_CODES[fault.partition("@")[0]] or "Traceback" in first.stderr:
        problems.append(f"the stopped run exited {first.returncode}: {first.stderr[-800:]}")
    finished = run_status(root) == "succeeded"  # the signal came after the run's last commit
    resumed = run(root, env, *engine, "--resume")
    if resumed.returncode != 0:
        return problems + [f"--resume exited {resumed.returncode}: {resumed.stderr[-800:]}"]
    got = observe(root, resumed.stdout)
    if finished:  # so --resume started a new run that reuses every call (nested ones unlisted)
        unknown = {n: s for n, s in got.nodes.items() if want.nodes.get(n) != s}
        problems += [f"the rerun's nodes {unknown} are not the reference's"] if unknown else []
        got.nodes = want.nodes
    return problems + differences(got, want, lossy)


CELLS_AT_ONCE = 3  # cells are independent processes in folders of their own
MAX_COMMITS = 200  # far above any scenario's


def stop_matrix(tmp: Path, scenario: Scenario, want: Observed, env: dict, engine: tuple[str, ...] = (), *,
                signals_at=lambda commits: {(commits + 1) // 2}, lossy: bool = False) -> tuple[int, list[str]]:
    """Stops the scenario's run right after each of its commit points (`runtime/faults.py`)
    with SIGKILL, and at the points `signals_at(commits)` with SIGINT and SIGTERM, resuming
    each; returns how many cells ran and every way a resumed run differed from `want`."""
    def cell(fault: str) -> list[str] | None:
        problems = stopped_then_resumed(tmp, scenario, want, env, fault, engine, lossy)
        return None if problems is None else [f"{fault}: {p}" for p in problems]

    failures: list[str] = []
    commits = 0
    with ThreadPoolExecutor(CELLS_AT_ONCE) as pool:
        while commits < MAX_COMMITS:
            batch = list(pool.map(cell, [f"kill@{commits + i}" for i in range(1, CELLS_AT_ONCE + 1)]))
            done = [problems for problems in batch if problems is not None]
            commits += len(done)  # the first cell whose run finished before its fault ends it
            failures += [p for problems in done for p in problems]
            if len(done) < len(batch):
                break
        assert 0 < commits < MAX_COMMITS, f"the run was stopped {commits} times"
        others = [f"{name}@{n}" for name in ("int", "term") for n in sorted(signals_at(commits))]
        for fault, problems in zip(others, pool.map(cell, others)):
            failures += [f"{fault}: the run finished, the signal did not stop it"] if problems is None else problems
    return commits + len(others), failures


def run_status(root: Path) -> str:
    from agentflow.runtime.history import list_runs
    return list_runs(str(root / DB))[0]["status"]


def failed_then_resumed(tmp: Path, scenario: Scenario, want: Observed, env: dict,
                        engine: tuple[str, ...] = ()) -> list[str]:
    """A run whose node fails (exit 3); the cause removed, `--resume` must give `want`."""
    root = project(tmp, "failing", scenario, failing=True)
    failed = run(root, env, *engine)
    if failed.returncode != 3 or "the matrix's failing node" not in failed.stderr:
        return [f"the failing run exited {failed.returncode}: {failed.stderr[-800:]}"]
    failed_nodes = {n for n, s in observe(root, "").nodes.items() if s == "failed"}
    script(root, scenario, failing=False)
    resumed = run(root, env, *engine, "--resume")
    if resumed.returncode != 0:
        return [f"--resume exited {resumed.returncode}: {resumed.stderr[-800:]}"]
    got = observe(root, resumed.stdout)
    # a failed node starts over (its journal is reset), so only its own calls are paid again
    again = {n: c - want.model_calls.get(n, 0) for n, c in got.model_calls.items() if n in failed_nodes}
    got.model_calls = {n: c - again.get(n, 0) for n, c in got.model_calls.items()}
    return differences(got, want)
