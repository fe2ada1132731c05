"""`agentflow run --engine temporal` against a real Temporal dev server and two real workers.

Checked: the example specs give the local engine's result (scripted model, and litellm against
our OpenAI-protocol server); activities run on both workers; a worker killed with SIGKILL in
the middle of an activity does not stop the run; a rerun reuses everything from DuckDB and
starts no activity; a client killed and started again with `--resume` re-attaches to the same
workflow; Ctrl-C cancels the workflow and kills the running tool, while a python tool that
finishes before it hears the cancellation keeps its result and nothing starts after it; a 3 MB
tool output (above Temporal's 2 MB payload limit) travels through the blob directory, not the
history; stored results reached only at run time are looked up through the client and reused
(session steps included), also by a client that re-attaches; `--resume` of a failed run starts
the failed task over. Runs no client follows: a lookup nobody answers times out and its node runs; a
`--detach`ed run finishes on the workers and `collect` records it as a following client would
(a failed one as failed, which one `--resume` restarts); Ctrl-C of `collect` leaves the run
running.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from temporal_support import HERE, KEY_ENV, SECRET, base_env

REPO = HERE.parent.parent
SPECS = REPO / "specs"
WORK = HERE / "specs" / "work.agentflow"
from openai_server import OpenAIServer
import polling
from runtime_support import HANDOFF_TOOLS, llm_defaults, requests_with, stop

EXAMPLES = [
    ("research_report.agentflow", ["--input", "topic=bees"]),
    ("support_triage.agentflow", ["--inputs", str(SPECS / "tickets.json")]),
    ("build_project.agentflow", ["--input", "project_spec=A command-line todo list"]),
    ("incident_postmortem.agentflow", ["--inputs", str(SPECS / "logs.json")]),
    ("analyst_programs.agentflow", []),
    ("specialist.agentflow", []),  # an agent created at run time: its call runs in a child workflow
]


# ---------------------------------------------------------------- helpers

def af(cwd: Path, *args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agentflow", *args], cwd=cwd, env=env or base_env(),
                          capture_output=True, text=True, timeout=timeout)


def af_start(cwd: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    out, err = open(cwd / f"client-{time.monotonic_ns()}.out", "w+"), open(cwd / f"client-{time.monotonic_ns()}.err", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "agentflow", *args], cwd=cwd, env=env or base_env(),
                            stdout=out, stderr=err, text=True)
    proc.files = (out, err)  # type: ignore[attr-defined]
    return proc


def texts(proc: subprocess.Popen) -> tuple[str, str]:
    result = []
    for f in proc.files:  # type: ignore[attr-defined]
        f.flush()
        f.seek(0)
        result.append(f.read())
    return result[0], result[1]


def ok(result: subprocess.CompletedProcess, code: int = 0) -> subprocess.CompletedProcess:
    assert result.returncode == code, (f"exit {result.returncode}, expected {code}\n--- stdout\n{result.stdout}"
                                       f"\n--- stderr\n{result.stderr[-3000:]}")
    return result


def last_run(db: Path) -> dict:
    from agentflow.runtime.history import list_runs
    return list_runs(str(db))[0]


def nodes(db: Path, run_id: str) -> dict[str, dict]:
    from agentflow.runtime.history import run_nodes
    return {r["node"]: r for r in run_nodes(str(db), run_id)}


def workflow_of(db: Path) -> str:
    from agentflow.runtime.temporal.wire import workflow_id
    run = last_run(db)
    return workflow_id(run["flow"], run["run_id"])


def wait_until(predicate, timeout: float = 30, what: str = ""):
    return polling.wait_until(predicate, timeout=timeout, what=what)


def temporal(address: str, fn):
    """Runs `await fn(client)` against the server."""
    from temporalio.client import Client

    async def main():
        return await fn(await Client.connect(address))
    return asyncio.run(main())


def activity_history(address: str, wf_id: str) -> dict:
    """Activities of a workflow's (latest execution's) history: how many were scheduled, and
    the worker identity and attempt of each that started."""
    async def fetch(client):
        history = await client.get_workflow_handle(wf_id).fetch_history()
        scheduled, started, biggest = 0, [], 0
        for event in history.events:
            biggest = max(biggest, event.ByteSize())
            if event.HasField("activity_task_scheduled_event_attributes"):
                scheduled += 1
            if event.HasField("activity_task_started_event_attributes"):
                a = event.activity_task_started_event_attributes
                started.append((a.identity, a.attempt))
        return {"scheduled": scheduled, "started": started, "biggest_event": biggest}
    return temporal(address, fetch)


def describe(address: str, wf_id: str):
    return temporal(address, lambda c: c.get_workflow_handle(wf_id).describe())


def running_on(address: str, wf_id: str) -> set[str]:
    """Identities of the workers running an activity of the workflow now."""
    from temporalio.api.enums.v1 import PendingActivityState
    try:
        desc = describe(address, wf_id)
    except Exception:
        return set()
    return {p.last_worker_identity for p in desc.raw_description.pending_activities
            if p.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED}


def kill_a_busy_worker(cluster, wf_id: str, what: str, timeout: float = 30):
    """SIGKILLs a worker seen running an activity of the workflow `wf_id`, and returns the
    other one. Either may be the one: each runs 8 activities at once, so one worker can take
    them all and the other run none."""
    workers = {w.identity: w for w in cluster.workers}
    busy = wait_until(lambda: running_on(cluster.server.address, wf_id) & set(workers), timeout=timeout, what=what)
    killed = workers[sorted(busy)[0]]
    os.kill(killed.proc.pid, signal.SIGKILL)
    return next(w for w in cluster.workers if w is not killed)


def recorded_runs(db: Path) -> set[str]:
    """The ids of the runs a client has recorded in the database (a reader the writer lets in)."""
    if not db.exists():
        return set()
    from agentflow.runtime.history import list_runs
    try:
        return {r["run_id"] for r in list_runs(str(db))}
    except Exception:  # the writer is still creating the file
        return set()


def started_workflow(db: Path, known: frozenset[str] = frozenset()) -> str | None:
    """The workflow id of a run of the `work` flow recorded in the database and not in
    `known`, else None."""
    from agentflow.runtime.temporal.wire import workflow_id
    new = recorded_runs(db) - known
    return workflow_id("work", new.pop()) if new else None


def processes_with(*parts: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
                if all(p.encode() in cmdline for p in parts):
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


# ---------------------------------------------------------------- tests

def test_examples_match_local_spread_over_workers_and_rerun_reuses_all(cluster, tmp_path):
    identities: set[str] = set()
    for spec, inputs in EXAMPLES:
        path = str(SPECS / spec)
        local = ok(af(tmp_path, "run", path, *inputs, "--db", "local.duckdb", "--workspace", "ws-local"))
        remote = ok(af(tmp_path, "run", path, *inputs, "--db", "t.duckdb", "--workspace", "ws-t", *cluster.run_args()))
        assert remote.stdout == local.stdout, spec
        local_nodes = nodes(tmp_path / "local.duckdb", last_run(tmp_path / "local.duckdb")["run_id"])
        run = last_run(tmp_path / "t.duckdb")
        assert run["status"] == "succeeded"
        remote_nodes = nodes(tmp_path / "t.duckdb", run["run_id"])
        view = lambda ns: {n: (r["status"], r["cached"], r["attempts"]) for n, r in ns.items()}  # noqa: E731
        assert view(remote_nodes) == view(local_nodes), spec
        history = activity_history(cluster.server.address, workflow_of(tmp_path / "t.duckdb"))
        assert history["scheduled"] > 0
        identities |= {identity for identity, _ in history["started"]}

        again = ok(af(tmp_path, "run", path, *inputs, "--db", "t.duckdb", "--workspace", "ws-t", *cluster.run_args()))
        assert json.loads(again.stdout) == json.loads(local.stdout)  # stored values print with sorted keys
        rerun = last_run(tmp_path / "t.duckdb")
        assert rerun["run_id"] != run["run_id"] and rerun["status"] == "succeeded"
        assert activity_history(cluster.server.address, workflow_of(tmp_path / "t.duckdb"))["scheduled"] == 0, \
            f"{spec}: the rerun started activities"
        rerun_nodes = nodes(tmp_path / "t.duckdb", rerun["run_id"])
        assert {n for n, r in rerun_nodes.items() if r["role"] and r["status"] != "skipped" and not r["cached"]} == set(), spec
    assert identities == {w.identity for w in cluster.workers}, "activities did not run on both workers"


def test_litellm_through_openai_protocol_server_matches_local(cluster, tmp_path):
    with OpenAIServer() as server:
        shutil.copytree(HERE / "specs" / "ttools", tmp_path / "ttools")
        spec = tmp_path / "llm.agentflow"
        spec.write_text(f"""
