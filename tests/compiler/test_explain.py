"""The registry of diagnostic codes and `agentflow explain`: every code the compiler emits has
an entry whose example really gives it, codes are written out only in the registry, and the
command answers through the real CLI."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from agentflow.compiler.codes import Code
from agentflow.compiler.pipeline import compile_source
from agentflow.compiler.source import SourceFile
from test_cli_compile import agentflow, assert_no_traceback

ROOT = Path(__file__).resolve().parents[2]
CODE_LITERAL = re.compile(r"""["'][EW]\d{3}["']""")
CODE_USE = re.compile(r"\bCode\.([EW]\d{3})\b")


def registry_names() -> set[str]:
    return {code.name for code in Code}


def python_files(*dirs: str) -> list[Path]:
    return sorted(path for d in dirs for path in (ROOT / d).rglob("*.py"))


def test_the_bad_corpus_and_its_snapshots_have_exactly_the_registry_codes() -> None:
    fixtures = {m.group(1).upper() for p in (ROOT / "tests" / "compiler" / "bad").glob("*.agentflow")
                if (m := re.match(r"([ew]\d{3})_", p.name))}
    snapshots = set(re.findall(r"(?:error|warning)\[([EW]\d{3})\]",
                               (ROOT / "tests" / "compiler" / "__snapshots__" / "test_diagnostics_snapshots.ambr").read_text()))
    assert fixtures <= snapshots == registry_names()  # the corpus also shows every code rendered


def test_every_entry_is_reported_somewhere_and_every_report_has_an_entry() -> None:
    used = {name for path in python_files("compiler", "runtime") for name in CODE_USE.findall(path.read_text())}
    assert used == registry_names()


def test_no_code_is_written_out_outside_the_registry() -> None:
    registry = ROOT / "compiler" / "codes.py"
    found = [f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
             for path in python_files("compiler", "runtime", "agentflow") if path != registry
             for n, line in enumerate(path.read_text().splitlines(), 1) if CODE_LITERAL.search(line)]
    assert found == []


@pytest.mark.parametrize("code", list(Code), ids=lambda c: c.name)
def test_the_example_gives_exactly_its_code(code: Code) -> None:
    result = compile_source(SourceFile(f"{code.name}.agentflow", code.example))
    assert {(d.code, d.severity) for d in result.diagnostics} == {(code.name, code.severity)}


def test_severity_follows_the_letter() -> None:
    assert all((code.name[0] == "E") == (code.severity.value == "error") for code in Code)


@pytest.mark.parametrize("typed, title", [("E401", "deadlock (cycle of waits)"), ("e302", "bad attribute"),
                                          (" w501 ", "unused binding")])
def test_explain_prints_severity_title_explanation_and_example(typed: str, title: str) -> None:
    proc = agentflow("explain", typed)
    assert proc.returncode == 0, proc.stderr
    code = Code[typed.strip().upper()]
    assert proc.stdout.startswith(f"{code.name} ({code.severity.value}): {title}\n\n")
    assert code.explanation.split()[:6] == proc.stdout.split("\n\n")[1].split()[:6]
    assert "\n    " + code.example.splitlines()[0] + "\n" in proc.stdout
    assert "Fix: " in proc.stdout
    assert proc.stderr == ""


def test_explain_list_has_one_line_per_code() -> None:
    proc = agentflow("explain", "--list")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [[c.name, c.severity.value] for c in Code]
    assert lines[0] == "E001  error    syntax error"
    assert lines[-1] == "W501  warning  unused binding"


@pytest.mark.parametrize("typed, message", [
    ("E306", "error: no diagnostic code E306; codes are E001–E404 and W301–W501, see `agentflow explain --list`;"
             " did you mean `E305`?\n"),
    ("E999", "error: no diagnostic code E999; codes are E001–E404 and W301–W501, see `agentflow explain --list`\n"),
    ("E3\n02", "error: no diagnostic code 'E3\\n02'; codes are E001–E404 and W301–W501, see `agentflow explain "
               "--list`; did you mean `E302`?\n"),
    ("", "error: no diagnostic code ''; codes are E001–E404 and W301–W501, see `agentflow explain --list`\n"),
])
def test_an_unknown_code_is_exit_2_with_one_line(typed: str, message: str) -> None:
    proc = agentflow("explain", typed)
    assert (proc.returncode, proc.stdout, proc.stderr) == (2, "", message)


@pytest.mark.parametrize("args", [(), ("--list", "E302")])
def test_explain_needs_a_code_or_list(args: tuple[str, ...]) -> None:
    proc = agentflow("explain", *args)
    assert proc.returncode == 2
    assert proc.stderr == "error: give one diagnostic code (e.g. `agentflow explain E302`) or `--list`\n"
    assert_no_traceback(proc)
