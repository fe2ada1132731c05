"""Mutated specs never make the checker raise: every input ends with diagnostics or success."""
from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from agentflow.compiler.checks import check_program
from agentflow.compiler.diagnostics import DiagnosticSink, render_json, render_text
from agentflow.compiler.parser import parse
from agentflow.compiler.source import SourceFile
from agentflow.compiler.symbols import collect

ROOT = Path(__file__).resolve().parent.parent
SEEDS = sorted((ROOT / "specs").glob("*.agentflow")) + sorted((ROOT / "tests" / "bad").glob("*.agentflow"))
CASES_PER_SEED = 1500 // max(1, len(SEEDS)) + 1
TOKENS = ["{", "}", "(", ")", "[", "]", "=", ".", ",", "\"", "for", "repeat", "max", "until", "yield", "return",
          "after", "prev", "null", "if", "else", "in", "?", "|", "0", "-1", "main", "str", "list[", "x"]


IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|[0-9]+")


def mutate(text: str, rng: random.Random) -> str:
    """Random deletions, duplications, truncations, character swaps and insertions; half
    of the cases only swap names and numbers, which keeps the syntax and so reaches the checks."""
    if rng.random() < 0.5:
        words = IDENT.findall(text)
        for _ in range(rng.randint(1, 3)):
            spots = list(IDENT.finditer(text))
            m = rng.choice(spots)
            text = text[:m.start()] + rng.choice(words + ["prev", "0", "1", "iterations"]) + text[m.end():]
        return text
    for _ in range(rng.randint(1, 4)):
        if not text:
            return text
        i = rng.randrange(len(text))
        j = min(len(text), i + rng.randint(1, 40))
        op = rng.choice(["delete", "duplicate", "truncate", "swap", "insert", "line_dup", "line_del"])
        if op == "delete":
            text = text[:i] + text[j:]
        elif op == "duplicate":
            text = text[:j] + text[i:j] + text[j:]
        elif op == "truncate":
            text = text[:i]
        elif op == "swap" and j - i >= 2:
            text = text[:i] + text[j - 1] + text[i + 1:j - 1] + text[i] + text[j:]
        elif op == "insert":
            text = text[:i] + " " + rng.choice(TOKENS) + " " + text[i:]
        else:
            lines = text.split("\n")
            k = rng.randrange(len(lines))
            lines[k:k + 1] = [lines[k], lines[k]] if op == "line_dup" else []
            text = "\n".join(lines)
    return text


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
