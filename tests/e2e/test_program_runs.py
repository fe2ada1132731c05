"""Programs models write (`programs = true`, the `run_program` tool), through the real CLI in
subprocesses, a real DuckDB file, the scripted model and the litellm path to our test server.

A program is checked before anything runs: one that does not compile, calls a tool its role
was not granted, loops without a bound or deadlocks runs nothing, and its diagnostics are the
tool's result. One that compiles runs as nested nodes under its task call, journaled, reused
and resumed after `kill -9` like any node.
"""
from __future__ import annotations

import json
import signal
from pathlib import Path

import duckdb
import pytest

from agentflow.runtime.store import Store

from runtime_support import DB, af, af_start, last_run, llm_defaults, ok, outputs, ran, result_json, reused, show, \
    stop, wait_until, write

# Tools log every start and end to tools.log; `gate` blocks while `hold-<x>` exists (after
# writing `waiting-<x>`), so a test can kill the run at that point.
TOOLS = """
import asyncio
from pathlib import Path

HERE = Path(__file__).parent

def log(line):
    with open(HERE / "tools.log", "a") as f:
        f.write(line + "\\n")

def regions(path):
    log(f"regions {path}")
    return ["north", "south", "west"]

async def gate(x):
    log(f"start {x}")
    if (HERE / f"hold-{x}").exists():
        (HERE / f"waiting-{x}").write_text("")
        while (HERE / f"hold-{x}").exists():
            await asyncio.sleep(0.05)
    log(f"end {x}")
    return f"GATE {x}"

def broken(x):
    log(f"broken {x}")
    raise ValueError(f"no data for {x}")

def secret(x):
    log(f"secret {x}")
    return x
"""

DECLARATIONS = """
tool regions(path: str) -> list[str] {
  python = "tools:regions"
}

tool gate(x: str) -> str {
  python = "tools:gate"
}

tool broken(x: str) -> str {
  python = "tools:broken"
  retries = 0
}

tool secret(x: str) -> str {
  python = "tools:secret"
}

role analyst {
  tools = [regions, gate, broken]
  programs = true
  ATTRS
  task analyse(path: str) -> str {
    prompt = "ANALYSE {path}"
  }
}

role auditor {
  tools = [secret]
  task audit(x: str) -> str { prompt = "AUDIT {x}" }
}

choreography main(path: str) -> str {
  analysis = analyst.analyse(path)
  return analysis
}
"""

FAN_OUT = 'rs = regions(path)\nout = for r in rs {\n  g = gate(r)\n  yield g\n}\nreturn out'
UNDEFINED = 'rs = regions(pth)\nreturn rs'
UNGRANTED = 'x = secret("leak")\nreturn x'
UNBOUNDED = 'r = repeat until g == "x" {\n  g = gate(path)\n}\nreturn r'
DEADLOCK = 'a = gate("a") after b\nb = gate("b") after a\nreturn [a, b]'


def _program_call(source: str) -> dict:
    return {"name": "run_program", "arguments": {"source": source}}


def _flow(tmp: Path, rules: list[dict] | None = None, *, attrs: str = "", model: str = "scripted:script.json") -> Path:
    spec = f'defaults {{\n  model = "{model}"\n}}\n' if model else ""
    write(tmp / "flow.agentflow", spec + DECLARATIONS.replace("ATTRS", attrs))
    write(tmp / "tools.py", TOOLS)
    if rules is not None:
        write(tmp / "script.json", json.dumps({"rules": rules}))
    return tmp


def _scripted(*sources: str) -> list[dict]:
    """A script: turn n of the analyst runs program n, the turn after them answers with the
    last tool result."""
    rules = [{"task": "analyst.analyse", "turn": n, "tool_calls": [_program_call(s)]} for n, s in enumerate(sources, 1)]
    return rules + [{"task": "analyst.analyse", "turn": len(sources) + 1, "echo": "last"}]


def _programs(tmp: Path, run_id: str) -> list[tuple]:
    with duckdb.connect(str(tmp / DB), read_only=True) as con:
        return con.execute("SELECT node_id, attempt, status, diagnostics, source FROM programs WHERE run_id = $1 "
                           "ORDER BY attempt", [run_id]).fetchall()


