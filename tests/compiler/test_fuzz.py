"""Mutated specs never make the checker raise: every input ends with diagnostics or success."""
from __future__ import annotations

import random
from pathlib import Path

import pytest

from agentflow.compiler.checks import check_program
from agentflow.compiler.diagnostics import DiagnosticSink, render_json, render_text
from agentflow.compiler.parser import parse
from agentflow.compiler.source import SourceFile
from agentflow.compiler.symbols import collect
from mutations import mutate

ROOT = Path(__file__).resolve().parents[2]
SEEDS = sorted((ROOT / "specs").glob("*.agentflow")) + sorted((ROOT / "tests" / "compiler" / "bad").glob("*.agentflow"))
CASES_PER_SEED = 1500 // max(1, len(SEEDS)) + 1
def run_checker(name: str, text: str) -> DiagnosticSink:
    source = SourceFile(name, text)
    sink = DiagnosticSink()
    program = parse(source, sink)
    if program is not None and not sink.has_errors:
        symbols = collect(program, sink)
        check_program(program, symbols, sink, source=source)
        check_program(program, symbols, DiagnosticSink(), entry="nope")  # no source, unknown entry
    render_text(sink.diagnostics, {name: source})
    render_json(sink.diagnostics)
    return sink


@pytest.mark.parametrize("seed_file", SEEDS, ids=lambda p: p.name)
def test_mutations_never_raise(seed_file: Path) -> None:
    original = seed_file.read_text()
    for n in range(CASES_PER_SEED):
        rng = random.Random(f"{seed_file.name}:{n}")
        text = mutate(original, rng)
        try:
            run_checker(seed_file.name, text)
        except RecursionError:
            raise
        except Exception as err:  # pragma: no cover - the message is the point
            raise AssertionError(f"checker raised {type(err).__name__}: {err}\n--- input (seed {n}) ---\n{text}") from err