defaults {{
  model = "openai/gpt-4o-mini"
  api_base = "{server.base_url}"
  api_key_env = "{KEY_ENV}"
  retries = 2
}}

type Verdict {{
  verdict: "OK" | "BAD"
  reason: str
}}

tool shout(text: str) -> str {{
  python = "ttools.work:shout"
  description = "Upper-cases a text."
}}

role analyst {{
  replicas = 4
  task classify(text: str) -> Verdict {{ prompt = "CLASSIFY {{text}}" }}
}}

role worker {{
  tools = [shout]
  task use_tool(text: str) -> str {{ prompt = "USE THE TOOL on {{text}}" }}
}}

choreography main(items: list[str]) -> json {{
  verdicts = for t in items {{
    yield analyst.classify(t)
  }}
  return {{verdicts: verdicts, tooled: worker.use_tool("hi")}}
}}
""")

        def script() -> None:
            server.reset()
            server.add_rule("USE THE TOOL", {"tool_calls": "auto"}, times=1)
            server.add_rule("RATE LIMITED", {"status": 429, "message": "slow down"}, times=1)

        inputs = ["--input", 'items=["fine", "RATE LIMITED", "also fine"]']
        script()
        local = ok(af(tmp_path, "run", str(spec), *inputs, "--db", "local.duckdb"))
        local_requests = server.chat_count
        script()
        remote = ok(af(tmp_path, "run", str(spec), *inputs, "--db", "t.duckdb", *cluster.run_args()))
        assert json.loads(remote.stdout) == json.loads(local.stdout)
        assert server.chat_count == local_requests == 6  # 3 classify + 1 retried 429 + 2 tool-loop turns
        tool_results = [m for r in server.requests for m in r["messages"] if m.get("role") == "tool"]
        assert tool_results and all(m["content"].endswith("!") for m in tool_results)
        remote_nodes = nodes(tmp_path / "t.duckdb", last_run(tmp_path / "t.duckdb")["run_id"])
        local_nodes = nodes(tmp_path / "local.duckdb", last_run(tmp_path / "local.duckdb")["run_id"])
        view = lambda ns: {n: (r["status"], r["cached"], r["attempts"]) for n, r in ns.items()}  # noqa: E731
        assert view(remote_nodes) == view(local_nodes)
        assert remote_nodes["main/verdicts[1]/yield@1"]["attempts"] == 2  # the 429, retried by Temporal
        for f in [*tmp_path.rglob("*"), *cluster.blob_dir.rglob("*")]:
            assert not (f.is_file() and SECRET.encode() in f.read_bytes()), f"the API key leaked into {f}"


def test_worker_killed_mid_activity_still_completes(private_cluster, tmp_path):
    """The worker seen running an activity is killed; the other must retry it."""
    db = tmp_path / "t.duckdb"
    client = af_start(tmp_path, "run", str(WORK), "--input", "items=[1, 2, 3, 4, 5, 6]", "--input", "seconds=1.5",
                      "--db", str(db), *private_cluster.run_args())
    try:
        wf_id = wait_until(lambda: started_workflow(db), what="the workflow to start")
        survivor = kill_a_busy_worker(private_cluster, wf_id, "an activity running on a worker")
        client.wait(90)
    finally:
        stop(client)
    out, err = texts(client)
    assert client.returncode == 0, err[-3000:]
    assert json.loads(out)["values"] == [10, 20, 30, 40, 50, 60]
    history = activity_history(private_cluster.server.address, wf_id)
    assert max(attempt for _, attempt in history["started"]) >= 2, "no activity was retried after the kill"
    retried_on = {identity for identity, attempt in history["started"] if attempt >= 2}
    assert retried_on == {survivor.identity}


@pytest.mark.parametrize("direct", (False, True), ids=("model-call", "direct-call"))
def test_a_non_idempotent_tool_whose_worker_is_killed_is_not_run_again(direct, private_cluster, server, tmp_path):
    """As locally after a crash: the model is told the call's effect is unknown (a direct call
    fails saying so) instead of Temporal running the tool again on the other worker."""
    from agentflow.runtime.task import INTERRUPTED_NOTE
    (tmp_path / "tools.py").write_text(HANDOFF_TOOLS)
    spec = tmp_path / "flow.agentflow"
    spec.write_text(llm_defaults(server) + """
