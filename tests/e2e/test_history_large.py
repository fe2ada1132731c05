"""`runs` and `show` of a run too long for rich's table layout: every node listed once, in the
columns a short table has, aligned; and `runs` counting the nodes of a run whose inputs are
large. Real `agentflow` subprocesses, a real DuckDB file; the table printer in-process."""
from __future__ import annotations

import json

import pytest

from agentflow.runtime import history
from runtime_support import af, last_run, ok, write

ITEMS = 1200  # over history.RICH_TABLE_ROWS: printed as plain aligned text

SPEC = """
tool square(x: int) -> int {
  python = "tools:square"
}

choreography main(items: list[int], label: str) -> int {
  results = for i in items {
    yield square(i)
  }
  return len(results)
}
"""


@pytest.fixture(scope="module")
def big_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("history-large")
    write(root / "flow.agentflow", SPEC)
    write(root / "tools.py", "def square(x):\n    return x * x\n")
    # inputs of ~100 KB: `runs` once grouped every node row by them
    write(root / "in.json", json.dumps({"items": list(range(ITEMS)), "label": "x" * 100_000}))
    ok(af(root, "run", "flow.agentflow", "--inputs", "in.json"))
    return root, last_run(root)["run_id"]


def test_runs_counts_the_nodes_of_a_run_with_large_inputs(big_run):
    root, run_id = big_run
    (run,) = json.loads(ok(af(root, "runs", "--json")).stdout)
    assert (run["run_id"], run["status"], run["nodes"], run["succeeded"], run["failed"]) == (
        run_id, "succeeded", ITEMS + 1, ITEMS + 1, 0)
    header, row = ok(af(root, "runs")).stdout.splitlines()
    assert header.split() == ["run", "flow", "entry", "status", "started", "nodes", "reused", "failed"]
    assert row.split()[:4] == [run_id, "flow", "main", "succeeded"] and row.split()[-3:] == [str(ITEMS + 1), "0", "0"]


def test_show_lists_every_node_of_a_long_run_once_in_aligned_columns(big_run):
    root, run_id = big_run
    lines = ok(af(root, "show", run_id)).stdout.splitlines()
    title, header, rows = lines[0], lines[1], lines[2:]
    assert title.strip() == f"run {run_id} (succeeded)"
    assert header.split() == ["node", "role", "status", "reused", "attempts", "ms", "tokens", "cost", "$", "error"]
    expected = {n["node"] for n in json.loads(ok(af(root, "show", run_id, "--json")).stdout)}
    assert len(expected) == ITEMS + 1
    assert sorted(row.split()[0] for row in rows) == sorted(expected)
    status_at = header.index("status")
    assert all(row[status_at:].startswith("succeeded ") for row in rows)


def test_a_long_table_has_the_layout_rich_gives_a_short_one(capsys, monkeypatch):
    headers = ("node", "status", "error")
    rows = [("main/a[0]/yield@1", "succeeded", ""), ("main/b", "failed", "tool b raised ValueError: no"),
            ("main/名前", "skipped", "")]
    history.print_table(headers, rows, title="run r1 (failed)")
    by_rich = capsys.readouterr().out
    monkeypatch.setattr(history, "RICH_TABLE_ROWS", 0)
    history.print_table(headers, rows, title="run r1 (failed)")
    plain = capsys.readouterr().out
    assert [line.rstrip() for line in plain.splitlines()] == [line.rstrip() for line in by_rich.splitlines()]
