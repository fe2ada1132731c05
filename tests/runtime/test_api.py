"""The Python API (`agentflow.compile`, `agentflow.run`, `agentflow.run_async`), in process:
a real DuckDB file in tmp_path and the built-in scripted model."""
from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import agentflow
from agentflow.compiler.diagnostics import Severity
from agentflow.runtime.history import list_runs
from polling import wait_until

ROOT = Path(__file__).resolve().parents[2]

LINES = '''
defaults { model = "scripted" }

role writer {
  task draft(topic: str, tone: str) -> str { prompt = "Write one {tone} line about {topic}." }
}

choreography main(topics: list[str], tone: str = "dry") -> list[str] {
  lines = for t in topics {
    line = writer.draft(t, tone)
    yield line
  }
  return lines
}
'''

BROKEN = '''
choreography main() -> str {
  unused = "x"
  return y + z
}
'''


@pytest.fixture
def lines(tmp_path: Path) -> Path:
    spec = tmp_path / "lines.agentflow"
    spec.write_text(LINES)
    return spec


def test_compile_errors_come_as_data() -> None:
    with pytest.raises(agentflow.CompileError) as caught:
        agentflow.compile(BROKEN, name="broken.agentflow")
    err = caught.value
    assert isinstance(err, agentflow.AgentflowError) and err.exit_code == 1
    assert str(err) == "broken.agentflow:4:10: error[E101]: undefined name `y` (and 1 more error)"
    assert [(d.code, d.severity, d.primary.span.line, d.primary.span.column) for d in err.diagnostics] == [
        ("E101", Severity.ERROR, 4, 10), ("E101", Severity.ERROR, 4, 14)]
    assert err.to_json()["errors"] == 2
    assert err.render().startswith("error[E101]: undefined name `y`\n --> broken.agentflow:4:10\n")


def test_compile_reads_a_path_and_says_when_it_cannot(lines: Path, tmp_path: Path) -> None:
    assert agentflow.compile(lines).plan_hash == agentflow.compile(str(lines)).plan_hash
    assert agentflow.compile(lines).to_json() == agentflow.compile(LINES, name=str(lines)).to_json()
    with pytest.raises(agentflow.UsageError, match=r"missing\.agentflow: no such file"):
        agentflow.compile(tmp_path / "missing.agentflow")


def test_a_run_and_a_rerun_that_reuses_every_node(lines: Path, tmp_path: Path) -> None:
    db = tmp_path / "runs.duckdb"
    plan = agentflow.compile(lines)
    first = agentflow.run(plan, {"topics": ["tea", "rain"]}, db=db, workspace=tmp_path / "ws")
    assert first.ok and first.status == "succeeded" and db.is_file()
    assert len(first.value) == 2 and all(isinstance(v, str) for v in first.value)
    assert (first.counts, first.reused, first.failed_node, first.error) == ({"succeeded": 3}, 0, None, None)

    again = agentflow.run(lines, {"topics": ["tea", "rain"]}, db=db, workspace=tmp_path / "ws")
    assert again.run_id != first.run_id
    assert (again.value, again.counts, again.reused) == (first.value, {"succeeded": 3}, 3)

    changed = agentflow.run(plan, {"topics": ["tea", "snow"]}, db=db, workspace=tmp_path / "ws")
    assert (changed.value[0], changed.reused) == (first.value[0], 1)  # the draft about tea
    assert changed.value[1] != first.value[1]


@pytest.mark.parametrize("inputs,message", [
    ({}, r"missing input `topics` \(list\[str\]\)"),
    ({"topics": "tea"}, r"input `topics` does not fit its type list\[str\]"),
    ({"topics": ["tea"], "topic": 1}, r"no parameter `topic` \(parameters: `topics`, `tone`\)"),
    ({"topics": [float("nan")]}, r"input `topics` holds the number nan"),
])
def test_bad_inputs_raise_before_anything_runs(lines: Path, tmp_path: Path, inputs: dict, message: str) -> None:
    db = tmp_path / "runs.duckdb"
    with pytest.raises(agentflow.UsageError, match=message) as caught:
        agentflow.run(lines, inputs, db=db)
    assert caught.value.exit_code == 2
    assert not db.exists()


def test_bad_options_raise_before_anything_runs(lines: Path, tmp_path: Path) -> None:
    with pytest.raises(agentflow.UsageError, match=r"^db .* is a directory"):
        agentflow.run(lines, {"topics": []}, db=tmp_path)
    with pytest.raises(agentflow.UsageError, match="inputs must be a dict of parameter names to values, not list"):
        agentflow.run(lines, [["topics", []]], db=tmp_path / "runs.duckdb")
    with pytest.raises(agentflow.UsageError, match="concurrency 0 is below 1"):
        agentflow.run(lines, {"topics": []}, db=tmp_path / "runs.duckdb", concurrency=0)
    with pytest.raises(agentflow.UsageError, match="there is no run nope"):
        agentflow.run(lines, {"topics": []}, db=tmp_path / "runs.duckdb", resume="nope")


def test_a_failed_node_is_the_results_status(tmp_path: Path) -> None:
    spec = 'defaults { retries = 0 }\ntool read(path: str) -> str { builtin = "fs.read" }\n' \
           'choreography main() -> str {\n  text = read("missing.txt")\n  return text\n}\n'
    result = agentflow.run(spec, db=tmp_path / "runs.duckdb", workspace=tmp_path / "ws")
    assert (result.ok, result.status, result.value) == (False, "failed", None)
    assert (result.failed_node, result.counts) == ("main/text", {"failed": 1})
    assert "no such file: missing.txt" in result.error


def test_run_async_inside_an_event_loop(lines: Path, tmp_path: Path) -> None:
    async def main():
        return await agentflow.run_async(lines, {"topics": ["tea"]}, db=tmp_path / "runs.duckdb",
                                         workspace=tmp_path / "ws")
    result = asyncio.run(main())
    assert result.ok and len(result.value) == 1


def test_the_example_in_docs_api_md_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = re.search(r"```python\n(.*?)```", (ROOT / "docs" / "API.md").read_text(), re.DOTALL)
    assert code is not None
    monkeypatch.chdir(tmp_path)
    exec(compile(code.group(1), "docs/API.md", "exec"), {})
    assert (tmp_path / "runs.duckdb").is_file()


def test_import_agentflow_loads_neither_compiler_nor_runtime() -> None:
    probe = ("import sys, agentflow; print(sorted(m for m in sys.modules if m.startswith('agentflow.'))); "
             "agentflow.compile; print('agentflow.api' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[:2] == ["[]", "True"]


def test_ctrl_c_stops_a_run_with_its_state_saved(tmp_path: Path) -> None:
    """A real process embedding the API gets SIGINT while a command tool runs: KeyboardInterrupt
    reaches the caller once the run is recorded as cancelled."""
    (tmp_path / "nap.agentflow").write_text(
        'tool nap(seconds: str) -> str {\n'
        '  command = ["python", "-c", "import pathlib, time; pathlib.Path(\'napping\').touch(); '
        'time.sleep(float(\'{seconds}\'))"]\n}\n'
        'choreography main() -> str {\n  a = nap("30")\n  return a\n}\n')
    script = ("import agentflow\ntry:\n    agentflow.run('nap.agentflow', db='runs.duckdb', workspace='ws')\n"
              "except KeyboardInterrupt:\n    print('interrupted')\n")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: list(tmp_path.rglob("napping")), what="the command to start")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert (proc.returncode, out, err) == (0, "interrupted\n", "")
    (run,) = list_runs(str(tmp_path / "runs.duckdb"))
    assert run["status"] == "cancelled"
