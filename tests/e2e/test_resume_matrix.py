"""The resume matrix on the local engine: every kind of node × every way a run can stop ×
every point where its state becomes durable, each compared with an uninterrupted run.

For each scenario of `resume_scenarios` and each durability, a real `agentflow run` process is
stopped right after its N-th commit point (`AGENTFLOW_FAULT`: a commit the run asks for, and
under group durability also each point where a strict run would commit), for every N with
SIGKILL and at the first, middle and last point with SIGINT (Ctrl-C) and SIGTERM. `--resume`
must then give the uninterrupted run's result byte for byte, its node rows and stored
sessions, and pay no finished model or tool call twice: under strict durability none at all;
under group durability none that was committed (the lost window's tool calls run again). A
failing node is the last way to stop: the run fails (exit 3), the cause is removed, and
`--resume` must again give the uninterrupted run.
"""
from __future__ import annotations

import pytest

from resume_scenarios import SCENARIOS, failed_then_resumed, reference, stop_matrix
from runtime_support import base_env


DURABILITIES = ("group", "strict")


@pytest.mark.parametrize("durability", DURABILITIES)
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_stopped_at_every_commit_resume_gives_the_uninterrupted_run(name, durability, tmp_path, record_property):
    env = base_env()
    engine = ("--durability", durability)
    want = reference(tmp_path, SCENARIOS[name], env, engine)
    cells, failures = stop_matrix(tmp_path, SCENARIOS[name], want, env, engine,
                                  signals_at=lambda commits: {1, (commits + 1) // 2, commits},
                                  lossy=durability == "group")
    record_property("cells", cells)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("durability", DURABILITIES)
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_a_failing_node_then_resume_gives_the_uninterrupted_run(name, durability, tmp_path):
    env = base_env()
    engine = ("--durability", durability)
    want = reference(tmp_path, SCENARIOS[name], env, engine)
    assert failed_then_resumed(tmp_path, SCENARIOS[name], want, env, engine) == []