def _tool_log(tmp: Path) -> list[str]:
    path = tmp / "tools.log"
    return path.read_text().splitlines() if path.exists() else []


def test_a_program_fans_out_over_a_list_as_nested_nodes_and_its_value_is_the_tool_result(tmp_path: Path) -> None:
    _flow(tmp_path, _scripted(FAN_OUT))
    result = ok(af(tmp_path, "run", "flow.agentflow", "--input", "path=sales.csv"))
    assert json.loads(result_json(result)) == ["GATE north", "GATE south", "GATE west"]
    run_id = last_run(tmp_path)["run_id"]
    nodes = show(tmp_path, run_id, cli=True)
    program = "main/analysis/program#1"
    assert {program, f"{program}/rs", f"{program}/out", *(f"{program}/out[{i}]/g" for i in range(3))} <= ran(nodes)
    assert [(n, a, s, d) for n, a, s, d, _ in _programs(tmp_path, run_id)] == [
        ("main/analysis", 1, "succeeded", None)]
    model = json.loads(ok(af(tmp_path, "graph", "flow.agentflow", "--run", run_id, "--format", "json")).stdout)
    assert [c for c in model["clusters"] if c["kind"] == "program"] == [
        {"id": program, "kind": "program", "label": "program#1 of main/analysis", "owner": "main/analysis",
         "parent": None}]
    assert {n["id"] for n in model["nodes"] if n["cluster"] == program} == {n for n in nodes if n.startswith(program)}
    assert {"labels": ["run_program"], "source": "main/analysis", "style": "data", "target": program} in model["edges"]
    # a second run reuses the task call whole: nothing runs, no tool is called again
    calls = len(_tool_log(tmp_path))
    ok(af(tmp_path, "run", "flow.agentflow", "--input", "path=sales.csv"))
    assert "main/analysis" in reused(show(tmp_path, last_run(tmp_path)["run_id"]))
    assert len(_tool_log(tmp_path)) == calls


def test_a_program_that_does_not_compile_runs_nothing_and_is_repaired_on_the_next_turn(tmp_path: Path) -> None:
    rules = [{"task": "analyst.analyse", "turn": 2, "contains": "did not compile", "tool_calls": [_program_call(FAN_OUT)]},
             *_scripted(UNDEFINED)[:1], {"task": "analyst.analyse", "turn": 3, "echo": "last"}]
    _flow(tmp_path, rules)
    result = ok(af(tmp_path, "run", "flow.agentflow", "--input", "path=sales.csv"))
    assert json.loads(result_json(result)) == ["GATE north", "GATE south", "GATE west"]
    run_id = last_run(tmp_path)["run_id"]
    (first, second) = _programs(tmp_path, run_id)
    assert first[:3] == ("main/analysis", 1, "rejected") and first[4] == UNDEFINED
    assert "error[E101]: undefined name `pth`\n --> <program>:1:14\n" in first[3]
    assert "did you mean `path`?" in first[3]
    assert second[:4] == ("main/analysis", 2, "succeeded", None)
    nodes = show(tmp_path, run_id)
    assert not any(n.startswith("main/analysis/program#1") for n in nodes)
    assert "main/analysis/program#2/out[2]/g" in ran(nodes)


@pytest.mark.parametrize("source, expected", [
    (UNGRANTED, "error[E104]: `secret` is not granted to role `analyst`\n --> <program>:1:5\n"),
    (UNBOUNDED, "error[E404]: `repeat` without `max`\n --> <program>:1:5\n"),
    (DEADLOCK, "error[E401]: deadlock: `a` waits for `b`, which waits for `a`\n --> <program>:1:1\n"),
], ids=["ungranted", "unbounded", "deadlock"])
def test_a_program_that_fails_a_check_runs_nothing_and_the_model_reads_why(tmp_path: Path, source: str,
                                                                          expected: str) -> None:
    _flow(tmp_path, _scripted(source))
    result = ok(af(tmp_path, "run", "flow.agentflow", "--input", "path=sales.csv"))
    answer = json.loads(result.stdout)
    assert answer.startswith("The program did not compile, so nothing ran.") and expected in answer
    run_id = last_run(tmp_path)["run_id"]
    assert [(n, a, s) for n, a, s, _, _ in _programs(tmp_path, run_id)] == [("main/analysis", 1, "rejected")]
    assert not any("program#" in n for n in show(tmp_path, run_id))
    assert _tool_log(tmp_path) == []


