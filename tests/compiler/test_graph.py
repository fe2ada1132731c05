"""`agentflow graph`: mermaid, dot and json renderings of a plan and of a run's instances."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from agentflow.compiler.diagnostics import DiagnosticSink
from agentflow.compiler.graph import (COLLAPSE_ABOVE, _dot_str, _mermaid_text, collapse_fan_outs, graph_model,
                                      render_graph, to_dot)
from agentflow.compiler.names import template_id
from agentflow.compiler.parser import parse
from agentflow.compiler.plan import build_plan
from agentflow.compiler.source import SourceFile
from agentflow.compiler.symbols import collect

ROOT = Path(__file__).resolve().parents[2]
FORMATS = ("mermaid", "dot", "json")

# Tools granted and delegated, a nested call, `after`, a tool call, a sub-choreography in a `for`.
RICH = '''
type Item {
  name: str
  body: str
}

tool write_file(path: str, content: str) -> str {
  builtin = "fs.write"
  description = "Write a file."
}

role helper {
  task summarize(text: str) -> str {
    prompt = "Summarize {text}"
  }
}

role lead {
  tools = [write_file, helper.summarize]
  task draft(topic: str, note: str = "") -> list[Item] {
    prompt = "Draft {topic} {note}"
  }
  task polish(item: Item, context: str) -> str {
    prompt = "Polish {item.name} with {context}"
  }
}

choreography polish_one(item: Item, ctx: str) -> str {
  p = lead.polish(item, ctx)
  s = helper.summarize(p)
  return s
}

choreography main(topic: str) -> list[str] {
  items = lead.draft(topic)
  intro = helper.summarize(topic)
  saved = write_file("intro.md", intro) after items
  outs = for it in items {
    short = helper.summarize(lead.polish(it, intro))
    full = polish_one(it, short)
    yield full
  }
  return outs
}
'''

# Two modules; the first needed a second attempt; the second is still reviewing.
STATUSES = {
    "main/plan": "cached",
    "main/reviews": "running",
    "main/reviews[0]/attempt": "succeeded",
    "main/reviews[0]/attempt#0/code": "succeeded",
    "main/reviews[0]/attempt#0/review": "succeeded",
    "main/reviews[0]/attempt#1/code": "succeeded",
    "main/reviews[0]/attempt#1/review": "succeeded",
    "main/reviews[1]/attempt": "running",
    "main/reviews[1]/attempt#0/code": "failed",
    "main/reviews[1]/attempt#0/review": "skipped",
    "main/reviews[2]/attempt#0/code": "pending",
}


def _plan(name: str, text: str):
    src = SourceFile(name, text)
    sink = DiagnosticSink()
    program = parse(src, sink)
    plan = build_plan(program, collect(program, sink), "main", src.name)
    assert not sink.has_errors, sink.diagnostics
    return plan


@pytest.fixture(scope="module")
def project_plan():
    path = ROOT / "specs" / "build_project.agentflow"
    return _plan("specs/build_project.agentflow", path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def rich_plan():
    return _plan("rich.agentflow", RICH)


# ---------------------------------------------------------------- snapshots

@pytest.mark.parametrize("fmt", FORMATS)
def test_build_project_snapshot(project_plan, fmt, snapshot):
    assert render_graph(project_plan, fmt) == snapshot


@pytest.mark.parametrize("fmt", FORMATS)
def test_build_project_statuses_snapshot(project_plan, fmt, snapshot):
    assert render_graph(project_plan, fmt, STATUSES) == snapshot


@pytest.mark.parametrize("fmt", FORMATS)
def test_rich_snapshot(rich_plan, fmt, snapshot):
    assert render_graph(rich_plan, fmt) == snapshot


# ---------------------------------------------------------------- the model

def _edges(model) -> dict[tuple[str, str], dict]:
    return {(e["source"], e["target"]): e for e in model["edges"]}


def test_outer_scope_edges(project_plan):
    model = graph_model(project_plan)
    edges = _edges(model)
    # the `for` variable flows into every call of the body that reads it
    assert edges[("main/reviews", "main/reviews[*]/attempt#*/code")]["labels"] == ["mod"]
    assert edges[("main/reviews", "main/reviews[*]/attempt#*/review")]["labels"] == ["mod"]
    # the entry's parameter is an input node
    assert edges[("main/project_spec", "main/plan")]["labels"] == ["project_spec"]
    # `prev.review.feedback` comes from the previous iteration's `review`
    prev = edges[("main/reviews[*]/attempt#*/review", "main/reviews[*]/attempt#*/code")]
    assert (prev["labels"], prev["style"]) == (["prev.review"], "prev")
    # `until` reads `review`; the body's `yield` is collected by the `for`
    assert edges[("main/reviews[*]/attempt#*/review", "main/reviews[*]/attempt")]["style"] == "result"
    assert edges[("main/reviews[*]/yield", "main/reviews")]["style"] == "result"


def test_roles_tools_and_clusters(project_plan, rich_plan):
    model = graph_model(project_plan)
    grants = {(e["source"], e["target"]) for e in model["edges"] if e["style"] == "grant"}
    assert grants == {("role:coder", "tool:run_tests"), ("role:coder", "tool:write_file"),
                      ("role:reviewer", "tool:run_tests")}
    clusters = {c["id"]: c for c in model["clusters"]}
    assert clusters["main/reviews[*]"]["kind"] == "for"
    assert clusters["main/reviews[*]/attempt#*"]["parent"] == "main/reviews[*]"
    nodes = {n["id"]: n for n in model["nodes"]}
    assert nodes["main/reviews[*]/attempt#*/review"]["label"] == "review = reviewer.review_module"
    assert nodes["main/reviews[*]/attempt#*/review"]["role"] == "reviewer"

    rich = graph_model(rich_plan)
    edges = _edges(rich)
    assert edges[("role:lead", "task:helper.summarize")]["labels"] == ["delegates"]
    assert edges[("main/items", "main/saved")]["style"] == "order"
    assert edges[("main/intro", "main/outs[*]/short@1")]["labels"] == ["intro"]
    # a sub-choreography is a cluster holding its call node; its params flow from the call node
    clusters = {c["id"]: c for c in rich["clusters"]}
    assert clusters["main/outs[*]/full"]["kind"] == "choreography"
    assert clusters["main/outs[*]/full"]["parent"] == "main/outs[*]"
    assert edges[("main/outs[*]/full", "main/outs[*]/full/p")]["labels"] == ["ctx", "item"]
    assert edges[("main/outs[*]/full/return", "main/outs[*]/full")]["style"] == "result"


def test_template_id():
    assert template_id("main/reviews[2]/attempt#1/review") == "main/reviews[*]/attempt#*/review"
    assert template_id("main/a[10]/b[0]/c#12/d@1") == "main/a[*]/b[*]/c#*/d@1"
    assert template_id("main/plan") == "main/plan"


def test_statuses_expand_instances(project_plan):
    model = graph_model(project_plan, STATUSES)
    nodes = {n["id"]: n for n in model["nodes"]}
    for iid, status in STATUSES.items():
        assert nodes[iid]["status"] == status
    assert nodes["main/reviews[1]/attempt#0/code"]["cluster"] == "main/reviews[1]/attempt#0"
    clusters = {c["id"]: c for c in model["clusters"]}
    assert clusters["main/reviews[1]/attempt#0"]["parent"] == "main/reviews[1]"
    assert clusters["main/reviews[2]"]["kind"] == "for"
    assert "main/reviews[*]" not in clusters
    edges = _edges(model)
    # within one iteration only
    assert ("main/reviews[0]/attempt#0/code", "main/reviews[0]/attempt#0/review") in edges
    assert ("main/reviews[0]/attempt#0/code", "main/reviews[0]/attempt#1/review") not in edges
    assert ("main/reviews[0]/attempt#0/code", "main/reviews[1]/attempt#0/review") not in edges
    # `prev` goes from iteration n-1 to n of the same item
    assert edges[("main/reviews[0]/attempt#0/review", "main/reviews[0]/attempt#1/code")]["style"] == "prev"
    assert ("main/reviews[0]/attempt#1/review", "main/reviews[0]/attempt#0/code") not in edges
    assert ("main/reviews[0]/attempt#0/review", "main/reviews[1]/attempt#0/code") not in edges
    # the `for` variable reaches every item's calls
    for i in range(3):
        assert edges[("main/reviews", f"main/reviews[{i}]/attempt#0/code")]["labels"] == ["mod"]
    assert {n["id"] for n in model["nodes"] if n["kind"] == "status"} >= {
        "status:succeeded", "status:failed", "status:skipped", "status:running", "status:pending",
        "status:cancelled", "status:cached"}


def test_unknown_format(project_plan):
    with pytest.raises(ValueError, match="unknown graph format"):
        render_graph(project_plan, "svg")


# ---------------------------------------------------------------- determinism

@pytest.mark.parametrize("fmt", FORMATS)
def test_deterministic(project_plan, fmt):
    again = _plan("specs/build_project.agentflow", (ROOT / "specs" / "build_project.agentflow").read_text())
    assert render_graph(project_plan, fmt) == render_graph(again, fmt)
    shuffled = dict(reversed(list(STATUSES.items())))
    assert render_graph(project_plan, fmt, STATUSES) == render_graph(again, fmt, shuffled)


def test_json_is_canonical(project_plan):
    text = render_graph(project_plan, "json")
    model = json.loads(text)
    assert set(model) == {"clusters", "edges", "nodes"}
    assert text == json.dumps(model, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
    for key, sort_key in (("nodes", lambda n: n["id"]), ("clusters", lambda c: c["id"]),
                          ("edges", lambda e: (e["source"], e["target"], e["style"]))):
        assert model[key] == sorted(model[key], key=sort_key)


# ---------------------------------------------------------------- DOT

needs_dot = pytest.mark.skipif(shutil.which("dot") is None,
                               reason="Graphviz `dot` is not installed (apt-get install graphviz)")


def _dot_svg(text: str) -> str:
    proc = subprocess.run(["dot", "-Tsvg"], input=text, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr  # no warnings either
    return proc.stdout


@needs_dot
@pytest.mark.parametrize("which", ["project", "project-statuses", "rich"])
def test_dot_renders(project_plan, rich_plan, which):
    plan = rich_plan if which == "rich" else project_plan
    statuses = STATUSES if which == "project-statuses" else None
    svg = _dot_svg(render_graph(plan, "dot", statuses))
    assert "<svg" in svg
    assert "main/reviews[*]/attempt#*/review" in svg or which != "project"


@needs_dot
def test_dot_escapes_hostile_labels():
    label = 'say "hi" \\ back\\slash {braces} <angle> [x] #1 @2 ; -> | \n second line'
    model = {"nodes": [{"id": 'a"b\\c', "kind": "task", "label": label, "cluster": "c/1[*]",
                        "role": "r", "status": None},
                       {"id": "x", "kind": "tool", "label": "x", "cluster": None, "role": None, "status": "weird"}],
             "edges": [{"source": 'a"b\\c', "target": "x", "labels": [label], "style": "prev"}],
             "clusters": [{"id": "c/1[*]", "kind": "for", "label": label, "parent": None, "owner": None}]}
    svg = _dot_svg(to_dot(model))
    assert "say &quot;hi&quot;" in svg or 'say "hi"' in svg


def test_dot_quoting():
    assert _dot_str('a"b\\c\nd') == '"a\\"b\\\\c\\nd"'
    text = render_graph(_plan("rich.agentflow", RICH), "dot")
    # every statement names its ids in quotes
    for line in text.splitlines():
        if "->" in line:
            assert re.match(r'^  "[^"]+" -> "[^"]+" \[', line), line


# ---------------------------------------------------------------- Mermaid

def test_mermaid_text_escaping():
    assert _mermaid_text('a "b" #c <d> `e` |f|\ng') == (
        "a #quot;b#quot; #35;c #lt;d#gt; #96;e#96; #124;f#124;<br/>g")


@pytest.mark.parametrize("statuses", [None, STATUSES], ids=["plan", "run"])
def test_mermaid_structure(project_plan, rich_plan, statuses):
    """What GitHub's renderer needs: the header, safe ids, quoted labels, balanced subgraphs."""
    for plan in (project_plan, rich_plan):
        text = render_graph(plan, "mermaid", statuses)
        lines = text.splitlines()
        assert lines[0] == "flowchart TD"
        depth = 0
        node_ids: list[str] = []
        shapes = r'(\["|\[\["|\{\{"|\("|\(\["|\[/"|\(\(")[^"\n]*("\]|"\]\]|"\}\}|"\)|"\]\)|"/\]|"\)\))'
        for line in lines[1:]:
            body = line.strip()
            if body.startswith("subgraph "):
                assert re.fullmatch(r'subgraph s\d+\["[^"]*"\]', body), body
                depth += 1
            elif body == "end":
                depth -= 1
                assert depth >= 0
            elif body.startswith(("classDef ", "class ")):
                assert re.fullmatch(r"classDef \w+ fill:#[0-9a-f]{6},stroke:#[0-9a-f]{6},color:#[0-9a-f]{6}"
                                    r"|class n\d+(,n\d+)* \w+", body), body
            elif re.match(r"n\d+ ", body):
                assert re.fullmatch(r'n\d+ (-->|-\.->)\|"[^"]*"\| n\d+', body), body
            else:
                m = re.fullmatch(r"(n\d+)" + shapes, body)
                assert m, body
                node_ids.append(m.group(1))
        assert depth == 0
        assert len(node_ids) == len(set(node_ids)) == len(graph_model(plan, statuses)["nodes"])
        assert sorted(node_ids, key=lambda n: int(n[1:])) == [f"n{i}" for i in range(len(node_ids))]


