"""The reference's programs compile as printed: an example marked `# gives CODE` reports exactly
that code, and a whole program (one with a choreography) compiles without errors."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from agentflow.compiler.pipeline import compile_source
from agentflow.compiler.source import SourceFile

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "LANGUAGE.md"
BLOCKS = re.findall(r"^```[a-z]*\n(.*?)^```", REFERENCE.read_text(), re.S | re.M)
FAULTY = [b for b in BLOCKS if "# gives " in b]
WHOLE = [b for b in BLOCKS if "# gives " not in b and re.search(r"^choreography ", b, re.M)]


def _codes(text: str) -> set[str]:
    compiled = compile_source(SourceFile("example.agentflow", text))
    return {d.code for d in compiled.diagnostics if d.severity == "error" or d.code.startswith("W")}


@pytest.mark.parametrize("block", FAULTY, ids=lambda b: re.search(r"# gives (\w+)", b).group(1))
def test_an_example_marked_with_a_code_reports_it(block: str) -> None:
    expected = set(re.findall(r"# gives (\w+)", block))
    assert expected <= _codes(block)


@pytest.mark.parametrize("block", WHOLE, ids=lambda b: b.splitlines()[0][:40])
def test_a_whole_program_compiles(block: str) -> None:
    compiled = compile_source(SourceFile("example.agentflow", block))
    assert [d.code for d in compiled.diagnostics if d.severity == "error"] == []


def test_the_reference_has_examples_of_both_kinds() -> None:
    assert len(FAULTY) >= 25 and len(WHOLE) >= 3