def test_a_program_longer_than_its_roles_limit_is_rejected(tmp_path: Path) -> None:
    _flow(tmp_path, _scripted(FAN_OUT), attrs="program_max_chars = 20")
    answer = json.loads(ok(af(tmp_path, "run", "flow.agentflow", "--input", "path=p")).stdout)
    assert f"the program is {len(FAN_OUT)} characters long; role `analyst` allows at most 20" in answer
    assert _tool_log(tmp_path) == []


def test_a_program_that_starts_more_calls_than_its_limit_fails_and_the_model_reads_why(tmp_path: Path) -> None:
    _flow(tmp_path, _scripted(FAN_OUT), attrs="program_max_nodes = 3")
    answer = json.loads(ok(af(tmp_path, "run", "flow.agentflow", "--input", "path=p")).stdout)
    assert answer.startswith("error: the program failed at main/analysis/program#1/out[")
    assert "started more calls than its role allows (`program_max_nodes`)" in answer
    run_id = last_run(tmp_path)["run_id"]
    assert [(a, s) for _, a, s, _, _ in _programs(tmp_path, run_id)] == [(1, "failed")]
    assert last_run(tmp_path)["status"] == "succeeded"  # the model handled it
    assert len([line for line in _tool_log(tmp_path) if line.startswith("end")]) == 2  # regions, then two gates


def test_a_program_whose_call_fails_returns_the_error_to_the_model_and_the_run_goes_on(tmp_path: Path) -> None:
    _flow(tmp_path, _scripted('rs = regions(path)\nout = for r in rs {\n  b = broken(r) if r == "south" else r\n'
                              '  yield b\n}\nreturn out'))
    answer = json.loads(ok(af(tmp_path, "run", "flow.agentflow", "--input", "path=p")).stdout)
    failed = "main/analysis/program#1/out[1]/b@1"
    assert answer.startswith(f"error: the program failed at {failed}: ") and "no data for south" in answer
    run_id = last_run(tmp_path)["run_id"]
    assert last_run(tmp_path)["status"] == "succeeded"
    nodes = show(tmp_path, run_id, cli=True)
    assert nodes[failed]["status"] == "failed" and "no data for south" in nodes[failed]["error"]
    assert nodes["main/analysis/program#1"]["status"] == "failed"
    assert nodes["main/analysis"]["status"] == "succeeded"
    assert [(a, s) for _, a, s, _, _ in _programs(tmp_path, run_id)] == [(1, "failed")]
    with Store.open_reader(tmp_path / DB) as store:
        assert store.check_consistency() == []


