"""The per-statement facts the checks and the plan share (compiler/facts.py), and the
pipeline's promises about memory: no reference cycles, the collector left as found."""
from __future__ import annotations

import gc
import textwrap
import weakref
from pathlib import Path

from agentflow.compiler import ast
from agentflow.compiler.deadlock import find_cycles
from agentflow.compiler.diagnostics import DiagnosticSink
from agentflow.compiler.parser import parse
from agentflow.compiler.pipeline import compile_source
from agentflow.compiler.source import SourceFile
from agentflow.compiler.symbols import collect

SPEC = textwrap.dedent('''\
    tool shout(x: str) -> str { python = "m:shout" }
    role r {
      model = "scripted"
      task t(x: str) -> str { prompt = "{x}" }
    }
    choreography sub(x: str) -> str { return x }
    choreography main(xs: list[str], k: str = "k") -> list[str] {
      out = for x in xs {
        y = r.t(shout(x)) after z
        z = sub(outer)
        yield [w + "!" for w in [y, z] if w != k]
      }
      rep = repeat max 2 until prev.n > limit { n = len(out) }
      outer = "o"
      limit = 3
      return out
    }
    ''')


def _facts():
    sink = DiagnosticSink()
    program = parse(SourceFile("t.agentflow", SPEC), sink)
    symbols = collect(program, sink)
    assert not sink.diagnostics
    return symbols, symbols.facts


def test_reads_calls_loops_and_strings_of_nested_bodies() -> None:
    symbols, facts = _facts()
    out, rep, outer, _, ret = symbols.choreographies["main"].body.statements
    loop = out.value
    y, z, yielded = loop.body.statements

    # names bound inside (the `for` variable, body bindings, the comprehension's) are not reads;
    # callees and `role.` are not reads; `after z` names a binding of the same body
    assert facts.of(out).reads == {"xs", "outer", "k"}
    assert facts.of(y).reads == {"x"} and facts.of(yielded).reads == {"y", "z", "k"}
    assert facts.of(rep).reads == {"out", "limit"}  # `prev` and `n` belong to the repeat
    assert facts.of(outer).reads == frozenset() and facts.of(ret).reads == {"out"}

    # calls, loops and strings in walk order, nested bodies included
    assert [facts.target(c).name for c in facts.of(out).calls] == ["r.t", "shout", "sub"]
    assert [facts.target(c).kind for c in facts.of(out).calls] == ["task", "tool", "choreography"]
    assert facts.of(out).loops == (loop,)
    assert [s.value for s in facts.of(out).strings] == ["!"]
    assert [facts.target(c).kind for c in facts.of(rep).calls] == ["builtin"]
    assert isinstance(facts.of(rep).loops[0], ast.RepeatExpr)
    assert symbols.facts is facts  # found once per program


def test_statements_outside_the_bodies_are_walked_on_demand() -> None:
    symbols, facts = _facts()
    body = symbols.choreographies["main"].body
    copy = ast.Binding("copy", ast.Call(ast.Name("shout"), (ast.Arg(None, ast.Name("v")),)))
    assert facts.of(copy).reads == {"v"} and facts.target(copy.value).kind == "tool"
    assert facts.of(copy) is not facts.of(copy)  # not kept: its id is not the program's to keep
    assert facts.of(body.statements[0]) is facts.of(body.statements[0])


def test_find_cycles_with_every_edge_pointing_back_has_none() -> None:
    nodes = ["a", "b", "c"]
    assert find_cycles(nodes, {"b": ["a"], "c": ["a", "b", "elsewhere"]}) == []
    assert find_cycles(nodes, {"b": ["a"], "c": ["b"], "a": ["c"]}) == [["a", "c", "b"]]
    assert find_cycles(nodes, {"b": ["b"]}) == [["b"]]


def test_a_compilation_is_freed_by_reference_counting() -> None:
    """No reference cycles: the program goes when its last user lets go, not when the
    cyclic collector next runs (at exit, for the CLI)."""
    spec = Path(__file__).resolve().parents[2] / "specs" / "build_project.agentflow"
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        result = compile_source(SourceFile("build_project.agentflow", spec.read_text()))
        assert result.ok
        result.symbols.facts  # noqa: B018 - made if the pipeline did not
        program, symbols = weakref.ref(result.program), weakref.ref(result.symbols)
        del result
        assert program() is None and symbols() is None
    finally:
        if was_enabled:
            gc.enable()


def test_compiling_leaves_the_collector_as_it_found_it() -> None:
    was_enabled = gc.isenabled()
    try:
        for enabled in (True, False):
            (gc.enable if enabled else gc.disable)()
            compile_source(SourceFile("t.agentflow", SPEC))
            assert gc.isenabled() == enabled
    finally:
        (gc.enable if was_enabled else gc.disable)()