def _mermaid_dir() -> str | None:
    d = os.environ.get("AGENTFLOW_MERMAID_DIR")
    return d if d and (Path(d) / "node_modules" / "mermaid").is_dir() and shutil.which("node") else None


_MERMAID_CHECK = r"""
import { createRequire } from "module";
import { pathToFileURL } from "url";
import fs from "fs";
const req = createRequire(process.env.AGENTFLOW_MERMAID_DIR + "/");
const { JSDOM } = req("jsdom");
const dom = new JSDOM("<!doctype html><html><body></body></html>", { pretendToBeVisual: true });
globalThis.window = dom.window; globalThis.document = dom.window.document;
globalThis.DOMParser = dom.window.DOMParser; globalThis.Element = dom.window.Element;
const { default: mermaid } = await import(pathToFileURL(req.resolve("mermaid")).href);
mermaid.initialize({ startOnLoad: false });
let failed = 0;
for (const f of process.argv.slice(2)) {
  try { const r = await mermaid.parse(fs.readFileSync(f, "utf8")); console.log("OK", f, r.diagramType); }
  catch (e) { failed++; console.log("FAIL", f, String(e.message || e)); }
}
process.exit(failed ? 1 : 0);
"""


@pytest.mark.skipif(_mermaid_dir() is None,
                    reason="set AGENTFLOW_MERMAID_DIR to a directory with `npm install mermaid@11 jsdom` "
                           "to parse the output with Mermaid itself")
