"""The resume matrix on the Temporal engine: the local matrix's scenarios, run by real workers
on a real dev server, with the client stopped right after its N-th commit (SIGKILL at every
commit, SIGINT and SIGTERM at its middle one) or a node failing; `--resume` must give the
uninterrupted run's result, node rows and sessions, and pay no finished call twice."""
from __future__ import annotations


import pytest

from temporal_support import HERE, base_env

from resume_scenarios import SCENARIOS, failed_then_resumed, reference, stop_matrix


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_client_stopped_at_every_commit_resume_gives_the_uninterrupted_run(name, cluster, tmp_path, record_property):
    env, engine = base_env(), tuple(cluster.run_args())
    want = reference(tmp_path, SCENARIOS[name], env, engine)
    cells, failures = stop_matrix(tmp_path, SCENARIOS[name], want, env, engine)
    record_property("cells", cells)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_a_failing_node_then_resume_gives_the_uninterrupted_run(name, cluster, tmp_path):
    env, engine = base_env(), tuple(cluster.run_args())
    want = reference(tmp_path, SCENARIOS[name], env, engine)
    assert failed_then_resumed(tmp_path, SCENARIOS[name], want, env, engine) == []
