"""The static checks of LANGUAGE.md section 5: each code with its exact primary span."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from agentflow.compiler.checks import PHASES, check_program, find_secret
from agentflow.compiler.diagnostics import DiagnosticSink, sorted_diagnostics
from agentflow.compiler.parser import parse
from agentflow.compiler.source import SourceFile
from agentflow.compiler.symbols import collect
from agentflow.compiler.templates import placeholders
from agentflow.compiler.typecheck import Typer
from agentflow.compiler.types import BOOL, INT, STR, ListT, OptionalT, RecordT, StructT

ROOT = Path(__file__).resolve().parents[2]
BAD = ROOT / "tests" / "compiler" / "bad"


def compile_text(text: str, entry: str | None = None, name: str = "t.agentflow", with_source: bool = True):
    source = SourceFile(name, textwrap.dedent(text))
    sink = DiagnosticSink()
    program = parse(source, sink)
    result = None
    if program is not None and not sink.has_errors:
        symbols = collect(program, sink)
        result = check_program(program, symbols, sink, entry=entry, source=source if with_source else None)
    return result, sorted_diagnostics(sink.diagnostics)


def codes(text: str, **kw) -> list[tuple[str, int, int]]:
    return [(d.code, d.primary.span.line, d.primary.span.column) for d in compile_text(text, **kw)[1]]


def errors(text: str, **kw) -> list[tuple[str, int, int]]:
    """The errors only: the shared HEADER leaves some roles and tasks unused (W301/W303)."""
    return [c for c in codes(text, **kw) if c[0].startswith("E")]


HEADER = """\
defaults { model = "scripted" }
type Review { verdict: "PASS" | "NEEDS_FIXES"  feedback: str }
role coder {
  task implement(spec: str, feedback: str = "") -> str { prompt = "Implement {spec}. {feedback}" }
}
role reviewer {
  task review(code: str) -> Review { prompt = "Review {code}" }
}
"""  # 8 lines: choreographies below start on line 9


def body(text: str) -> str:
    return HEADER + textwrap.dedent(text)


# ---------------------------------------------------------------- the example and the corpus

def test_example_spec_compiles_with_zero_diagnostics() -> None:
    source = SourceFile("specs/build_project.agentflow", (ROOT / "specs" / "build_project.agentflow").read_text())
    sink = DiagnosticSink()
    program = parse(source, sink)
    symbols = collect(program, sink)
    assert check_program(program, symbols, sink) == "main"
    assert sink.diagnostics == []
    assert check_program(program, symbols, sink, source=source, entry="main") == "main"
    assert sink.diagnostics == []


CORPUS = {
    "e001_unexpected_token": [("E001", 9, 8)],
    "e002_unterminated_string": [("E002", 6, 14)],
    "e003_nesting": [("E003", 4, 10)],
    "e101_undefined_name": [("E101", 16, 24), ("E101", 17, 44)],
    "e102_undefined_role": [("E102", 9, 13)],
    "e103_no_such_task": [("E103", 10, 22)],
    "e104_undefined_tool": [("E104", 7, 24), ("E104", 13, 11)],
    "e105_undefined_type": [("E105", 6, 10), ("E105", 10, 29)],
    "e106_duplicates": [("E106", 10, 5), ("E106", 13, 3)],
    "e106_duplicate_declarations": [("E106", 5, 26), ("E106", 8, 6)],
    "e107_no_entry": [("E107", 8, 14)],
    "e107_undefined_choreography": [("E107", 14, 11)],
    "e108_return_yield": [("E108", 9, 12), ("E108", 11, 5), ("E108", 14, 3)],
    "e201_type_mismatch": [("E201", 15, 29), ("E201", 16, 44), ("E201", 19, 10)],
    "e201_literal_compare": [("E201", 11, 14), ("E201", 12, 24)],
    "e202_no_field": [("E202", 12, 12)],
    "e203_arguments": [("E203", 9, 33), ("E203", 10, 29), ("E203", 11, 7)],
    "e204_for_over_record": [("E204", 16, 24)],
    "e205_template": [("E205", 7, 41), ("E205", 11, 23), ("E205", 16, 41), ("E205", 17, 25)],
    "e301_no_model": [("E301", 2, 6)],
    "e302_attributes": [("E302", 7, 3), ("E302", 10, 43), ("E302", 13, 3), ("E302", 14, 14), ("E302", 15, 17),
                        ("E302", 18, 8)],
    "e303_session_replicas": [("E303", 6, 14)],
    "e304_secret": [("E304", 7, 18)],
    "e305_human_tools": [("E305", 6, 11)],
    "e401_data_cycle": [("E401", 9, 3)],
    "e401_session_order": [("E401", 11, 3)],
    "e401_after": [("E401", 8, 3)],
    "e402_delegation": [("E402", 5, 12)],
    "e403_recursion": [("E403", 9, 10)],
    "e404_repeat": [("E404", 9, 11), ("E404", 12, 23)],
    "w_warnings": [("W302", 4, 6), ("W303", 8, 8), ("W301", 11, 6), ("W501", 17, 3)],
}


def test_corpus_covers_every_code_of_section_5() -> None:
    documented = {"E001", "E002", "E003", "E101", "E102", "E103", "E104", "E105", "E106", "E107", "E201", "E202", "E203",
                  "E204", "E205", "E301", "E302", "E303", "E304", "E305", "W301", "W302", "W303", "E401", "E402", "E403",
                  "E404", "W501", "E108"}
    covered = {c for expected in CORPUS.values() for c, _, _ in expected}
    assert covered == documented
    assert {p.stem for p in BAD.glob("*.agentflow")} == set(CORPUS)


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_corpus_file(name: str) -> None:
    text = (BAD / f"{name}.agentflow").read_text()
    source = SourceFile(f"{name}.agentflow", text)
    sink = DiagnosticSink()
    program = parse(source, sink)
    if program is not None and not sink.has_errors:
        symbols = collect(program, sink)
        if not sink.has_errors:  # as the pipeline does
            check_program(program, symbols, sink, source=source)
    got = [(d.code, d.primary.span.line, d.primary.span.column) for d in sorted_diagnostics(sink.diagnostics)]
    assert got == CORPUS[name]
    for d in sink.diagnostics:  # every diagnostic can be acted on
        assert d.message and d.message[0].islower() or d.message[0] in "`\"", d.message
        assert d.primary.message


# ---------------------------------------------------------------- phase 1: names and structure

def test_e101_undefined_name_and_did_you_mean() -> None:
    result, diags = compile_text(body("""\
        choreography main(spec: str) -> str {
          code = coder.implement(spc)
          return code
        }
        """))
    assert result is None
    assert [(d.code, d.primary.span.line, d.primary.span.column) for d in diags] == [("E101", 10, 26)]
    assert diags[0].help == "did you mean `spec`?"


def test_e101_after_must_name_a_binding() -> None:
    assert codes(body("""\
        choreography main(spec: str) -> str {
          code = coder.implement(spec) after nothing
          return code
        }
        """)) == [("E101", 10, 38)]


def test_e102_calls_on_a_binding_are_not_role_calls() -> None:
    assert codes(body("""\
        choreography main(spec: str) -> str {
          r = reviewer.review(spec)
          x = r.review(spec)
          return x
        }
        """)) == [("E102", 11, 7)]


def test_e103_unknown_task_in_tools() -> None:
    assert codes(body("""\
        role lead {
          tools = [reviewer.reveiw]
          task go(spec: str) -> str { prompt = "{spec}" }
        }
        choreography main(spec: str) -> str {
          x = lead.go(spec)
          return x
        }
        """)) == [("E103", 10, 21)]


def test_e104_role_granted_as_tool_and_unknown_call() -> None:
    assert codes(body("""\
        role lead {
          tools = [reviewer]
          task go(spec: str) -> str { prompt = "{spec}" }
        }
        choreography main(spec: str) -> str {
          x = lead.go(spec)
          y = frobnicate(x)
          return y
        }
        """)) == [("E104", 10, 12), ("E104", 15, 7)]


def test_e106_binding_named_like_a_parameter_or_loop_variable() -> None:
    assert codes(body("""\
        choreography main(spec: str, specs: list[str]) -> list[str] {
          spec = coder.implement("x")
          out = for s in specs {
            s = coder.implement(s)
            yield s
          }
          return out
        }
        """)) == [("E106", 10, 3), ("E106", 12, 5)]


def test_e107_no_choreography_and_unknown_entry() -> None:
    assert codes(HEADER) == [("E107", 1, 1)]
    result, diags = compile_text(body("""\
        choreography main(spec: str) -> str {
          return spec
        }
        """), entry="mian")
    assert result is None and [(d.code, d.help) for d in diags] == [("E107", "did you mean `main`?")]


def test_entry_is_main_or_the_only_one_or_the_requested_one() -> None:
    one = body("choreography solo(spec: str) -> str {\n  return spec\n}\n")
    assert compile_text(one)[0] == "solo"
    two = one + "choreography main(spec: str) -> str {\n  x = solo(spec)\n  return x\n}\n"
    assert compile_text(two)[0] == "main"
    assert compile_text(two, entry="solo")[0] == "solo"


def test_e108_missing_return_and_yield_outside_for() -> None:
    assert codes(body("""\
        choreography main(spec: str) -> str {
          x = coder.implement(spec)
          yield x
        }
        """)) == [("E108", 9, 14), ("E108", 11, 3)]


def test_e108_repeat_body_has_no_yield() -> None:
    assert codes(body("""\
        choreography main(spec: str) -> str {
          loop = repeat max 2 until true {
            x = coder.implement(spec)
            yield x
          }
          return loop.x
        }
        """)) == [("E108", 12, 5)]


def test_e403_self_recursion() -> None:
    assert codes(body("""\
        choreography main(spec: str) -> str {
          x = main(spec)
          return x
        }
        """)) == [("E403", 10, 7)]


def test_e404_max_must_be_an_integer_literal() -> None:
    assert codes(body("""\
        choreography main(spec: str, n: int) -> str {
          loop = repeat max n until true {
            x = coder.implement(spec)
          }
          return loop.x
        }
        """)) == [("E404", 10, 21)]


def test_e302_defaults_and_tool_attributes() -> None:
    assert codes(body("""\
        tool t(x: str) -> str {
          command = []
          timeout = 30
        }
        tool u(x: str) -> str { description = "nothing" }
        tool v(x: str) -> str { python = "no_colon" }
        choreography main(spec: str) -> str {
          a = t(spec)
          b = u(a)
          c = v(b)
          return c
        }
        """)) == [("E302", 10, 13), ("E302", 11, 13), ("E302", 13, 6), ("E302", 14, 34)]


def test_e302_memory_and_wrong_scope_attribute() -> None:
    assert codes(body("""\
        role r {
          memory = "forever"
          task go(x: str) -> str { prompt = "{x}"  model = "scripted" }
        }
        choreography main(spec: str) -> str {
          a = r.go(spec)
          return a
        }
        """)) == [("E302", 10, 12), ("E302", 11, 44)]


def test_e303_replicas_from_defaults() -> None:
    text = """\
        defaults { model = "scripted"  replicas = 4 }
        role tutor {
          memory = "session"
          task explain(x: str) -> str { prompt = "{x}" }
        }
        choreography main(x: str) -> str {
          a = tutor.explain(x)
          return a
        }
        """
    assert codes(text) == [("E303", 3, 12)]


@pytest.mark.parametrize("text, secret", [
    ("sk-abcdefghijklmnop1234", True),
    ("key AKIAIOSFODNN7EXAMPLE here", True),
    ("a3f9c2e1b7d4a8f0c6e2b9d1a7f3c5e8", True),
    ("anthropic/claude-3-5-haiku-20241022", False),
    ("You are a careful Python programmer who writes clear, well documented code.", False),
    ("/home/user/projects/some_really_long_directory_name/file.py", False),
    ("tools.files:write_file_with_a_very_long_function_name", False),
    ("sk-short", False),
    ("OPENAI_API_KEY", False),
])
def test_secret_detection(text: str, secret: bool) -> None:
    assert (find_secret(text) is not None) is secret


def test_e304_points_inside_the_string() -> None:
    assert codes(body("""\
        choreography main(spec: str) -> str {
          x = coder.implement("token: sk-0123456789abcdefXYZ please")
          return x
        }
        """)) == [("E304", 10, 31)]


def test_e301_only_for_used_roles() -> None:
    text = """\
        role used { task go(x: str) -> str { prompt = "{x}" } }
        role idle { task go(x: str) -> str { prompt = "{x}" } }
        choreography main(x: str) -> str {
          a = used.go(x)
          return a
        }
        """
    assert codes(text) == [("E301", 1, 6)]


def test_phase_one_errors_stop_type_checking() -> None:
    # E101 and a type error: only the phase-1 error is reported
    assert codes(body("""\
        choreography main(spec: str) -> str {
          x = coder.implement(1)
          y = coder.implement(nope)
          return x
        }
        """)) == [("E101", 11, 23)]


# ---------------------------------------------------------------- phase 2: types

def test_example_types_prev_and_repeat_value() -> None:
    source = SourceFile("s", (ROOT / "specs" / "build_project.agentflow").read_text())
    sink = DiagnosticSink()
    program = parse(source, sink)
    symbols = collect(program, sink)
    typer = Typer(symbols, sink)
    typer.check_all()
    assert sink.diagnostics == []
    assert typer.choreography_type("main") == ListT(RecordT("Review"))
    main = symbols.choreographies["main"]
    reviews = main.body.bindings[1]
    attempt = reviews.value.body.bindings[0]
    assert typer.memo[id(attempt)] == StructT((("code", STR), ("review", RecordT("Review")),
                                               ("iterations", INT), ("converged", BOOL)))
    feedback_arg = attempt.value.body.bindings[0].value.args[1].value  # prev.review.feedback
    scope = typer.binding_scope[id(attempt.value.body.bindings[0])]
    assert typer.expr(feedback_arg, scope) == OptionalT(STR)


def test_optional_to_a_parameter_without_default_is_an_error() -> None:
    assert codes(body("""\
        choreography main(spec: str) -> str {
          loop = repeat max 2 until review.verdict == "PASS" {
            code = coder.implement(spec, feedback = prev.review.feedback)
            review = reviewer.review(prev.code)
          }
          return loop.code
        }
        """)) == [("E201", 12, 30)]


def test_e201_operators_conditions_and_lists() -> None:
    assert codes(body("""\
        choreography main(spec: str, n: int) -> str {
          a = spec + n
          b = spec if n else "x"
          c = [spec, n]
          d = not spec
          return a
        }
        """)) == [("E201", 10, 7), ("E201", 11, 15), ("E201", 12, 14), ("E201", 13, 11)]


def test_e201_builtins() -> None:
    assert codes(body("""\
        choreography main(xs: list[int], s: str) -> str {
          a = len(3)
          b = all(xs)
          c = join(xs, ",")
          d = json(xs)
          e = len(s) + len(xs)
          return d + json(a + e) + json(b) + c
        }
        """)) == [("E201", 10, 11), ("E201", 11, 11), ("E201", 12, 12)]


def test_e203_builtin_arity() -> None:
    assert codes(body("""\
        choreography main(xs: list[str]) -> str {
          a = join(xs)
          return a
        }
        """)) == [("E203", 10, 7)]


def test_e201_comprehension_is_pure_but_builtins_are_fine() -> None:
    assert codes(body("""\
        choreography main(xs: list[str]) -> list[int] {
          ok = [len(x) for x in xs if x != ""]
          bad = [coder.implement(x) for x in xs]
          return ok + [len(b) for b in bad]
        }
        """)) == [("E201", 11, 10)]


def test_null_and_optional_give_the_default() -> None:
    assert errors(body("""\
        choreography main(spec: str) -> str {
          a = coder.implement(spec, feedback = null)
          b = coder.implement(spec, null)
          return a + b
        }
        """)) == []


def test_choreography_without_arrow_returns_its_return_type() -> None:
    text = body("""\
        choreography sub(spec: str) {
          r = reviewer.review(spec)
          return r
        }
        choreography main(spec: str) -> str {
          r = sub(spec)
          return r.verdict
        }
        """)
    assert errors(text) == []
    assert errors(text.replace("return r.verdict", "return r.verdit")) == [("E202", 15, 12)]


def test_e202_field_on_a_list_and_on_a_str() -> None:
    assert codes(body("""\
        choreography main(specs: list[str]) -> str {
          rs = for s in specs {
            r = reviewer.review(s)
            yield r
          }
          v = rs.verdict
          w = v.x
          return v
        }
        """)) == [("E202", 14, 10)]


def test_e204_comprehension_over_a_string() -> None:
    assert codes(body("""\
        choreography main(spec: str) -> list[str] {
          return [c for c in spec]
        }
        """)) == [("E204", 10, 22)]


def test_e205_malformed_and_escaped_placeholders() -> None:
    text = """\
        defaults { model = "scripted" }
        role r {
          task ok(x: str) -> str { prompt = "JSON like {{\\"a\\": 1}} for {x}" }
          task bad(x: str) -> str { prompt = "Broken {x" }
        }
        choreography main(x: str) -> str {
          a = r.ok(x)
          b = r.bad(a)
          return b
        }
        """
    assert codes(text) == [("E205", 4, 46)]


def test_e205_without_source_points_inside_a_one_line_string() -> None:
    text = body("""\
        role w { task go(topic: str) -> str { prompt = "About {topc}." } }
        choreography main(spec: str) -> str {
          a = w.go(spec)
          return a
        }
        """)
    assert codes(text, with_source=False) == [("E205", 9, 55)]


def test_param_defaults_are_typed() -> None:
    assert codes(body("""\
        tool t(x: int = "one") -> str { builtin = "fs.read" }
        choreography main(spec: str) -> str {
          a = t()
          return a
        }
        """)) == [("E201", 9, 17)]


# ---------------------------------------------------------------- phase 3: deadlocks and warnings

def test_e401_reports_every_binding_of_the_cycle_with_labels() -> None:
    _, diags = compile_text((BAD / "e401_data_cycle.agentflow").read_text())
    (d,) = diags
    assert d.message == "deadlock: `outline` waits for `summary`, which waits for `text`, which waits for `outline`"
    assert [(l.span.line, l.message) for l in d.secondary] == [
        (11, "waits for `text` (uses its value)"), (10, "waits for `outline` (uses its value)")]


def test_e401_inside_a_for_body_and_through_nested_bodies() -> None:
    assert errors(body("""\
        choreography main(specs: list[str]) -> list[str] {
          out = for s in specs {
            a = coder.implement(b)
            b = coder.implement(a)
            yield b
          }
          return out
        }
        """)) == [("E401", 11, 5)]
    assert errors(body("""\
        choreography main(specs: list[str]) -> list[str] {
          first = coder.implement(json(out))
          out = for s in specs {
            b = coder.implement(s + first)
            yield b
          }
          return out
        }
        """)) == [("E401", 10, 3)]


def test_prev_is_not_a_wait() -> None:
    assert codes(body("""\
        choreography main(spec: str) -> str {
          loop = repeat max 3 until review.verdict == "PASS" {
            code = coder.implement(spec, feedback = prev.review.feedback if prev != null else "")
            review = reviewer.review(code)
          }
          return loop.code
        }
        """)) == []


def test_session_role_through_a_sub_choreography() -> None:
    text = """\
        defaults { model = "scripted" }
        role tutor {
          memory = "session"
          task ask(q: str) -> str { prompt = "{q}" }
        }
        choreography intro(q: str) -> str {
          a = tutor.ask(q)
          return a
        }
        choreography main(q: str) -> str {
          answer = tutor.ask(q + context)
          context = intro(q)
          return answer
        }
        """
    assert codes(text) == [("E401", 11, 3)]


def test_e402_self_delegation() -> None:
    assert codes(body("""\
        role loop_role {
          tools = [loop_role.go]
          task go(x: str) -> str { prompt = "{x}" }
        }
        choreography main(spec: str) -> str {
          a = loop_role.go(spec)
          b = coder.implement(a)
          c = reviewer.review(b)
          return c.feedback
        }
        """)) == [("E402", 10, 12)]


def test_delegation_makes_roles_and_tasks_used() -> None:
    assert codes(body("""\
        role lead {
          tools = [coder.implement, reviewer.review]
          task go(x: str) -> str { prompt = "{x}" }
        }
        choreography main(spec: str) -> str {
          a = lead.go(spec)
          return a
        }
        """)) == []


def test_w501_used_by_after_yield_until_and_nested_bodies() -> None:
    assert codes(body("""\
        choreography main(specs: list[str]) -> list[str] {
          first = coder.implement("setup")
          second = coder.implement("x") after first
          out = for s in specs {
            c = coder.implement(s + second)
            yield c
          }
          unused = coder.implement("y")
          return out
        }
        """)) == [("W301", 6, 6), ("W501", 16, 3)]


def test_phases_are_listed_in_order() -> None:
    names = [name for name, _ in PHASES]
    assert names == ["names and structure", "types", "deadlocks and warnings"]
    assert all(callable(c) for _, checks in PHASES for c in checks)


# ---------------------------------------------------------------- templates

def test_placeholders_with_offsets_paths_and_escapes() -> None:
    phs = placeholders("a {x} {{lit}} {m.path} {xs[0].name} {bad thing} }")
    assert [(p.text, p.start, p.root, p.path, p.error is None) for p in phs] == [
        ("{x}", 2, "x", (), True), ("{m.path}", 14, "m", ("path",), True),
        ("{xs[0].name}", 23, "xs", (0, "name"), True), ("{bad thing}", 36, None, (), False),
        ("}", 48, None, (), False)]


def test_a_rich_valid_program_has_no_diagnostics() -> None:
    text = """\
        defaults { model = "scripted"  timeout = 30s  retries = 1 }
        type Item { name: str  tags: list[str]  score: float? }
        type Report { items: list[Item]  summary: str }
        tool read(path: str) -> str { builtin = "fs.read"  cache = false }
        tool check(path: str, strict: bool = false) -> json { command = ["lint", "{path}"] }
        role analyst {
          system = "Analyse {path} carefully."
          tools = [read, check, writer.write]
          memory = "session"
          task inspect(path: str) -> Item { prompt = "Inspect {path}." }
          task grade(path: str, item: Item) -> Report { prompt = "Grade {path}: {item.name} {item.tags[0]}" }
        }
        role writer {
          model = "openai/gpt-4o-mini"
          api_key_env = "OPENAI_API_KEY"
          task write(summary: str, notes: list[str] = []) -> str { prompt = "Write {summary} {notes}" }
        }
        choreography summarize(r: Report) {
          text = writer.write(r.summary, notes = [i.name for i in r.items if len(i.tags) > 0])
          return {text: text, count: len(r.items)}
        }
        choreography main(paths: list[str], limit: int = 3) -> list[str] {
          raw = read(paths[0])
          checked = check(paths[0]) after raw
          first = analyst.inspect(paths[0])
          graded = analyst.grade(paths[0], first)
          loop = repeat max 3 until done or loop_count > limit {
            draft = writer.write(graded.summary + (prev.draft if prev != null else ""))
            done = len(draft) > 100 and "ok" in draft and draft not in ["", "x"]
            loop_count = len(draft) % 7 * 2 - 1
          }
          pieces = for p in paths {
            s = summarize(graded)
            yield s.text + json(s.count) + json(checked) + raw
          }
          best = pieces[0] if loop.converged and loop.iterations >= 1 else loop.draft
          return pieces + [best, join(paths, ", ")]
        }
        """
    assert codes(text) == []


def test_e302_spawn_attributes_are_checked() -> None:
    assert codes(body("""\
        tool create_agent(x: str) -> str { python = "t:f" }
        role r {
          spawn = "yes"
          max_spawn_depth = 0
          on_delegate_failure = "ignore"
          task go(x: str) -> str { prompt = "{x}" }
        }
        role s {
          spawn = true
          tools = [create_agent]
          task go(x: str) -> str { prompt = "{x}" }
        }
        choreography main(spec: str) -> str {
          a = r.go(spec)
          b = s.go(a)
          return b
        }
        """)) == [("E302", 11, 11), ("E302", 12, 21), ("E302", 13, 25), ("E302", 18, 12)]


def test_spawn_attributes_reach_the_task_definition_only_when_set() -> None:
    from agentflow.compiler.pipeline import compile_source
    plan = compile_source(SourceFile("t.agentflow", textwrap.dedent("""\
        defaults { model = "scripted" }
        role w { task do(x: str) -> str { prompt = "{x}" } }
        role a {
          spawn = true
          on_delegate_failure = "return"
          tools = [w.do]
          task go(x: str) -> str { prompt = "{x}" }
        }
        role b { max_spawn_depth = 3  spawn = true  task go(x: str) -> str { prompt = "{x}" } }
        choreography main(x: str) -> str {
          r = a.go(x)
          s = b.go(r)
          return s
        }
        """))).plan.data["tasks"]
    assert plan["a.go"]["definition"]["spawn"] == {"max_depth": 2, "depth": 0}
    assert plan["a.go"]["definition"]["on_delegate_failure"] == "return"
    assert plan["b.go"]["definition"]["spawn"] == {"max_depth": 3, "depth": 0}
    assert "spawn" not in plan["w.do"]["definition"] and "on_delegate_failure" not in plan["w.do"]["definition"]