def test_mermaid_parses_with_mermaid(project_plan, rich_plan, tmp_path):
    files = []
    for name, plan, statuses in (("plan", project_plan, None), ("run", project_plan, STATUSES),
                                 ("rich", rich_plan, None)):
        f = tmp_path / f"{name}.mmd"
        f.write_text(render_graph(plan, "mermaid", statuses), encoding="utf-8")
        files.append(str(f))
    script = tmp_path / "check.mjs"
    script.write_text(_MERMAID_CHECK, encoding="utf-8")
    proc = subprocess.run(["node", str(script), *files], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "AGENTFLOW_MERMAID_DIR": _mermaid_dir()})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("flowchart") == len(files)


# ---------------------------------------------------------------- nested calls and conditions

NESTED = '''
type R {
  y: str
}

role r {
  model = "scripted"
  task f(a: str) -> str {
    prompt = "f {a}"
  }
  task g(x: str) -> R {
    prompt = "g {x}"
  }
  task h(a: list[str]) -> str {
    prompt = "h {a}"
  }
  task m(q: R) -> str {
    prompt = "m {q.y}"
  }
  task k(c: bool) -> bool {
    prompt = "k {c}"
  }
}

choreography main(x: str, c: bool) -> list[str] {
  v = r.f(x)
  a = r.f(r.g(v).y)
  b = r.h([r.f(v), a])
  w = r.m({y: r.f(v)})
  z = r.f(r.h([r.f(v)]))
  d = r.f(a) if r.k(c) else r.f(b)
  e = r.f(a) if v == "z" else b
  return [d, e, w, z]
}
'''