tool pay(amount: int) -> str {
  python = "tools:pay"
  description = "Pays an amount."
  idempotent = false
}
role clerk {
  tools = [pay]
  task settle(amount: int) -> str { prompt = "SETTLE {amount}" }
}
choreography main() -> str {
  s = %s
  return s
}
""" % ("pay(30)" if direct else "clerk.settle(30)"))
    server.add_rule("SETTLE 30", {"tool_calls": [{"id": "call_pay", "name": "pay", "arguments": {"amount": 30}}]},
                    times=1)
    db = tmp_path / "t.duckdb"
    client = af_start(tmp_path, "run", str(spec), "--db", str(db), *private_cluster.run_args())
    try:
        wait_until(lambda: (tmp_path / "pay.log").exists(), timeout=60, what="the tool to start")
        wait_until(lambda: recorded_runs(db), what="the run recorded")
        wf_id = workflow_of(db)
        kill_a_busy_worker(private_cluster, wf_id, "the tool's worker")
        client.wait(90)
    finally:
        stop(client)
    out, err = texts(client)
    assert (tmp_path / "pay.log").read_text().splitlines() == ["pay 30"], "the tool ran again"
    if direct:
        assert client.returncode == 3, err[-3000:]
        assert ("tool pay was interrupted while it ran (the process running it stopped); its effect is unknown"
                in err and "Traceback" not in err)
    else:
        assert client.returncode == 0, err[-3000:]
        assert json.loads(out) == "echo: SETTLE 30"
        final = requests_with(server, "SETTLE 30")[-1]["messages"]
        assert final[-1] == {**final[-1], "role": "tool", "content": INTERRUPTED_NOTE.format(name="pay")}


def test_client_killed_then_resume_reattaches_to_the_same_workflow(cluster, tmp_path):
    db = tmp_path / "t.duckdb"
    args = ["run", str(WORK), "--input", "items=[1, 2, 3, 4]", "--input", "seconds=1.5", "--db", str(db),
            *cluster.run_args()]
    client = af_start(tmp_path, *args)
    try:
        wf_id = wait_until(lambda: started_workflow(db), what="the workflow to start")
        wait_until(lambda: running_on(cluster.server.address, wf_id), what="an activity to start")
    finally:
        client.kill()
        client.wait(10)
    before = describe(cluster.server.address, wf_id)
    resumed = ok(af(tmp_path, *args[:-len(cluster.run_args())], "--resume", *cluster.run_args()))
    after = describe(cluster.server.address, wf_id)
    assert after.run_id == before.run_id, "--resume started a new workflow execution instead of re-attaching"
    assert json.loads(resumed.stdout)["values"] == [10, 20, 30, 40]
    run = last_run(db)
    assert run["status"] == "succeeded" and len(recorded_runs(db)) == 1
    statuses = {n: r["status"] for n, r in nodes(db, run["run_id"]).items()}
    assert set(statuses.values()) == {"succeeded"}, statuses


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_or_sigterm_cancels_the_workflow_and_its_activities(cluster, tmp_path, signum, code):
    db = tmp_path / "t.duckdb"
    tag = f"agentflow-nap-{uuid.uuid4().hex}"
    client = af_start(tmp_path, "run", str(WORK), "--entry", "sleeper", "--input", f"tag={tag}", "--db", str(db),
                      *cluster.run_args())
    try:
        wait_until(lambda: processes_with(tag, "time.sleep"), what="the tool process to start")
        wf_id = started_workflow(db)
        client.send_signal(signum)
        # beyond the client's own bounds: it waits up to 30 s for the cancelled workflow to
        # end, then queries its records (10 s); a loaded CI machine once took over 30 s
        client.wait(60)
    finally:
        stop(client)
    out, err = texts(client)
    assert client.returncode == code, err[-3000:]
    assert "state saved" in err and "--resume" in err and "Traceback" not in err
    from temporalio.client import WorkflowExecutionStatus
    assert describe(cluster.server.address, wf_id).status == WorkflowExecutionStatus.CANCELED
    wait_until(lambda: not processes_with(tag, "time.sleep"), timeout=15, what="the cancelled tool process to be killed")
    run = last_run(db)
    assert run["status"] == "cancelled"
    assert "running" not in {r["status"] for r in nodes(db, run["run_id"]).values()}


SLOW_MARKS = """
import time
from pathlib import Path

def mark(x):
    log = Path(__file__).with_name("calls.log")
    with open(log, "a") as f:
        f.write(f"start {x}\\n")
    time.sleep(1.5)
    with open(log, "a") as f:
        f.write(f"mark {x}\\n")
    return f"marked {x}"
