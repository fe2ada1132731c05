"""Temporal runs of any size, against a real dev server and real workers, with small bounds set
through the client's environment: a fan-out above the chunk size runs its items in child
workflows and gives the local result and records; a chain that continues as new gives the
local result, records and session, also to a client killed and resumed meanwhile, and to
`collect` of a detached run; a worker killed with SIGKILL in the middle of a chunk does
not stop the run; Ctrl-C of a followed run cancels every chunk workflow; delegated task calls
run in child workflows with histories of their own."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from temporal_support import HERE, base_env
from test_temporal_engine import (af, af_start, collect, describe, last_run, nodes, ok, recorded_runs, running_on,
                                  temporal, texts, wait_until)

SCALE = HERE / "specs" / "scale.agentflow"
DELEGATE = HERE / "specs" / "delegate.agentflow"


def scale_env(**bounds: str) -> dict[str, str]:
    return base_env(**{f"AGENTFLOW_TEMPORAL_{name.upper()}": value for name, value in bounds.items()})


def fan_args(n: int, seconds: float) -> list[str]:
    return ["run", str(SCALE), "--entry", "fan", "--input", f"items={list(range(n))}", "--input",
            f"seconds={seconds}", "--input", "offset=5"]


def scale_workflow(db: Path) -> str | None:
    from agentflow.runtime.temporal.wire import workflow_id
    runs = recorded_runs(db)
    return workflow_id("scale", runs.pop()) if runs else None


def rows(db: Path) -> dict[str, tuple]:
    """What `show` tells of each node of the last run, but when it happened."""
    return {n: (r["status"], r["cached"], r["role"], r["attempts"], r["llm_calls"])
            for n, r in nodes(db, last_run(db)["run_id"]).items()}


def shown(tmp_path: Path, node: str) -> list[str]:
    """The lines of `show RUN NODE` for a node of the last run in `t.duckdb`."""
    db = tmp_path / "t.duckdb"
    return ok(af(tmp_path, "show", last_run(db)["run_id"], node, "--db", str(db))).stdout.splitlines()


def executions(address: str, wf_id: str) -> dict[str, list]:
    """Workflow id -> statuses of its executions, for the run's workflow and its children."""
    async def fetch(client):
        found: dict[str, list] = {}
        async for w in client.list_workflows(f"WorkflowId = '{wf_id}'"):
            found.setdefault(w.id, []).append(w.status)
        if not found:  # the run is recorded as a Temporal run before its workflow starts
            return found
        for child in await children(client, wf_id):
            found[child] = [(await client.get_workflow_handle(child).describe()).status]
        return found
    return temporal(address, fetch)


async def children(client, wf_id: str) -> list[str]:
    """The ids of the child workflows the (latest run of the) workflow started."""
    history = await client.get_workflow_handle(wf_id).fetch_history()
    return [e.start_child_workflow_execution_initiated_event_attributes.workflow_id for e in history.events
            if e.HasField("start_child_workflow_execution_initiated_event_attributes")]


def model_calls(address: str, wf_id: str) -> dict[str, int]:
    """Workflow id -> the model calls in its own history, for the workflow and its children."""
    async def fetch(client):
        async def count(w: str) -> int:
            history = await client.get_workflow_handle(w).fetch_history()
            return sum(1 for e in history.events if e.HasField("activity_task_scheduled_event_attributes")
                       and e.activity_task_scheduled_event_attributes.activity_type.name == "agentflow.model_call")
        return {w: await count(w) for w in [wf_id, *await children(client, wf_id)]}
    return temporal(address, fetch)


