"""`agentflow graph` from the command line: SVG and PNG through Graphviz's `dot` (and a clear
exit 2 without it), `--run` of a big fan-out drawn as one box per body node, and `--run` of
another flow's run refused. Real subprocesses on the scripted model, a real DuckDB file."""
from __future__ import annotations

import json
import shutil

import pytest

from runtime_support import af, base_env, last_run, ok, write

SPEC = """
defaults {
  model = "scripted"
}

role a {
  task t(x: str) -> str { prompt = "T {x}" }
}

choreography main(items: list[str]) -> list[str] {
  outs = for item in items {
    y = a.t(item)
    yield y
  }
  return outs
}
"""
OTHER = SPEC.replace('"T {x}"', '"other {x}"')

needs_dot = pytest.mark.skipif(shutil.which("dot") is None,
                               reason="Graphviz `dot` is not installed (apt-get install graphviz)")


@pytest.fixture
def flow(tmp_path):
    write(tmp_path / "flow.agentflow", SPEC)
    return tmp_path


def _items(n: int) -> str:
    return "items=" + json.dumps([f"i{k}" for k in range(n)])


@needs_dot
@pytest.mark.parametrize("suffix, magic", [("svg", b"<svg"), ("png", b"\x89PNG\r\n\x1a\n")])
def test_svg_and_png_are_drawn_by_graphviz(flow, suffix, magic):
    result = ok(af(flow, "graph", "flow.agentflow", "-o", f"plan.{suffix}"))
    assert result.stdout == ""
    data = (flow / f"plan.{suffix}").read_bytes()
    assert magic in data[:400], data[:200]
    if suffix == "svg":
        assert b"main/outs[*]/y" in data or b"y = a.t" in data


def test_svg_without_graphviz_is_exit_2_and_says_how_to_install_it(flow, tmp_path_factory):
    empty = tmp_path_factory.mktemp("no-dot")  # a PATH without `dot`
    result = ok(af(flow, "graph", "flow.agentflow", "-o", "plan.svg", env=base_env(PATH=str(empty))), 2)
    assert result.stderr.count("\n") == 1, result.stderr
    line = result.stderr.strip()
    assert line.startswith("error: ") and "`dot`" in line and "install graphviz" in line and ".mmd" in line, line
    assert not (flow / "plan.svg").exists()


def test_other_suffixes_keep_their_text_formats(flow):
    ok(af(flow, "graph", "flow.agentflow", "-o", "plan.mmd"))
    assert (flow / "plan.mmd").read_text().startswith("flowchart TD\n")
    ok(af(flow, "graph", "flow.agentflow", "--format", "dot", "-o", "plan.dot"))
    assert (flow / "plan.dot").read_text().startswith("digraph agentflow {")


def test_an_image_with_a_text_format_is_exit_2(flow):
    result = ok(af(flow, "graph", "flow.agentflow", "--format", "json", "-o", "plan.svg"), 2)
    assert result.stderr.startswith("error: -o plan.svg is drawn from the dot format") and result.stderr.count("\n") == 1


def test_graph_run_collapses_a_big_fan_out(flow):
    ok(af(flow, "run", "flow.agentflow", "--input", _items(25)))
    run_id = last_run(flow)["run_id"]
    model = json.loads(ok(af(flow, "graph", "flow.agentflow", "--run", run_id, "--format", "json")).stdout)
    nodes = {n["id"]: n for n in model["nodes"]}
    assert not [n for n in nodes if "outs[" in n and "outs[*]" not in n]
    box = nodes["main/outs[*]/y"]
    assert box["status"] == "succeeded"
    assert box["label"] == "y = a.t\nmain/outs[0..24]/y: 25 succeeded"


def test_graph_run_of_another_flows_run_is_exit_2(flow):
    ok(af(flow, "run", "flow.agentflow", "--input", _items(2)))
    run_id = last_run(flow)["run_id"]
    write(flow / "other.agentflow", OTHER)
    result = ok(af(flow, "graph", "other.agentflow", "--run", run_id), 2)
    assert result.stdout == ""
    assert result.stderr == (f"error: run {run_id} ran flow:main, not other:main; draw it "
                             f"with its own file (and --entry), or pick a run of this flow from `agentflow runs`\n")
