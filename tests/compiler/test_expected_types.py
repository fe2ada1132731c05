"""Expected types (LANGUAGE.md section 9): where a type is expected, a record literal whose
fields fit a record type is that type, and a string literal is a member of a literal union.

Each position is checked both ways: a literal that fits compiles with no error, and one
that misses gets exactly one diagnostic, with its code, its span and the field it names.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from agentflow.compiler.parser import MAX_NESTING
from agentflow.compiler.pipeline import compile_source
from agentflow.compiler.source import SourceFile
from agentflow.compiler.types import STR, ListT, OptionalT, RecordT, with_omitted_fields
from test_checks import compile_text

from runtime_support import af, ok, result_json, write

HEADER = """\
defaults { model = "scripted" }
type Report {
  title: str
  body: str
  verdict: "publish" | "revise"
  note: str?
}
type Issue {
  report: Report
  tags: list["bug" | "idea"]
}
role editor {
  task write(topic: str) -> Report { prompt = "Write about {topic}." }
  task review(report: Report) -> Report { prompt = "Review {report.title}: {report.note}" }
  task file(issue: Issue, related: list[Report]) -> str { prompt = "File {issue.report.title}." }
  task decide(verdict: "publish" | "revise") -> str { prompt = "Decide {verdict}." }
  task label(tags: list["bug" | "idea"]) -> str { prompt = "Label {tags}." }
}
tool archive(report: Report) -> str { command = ["echo", "{report.title}"] }
choreography publish(report: Report) -> str {
  return editor.decide(report.verdict)
}
"""


def errors(text: str) -> list:
    """The errors of HEADER + text (the header leaves some tasks unused: W303 is no concern here)."""
    return [d for d in compile_text(HEADER + textwrap.dedent(text))[1] if d.is_error]


FITS = {
    "task argument": """
        choreography main(t: str) -> Report {
          return editor.review({title: t, body: t, verdict: "publish"})
        }""",
    "keyword argument": """
        choreography main(t: str) -> Report {
          return editor.review(report = {title: t, body: t, verdict: "publish", note: null})
        }""",
    "tool argument": """
        choreography main(t: str) -> str {
          return archive({title: t, body: t, verdict: "revise"})
        }""",
    "choreography argument": """
        choreography main(t: str) -> str {
          return publish({title: t, body: t, verdict: "revise", note: "late"})
        }""",
    "return": """
        choreography main(t: str) -> Report {
          return {title: t, body: t, verdict: "publish"}
        }""",
    "yield": """
        choreography main(topics: list[str]) -> list[Report] {
          return for t in topics {
            yield {title: t, body: t, verdict: "revise"}
          }
        }""",
    "else side, from the other side": """
        choreography main(t: str, ok: bool) -> Report {
          report = editor.write(t) if ok else {title: "empty", body: t, verdict: "revise"}
          return editor.review(report)
        }""",
    "then side, from the other side": """
        choreography main(t: str, ok: bool) -> Report {
          report = {title: "empty", body: t, verdict: "revise"} if ok else editor.write(t)
          return editor.review(report)
        }""",
    "both sides, from the context": """
        choreography main(t: str, ok: bool) -> Report {
          return {title: t, body: t, verdict: "publish"} if ok else {title: t, body: "", verdict: "revise"}
        }""",
    "list items, from the expected element type": """
        choreography main(t: str) -> str {
          issue = {report: editor.write(t), tags: []}
          return editor.file(issue, [{title: t, body: t, verdict: "publish"}, {title: t, body: t, verdict: "revise"}])
        }""",
    "list item, from a sibling item": """
        choreography main(t: str) -> str {
          related = [{title: t, body: t, verdict: "publish"}, editor.write(t)]
          return editor.file({report: related[0], tags: ["bug"]}, related)
        }""",
    "nested record and list of strings in a field": """
        choreography main(t: str) -> str {
          return editor.file({report: {title: t, body: t, verdict: "publish"}, tags: ["bug", "idea"]}, [])
        }""",
    "string argument": """
        choreography main() -> str {
          return editor.decide("publish")
        }""",
    "string on one side, from the other side": """
        choreography main(t: str, ok: bool) -> str {
          verdict = editor.write(t).verdict if ok else "revise"
          return editor.decide(verdict)
        }""",
    "list of strings argument": """
        choreography main() -> str {
          return editor.label(["idea", "bug"])
        }""",
    "strings yielded where a list is expected": """
        choreography main(topics: list[str]) -> str {
          return editor.label(for t in topics {
            yield "bug"
          })
        }""",
    "string return": """
        choreography main() -> "publish" | "revise" {
          return "revise"
        }""",
    "string parameter default": """
        choreography main(verdict: "publish" | "revise" = "publish") -> str {
          return editor.decide(verdict)
        }""",
}


@pytest.mark.parametrize("text", FITS.values(), ids=FITS.keys())
def test_a_literal_that_fits_is_the_expected_type(text: str) -> None:
    assert errors(text) == []


# (text, code, where the primary span starts: the first occurrence of this text, message)
MISSES = {
    "missing field": ("""
        choreography main(t: str) -> Report {
          return editor.review({title: t, body: t})
        }""", "E201", "{title: t, body: t}", "missing field `verdict` of `Report`"),
    "missing fields": ("""
        choreography main(t: str) -> Report {
          return editor.review({title: t})
        }""", "E201", "{title: t}", "missing fields `body`, `verdict` of `Report`"),
    "extra field": ("""
        choreography main(t: str) -> Report {
          return editor.review({title: t, body: t, verdict: "publish", score: 3})
        }""", "E202", "score", "no field `score` on type `Report`"),
    "wrong field type": ("""
        choreography main(t: str) -> Report {
          return editor.review({title: 3, body: t, verdict: "publish"})
        }""", "E201", "3, body", "field `title` of `Report` expects `str`, found `int`"),
    "string not in the union": ("""
        choreography main(t: str) -> Report {
          return editor.review({title: t, body: t, verdict: "maybe"})
        }""", "E201", '"maybe"', 'field `verdict` of `Report` expects `"publish" | "revise"`, found `"maybe"`'),
    "tool argument": ("""
        choreography main(t: str) -> str {
          return archive({title: t, verdict: "revise"})
        }""", "E201", "{title: t, verdict", "missing field `body` of `Report`"),
    "choreography argument": ("""
        choreography main(t: str) -> str {
          return publish({title: t, body: t, verdict: "revised"})
        }""", "E201", '"revised"', 'field `verdict` of `Report` expects `"publish" | "revise"`, found `"revised"`'),
    "return": ("""
        choreography main(t: str) -> Report {
          return {title: t, body: t, verdict: "publish", draft: true}
        }""", "E202", "draft", "no field `draft` on type `Report`"),
    "yield": ("""
        choreography main(topics: list[str]) -> list[Report] {
          return for t in topics {
            yield {title: t, body: 1.5, verdict: "revise"}
          }
        }""", "E201", "1.5", "field `body` of `Report` expects `str`, found `float`"),
    "else side, from the other side": ("""
        choreography main(t: str, ok: bool) -> Report {
          report = editor.write(t) if ok else {title: "empty", body: t, verdict: "rejected"}
          return editor.review(report)
        }""", "E201", '"rejected"', 'field `verdict` of `Report` expects `"publish" | "revise"`, found `"rejected"`'),
    "both sides, from the context": ("""
        choreography main(t: str, ok: bool) -> Report {
          return {title: t, body: t, verdict: "publish"} if ok else {title: t, verdict: "revise"}
        }""", "E201", "{title: t, verdict", "missing field `body` of `Report`"),
    "list item, from the expected element type": ("""
        choreography main(t: str) -> str {
          return editor.file({report: editor.write(t), tags: []}, [{title: t, body: t, verdict: "publish", tag: "x"}])
        }""", "E202", "tag:", "no field `tag` on type `Report`"),
    "list item, from a sibling item": ("""
        choreography main(t: str) -> str {
          related = [editor.write(t), {title: t, body: t}]
          return editor.file({report: related[0], tags: []}, related)
        }""", "E201", "{title: t, body: t}]", "missing field `verdict` of `Report`"),
    "nested record": ("""
        choreography main(t: str) -> str {
          return editor.file({report: {title: t, body: t, verdict: "publish!"}, tags: []}, [])
        }""", "E201", '"publish!"', 'field `verdict` of `Report` expects `"publish" | "revise"`, found `"publish!"`'),
    "nested list of strings": ("""
        choreography main(t: str) -> str {
          return editor.file({report: editor.write(t), tags: ["bug", "feature"]}, [])
        }""", "E201", '["bug", "feature"]', 'field `tags` of `Issue` expects `list["bug" | "idea"]`, found `list[str]`'),
}


@pytest.mark.parametrize("text, code, at, message", MISSES.values(), ids=MISSES.keys())
def test_a_literal_that_misses_says_which_field(text: str, code: str, at: str, message: str) -> None:
    source = HEADER + textwrap.dedent(text)
    start = source.index(at)
    line = source.count("\n", 0, start) + 1
    column = start - source.rfind("\n", 0, start)
    assert [(d.code, d.primary.span.line, d.primary.span.column, d.message) for d in errors(text)] == [
        (code, line, column, message)]


def test_a_string_not_in_the_union_gets_the_possible_values() -> None:
    [d] = errors("""
        choreography main(t: str) -> Report {
          return editor.review({title: t, body: t, verdict: "revize"})
        }""")
    assert d.help == 'did you mean `"revise"`? the possible values are `"publish"`, `"revise"`'
    assert d.primary.message == 'this is `"revize"`'


def test_an_argument_string_not_in_the_union_keeps_its_message() -> None:
    [d] = errors("""
        choreography main() -> str {
          return editor.decide("maybe")
        }""")
    assert (d.code, d.message) == ("E201", 'argument `verdict` of `editor.decide` expects `"publish" | "revise"`, '
                                           "found `str`")


def test_sides_that_suggest_no_declared_record_keep_the_if_else_message() -> None:
    [d] = errors("""
        choreography main(t: str, ok: bool) -> str {
          x = {a: 1} if ok else {a: "one"}
          return t
        }""")
    assert d.message == "the two sides of `if ... else` have different types: `{a: int}` and `{a: str}`"


def test_a_string_that_only_a_sibling_suggests_may_be_any_string() -> None:
    """The other side's type is a suggestion, not a requirement: `"other"` makes a `str`."""
    text = """
        choreography main(t: str, ok: bool) -> str {
          verdict = editor.write(t).verdict if ok else "other"
          return editor.decide(verdict)
        }"""
    [d] = errors(text)
    assert d.message == 'argument `verdict` of `editor.decide` expects `"publish" | "revise"`, found `str`'
    assert errors(text.replace("editor.decide(verdict)", "verdict")) == []