def test_a_fan_out_above_the_chunk_size_runs_in_child_workflows_with_the_local_result(cluster, tmp_path):
    args = fan_args(50, 0)
    local = ok(af(tmp_path, *args, "--db", "local.duckdb"))
    env = scale_env(chunk="20")
    remote = ok(af(tmp_path, *args, "--db", "t.duckdb", *cluster.run_args(), env=env))
    assert remote.stdout == local.stdout
    assert rows(tmp_path / "t.duckdb") == rows(tmp_path / "local.duckdb")
    wf_id = scale_workflow(tmp_path / "t.duckdb")
    from temporalio.client import WorkflowExecutionStatus
    runs = executions(cluster.server.address, wf_id)
    assert sorted(runs) == [wf_id, f"{wf_id}/fan/values[0:20]", f"{wf_id}/fan/values[20:40]",
                            f"{wf_id}/fan/values[40:50]"]
    assert all(s == [WorkflowExecutionStatus.COMPLETED] for s in runs.values()), runs
    item = next(n for n in rows(tmp_path / "t.duckdb") if n.startswith("fan/values[25]/"))
    assert f"workflow  {wf_id}/fan/values[20:40]" in shown(tmp_path, item)
    rerun = ok(af(tmp_path, *args, "--db", "t.duckdb", *cluster.run_args(), env=env))
    assert rerun.stdout == local.stdout
    assert {cached for _, cached, *_ in rows(tmp_path / "t.duckdb").values()} == {True}


def test_a_chain_continues_as_new_with_the_local_result_and_session(cluster, tmp_path):
    args = ["run", str(SCALE), "--entry", "chain", "--input", "n=16"]
    local = ok(af(tmp_path, *args, "--db", "local.duckdb"))
    remote = ok(af(tmp_path, *args, "--db", "t.duckdb", *cluster.run_args(), env=scale_env(history="60")))
    assert remote.stdout == local.stdout  # `said` depends on the whole session, in order
    assert rows(tmp_path / "t.duckdb") == rows(tmp_path / "local.duckdb")
    from temporalio.client import WorkflowExecutionStatus
    statuses = executions(cluster.server.address, scale_workflow(tmp_path / "t.duckdb"))
    (runs,) = statuses.values()
    assert runs.count(WorkflowExecutionStatus.CONTINUED_AS_NEW) >= 2 and WorkflowExecutionStatus.COMPLETED in runs


def test_a_client_killed_after_a_continue_as_new_resumes_from_the_latest_run(cluster, tmp_path):
    args = ["run", str(SCALE), "--entry", "chain", "--input", "n=16"]
    local = ok(af(tmp_path, *args, "--db", "local.duckdb"))
    db, env = tmp_path / "t.duckdb", scale_env(history="60")
    client = af_start(tmp_path, *args, "--db", str(db), *cluster.run_args(), env=env)
    try:
        wf_id = wait_until(lambda: scale_workflow(db), what="the workflow to start")
        from temporalio.client import WorkflowExecutionStatus
        wait_until(lambda: WorkflowExecutionStatus.CONTINUED_AS_NEW in executions(cluster.server.address, wf_id).get(wf_id, []),
                   timeout=60, what="the workflow to continue as new")
    finally:
        client.kill()
        client.wait(10)
    resumed = ok(af(tmp_path, *args, "--db", str(db), "--resume", *cluster.run_args(), env=env))
    assert resumed.stdout == local.stdout
    assert rows(db) == rows(tmp_path / "local.duckdb")  # no record lost or written twice
    assert WorkflowExecutionStatus.COMPLETED in executions(cluster.server.address, wf_id)[wf_id]


def test_a_detached_run_that_continues_as_new_is_collected_with_the_local_result(cluster, tmp_path):
    """No client follows the chain: each hand-over carries every record not read; `collect` reads
    them from the latest run's result, from where the database's cursor (kept under the first
    run) stops, as a following client would have written them; collecting again writes nothing."""
    args = ["run", str(SCALE), "--entry", "chain", "--input", "n=16"]
    local = ok(af(tmp_path, *args, "--db", "local.duckdb"))
    db = tmp_path / "t.duckdb"
    detached = ok(af(tmp_path, *args, "--db", "t.duckdb", "--detach", *cluster.run_args(), env=scale_env(history="60")))
    run_id = detached.stdout.strip()
    wf_id = scale_workflow(db)
    from temporalio.client import WorkflowExecutionStatus
    wait_until(lambda: describe(cluster.server.address, wf_id).status == WorkflowExecutionStatus.COMPLETED,
               timeout=300, what=f"workflow {wf_id} to finish on the workers")
    assert executions(cluster.server.address, wf_id)[wf_id].count(WorkflowExecutionStatus.CONTINUED_AS_NEW) >= 2
    collected = collect(tmp_path, cluster, run_id)
    assert collected.stdout == local.stdout
    assert last_run(db)["status"] == "succeeded"
    assert rows(db) == rows(tmp_path / "local.duckdb")  # no record lost or written twice
    assert collect(tmp_path, cluster, run_id).stdout == local.stdout
    assert rows(db) == rows(tmp_path / "local.duckdb")