@pytest.fixture(scope="module")
def nested_model():
    return graph_model(_plan("nested.agentflow", NESTED))


def test_a_nested_call_reads_its_inputs_itself(nested_model):
    """`f(g(v).y)`: `v` goes into `g`, not into `f`, and `g`'s value into `f`."""
    edges = _edges(nested_model)
    assert edges[("main/v", "main/a@1")]["labels"] == ["v"]
    assert ("main/v", "main/a") not in edges
    assert edges[("main/a@1", "main/a")]["labels"] == ["value"]


def test_calls_nested_in_a_list_or_record_read_their_inputs(nested_model):
    edges = _edges(nested_model)
    assert edges[("main/v", "main/b@1")]["labels"] == ["v"]  # r.h([r.f(v), a])
    assert edges[("main/a", "main/b")]["labels"] == ["a"]  # `a` is h's own argument
    assert ("main/v", "main/b") not in edges
    assert edges[("main/v", "main/w@1")]["labels"] == ["v"]  # r.m({y: r.f(v)})
    assert ("main/v", "main/w") not in edges


def test_a_call_two_levels_deep_feeds_the_call_around_it(nested_model):
    """`f(h([f(v)]))`: the inner `f` feeds `h`, which feeds the outer `f`."""
    edges = _edges(nested_model)
    assert edges[("main/z@2", "main/z@1")]["labels"] == ["value"]
    assert edges[("main/z@1", "main/z")]["labels"] == ["value"]
    assert ("main/z@2", "main/z") not in edges
    assert edges[("main/v", "main/z@2")]["labels"] == ["v"]


