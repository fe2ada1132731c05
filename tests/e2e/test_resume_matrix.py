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

from resume_scenarios import SCENARIOS, failed_then_resumed, reference, stop_matrix
from runtime_support import base_env


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_stopped_at_every_commit_resume_gives_the_uninterrupted_run(name, tmp_path, record_property):
    env = base_env()
    want = reference(tmp_path, SCENARIOS[name], env)
    cells, failures = stop_matrix(tmp_path, SCENARIOS[name], want, env,
                                  signals_at=lambda commits: {1, (commits + 1) // 2, commits})
    record_property("cells", cells)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_a_failing_node_then_resume_gives_the_uninterrupted_run(name, tmp_path):
    env = base_env()
    want = reference(tmp_path, SCENARIOS[name], env)
    assert failed_then_resumed(tmp_path, SCENARIOS[name], want, env) == []