def test_a_worker_killed_in_the_middle_of_a_chunk_the_run_still_finishes(private_cluster, tmp_path):
    k1, _ = private_cluster.workers
    db = tmp_path / "t.duckdb"
    client = af_start(tmp_path, *fan_args(24, 1.0), "--db", str(db), *private_cluster.run_args(),
                      env=scale_env(chunk="8"))
    try:
        wf_id = wait_until(lambda: scale_workflow(db), what="the workflow to start")
        chunk = f"{wf_id}/fan/values[8:16]"
        wait_until(lambda: k1.identity in running_on(private_cluster.server.address, chunk), timeout=60,
                   what=f"an activity of the second chunk running on {k1.identity}")
        os.kill(k1.proc.pid, signal.SIGKILL)
        client.wait(120)
    finally:
        if client.poll() is None:
            client.kill()
    out, err = texts(client)
    assert client.returncode == 0, err[-3000:]
    assert json.loads(out)["values"] == [x * 10 + 5 for x in range(24)]
    assert {s for s, *_ in rows(db).values()} == {"succeeded"}


def test_ctrl_c_of_a_followed_run_cancels_every_chunk_workflow(cluster, tmp_path):
    db = tmp_path / "t.duckdb"
    client = af_start(tmp_path, *fan_args(12, 3.0), "--db", str(db), *cluster.run_args(), env=scale_env(chunk="4"))
    try:
        wf_id = wait_until(lambda: scale_workflow(db), what="the workflow to start")
        wait_until(lambda: running_on(cluster.server.address, f"{wf_id}/fan/values[0:4]"), timeout=60,
                   what="an activity of the first chunk to run")
        client.send_signal(signal.SIGINT)
        client.wait(60)
    finally:
        if client.poll() is None:
            client.kill()
    _, err = texts(client)
    assert client.returncode == 130, err[-3000:]
    from temporalio.client import WorkflowExecutionStatus
    assert describe(cluster.server.address, wf_id).status == WorkflowExecutionStatus.CANCELED
    runs = executions(cluster.server.address, wf_id)
    chunks = {w: s for w, s in runs.items() if w != wf_id}
    assert chunks and all(WorkflowExecutionStatus.RUNNING not in s for s in chunks.values()), runs
    assert not running_on(cluster.server.address, f"{wf_id}/fan/values[0:4]")
    assert last_run(db)["status"] == "cancelled"
    statuses = {s for s, *_ in rows(db).values()}
    assert "running" not in statuses and "cancelled" in statuses, statuses


def test_delegated_task_calls_run_in_child_workflows_with_their_own_histories(cluster, tmp_path):
    args = ["run", str(DELEGATE), "--input", "q=team"]
    local = ok(af(tmp_path, *args, "--db", "local.duckdb"))
    remote = ok(af(tmp_path, *args, "--db", "t.duckdb", *cluster.run_args()))
    assert remote.stdout == local.stdout
    assert rows(tmp_path / "t.duckdb") == rows(tmp_path / "local.duckdb")
    from agentflow.runtime.temporal.wire import workflow_id
    wf_id = workflow_id("delegate", last_run(tmp_path / "t.duckdb")["run_id"])
    # the boss's two turns in the run's history; each helper's two turns in its own
    assert model_calls(cluster.server.address, wf_id) == {
        wf_id: 2, f"{wf_id}/main/return@1/helper.assist#1": 2, f"{wf_id}/main/return@1/helper.assist#2": 2}
    assert f"workflow  {wf_id}/main/return@1/helper.assist#2" in shown(tmp_path, "main/return@1/helper.assist#2")
    assert "workflow  " not in shown(tmp_path, "main/return@1")  # ran in the run's own workflow
