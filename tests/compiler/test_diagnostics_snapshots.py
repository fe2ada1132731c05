"""Golden renderings of the bad-program corpus (tests/compiler/bad): one text snapshot per file,
JSON snapshots for a few. Update with `pytest --snapshot-update`, then read them."""
from __future__ import annotations

from pathlib import Path

import pytest

from agentflow.compiler.checks import check_program
from agentflow.compiler.diagnostics import DiagnosticSink, render_json, render_text
from agentflow.compiler.parser import parse
from agentflow.compiler.source import SourceFile
from agentflow.compiler.symbols import collect

ROOT = Path(__file__).resolve().parents[2]
BAD = sorted((ROOT / "tests" / "compiler" / "bad").glob("*.agentflow"))


def diagnose(path: Path) -> tuple[SourceFile, list]:
    source = SourceFile(f"tests/compiler/bad/{path.name}", path.read_text())
    sink = DiagnosticSink()
    program = parse(source, sink)
    if program is not None and not sink.has_errors:
        symbols = collect(program, sink)
        if not sink.has_errors:
            check_program(program, symbols, sink, source=source)
    return source, sink.diagnostics


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_text_rendering(path: Path, snapshot) -> None:
    source, diagnostics = diagnose(path)
    assert diagnostics, "every corpus file has at least one diagnostic"
    assert render_text(diagnostics, {source.name: source}) == snapshot


@pytest.mark.parametrize("name", ["e401_session_order", "e203_arguments"])
def test_json_rendering(name: str, snapshot) -> None:
    _, diagnostics = diagnose(ROOT / "tests" / "compiler" / "bad" / f"{name}.agentflow")
    assert render_json(diagnostics) == snapshot
