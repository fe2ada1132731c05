"""The progress tally: its total starts at the plan's node count and grows as fan-outs expand
and `repeat` iterations begin (and shrinks by an unchosen sub-choreography's body), so a
finished run ends at done == total. Runs a real plan in this process on the scripted model."""
from __future__ import annotations

import io

import pytest

from agentflow.compiler.pipeline import compile_source, read_source
from agentflow.runtime.engine import RunOptions
from agentflow.runtime.progress import PlainReporter, Tally, format_duration
from agentflow.runtime.runner import RunRequest, execute, run_stoppable
from runtime_support import DB, write

SPEC = """
defaults {
  model = "scripted"
}

role a {
  task t(x: str) -> str { prompt = "T {x}" }
}

choreography pair(x: str) -> str {
  first = a.t(x)
  second = a.t(first)
  return second
}

choreography main(items: list[str], go: bool) -> json {
  each = for item in items {
    y = a.t(item)
    inner = for part in [item, "x"] {
      p = a.t(part)
      yield p
    }
    yield {y: y, inner: inner}
  }
  loop = repeat max 3 until z == "never" {
    z = a.t("loop")
  }
  sub = pair("s") if go else a.t("no")
  return {each: each, loop: loop.z, sub: sub}
}
"""


def _run(tmp_path, inputs: dict) -> PlainReporter:
    write(tmp_path / "flow.agentflow", SPEC)
    plan = compile_source(read_source(tmp_path / "flow.agentflow")).plan
    reporter = PlainReporter(io.StringIO(), plan.data)
    # each (1), loop and its first iteration (2), pair and its body (3), the other branch (1)
    assert reporter.tally.total == 7
    options = RunOptions(run_id="", spec_dir=tmp_path, workspace=tmp_path / "workspace")
    request = RunRequest(plan=plan.data, plan_hash=plan.plan_hash, inputs=inputs, db_path=tmp_path / DB,
                         options=options)
    outcome, _ = run_stoppable(execute(request, reporter))
    assert outcome.status == "succeeded"
    reporter.close()
    return reporter


@pytest.mark.parametrize("go", [True, False])
def test_a_finished_run_ends_with_everything_done(tmp_path, go):
    reporter = _run(tmp_path, {"items": ["a", "b", "c"], "go": go})
    tally = reporter.tally
    # + 3 items of 2 nodes, + 3 inner fan-outs of 2, + 2 more iterations; - pair's body when not chosen
    assert tally.total == 7 + 6 + 6 + 2 - (0 if go else 2)
    assert tally.done == tally.total and not tally.running
    assert tally.counts["skipped"] == 1  # the branch not taken
    assert "100%" in tally.status_text()
    summary = reporter.stream.getvalue().splitlines()[-1]  # `    nodes  2 reused, 1 skipped, 16 succeeded`
    assert summary.startswith("    nodes  ") and sum(int(n) for n in summary.split()[1::2]) == tally.total


def test_durations_read_at_a_glance():
    assert [format_duration(s) for s in (0, 59.4, 60, 125, 3600, 7322)] == ["0s", "59s", "1m00s", "2m05s", "1h00m",
                                                                           "2h02m"]


def test_before_anything_finished_the_eta_is_unknown():
    tally = Tally(None)
    tally.record("main/x", "running", False, "")
    assert tally.eta_s() is None and tally.status_text() == "0/0 done (0%), 0 failed, 1 running, eta ?"
