"""The resume matrix on the local engine: every kind of node × every way a run can stop ×
every point where its state becomes durable, each compared with an uninterrupted run.

For each scenario of `resume_scenarios`, a real `agentflow run` process is stopped right after
its N-th commit to the run database (`AGENTFLOW_FAULT`), for every N with SIGKILL and at the
first, middle and last commit with SIGINT (Ctrl-C) and SIGTERM. `--resume` must then give the
uninterrupted run's result byte for byte, its node rows and stored sessions, and pay no
finished model or tool call twice. A failing node is the last way to stop: the run fails
(exit 3), the cause is removed, and `--resume` must again give the uninterrupted run.
"""
from __future__ import annotations

import pytest

from resume_scenarios import SCENARIOS, failed_then_resumed, reference, stopped_then_resumed
from runtime_support import base_env

MAX_COMMITS = 200  # far above any scenario's; a run that never stops fails the test


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_stopped_at_every_commit_resume_gives_the_uninterrupted_run(name, tmp_path, record_property):
    scenario, env = SCENARIOS[name], base_env()
    want = reference(tmp_path, scenario, env)
    failures, commits = [], 0
    for commit in range(1, MAX_COMMITS):
        problems = stopped_then_resumed(tmp_path, scenario, want, env, f"kill@{commit}")
        if problems is None:
            break
        commits = commit
        failures += [f"kill@{commit}: {p}" for p in problems]
    assert 0 < commits < MAX_COMMITS - 1
    for signal_name in ("int", "term"):
        for commit in sorted({1, (commits + 1) // 2, commits}):
            fault = f"{signal_name}@{commit}"
            failures += [f"{fault}: {p}" for p in stopped_then_resumed(tmp_path, scenario, want, env, fault) or []]
    record_property("cells", commits + 2 * len({1, (commits + 1) // 2, commits}))
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_a_failing_node_then_resume_gives_the_uninterrupted_run(name, tmp_path):
    env = base_env()
    want = reference(tmp_path, SCENARIOS[name], env)
    assert failed_then_resumed(tmp_path, SCENARIOS[name], want, env) == []