def test_the_condition_of_a_conditional_is_an_input_edge(nested_model):
    edges = _edges(nested_model)
    # `f(a) if k(c) else f(b)`: k decides, each branch's call reads its own input
    assert edges[("main/d@1", "main/d")]["labels"] == ["if"]
    assert edges[("main/c", "main/d@1")]["labels"] == ["c"]
    assert edges[("main/a", "main/d@2")]["labels"] == ["a"] and edges[("main/b", "main/d@3")]["labels"] == ["b"]
    assert ("main/a", "main/d") not in edges and ("main/b", "main/d") not in edges
    # `f(a) if v == "z" else b`: `v` decides, `b` is a branch
    assert edges[("main/v", "main/e")]["labels"] == ["if v"]
    assert edges[("main/b", "main/e")]["labels"] == ["b"]


def test_a_binding_named_value_keeps_its_edge():
    plan = _plan("value.agentflow", NESTED.replace("v = r.f(x)", "value = r.f(x)")
                 .replace("(v)", "(value)").replace("v ==", "value =="))
    edges = _edges(graph_model(plan))
    assert edges[("main/value", "main/a@1")]["labels"] == ["value"]
    assert edges[("main/value", "main/e")]["labels"] == ["if value"]


# ---------------------------------------------------------------- big fan-outs in a run

def _fan_out_statuses(items: int) -> dict[str, str]:
    statuses = {"main/plan": "succeeded", "main/reviews": "failed"}
    for i in range(items):
        statuses[f"main/reviews[{i}]/attempt"] = "succeeded"
        statuses[f"main/reviews[{i}]/attempt#1/code"] = "succeeded"
        statuses[f"main/reviews[{i}]/attempt#1/review"] = "failed" if i in (3, 7) else "succeeded"
    return statuses


def test_a_fan_out_above_the_limit_is_one_box_per_body_node_with_counts(project_plan):
    assert COLLAPSE_ABOVE == 20
    model = graph_model(project_plan, _fan_out_statuses(COLLAPSE_ABOVE + 1))
    nodes = {n["id"]: n for n in model["nodes"]}
    assert not [n for n in nodes if re.search(r"\[\d+\]", n)]
    review = nodes["main/reviews[*]/attempt#*/review"]
    assert review["status"] == "failed"
    assert review["label"].endswith("\nmain/reviews[0..20]/attempt#*/review: 19 succeeded, 2 failed")
    assert nodes["main/reviews[*]/attempt#*/code"]["status"] == "succeeded"
    assert nodes["main/reviews[*]/attempt"]["label"].endswith("main/reviews[0..20]/attempt: 21 succeeded")
    edges = _edges(model)
    assert ("main/reviews[*]/attempt#*/code", "main/reviews[*]/attempt#*/review") in edges
    assert edges[("main/reviews", "main/reviews[*]/attempt#*/code")]["labels"] == ["mod"]


def test_a_fan_out_at_the_limit_is_drawn_item_by_item(project_plan):
    model = graph_model(project_plan, _fan_out_statuses(COLLAPSE_ABOVE))
    ids = {n["id"] for n in model["nodes"]}
    assert {f"main/reviews[{i}]/attempt#1/review" for i in range(COLLAPSE_ABOVE)} <= ids
    assert "main/reviews[*]/attempt#*/review" not in ids


def test_collapsing_keeps_small_fan_outs_inside_a_big_one():
    statuses = {f"main/a[{i}]/b[{j}]/c": "succeeded" for i in range(2) for j in range(30)}
    statuses.update({f"main/s[{i}]/t": "pending" for i in range(3)})
    kept, texts = collapse_fan_outs(statuses)
    assert kept == {"main/a[0]/b[*]/c": "succeeded", "main/a[1]/b[*]/c": "succeeded",
                    "main/s[0]/t": "pending", "main/s[1]/t": "pending", "main/s[2]/t": "pending"}
    assert texts == {"main/a[0]/b[*]/c": "main/a[0]/b[0..29]/c: 30 succeeded",
                     "main/a[1]/b[*]/c": "main/a[1]/b[0..29]/c: 30 succeeded"}