"""

SLOW_MARKS_SPEC = """
defaults { model = "scripted:script.json" }
tool mark(x: str) -> str {
  python = "tools:mark"
  description = "Marks a value, slowly."
}
role m {
  tools = [mark]
  task work(q: str) -> str { prompt = "WORK {q}" }
}
role boss {
  tools = [m.work]
  task lead(q: str) -> str { prompt = "LEAD {q}" }
}
choreography main() -> json {
  r = m.work("go")
  return r
}
choreography delegating() -> json {
  r = boss.lead("go")
  return r
}
"""

MARKS_TURNS = [
    {"task": "m.work", "turn": 1, "tool_calls": [{"name": "mark", "arguments": {"x": str(n)}} for n in (1, 2, 3)]},
    {"task": "m.work", "turn": 2, "content": "three marks done"},
    {"task": "boss.lead", "turn": 1, "tool_calls": [{"name": "m__work", "arguments": {"q": "go"}}]},
    {"task": "boss.lead", "turn": 2, "echo": "last"},
]


@pytest.mark.parametrize("entry", ["main", "delegating"])  # the turn runs in the run's workflow, or a delegate's
def test_ctrl_c_while_a_tool_that_cannot_hear_it_runs_keeps_its_result_and_starts_nothing_more(
        entry, cluster, tmp_path):
    """The tool's activity heartbeats every 30 s, so it finishes before it hears the cancel:
    its result is kept (resume does not run it again) and the turn's next tools never start."""
    (tmp_path / "tools.py").write_text(SLOW_MARKS)
    (tmp_path / "flow.agentflow").write_text(SLOW_MARKS_SPEC)
    (tmp_path / "script.json").write_text(json.dumps({"rules": MARKS_TURNS}))
    log = tmp_path / "calls.log"
    args = ["run", "flow.agentflow", "--entry", entry, "--db", "t.duckdb", *cluster.run_args()]
    env = base_env(AGENTFLOW_TEMPORAL_HEARTBEAT="30")
    client = af_start(tmp_path, *args, env=env)
    try:
        wait_until(lambda: log.exists() and "start 1" in log.read_text(), what="the first tool to start")
        client.send_signal(signal.SIGINT)
        client.wait(60)
    finally:
        stop(client)
    assert client.returncode == 130, texts(client)[1][-3000:]
    from temporalio.client import WorkflowExecutionStatus
    assert describe(cluster.server.address, workflow_of(tmp_path / "t.duckdb")).status == WorkflowExecutionStatus.CANCELED
    time.sleep(2)  # long enough for a second tool to start, were the run going on
    assert log.read_text().split("\n") == ["start 1", "mark 1", ""]
    resumed = ok(af(tmp_path, *args, "--resume", env=env))
    assert json.loads(resumed.stdout) == "three marks done"
    assert [line for line in log.read_text().splitlines() if line.startswith("mark")] == ["mark 1", "mark 2", "mark 3"]


def test_large_payloads_go_through_the_blob_directory(cluster, tmp_path):
    n = 3_000_000  # above Temporal's 2 MB payload limit
    args = ["run", str(WORK), "--entry", "large", "--input", f"n={n}"]
    local = ok(af(tmp_path, *args, "--db", "local.duckdb"))
    remote = ok(af(tmp_path, *args, "--db", "t.duckdb", *cluster.run_args()))
    assert remote.stdout == local.stdout and json.loads(remote.stdout)["length"] == n
    blobs = [p for p in cluster.blob_dir.rglob("*") if p.is_file() and p.stat().st_size > n]
    assert blobs, "no payload went to the blob directory"
    history = activity_history(cluster.server.address, workflow_of(tmp_path / "t.duckdb"))
    assert history["biggest_event"] < 300_000, "a large payload is in the workflow history"


def test_what_tools_print_goes_to_the_workers_stderr_not_their_stdout(cluster, tmp_path):
    (tmp_path / "flow.agentflow").write_text(
        'tool chatty(n: int) -> json { python = "tools:chatty" }\n'
        "choreography main() -> json {\n  r = chatty(2)\n  return r\n}\n")
    (tmp_path / "tools.py").write_text(
        "import os\n"
        "def chatty(n):\n"
        "    print('PRINTED by the tool', flush=True)\n"
        "    os.system('echo ECHOED by a child process')\n"
        "    return {'n': n}\n")
    result = ok(af(tmp_path, "run", "flow.agentflow", "--db", "t.duckdb", *cluster.run_args()))
    assert json.loads(result.stdout) == {"n": 2}
    stderr = "".join(w.log.read_text() for w in cluster.workers)
    assert "PRINTED by the tool" in stderr and "ECHOED by a child process" in stderr
    assert [w.out.read_text() for w in cluster.workers] == ["", ""]


def test_stored_results_reached_only_at_run_time_are_reused(cluster, tmp_path):
    """`same` always runs, so the reuse-only pass stops there; the two `chat` calls after it
    have stored keys (the second's key depends on the session the first left): the workflow
    asks the client for them and reuses both, as the local engine does."""
    args = ["run", str(WORK), "--entry", "relay", "--input", "text=hi", "--input", "seconds=0"]
    local = [ok(af(tmp_path, *args, "--db", "local.duckdb")) for _ in range(2)]
    db = tmp_path / "t.duckdb"
    first = ok(af(tmp_path, *args, "--db", str(db), *cluster.run_args()))
    assert json.loads(first.stdout) == json.loads(local[0].stdout)
    assert activity_history(cluster.server.address, workflow_of(db))["scheduled"] == 3
    again = ok(af(tmp_path, *args, "--db", str(db), *cluster.run_args()))
    assert json.loads(again.stdout) == json.loads(local[1].stdout)
    assert activity_history(cluster.server.address, workflow_of(db))["scheduled"] == 1, \
        "a stored result was run again (only `same`, cache = false, should run)"
    def view(db: Path) -> dict:
        return {n: (r["status"], r["cached"]) for n, r in nodes(db, last_run(db)["run_id"]).items()}
    assert view(db) == view(tmp_path / "local.duckdb") == {
        "relay/v": ("succeeded", False), "relay/first": ("succeeded", True), "relay/second": ("succeeded", True)}