def test_an_omitted_optional_field_is_null_in_the_plan() -> None:
    """`{text: t}` where `Note { text: str  tag: str? }` is expected is `{text: t, tag: null}`,
    so templates, tools and results at run time see every field of its type."""
    text = """\
        defaults { model = "scripted" }
        type Note {
          text: str
          tag: str?
        }
        role keeper {
          task keep(note: Note) -> str { prompt = "Keep {note.text} ({note.tag})." }
        }
        choreography main(t: str) -> str {
          return keeper.keep({text: t})
        }
        """
    compilation = compile_source(SourceFile("note.agentflow", textwrap.dedent(text)))
    assert compilation.ok, compilation.diagnostics
    [node] = [n for n in compilation.plan.data["nodes"].values() if n["kind"] == "task"]
    assert node["args"]["note"] == ["record", [["text", ["name", "t"]], ["tag", ["lit", None]]]]


def test_run_accepts_record_literals_where_records_are_expected(tmp_path: Path) -> None:
    """End to end with the scripted model: a record literal on one side of `if ... else`, one
    as a task argument (with its optional field omitted, read by the prompt), one as a
    choreography argument, and one returned from `main`."""
    write(tmp_path / "flow.agentflow", HEADER + textwrap.dedent("""
        choreography main(topic: str, ok: bool = false) -> Report {
          draft = editor.write(topic) if ok else {title: "empty", body: topic, verdict: "revise"}
          reviewed = editor.review({title: draft.title, body: draft.body, verdict: "publish"})
          decision = publish(draft)
          return {title: reviewed.title, body: draft.body + " / " + decision, verdict: "publish"}
        }
        """))
    result = result_json(ok(af(tmp_path, "run", "flow.agentflow", "--model", "scripted", "--input", "topic=cats")))
    assert set(result) == {"title", "body", "verdict", "note"}
    assert result["body"].startswith("cats / ")
    assert (result["verdict"], result["note"]) == ("publish", None)


