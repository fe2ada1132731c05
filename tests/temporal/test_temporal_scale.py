"""Temporal runs of any size, against a real dev server and real workers, with small bounds set
through the client's environment: a fan-out above the chunk size runs its items in child
workflows and gives the local result and records; a chain that continues as new gives the
local result, records and session, also to a client killed and resumed meanwhile, and to
`collect` of a detached run; a worker killed with SIGKILL in the middle of a chunk does
not stop the run; Ctrl-C of a followed run cancels every chunk workflow; delegated task calls
and the calls of agents created at run time (and of the agents those create) run in child
workflows with histories of their own, with the local result, nodes and recipe versions; Ctrl-C
of a followed run cancels a created agent's child workflow."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import duckdb

from runtime_support import call_agent, create_agent, stop, write
from temporal_support import HERE, base_env
from test_temporal_engine import (SPECS, activity_history, af, af_start, collect, describe, kill_a_busy_worker,
                                  last_run, nodes, ok, recorded_runs, running_on, temporal, texts, wait_until,
                                  workflow_of)

SCALE = HERE / "specs" / "scale.agentflow"
DELEGATE = HERE / "specs" / "delegate.agentflow"


def scale_env(**bounds: str) -> dict[str, str]:
    return base_env(**{f"AGENTFLOW_TEMPORAL_{name.upper()}": value for name, value in bounds.items()})


def fan_args(n: int, seconds: float) -> list[str]:
    return ["run", str(SCALE), "--entry", "fan", "--input", f"items={list(range(n))}", "--input",
            f"seconds={seconds}", "--input", "offset=5"]


def scale_workflow(db: Path, flow: str = "scale") -> str | None:
    """The workflow id of the run of `flow` recorded in the database, once there is one."""
    from agentflow.runtime.temporal.wire import workflow_id
    runs = recorded_runs(db)
    return workflow_id(flow, runs.pop()) if runs else None


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


def children_of(address: str, wf_id: str) -> list[str]:
    return temporal(address, lambda client: children(client, wf_id))


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
    db = tmp_path / "t.duckdb"
    client = af_start(tmp_path, *fan_args(24, 1.0), "--db", str(db), *private_cluster.run_args(),
                      env=scale_env(chunk="8"))
    try:
        wf_id = wait_until(lambda: scale_workflow(db), what="the workflow to start")
        kill_a_busy_worker(private_cluster, f"{wf_id}/fan/values[8:16]", "an activity of the second chunk",
                           timeout=60)
        client.wait(120)
    finally:
        stop(client)
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
        stop(client)
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


# ---------------------------------------------------------------- agents created at run time

SPAWNING = """
tool add(a: int, b: int) -> int { python = "tools:add" }
tool wait_for(path: str) -> str { python = "tools:wait_for" }
tool inc(x: int) -> int { python = "tools:inc" }

role architect {
  model = "scripted:script.json"
  spawn = true
  tools = [add, wait_for]
  task plan(goal: str) -> str { prompt = "PLAN {goal}" }
  task step(i: int) -> str { prompt = "STEP {i}" }
}

choreography main(goal: str = "sum") -> str {
  p = architect.plan(goal)
  return p
}

choreography steps(n: int) -> json {
  loop = repeat max 100 until i >= n {
    i = inc(prev.i if prev != null else 0)
    p = architect.step(i)
  }
  return {i: loop.i, p: loop.p}
}
"""
SPAWNING_TOOLS = """
import asyncio
import os

def add(a, b):
    return a + b

def inc(x):
    return x + 1

async def wait_for(path):
    while not os.path.exists(path):
        await asyncio.sleep(0.05)
    return path