def test_the_client_polls_again_soon_after_finding_something_and_backs_off_while_nothing_comes():
    """A lookup waits for the client's next poll: right after a poll that brought records or
    lookups the next comes within 50 ms; quiet polls double the wait, up to 0.5 s."""
    from agentflow.runtime.temporal.client import POLL_MIN_S, POLL_S, next_poll_wait
    waits = [POLL_MIN_S]
    for _ in range(5):
        waits.append(next_poll_wait(waits[-1], found=False))
    assert waits == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.5, 0.5])
    assert next_poll_wait(POLL_S, found=True) == POLL_MIN_S


def test_a_tool_result_too_large_to_store_fails_its_node_as_locally(cluster, tmp_path):
    """The worker refuses a result over the stored-value bound (the local ledger refuses it
    too): the run fails there, with the local message, instead of going on with a value its
    database cannot keep."""
    spec = tmp_path / "big.agentflow"
    spec.write_text("""
tool blob(mb: int) -> str {
  python = "bigtools:blob"
  retries = 0
}

choreography main(mb: int = 33) -> int {
  b = blob(mb)
  return len(b)
}
""")
    (tmp_path / "bigtools.py").write_text("def blob(mb):\n    return 'x' * (mb << 20)\n")
    local = ok(af(tmp_path, "run", str(spec), "--db", "local.duckdb"), 3)
    remote = ok(af(tmp_path, "run", str(spec), "--db", "t.duckdb", *cluster.run_args()), 3)
    message = "its result is 33.0 MB as JSON, over the 32 MB a stored value may be"
    assert message in local.stderr and message in remote.stderr, remote.stderr
    assert "Traceback" not in remote.stderr
    run = last_run(tmp_path / "t.duckdb")
    assert run["status"] == "failed" and run["failed"] == 1


def test_resume_of_a_failed_run_starts_the_failed_task_over(cluster, tmp_path):
    """A task that used up its repairs fails; once its script is fixed, `--resume` runs it
    again from its first turn (its journal is reset, as locally), on a new workflow execution."""
    shutil.copytree(HERE / "specs" / "ttools", tmp_path / "ttools")
    spec = tmp_path / "judge.agentflow"
    spec.write_text("""
defaults {
  model = "scripted:script.json"
  retries = 1
}

type Verdict {
  ok: bool
}

role judge {
  task rate(text: str) -> Verdict { prompt = "Rate {text}" }
}

choreography main(text: str) -> Verdict {
  return judge.rate(text)
}
""")
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"rules": [{"task": "judge.rate", "raw": "not json {"}]}))
    db = tmp_path / "t.duckdb"
    args = ["run", str(spec), "--input", "text=x", "--db", str(db)]
    failed = ok(af(tmp_path, *args, *cluster.run_args()), 3)
    run = last_run(db)
    assert run["status"] == "failed", failed.stderr
    wf_id = workflow_of(db)
    assert activity_history(cluster.server.address, wf_id)["scheduled"] == 2  # the answer and its repair
    script.write_text(json.dumps({"rules": [{"task": "judge.rate", "content": {"ok": True}}]}))
    resumed = ok(af(tmp_path, *args, "--resume", *cluster.run_args()))
    assert json.loads(resumed.stdout) == {"ok": True}
    assert last_run(db)["run_id"] == run["run_id"] and last_run(db)["status"] == "succeeded"
    assert activity_history(cluster.server.address, wf_id)["scheduled"] == 1, "the task did not start over"


SESSION_SPEC = """
defaults {
  model = "scripted:script.json"
}

role scribe {
  memory = "session"
  task note(x: str) -> str { prompt = "NOTE {x}" }
}

choreography main() -> json {
  a = scribe.note("a")
  b = scribe.note("b")
  c = scribe.note("c")
  return [a, b, c]
}
"""


def test_resume_rebuilds_a_session_in_program_order_and_reuses_its_finished_calls(cluster, tmp_path):
    """A `session` role's calls a and b finished and c failed: `--resume` starts a new execution
    that reuses a and b (each call's key depends on the session as it stood before it, rebuilt
    in program order, not on the whole stored session) and runs c alone; the result and the
    stored session are those of an uninterrupted local run."""
    from agentflow.runtime.store import Store
    spec = tmp_path / "notes.agentflow"
    spec.write_text(SESSION_SPEC)
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"rules": [{"node": "main/c", "error": "fatal"}]}))
    db = tmp_path / "t.duckdb"
    args = ["run", str(spec), "--db", str(db)]
    ok(af(tmp_path, *args, *cluster.run_args()), 3)
    run_id, wf_id = last_run(db)["run_id"], workflow_of(db)
    script.write_text(json.dumps({"rules": []}))
    resumed = ok(af(tmp_path, *args, "--resume", *cluster.run_args()))
    assert activity_history(cluster.server.address, wf_id)["scheduled"] == 1, "a finished call ran again"
    local = ok(af(tmp_path, "run", str(spec), "--db", "local.duckdb"))
    assert json.loads(resumed.stdout) == json.loads(local.stdout)
    with Store.open_reader(db) as store, Store.open_reader(tmp_path / "local.duckdb") as plain:
        assert store.load_session(run_id, "scribe") == plain.load_session(last_run(tmp_path / "local.duckdb")["run_id"],
                                                                         "scribe")
        assert [call[0]["content"] for call in store.load_session(run_id, "scribe")] == ["NOTE a", "NOTE b", "NOTE c"]


def test_a_persistent_agent_remembers_across_temporal_runs_as_locally(cluster, tmp_path):
    """The example with a persistent agent, run twice on Temporal and twice locally: each run's
    result, and the agent's conversation in the database, are the local ones (the workflow
    starts from the conversation its client read, and the client stores what it adds)."""
    from agentflow.runtime.store import Store
    spec = str(SPECS / "study_journal.agentflow")
    for topic in ("fractions", "decimals"):
        local = ok(af(tmp_path, "run", spec, "--input", f"topic={topic}", "--db", "local.duckdb"))
        remote = ok(af(tmp_path, "run", spec, "--input", f"topic={topic}", "--db", "t.duckdb", *cluster.run_args()))
        assert remote.stdout == local.stdout, topic

    def conversation(db: str) -> list:
        with Store.open_reader(tmp_path / db) as store:
            found = store.agent_turns("tutor")
        assert found is not None
        return [(t["turn"], t["node_id"], t["message"]) for t in found[1]]
    assert conversation("t.duckdb") == conversation("local.duckdb")
    assert len(conversation("t.duckdb")) == 12


