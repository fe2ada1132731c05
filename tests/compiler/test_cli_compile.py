"""`agentflow compile` and `graph` as a user runs them: real subprocesses, exit codes,
and bad input that never ends in a traceback."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "specs" / "build_project.agentflow"


def agentflow(*args: str, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agentflow", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


def assert_no_traceback(proc: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout


def test_compile_clean_example() -> None:
    proc = agentflow("compile", str(EXAMPLE))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""


def test_emit_plan_is_identical_across_processes_and_directories(tmp_path: Path) -> None:
    a = agentflow("compile", str(EXAMPLE), "--emit", "plan")
    b = agentflow("compile", str(EXAMPLE.relative_to(ROOT)), "--emit", "plan", cwd=ROOT)
    assert a.returncode == b.returncode == 0
    assert a.stdout == b.stdout
    assert json.loads(a.stdout)["entry"] == "main"


def test_errors_exit_1_with_rendered_diagnostics(tmp_path: Path) -> None:
    bad = tmp_path / "bad.agentflow"
    bad.write_text(EXAMPLE.read_text().replace("for mod in plan.modules", "for mod in pln.modules"))
    proc = agentflow("compile", str(bad))
    assert proc.returncode == 1
    assert "error[E101]: undefined name `pln`" in proc.stderr
    assert "= help: did you mean `plan`?" in proc.stderr
    assert_no_traceback(proc)


def test_json_diagnostics_on_stdout(tmp_path: Path) -> None:
    bad = tmp_path / "bad.agentflow"
    bad.write_text(EXAMPLE.read_text().replace("reviewer.review_module(mod, code)", "reviewer.review(mod, code)"))
    proc = agentflow("compile", str(bad), "--format", "json")
    assert proc.returncode == 1
    out = json.loads(proc.stdout)
    assert out["errors"] == 1 and out["diagnostics"][0]["code"] == "E103"
    assert {"code", "severity", "message", "file", "line", "column", "end_line", "end_column", "labels",
            "help"} <= set(out["diagnostics"][0])


@pytest.mark.parametrize("content, expected_exit, words", [
    (b"", 1, "E107"),
    (b"\x00\x01\x02binary\xff", 2, "binary"),
    ("choreography main() { return \"caf\u00e9\" }".encode("latin-1"), 2, "UTF-8"),
    (b"choreography main() { return " + b"[" * 5000 + b"1" + b"]" * 5000 + b" }", 1, "nested"),
    (b"choreography main() { return \"unterminated }", 1, "E002"),
])
def test_bad_files_get_a_clear_message(tmp_path: Path, content: bytes, expected_exit: int, words: str) -> None:
    spec = tmp_path / "spec.agentflow"
    spec.write_bytes(content)
    proc = agentflow("compile", str(spec))
    assert proc.returncode == expected_exit, proc.stderr
    assert words in proc.stderr
    assert_no_traceback(proc)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    missing = agentflow("compile", str(tmp_path / "nope.agentflow"))
    assert missing.returncode == 2 and "no such file" in missing.stderr
    directory = agentflow("compile", str(tmp_path))
    assert directory.returncode == 2 and "is a directory" in directory.stderr
    assert_no_traceback(missing)
    assert_no_traceback(directory)


def test_a_50_mb_file_is_refused_quickly(tmp_path: Path) -> None:
    big = tmp_path / "big.agentflow"
    with big.open("wb") as f:
        f.write(b"# padding\n" * 5_000_000)
    proc = agentflow("compile", str(big), timeout=30)
    assert proc.returncode == 2
    assert "MB" in proc.stderr
    assert_no_traceback(proc)


def test_unknown_flag_is_a_usage_error() -> None:
    proc = agentflow("compile", str(EXAMPLE), "--nope")
    assert proc.returncode == 2
    assert_no_traceback(proc)


@pytest.mark.parametrize("fmt", ["mermaid", "dot", "json"])
def test_graph_writes_a_file(tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"plan.{fmt}"
    proc = agentflow("graph", str(EXAMPLE), "--format", fmt, "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    assert "main/plan" in text or "plan" in text
    assert len(text) > 100