NAMED_RECORDS = """\
defaults { model = "scripted" }
type Note {
  text: str
  tag: str?
}
type Box {
  note: Note
  notes: list[Note]?
}
role keeper {
  task keep(note: Note) -> str { prompt = "Keep {note.text} tagged {note.tag}." }
  task store(box: Box) -> str { prompt = "Store {box.note.text} tagged {box.note.tag}." }
}
tool tags(notes: list[Note]) -> json { python = "tools:tags" }
choreography main(t: str) -> json {
  n = {text: t}
  b = {note: n, notes: [n]}
  kept = keeper.keep(n)
  stored = keeper.store(b)
  tagged = tags([n, {text: t, tag: "red"}])
  return {kept: kept, stored: stored, tagged: tagged}
}
choreography plain(t: str) -> Note {
  n = {text: t}
  return n
}
choreography boxed(t: str) -> Box {
  n = {text: t}
  return {note: n}
}
"""


def test_a_record_bound_to_a_name_gets_its_omitted_optional_fields_at_run_time(tmp_path: Path) -> None:
    """`n = {text: t}` is typed on its own (no type is expected there); passed where `Note`
    is expected, or returned as one, it has every field of `Note` at run time, at any depth."""
    write(tmp_path / "flow.agentflow", NAMED_RECORDS)
    write(tmp_path / "tools.py", """
        def tags(notes):
            return [n["tag"] for n in notes]
    """)
    run = ["run", "flow.agentflow", "--model", "scripted", "--input", "t=hi"]
    result = result_json(ok(af(tmp_path, *run)))
    assert result["kept"].startswith("scripted answer to keeper.keep")
    assert result["stored"].startswith("scripted answer to keeper.store")
    assert result["tagged"] == [None, "red"]
    assert result_json(ok(af(tmp_path, *run, "--entry", "plain"))) == {"text": "hi", "tag": None}
    boxed = result_json(ok(af(tmp_path, *run, "--entry", "boxed")))
    assert boxed == {"note": {"text": "hi", "tag": None}, "notes": None}


