"""The engine in this process, over a compiled plan, the real Ledger on a DuckDB file and the
scripted model: reuse by key, the statuses a failure leaves, and the bounds of a fan-out."""
from __future__ import annotations

import pytest

from agentflow.runtime import engine as engine_module
from engine_support import CountingExecutor, Events, compiled, run_plan

SOURCE = """
    defaults {
      model = "scripted"
    }

    tool read(path: str) -> str {
      builtin = "fs.read"
    }

    role a {
      replicas = 2
      task t(x: str) -> str { prompt = "T {x}" }
    }

    role wide {
      replicas = 16
      task t(x: str) -> str { prompt = "W {x}" }
    }

    choreography main(items: list[str]) -> list[str] {
      each = for item in items {
        answer = a.t(item)
        yield answer
      }
      return each
    }

    choreography wide_main(items: list[str]) -> list[str] {
      each = for item in items {
        answer = wide.t(item)
        yield answer
      }
      return each
    }

    choreography aborts() -> str {
      bad = read("missing.txt")
      good = a.t("x")
      return good
    }

    choreography reads(paths: list[str]) -> list[str] {
      each = for p in paths {
        text = read(p)
        answer = a.t(text)
        yield answer
      }
      return each
    }
"""
FAN_OUT = compiled(SOURCE)


def test_a_second_run_reuses_every_call_by_key(tmp_path):
    first = run_plan(FAN_OUT, tmp_path, {"items": ["p", "q"]}, run_id="run-1")
    events = Events()
    second = run_plan(FAN_OUT, tmp_path, {"items": ["p", "q"]}, run_id="run-2", reporter=events)
    assert first.failure is None and second.value == first.value and len(first.value) == 2
    assert second.statuses["main/each[0]/answer"] == second.statuses["main/each[1]/answer"] == "cached"
    assert second.statuses["main/each"] == "cached"  # no call inside it ran
    assert {"main/each[0]/answer", "main/each[1]/answer", "main/each"} <= events.reused()


def test_a_changed_input_runs_only_the_calls_whose_key_changed(tmp_path):
    first = run_plan(FAN_OUT, tmp_path, {"items": ["p", "q"]}, run_id="run-1")
    second = run_plan(FAN_OUT, tmp_path, {"items": ["p", "q2"]}, run_id="run-2")
    assert second.statuses["main/each[0]/answer"] == "cached"
    assert second.statuses["main/each[1]/answer"] == "succeeded"
    assert second.statuses["main/each"] == "succeeded"
    assert second.value[0] == first.value[0] and second.value[1] != first.value[1]


def test_a_call_marks_the_structures_it_runs_in_but_not_its_for_item():
    """What decides whether a structure was reused (`Engine.ran_inside`): a loop, a repeat and
    its iteration, a program; a `for` item is no structure, and a fan-out of 100k items kept
    100k of them."""
    assert engine_module.enclosing("main/r[2]/a#1/x") == ["main", "main/r", "main/r[2]/a", "main/r[2]/a#1"]
    assert engine_module.enclosing("main/r[2]/s[13]/x") == ["main", "main/r", "main/r[2]/s"]
    assert engine_module.enclosing("main/c/program#1/y") == ["main", "main/c", "main/c/program", "main/c/program#1"]
    assert engine_module.enclosing("main/r[5]") == ["main", "main/r"]  # a Temporal chunk's first item
    assert engine_module.enclosing("main") == []


def test_no_cache_runs_every_call_again(tmp_path):
    run_plan(FAN_OUT, tmp_path, {"items": ["p"]}, run_id="run-1")
    again = run_plan(FAN_OUT, tmp_path, {"items": ["p"]}, run_id="run-2", no_cache=True)
    assert again.statuses["main/each[0]/answer"] == "succeeded"


def test_a_failed_node_fails_its_structure_and_nothing_downstream_starts(tmp_path):
    (tmp_path / "workspace").mkdir()
    (tmp_path / "workspace" / "ok.txt").write_text("fine")
    run = run_plan(compiled(SOURCE, "reads"), tmp_path, {"paths": ["ok.txt", "missing.txt"]})
    assert run.failure is not None and run.failure.node_id == "reads/each[1]/text"
    assert "missing.txt" in run.failure.message
    assert run.statuses["reads/each[1]/text"] == "failed"
    assert run.statuses["reads/each"] == "failed"  # a node inside it failed
    assert run.statuses["reads/each[0]/text"] == "succeeded"  # it ran beside the failure, and was stored
    assert "reads/each[1]/answer" not in run.statuses  # downstream of the failure: never started


def test_a_run_stopped_by_a_failure_fails_with_that_failure_not_with_a_node_it_kept_from_starting(tmp_path):
    """`good` waits for the only slot while `bad` fails, then does not start (RunAborted); the
    run's result waits on `good`, yet the run fails with `bad`'s failure."""
    run = run_plan(compiled(SOURCE, "aborts"), tmp_path, {}, concurrency=1)
    assert run.failure is not None and run.failure.node_id == "aborts/bad"
    assert run.statuses == {"aborts/bad": "failed"}


@pytest.mark.parametrize("options, bound", [({}, 2), ({"concurrency": 1}, 1)])
def test_a_fan_out_runs_at_most_replicas_and_concurrency_calls_at_once(tmp_path, options, bound):
    executor = CountingExecutor()
    run = run_plan(FAN_OUT, tmp_path, {"items": [f"i{n}" for n in range(12)]}, executor=executor, **options)
    assert run.failure is None and len(run.value) == 12
    assert executor.peak == bound


def test_a_fan_out_keeps_at_most_its_window_of_items_in_flight(tmp_path, monkeypatch):
    monkeypatch.setattr(engine_module, "FAN_OUT_WINDOW", 3)
    executor = CountingExecutor()
    run = run_plan(compiled(SOURCE, "wide_main"), tmp_path, {"items": [f"i{n}" for n in range(12)]},
                   executor=executor)
    assert run.failure is None and len(run.value) == 12
    assert executor.peak == 3  # replicas and concurrency would allow 16
