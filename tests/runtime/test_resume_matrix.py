"""The resume matrix: every kind of node × every way a run can stop × every point where its
state becomes durable, each compared with an uninterrupted run.

For each scenario (a small spec on the scripted model), a reference run gives the result,
the final node rows, the stored sessions and the calls paid. Then, for every commit N of the
run database, a real `agentflow run` process is stopped right after its N-th commit
(`AGENTFLOW_FAULT`: SIGKILL, SIGINT or SIGTERM sent to itself), and `--resume` must give the
reference's result byte for byte, the same node rows and sessions, and pay no finished model
or tool call twice. A failing node is the fourth way to stop: the run fails (exit 3), the
cause is removed, and `--resume` must again give the reference.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pytest

from runtime_support import DB, af, base_env, last_run, ok, show, write

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

EXIT = {"kill": -9, "int": 130, "term": 143}


@dataclass
class Observed:
    """What a finished run left: its printed result, node rows, sessions and paid calls."""

    result: str
    nodes: dict
    sessions: list
    model_calls: int
    tool_calls: list


def project(tmp: Path, name: str, scenario: Scenario, failing: bool = False) -> Path:
    root = tmp / name
    if root.exists():
        shutil.rmtree(root)
    write(root / "flow.agentflow", HEAD + scenario.body)
    write(root / "tools.py", TOOLS)
    script(root, scenario, failing)
    return root


def script(root: Path, scenario: Scenario, failing: bool) -> None:
    fail = [{"node": scenario.fails_at, "error": "fatal", "message": "the matrix's failing node"}] if failing else []
    (root / "script.json").write_text(json.dumps({"rules": fail + list(scenario.rules)}))


def run(root: Path, *extra: str, fault: str = ""):
    env = base_env(**({"AGENTFLOW_FAULT": fault} if fault else {}))
    return af(root, "run", "flow.agentflow", *extra, env=env, timeout=120)


def observe(root: Path, result: str) -> Observed:
    run_id = last_run(root)["run_id"]
    nodes = {n: r["status"] for n, r in show(root, run_id).items()}
    con = duckdb.connect(str(root / DB), read_only=True)
    try:
        sessions = con.execute("select role, seq, message from _sessions where run_id = ? order by role, seq",
                               [run_id]).fetchall()
        model_calls = con.execute("select count(*) from llm_calls where not cached").fetchone()[0]
    finally:
        con.close()
    log = root / "calls.log"
    return Observed(result, nodes, sessions, model_calls, log.read_text().splitlines() if log.exists() else [])


@pytest.fixture(scope="module")
def references(tmp_path_factory) -> dict[str, Observed]:
    tmp = tmp_path_factory.mktemp("references")
    refs = {}
    for name, scenario in SCENARIOS.items():
        root = project(tmp, "ref", scenario)
        refs[name] = observe(root, ok(run(root)).stdout)
    return refs


def differences(got: Observed, want: Observed) -> list[str]:
    return [f"{field}: {getattr(got, field)!r} != {getattr(want, field)!r}"
            for field in ("result", "nodes", "sessions", "model_calls", "tool_calls")
            if getattr(got, field) != getattr(want, field)]


def interrupted_then_resumed(tmp: Path, scenario: Scenario, signal_name: str, commit: int):
    """Stops a run after its `commit`-th commit and resumes it; None if it finished first."""
    root = project(tmp, "cell", scenario)
    first = run(root, fault=f"{signal_name}@{commit}")
    if first.returncode == 0:
        return None
    assert first.returncode == EXIT[signal_name], first.stderr
    assert "Traceback" not in first.stderr, first.stderr
    return root, ok(run(root, "--resume"))


@pytest.mark.parametrize("signal_name", sorted(EXIT))
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_stopped_at_every_commit_resume_gives_the_uninterrupted_run(name, signal_name, references, tmp_path,
                                                                     record_property):
    failures, cells = [], 0
    for commit in range(1, 200):
        outcome = interrupted_then_resumed(tmp_path, SCENARIOS[name], signal_name, commit)
        if outcome is None:
            break
        cells += 1
        root, resumed = outcome
        for problem in differences(observe(root, resumed.stdout), references[name]):
            failures.append(f"{signal_name}@{commit}: {problem}")
    record_property("cells", cells)
    assert cells > 0
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_a_failing_node_then_resume_gives_the_uninterrupted_run(name, references, tmp_path):
    root = project(tmp_path, "failing", SCENARIOS[name], failing=True)
    failed = ok(run(root), 3)
    assert "the matrix's failing node" in failed.stderr
    script(root, SCENARIOS[name], failing=False)
    resumed = ok(run(root, "--resume"))
    assert differences(observe(root, resumed.stdout), references[name]) == []