def test_a_program_killed_mid_way_resumes_paying_nothing_twice(tmp_path: Path) -> None:
    _flow(tmp_path, _scripted(FAN_OUT))
    (tmp_path / "hold-west").write_text("")
    proc = af_start(tmp_path, "run", "flow.agentflow", "--input", "path=p", "--durability", "strict",
                    "--concurrency", "1")
    try:
        wait_until(lambda: (tmp_path / "waiting-west").exists() or proc.poll() is not None, timeout=60,
                   what="the program's third call to block")
        assert proc.poll() is None, outputs(proc)
        done = {"main/analysis/program#1/rs", "main/analysis/program#1/out[0]/g", "main/analysis/program#1/out[1]/g"}
        # strict commits before a dependent starts; siblings' results may still be on their way
        wait_until(lambda: done <= {n for n, row in show(tmp_path, last_run(tmp_path)["run_id"]).items()
                                    if row["status"] == "succeeded"},
                   what="the first two calls' results to be committed")
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        stop(proc)
        (tmp_path / "hold-west").unlink()
    outputs(proc)
    run_id = last_run(tmp_path)["run_id"]
    before = _tool_log(tmp_path)
    assert before == ["regions p", "start north", "end north", "start south", "end south", "start west"]
    plan = ok(af(tmp_path, "run", "flow.agentflow", "--input", "path=p", "--resume", "--dry-run")).stdout
    program = "main/analysis/program#1"
    assert plan.splitlines()[:5] == [
        "run    main/analysis  (no stored result)",
        f"reuse  {program}/rs  (finished in the resumed run)",
        f"reuse  {program}/out[0]/g  (finished in the resumed run)",
        f"reuse  {program}/out[1]/g  (finished in the resumed run)",
        f"run    {program}/out[2]/g  (no stored result)"]
    assert _tool_log(tmp_path) == before  # a dry run runs nothing
    result = ok(af(tmp_path, "run", "flow.agentflow", "--input", "path=p", "--resume"))
    assert json.loads(result_json(result)) == ["GATE north", "GATE south", "GATE west"]
    assert _tool_log(tmp_path)[len(before):] == ["start west", "end west"]  # only the call that was running
    assert last_run(tmp_path)["run_id"] == run_id
    nodes = show(tmp_path, run_id)
    assert {"main/analysis/program#1/rs", "main/analysis/program#1/out[0]/g"} <= reused(nodes)
    assert "main/analysis/program#1/out[2]/g" in ran(nodes)
    with duckdb.connect(str(tmp_path / DB), read_only=True) as con:  # turn 1 was journaled: not asked again
        turns = con.execute("SELECT count(*) FROM llm_calls WHERE run_id = $1 AND NOT cached", [run_id]).fetchone()
    assert turns == (2,)
    assert [(a, s) for _, a, s, _, _ in _programs(tmp_path, run_id)] == [(1, "succeeded")]


def test_a_program_through_litellm_is_repaired_and_runs(tmp_path: Path, server) -> None:
    server.enqueue({"tool_calls": [{"id": "call_a", **_program_call(UNDEFINED)}]},
                   {"tool_calls": [{"id": "call_b", **_program_call(FAN_OUT)}]},
                   {"content": "three regions"})
    write(tmp_path / "flow.agentflow", llm_defaults(server) + DECLARATIONS.replace("ATTRS", ""))
    write(tmp_path / "tools.py", TOOLS)
    result = ok(af(tmp_path, "run", "flow.agentflow", "--input", "path=p"))
    assert result_json(result) == "three regions"
    first, second, third = server.requests[-3:]
    assert "run_program" in [t["function"]["name"] for t in first["tools"]]
    assert "error[E101]: undefined name `pth`" in second["messages"][-1]["content"]
    answered = third["messages"][-1]
    assert (answered["role"], answered["tool_call_id"]) == ("tool", "call_b")
    assert answered["content"] == '["GATE north", "GATE south", "GATE west"]'
    run_id = last_run(tmp_path)["run_id"]
    assert [(a, s) for _, a, s, _, _ in _programs(tmp_path, run_id)] == [(1, "rejected"), (2, "succeeded")]


def test_the_example_spec_runs_out_of_the_box(tmp_path: Path) -> None:
    spec = Path(__file__).resolve().parents[2] / "specs" / "analyst_programs.agentflow"
    findings = json.loads(result_json(ok(af(tmp_path, "run", str(spec))))["findings"])
    assert findings == {"question": "Which region sold the most?", "totals": [
        {"region": "north", "total": 3050.5, "best_month": "2026-02"},
        {"region": "south", "total": 3200.0, "best_month": "2026-01"},
        {"region": "west", "total": 3350.25, "best_month": "2026-02"}]}
    run_id = last_run(tmp_path)["run_id"]
    assert "main/findings/program#1/totals[2]/total" in ran(show(tmp_path, run_id))
    assert [(n, a, s) for n, a, s, _, _ in _programs(tmp_path, run_id)] == [("main/findings", 1, "succeeded")]