def test_lookups_wait_for_a_client_and_a_resumed_client_answers_them(cluster, tmp_path):
    """The client dies while `same` runs: the workflow then asks for `first`'s stored result
    and waits (for up to --lookup-timeout); `--resume` re-attaches and answers, and both `chat`
    calls are reused."""
    db = tmp_path / "t.duckdb"
    args = ["run", str(WORK), "--entry", "relay", "--input", "text=hey", "--db", str(db)]
    ok(af(tmp_path, *args, "--input", "seconds=0", *cluster.run_args()))
    seen = frozenset(recorded_runs(db))
    # the tool's arguments are not part of `chat`'s keys
    args += ["--input", "seconds=1.5", "--lookup-timeout", "120"]
    client = af_start(tmp_path, *args, *cluster.run_args())
    try:
        wf_id = wait_until(lambda: started_workflow(db, seen), what="the workflow to start")
        wait_until(lambda: running_on(cluster.server.address, wf_id), what="`same` to start")
    finally:
        client.kill()
        client.wait(10)
    pending = lambda: temporal(cluster.server.address, lambda c: c.get_workflow_handle(wf_id).query(  # noqa: E731
        "progress", 0))["lookups"]
    assert len(wait_until(pending, what="the workflow to ask for a stored result")) == 1
    time.sleep(1)
    assert len(pending()) == 1, "the lookup was answered without a client"
    before = describe(cluster.server.address, wf_id)
    resumed = ok(af(tmp_path, *args, "--resume", *cluster.run_args()))
    assert describe(cluster.server.address, wf_id).run_id == before.run_id
    assert activity_history(cluster.server.address, wf_id)["scheduled"] == 1
    statuses = {n: (r["status"], r["cached"]) for n, r in nodes(db, last_run(db)["run_id"]).items()}
    assert statuses == {"relay/v": ("succeeded", False), "relay/first": ("succeeded", True),
                        "relay/second": ("succeeded", True)}, resumed.stderr


# ---------------------------------------------------------------- runs no client follows

def collect(tmp_path: Path, cluster, run_id: str, code: int = 0) -> subprocess.CompletedProcess:
    return ok(af(tmp_path, "collect", run_id, "--db", "t.duckdb", "--address", cluster.server.address,
                 "--blob-dir", str(cluster.blob_dir)), code)


def wait_closed(address: str, wf_id: str) -> None:
    from temporalio.client import WorkflowExecutionStatus
    wait_until(lambda: describe(address, wf_id).status == WorkflowExecutionStatus.COMPLETED, timeout=60,
               what=f"workflow {wf_id} to finish on the workers")


def view(db: Path, run_id: str) -> dict:
    return {n: (r["status"], r["cached"], r["attempts"]) for n, r in nodes(db, run_id).items()}


def test_a_detached_run_finishes_with_no_client_and_collect_records_it_as_a_client_would(cluster, tmp_path):
    """`--detach` prints the run id and exits 0; the workflow finishes on the workers; `collect`
    writes what it did (values, statuses, model calls) so that `runs`, `show` and reuse see it
    as a followed run's; a second `collect` writes nothing twice."""
    from agentflow.runtime.store import Store
    args = ["run", str(WORK), "--input", "items=[1, 2, 3]", "--input", "seconds=0.1"]
    local = ok(af(tmp_path, *args, "--db", "local.duckdb"))
    detached = ok(af(tmp_path, *args, "--db", "t.duckdb", "--detach", *cluster.run_args()))
    db = tmp_path / "t.duckdb"
    run_id = detached.stdout.strip()
    assert run_id == last_run(db)["run_id"] and last_run(db)["status"] == "waiting"
    wf_id = workflow_of(db)
    assert f"workflow {wf_id}" in detached.stderr and f"agentflow collect {run_id}" in detached.stderr
    wait_closed(cluster.server.address, wf_id)
    assert "succeeded" not in {r["status"] for r in nodes(db, run_id).values()}  # nothing recorded yet

    collected = collect(tmp_path, cluster, run_id)
    assert collected.stdout == local.stdout and f"run {run_id} succeeded" in collected.stderr
    assert last_run(db)["status"] == "succeeded"
    assert view(db, run_id) == view(tmp_path / "local.duckdb", last_run(tmp_path / "local.duckdb")["run_id"])
    shown = json.loads(ok(af(tmp_path, "show", run_id, "--db", "t.duckdb", "--json")).stdout)
    assert {n["node"]: n["status"] for n in shown}["main/return@1"] == "succeeded"
    summary = json.loads(ok(af(tmp_path, "show", run_id, "main/return@1", "--db", "t.duckdb", "--json")).stdout)
    assert summary["status"] == "succeeded" and summary["messages"], summary
    with Store.open_reader(db) as store:
        turns = store.load_turns(run_id, "main/return@1")
    again = collect(tmp_path, cluster, run_id)
    assert again.stdout == local.stdout
    with Store.open_reader(db) as store:
        assert store.load_turns(run_id, "main/return@1") == turns, "the second collect wrote a journal step again"
    import duckdb
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM llm_calls WHERE run_id = ?", [run_id]).fetchone() == (1,)

    rerun = ok(af(tmp_path, *args, "--db", "t.duckdb", *cluster.run_args()))
    assert json.loads(rerun.stdout) == json.loads(local.stdout)
    assert activity_history(cluster.server.address, workflow_of(db))["scheduled"] == 0, "the rerun ran activities"