"""


def spawning(cwd: Path, *rules: dict) -> Path:
    """A flow (`flow`) whose architect may create agents with `add` and `wait_for` (a call that
    runs until a file exists), scripted by `rules`."""
    write(cwd / "tools.py", SPAWNING_TOOLS)
    write(cwd / "script.json", json.dumps({"rules": list(rules)}))
    return write(cwd / "flow.agentflow", SPAWNING)


def agent_rows(db: Path) -> list[tuple]:
    """The `agents` view: every recipe version, and the node that created it."""
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute("SELECT name, creator, version, instructions, tools, model, depth, created_node_id "
                           "FROM agents ORDER BY name, version").fetchall()


def tool_results(db: Path, node: str) -> list[str]:
    """What the tools a node of the last run called answered it (a created agent's version...)."""
    from agentflow.runtime.history import node_detail
    detail = node_detail(str(db), last_run(db)["run_id"], node)
    return [m["content"] for m in detail["messages"] if m["role"] == "tool"]


def test_a_created_agents_call_runs_in_a_child_workflow_with_its_own_history_as_locally(cluster, tmp_path):
    """specs/specialist.agentflow: the architect's model turns and its `save` in the run's
    history; its math_solver's turns and tools in the child workflow of the agent's call."""
    args = ["run", str(SPECS / "specialist.agentflow")]
    local = ok(af(tmp_path, *args, "--db", "local.duckdb", "--workspace", "ws-local"))
    remote = ok(af(tmp_path, *args, "--db", "t.duckdb", "--workspace", "ws", *cluster.run_args()))
    db, address = tmp_path / "t.duckdb", cluster.server.address
    assert remote.stdout == local.stdout
    assert rows(db) == rows(tmp_path / "local.duckdb")
    node = "main/report/agent:math_solver#1"
    wf_id = workflow_of(db)
    child = f"{wf_id}/{node}"
    from temporalio.client import WorkflowExecutionStatus
    assert describe(address, child).status == WorkflowExecutionStatus.COMPLETED
    assert model_calls(address, wf_id) == {wf_id: 4, child: 3}
    tools = {w: activity_history(address, w)["scheduled"] - calls for w, calls in model_calls(address, wf_id).items()}
    assert tools == {wf_id: 1, child: 2}  # the architect's `save`; the agent's `add` and `multiply`
    assert f"workflow  {child}" in shown(tmp_path, node)
    detail = json.loads(ok(af(tmp_path, "show", last_run(db)["run_id"], node, "--json", "--db", str(db))).stdout)
    assert detail["workflow"] == child
    assert "workflow  " not in shown(tmp_path, "main/report")
    # the client stored the recipe the workflow created, as the local run did
    assert agent_rows(db) == agent_rows(tmp_path / "local.duckdb")
    tree = ok(af(tmp_path, "agents", "--tree", "--db", "t.duckdb")).stdout
    assert tree == "architect\n└── architect/math_solver  (v1; add, multiply; its creator's model)\n"
    ok(af(tmp_path, *args, "--db", "t.duckdb", "--workspace", "ws", "--input", "question=Again?",
          *cluster.run_args()))
    [root] = json.loads(ok(af(tmp_path, "agents", "--tree", "--json", "--db", "t.duckdb")).stdout)
    assert [a["versions"] for a in root["created"]] == [[1]]


def test_agents_created_by_a_created_agent_run_in_its_child_workflow_and_are_versioned_as_locally(cluster, tmp_path):
    """The architect's agent `a` creates `b` and calls it: `a`'s call runs in a child of the
    run's workflow, `b`'s in a child of `a`'s. A second run creates `b` again, changed: the
    workflow of `a`'s call versions it from the recipes it was given, as the local run does."""
    a, b = "main/p/agent:a#1", "main/p/agent:a#1/agent:b#1"

    def rules(prompt: str, level_two: str) -> list[dict]:
        return [
            {"node": "main/p", "turn": 1,
             "tool_calls": [create_agent("a", "Level one.", ["add"]), call_agent("a", prompt)]},
            {"node": "main/p", "turn": 2, "echo": "last"},
            {"node": a, "turn": 1, "tool_calls": [create_agent("b", level_two, [])]},
            {"node": a, "turn": 2, "tool_calls": [call_agent("b", "deeper")]},
            {"node": a, "turn": 3, "echo": "last"},
            {"node": b, "turn": 1, "content": f"b was told: {level_two}"}]

    def two_runs(cwd: Path, *engine: str) -> list:
        """What each of two runs tells: its value, its nodes, what `a` was answered, the
        recipes and the tree after it; and the first run's workflow id."""
        told, db, wf_id = [], cwd / "t.duckdb", None
        for goal, prompt, level_two in (("one", "go", "Level two."), ("two", "go again", "Level two, changed.")):
            spawning(cwd, *rules(prompt, level_two))
            result = ok(af(cwd, "run", "flow.agentflow", "--input", f"goal={goal}", "--db", str(db), *engine))
            told.append((result.stdout, rows(db), tool_results(db, a), agent_rows(db),
                         ok(af(cwd, "agents", "--tree", "--db", str(db))).stdout))
            wf_id = wf_id or (workflow_of(db) if engine else None)
        return [told, wf_id]

    (local, _), (remote, wf_id) = two_runs(tmp_path / "local"), two_runs(tmp_path / "t", *cluster.run_args())
    assert remote == local
    (_, _, created_first, _, _), (_, _, created_again, recipes, tree) = remote
    assert json.loads(created_first[0]) == {"agent": "architect/a/b", "version": 1}
    assert json.loads(created_again[0]) == {"agent": "architect/a/b", "version": 2}
    assert [(name, version) for name, _, version, *_ in recipes] == [
        ("architect/a", 1), ("architect/a/b", 1), ("architect/a/b", 2)]
    assert tree == ("architect\n└── architect/a  (v1; add; its creator's model)\n"
                    "    └── architect/a/b  (v1, v2; no tools; its creator's model)\n")
    # the first run: `a`'s call in a child of the run's workflow, `b`'s in a child of that one
    address, child = cluster.server.address, f"{wf_id}/{a}"
    grandchild = f"{child}/{b}"
    assert children_of(address, wf_id) == [child] and children_of(address, child) == [grandchild]
    assert model_calls(address, wf_id) == {wf_id: 2, child: 3}
    assert model_calls(address, grandchild) == {grandchild: 1}
    # `show` of a node of the second run names the innermost workflow it ran in
    again = workflow_of(tmp_path / "t" / "t.duckdb")
    assert f"workflow  {again}/{a}/{b}" in shown(tmp_path / "t", b)
    assert f"workflow  {again}/{a}" in shown(tmp_path / "t", a)


def test_a_created_agent_that_fails_in_its_child_workflow_returns_the_error_to_its_caller_as_locally(
        cluster, tmp_path):
    agent = "main/p/agent:flaky#1"
    rules = [{"node": "main/p", "turn": 1,
              "tool_calls": [create_agent("flaky", "Fail.", []), call_agent("flaky", "try")]},
             {"node": "main/p", "turn": 2, "contains": "failed", "content": "recovered without it"},
             {"node": agent, "error": "fatal", "message": "the agent broke"}]
    told = {}
    for name, engine in (("local", []), ("t", cluster.run_args())):
        cwd = tmp_path / name
        spawning(cwd, *rules)
        db = cwd / "t.duckdb"
        result = ok(af(cwd, "run", "flow.agentflow", "--db", str(db), *engine))
        told[name] = (result.stdout, last_run(db)["status"], rows(db), tool_results(db, "main/p"))
    assert told["t"] == told["local"]
    assert told["t"][3][1] == ("error: call_agent: agent architect/flaky failed: model scripted:script.json: "
                               "scripted model (main/p/agent:flaky#1): the agent broke")
    wf_id = workflow_of(tmp_path / "t" / "t.duckdb")
    assert model_calls(cluster.server.address, wf_id) == {wf_id: 2, f"{wf_id}/{agent}": 1}


def test_recipes_created_before_a_continue_as_new_are_versioned_on_after_it_as_locally(cluster, tmp_path):
    """Each step of a chain creates the agent `x` again, changed: the version each step is told
    counts on across the workflow's continues-as-new (which carry the recipes), as locally."""
    n = 12
    rules = [rule for k in range(1, n + 1) for rule in (
        {"node": f"steps/loop#{k}/p", "turn": 1, "tool_calls": [create_agent("x", "Odd." if k % 2 else "Even.", [])]},
        {"node": f"steps/loop#{k}/p", "turn": 2, "echo": "last"})]
    told, dbs = {}, {}
    for name, engine, env in (("local", [], None), ("t", cluster.run_args(), scale_env(history="60"))):
        cwd = tmp_path / name
        spawning(cwd, *rules)
        db = dbs[name] = cwd / "t.duckdb"
        ok(af(cwd, "run", "flow.agentflow", "--entry", "steps", "--input", f"n={n}", "--db", str(db), *engine, env=env))
        told[name] = [json.loads(tool_results(db, f"steps/loop#{k}/p")[0])["version"] for k in range(1, n + 1)]
    assert told["t"] == told["local"] == list(range(1, n + 1))
    assert agent_rows(dbs["t"]) == agent_rows(dbs["local"])
    from temporalio.client import WorkflowExecutionStatus
    wf_id = workflow_of(dbs["t"])
    assert executions(cluster.server.address, wf_id)[wf_id].count(WorkflowExecutionStatus.CONTINUED_AS_NEW) >= 2


def test_ctrl_c_of_a_followed_run_cancels_a_created_agents_child_workflow_and_resume_finishes_it(
        cluster, tmp_path):
    """The agent's tool runs until a file exists; Ctrl-C stops it. `--resume` goes on from the
    journals: the architect and its agent ask their models only the turns not answered yet."""
    agent, go = "main/p/agent:waiter#1", str(tmp_path / "go")
    spawning(tmp_path,
             {"node": "main/p", "turn": 1,
              "tool_calls": [create_agent("waiter", "Wait.", ["wait_for"]), call_agent("waiter", "wait")]},
             {"node": "main/p", "turn": 2, "echo": "last"},
             {"node": agent, "turn": 1, "tool_calls": [{"name": "wait_for", "arguments": {"path": go}}]},
             {"node": agent, "turn": 2, "echo": "last"})
    db, address = tmp_path / "t.duckdb", cluster.server.address
    client = af_start(tmp_path, "run", "flow.agentflow", "--db", str(db), *cluster.run_args())
    try:
        wf_id = wait_until(lambda: scale_workflow(db, "flow"), what="the workflow to start")
        child = f"{wf_id}/{agent}"
        wait_until(lambda: running_on(address, child), timeout=60,
                   what="the created agent's tool to run in the child workflow of its call")
        client.send_signal(signal.SIGINT)
        client.wait(60)
    finally:
        stop(client)
    _, err = texts(client)
    assert client.returncode == 130, err[-3000:]
    from temporalio.client import WorkflowExecutionStatus
    assert describe(address, wf_id).status == WorkflowExecutionStatus.CANCELED
    assert describe(address, child).status != WorkflowExecutionStatus.RUNNING
    assert not running_on(address, child)
    assert last_run(db)["status"] == "cancelled"
    statuses = {node: status for node, (status, *_) in rows(db).items()}
    assert statuses["main/p"] == "cancelled" and statuses[agent] == "cancelled", statuses

    Path(go).touch()
    resumed = ok(af(tmp_path, "run", "flow.agentflow", "--db", str(db), "--resume", *cluster.run_args()))
    assert json.loads(resumed.stdout) == go
    assert {status for status, *_ in rows(db).values()} == {"succeeded"}
    assert model_calls(address, wf_id) == {wf_id: 1, child: 1}  # the turns after the journaled ones