def test_a_value_with_every_field_is_passed_as_it_is() -> None:
    """Filling omitted fields never changes a value that lacks none (nor its hash)."""
    table = {"Note": (("text", STR), ("tag", OptionalT(STR))), "Box": (("notes", ListT(RecordT("Note"))),)}
    full = {"notes": [{"text": "a", "tag": None}, {"tag": "x", "text": "b"}]}
    assert with_omitted_fields(RecordT("Box"), full, table) is full
    partial = {"notes": [{"text": "a", "tag": "x"}, {"text": "b"}]}
    assert with_omitted_fields(OptionalT(RecordT("Box")), partial, table) == {
        "notes": [{"text": "a", "tag": "x"}, {"text": "b", "tag": None}]}
    assert partial == {"notes": [{"text": "a", "tag": "x"}, {"text": "b"}]}  # not changed in place
    assert with_omitted_fields(RecordT("Note"), None, table) is None


def test_literals_as_deep_as_the_parser_allows_are_checked() -> None:
    """Checking against an expected type recurses no deeper than typing did (no RecursionError)."""
    depth = MAX_NESTING - 5
    records = "{next: " * depth + "null" + "}" * depth
    lists = "[" * depth + '"x"' + "]" * depth
    text = f"""\
        defaults {{ model = "scripted" }}
        type Chain {{
          next: Chain?
        }}
        choreography chain() -> list[Chain] {{
          return [{records}, {records}]
        }}
        choreography main() -> list[str] {{
          lists = {lists}
          return [json(lists), json(chain())]
        }}
        """
    assert compile_text(text)[1] == []