def test_a_client_killed_before_a_lookup_the_run_still_finishes_and_collect_records_it(cluster, tmp_path):
    """The client dies while `same` runs; nobody answers the lookup of `first`'s stored result,
    so after the lookup timeout (3 s by default) both `chat` calls run on the workers and the
    workflow completes with no client; `collect` records the run."""
    db = tmp_path / "t.duckdb"
    args = ["run", str(WORK), "--entry", "relay", "--input", "text=hello", "--db", str(db)]
    first = ok(af(tmp_path, *args, "--input", "seconds=0", *cluster.run_args()))
    seen = frozenset(recorded_runs(db))
    client = af_start(tmp_path, *args, "--input", "seconds=1.5", *cluster.run_args())
    try:
        wf_id = wait_until(lambda: started_workflow(db, seen), what="the workflow to start")
        wait_until(lambda: running_on(cluster.server.address, wf_id), what="`same` to start")
    finally:
        client.kill()
        client.wait(10)
    run_id = (recorded_runs(db) - seen).pop()
    wait_closed(cluster.server.address, wf_id)
    assert activity_history(cluster.server.address, wf_id)["scheduled"] == 3, "the lookup was not a miss"
    collected = collect(tmp_path, cluster, run_id)
    assert json.loads(collected.stdout) == json.loads(first.stdout)
    assert last_run(db)["status"] == "succeeded"
    assert {n: (s, c) for n, (s, c, _) in view(db, run_id).items()} == {
        "relay/v": ("succeeded", False), "relay/first": ("succeeded", False), "relay/second": ("succeeded", False)}


@pytest.mark.parametrize("collect_first", [True, False], ids=["collected", "not-collected"])
def test_a_detached_run_that_fails_is_collected_as_failed_and_one_resume_reruns_only_its_failed_node(
        cluster, tmp_path, collect_first):
    """With no client watching, `judge.rate` fails and `writer.echo` succeeds: `collect` records
    the run as failed (exit 3); one `--resume` (after `collect` or instead of it) records the
    failure, then runs the failed node alone on a new execution."""
    spec = tmp_path / "judge.agentflow"
    spec.write_text("""
defaults {
  model = "scripted:script.json"
  retries = 0
}

type Verdict {
  ok: bool
}

role writer {
  task echo(text: str) -> str { prompt = "Repeat: {text}" }
}

role judge {
  task rate(text: str) -> Verdict { prompt = "Rate {text}" }
}

choreography main(text: str) -> json {
  e = writer.echo(text)
  return {echo: e, verdict: judge.rate(e)}
}
""")
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"rules": [{"task": "judge.rate", "error": "fatal"}]}))
    db = tmp_path / "t.duckdb"
    args = ["run", str(spec), "--input", "text=x", "--db", str(db)]
    run_id = ok(af(tmp_path, *args, "--detach", *cluster.run_args())).stdout.strip()
    wf_id = workflow_of(db)
    wait_closed(cluster.server.address, wf_id)
    if collect_first:
        failed = collect(tmp_path, cluster, run_id, 3)
        assert f"error: run {run_id} failed at main/return@1 (role judge)" in failed.stderr, failed.stderr
        assert last_run(db)["status"] == "failed"
        assert {n: s for n, (s, _, _) in view(db, run_id).items()} == {"main/e": "succeeded", "main/return@1": "failed"}
    script.write_text(json.dumps({"rules": [{"task": "judge.rate", "content": {"ok": True}}]}))
    resumed = ok(af(tmp_path, *args, "--resume", run_id, *cluster.run_args()))
    assert json.loads(resumed.stdout)["verdict"] == {"ok": True}
    assert last_run(db)["run_id"] == run_id and last_run(db)["status"] == "succeeded"
    assert activity_history(cluster.server.address, wf_id)["scheduled"] == 1, "more than the failed node ran again"


def test_collect_follows_a_running_detached_run_to_its_end_and_ctrl_c_stops_collecting_not_the_run(
        cluster, tmp_path):
    from temporalio.client import WorkflowExecutionStatus
    args = ["run", str(WORK), "--input", "items=[1, 2]", "--input", "seconds=4", "--db", "t.duckdb"]
    run_id = ok(af(tmp_path, *args, "--detach", *cluster.run_args())).stdout.strip()
    wf_id = workflow_of(tmp_path / "t.duckdb")
    collector = af_start(tmp_path, "collect", run_id, "--db", "t.duckdb", "--address", cluster.server.address,
                         "--blob-dir", str(cluster.blob_dir))
    try:
        wait_until(lambda: nodes(tmp_path / "t.duckdb", run_id).get("main/values[0]/yield@1", {}).get("status")
                   == "running", what="collect to record a running node")
        collector.send_signal(signal.SIGINT)
        collector.wait(30)
    finally:
        stop(collector)
    err = texts(collector)[1]
    assert collector.returncode == 130, err[-3000:]
    assert f"stopped collecting; run {run_id} goes on on the Temporal workers" in err and "Traceback" not in err
    assert describe(cluster.server.address, wf_id).status == WorkflowExecutionStatus.RUNNING
    assert last_run(tmp_path / "t.duckdb")["status"] == "waiting"
    followed = collect(tmp_path, cluster, run_id)
    assert json.loads(followed.stdout)["values"] == [10, 20]
    assert last_run(tmp_path / "t.duckdb")["status"] == "succeeded"
    assert {r["status"] for r in nodes(tmp_path / "t.duckdb", run_id).values()} == {"succeeded"}


def test_collect_of_a_run_it_cannot_collect_is_a_usage_error(tmp_path):
    missing = ok(af(tmp_path, "collect", "20260101-000000-abcdef", "--db", "none.duckdb"), 2)
    assert missing.stderr.startswith("error: there is no database none.duckdb") and "Traceback" not in missing.stderr
    (tmp_path / "flow.agentflow").write_text('choreography main() -> json {\n  return {a: 1}\n}\n')
    local = ok(af(tmp_path, "run", "flow.agentflow", "--db", "t.duckdb"))
    run_id = last_run(tmp_path / "t.duckdb")["run_id"]
    assert local.stdout
    unknown = ok(af(tmp_path, "collect", "20260101-000000-abcdef", "--db", "t.duckdb"), 2)
    assert "there is no run 20260101-000000-abcdef" in unknown.stderr
    not_temporal = ok(af(tmp_path, "collect", run_id, "--db", "t.duckdb"), 2)
    assert f"run {run_id} did not run on Temporal" in not_temporal.stderr


# ---------------------------------------------------------------- people in the loop

def people_args(tmp_path: Path, cluster, gate: Path) -> list[str]:
    return ["run", str(WORK), "--entry", "people", "--input", f"topic=news {uuid.uuid4().hex[:6]}",
            "--input", f"gate={gate}", "--db", str(tmp_path / "t.duckdb"), *cluster.run_args()]


def answer_args(cluster, run_id: str, value: str, *extra: str) -> list[str]:
    return ["answer", run_id, "people/decision", value, "--db", "t.duckdb", "--address", cluster.server.address,
            *extra]


def test_a_human_node_waits_in_the_workflow_and_the_answer_finishes_it_on_the_workers(cluster, tmp_path):
    """The client stops following once only a person is awaited (exit 4); the workflow waits on
    without it; `agentflow answer` signals it and it completes on the workers, with no client
    (approved, it needs no stored result looked up); `--resume` collects it."""
    from temporalio.client import WorkflowExecutionStatus
    gate = tmp_path / "go"
    gate.touch()  # `wait_for` returns at once
    args = people_args(tmp_path, cluster, gate)
    waiting = ok(af(tmp_path, *args), 4)
    db = tmp_path / "t.duckdb"
    run = last_run(db)
    assert run["status"] == "waiting"
    assert "waiting  people/decision" in waiting.stderr and "Publish this? " in waiting.stderr
    assert f"--engine temporal --resume {run['run_id']}" in waiting.stderr
    assert nodes(db, run["run_id"])["people/decision"]["status"] == "waiting"
    wf_id = workflow_of(db)
    assert describe(cluster.server.address, wf_id).status == WorkflowExecutionStatus.RUNNING
    bad = ok(af(tmp_path, *answer_args(cluster, run["run_id"], "maybe")), 2)
    assert bad.stderr.startswith('error: the answer does not fit "approve" | "revise"')
    answered = ok(af(tmp_path, *answer_args(cluster, run["run_id"], "approve", "--by", "carol")))
    assert "its Temporal workflow goes on on the workers" in answered.stderr
    wait_until(lambda: describe(cluster.server.address, wf_id).status == WorkflowExecutionStatus.COMPLETED,
               what="the workflow to finish on the workers")
    collected = ok(af(tmp_path, *args, "--resume"))
    value = json.loads(collected.stdout)
    assert value["decision"] == "approve" and value["final"] == value["draft"]
    assert last_run(db)["status"] == "succeeded" and last_run(db)["run_id"] == run["run_id"]
    assert nodes(db, run["run_id"])["people/decision"]["status"] == "succeeded"
    from agentflow.runtime.store import Store
    with Store.open_reader(db) as store:
        turns = store.load_turns(run["run_id"], "people/decision")
    assert [t.kind for t in turns] == ["question", "answer"] and turns[1].payload["by"] == "carol"


def test_the_run_page_answers_a_waiting_temporal_run_whose_workflow_finishes_on_the_workers(cluster, tmp_path):
    """`agentflow ui` (given the server's --address) sends the page's answer to the workflow as
    `agentflow answer` does: a wrong one is 422, a right one goes on on the workers."""
    from temporalio.client import WorkflowExecutionStatus

    from ui_support import post_answer, ui_server
    gate = tmp_path / "go"
    gate.touch()
    args = people_args(tmp_path, cluster, gate)
    ok(af(tmp_path, *args), 4)
    db = tmp_path / "t.duckdb"
    run_id, wf_id = last_run(db)["run_id"], workflow_of(db)
    with ui_server(tmp_path, "--db", "t.duckdb", "--address", cluster.server.address, env=base_env()) as url:
        code, body = post_answer(url, run_id, {"node": "people/decision", "value": "maybe"})
        assert code == 422 and body["error"].startswith('the answer does not fit "approve" | "revise"'), body
        code, body = post_answer(url, run_id, {"node": "people/decision", "value": "approve", "by": "dora"})
        assert code == 200 and body["delivered"], body
        assert body["message"] == (f"answered people/decision of run {run_id}: its Temporal workflow goes on on the "
                                   f"workers; `agentflow run FILE --engine temporal --resume {run_id}` collects the run")
        wait_until(lambda: describe(cluster.server.address, wf_id).status == WorkflowExecutionStatus.COMPLETED,
                   what="the workflow to finish on the workers")
    value = json.loads(ok(af(tmp_path, *args, "--resume")).stdout)
    assert value["decision"] == "approve" and last_run(db)["status"] == "succeeded"


def test_a_following_client_finishes_normally_when_the_answer_comes_while_it_follows(cluster, tmp_path):
    """While `wait_for` runs the client keeps following; the answer given meanwhile is used (the
    revision it asks for is looked up through the client, then runs on a worker) and the run
    finishes as any other, exit 0."""
    gate = tmp_path / "go"
    db = tmp_path / "t.duckdb"
    client = af_start(tmp_path, *people_args(tmp_path, cluster, gate))
    try:
        wait_until(lambda: db.exists() and recorded_runs(db) and
                   nodes(db, last_run(db)["run_id"]).get("people/decision", {}).get("status") == "waiting",
                   what="the human node to wait")
        run_id = last_run(db)["run_id"]
        ok(af(tmp_path, *answer_args(cluster, run_id, "revise")))
        assert client.poll() is None  # still following: `wait_for` holds
        gate.touch()
        assert client.wait(60) == 0, texts(client)[1]
    finally:
        stop(client)
    value = json.loads(texts(client)[0])
    assert value["decision"] == "revise" and value["final"] != value["draft"] and value["held"] == str(gate)
    assert last_run(db)["status"] == "succeeded"
