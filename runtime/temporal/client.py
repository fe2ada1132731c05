"""`agentflow run --engine temporal`: the client side of a run on Temporal.

1. Open the run in DuckDB as a local run would (new, or `--resume`).
2. Reuse-only pass: the local engine in dry-run mode walks the plan as far as stored results
   take it, collecting every stored result it reaches ({key: value}); tool code versions are
   computed here too (they read files). On `--resume`, finished keys and the journals of
   unfinished task calls are read as well; sessions are rebuilt in program order from what
   each reused call added to its session, here and in the workflow, never loaded whole.
3. Start the workflow `agentflow-<flow>-<run id>` with all that, or, on `--resume`, re-attach
   to it if it is still running (or finished with results not yet collected).
4. Follow it: poll the `progress` query, write each event to DuckDB through the normal
   `Ledger` (so `runs`/`show`/`--resume` work as for a local run), report progress, and
   collect the rest from the workflow result. How far it got is kept beside the database
   (`<db>.temporal/<run id>.json`), so a client that re-attaches writes nothing twice.
   The same poll answers the stored-result lookups the workflow waits on (keys the reuse-only
   pass could not reach): one bulk read of DuckDB, one signal `lookups` with the values (and
   what reused session calls added to their sessions). The workflow does not depend on it: a
   lookup unanswered for `lookup_timeout_s` is a miss, and the node runs.

With `detach`, the client stops after step 3: the run finishes on the workers, recorded as
waiting, and `collect_temporal` (`agentflow collect`) or a `--resume` does step 4 later, from
the workflow's result once it has finished. A failed run nobody followed is recorded as failed
by either; `--resume` then starts a new execution at once, which runs the failed nodes over.

On `--resume`, a node that failed starts over, as locally: its journal is reset and not passed.

Ctrl-C or SIGTERM cancels the workflow (and so its activities) and returns a cancelled outcome
(exit 130 or 143).

Nodes a person answers (`model = "human"`) wait in the workflow for the signal `answer`. Once
the workflow has nothing left to do but wait for people, the client stops following and
returns a waiting outcome (exit 4) with their questions: the workflow waits on without it, and
`--resume` follows it again (or collects it, finished).
"""
from __future__ import annotations

import asyncio
import copy
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import CancelledError as TemporalCancelled
from temporalio.service import RPCError, RPCStatusCode

from agentflow.compiler import schema
from agentflow.compiler.errors import UsageError

from ..engine import Engine, NodeFailure, NodeOutcome, RunAborted, DryRunStop
from ..ledger import SESSION_STEP, Ledger, child_workflow_key, plan_meta_key, temporal_cursor_key
from ..local import LocalExecutor
from ..ports import Reporter
from ..progress import SilentReporter
from ..runner import RunOutcome, RunRequest, pick_run
from ..store import Store
from . import wire
from .codec import BlobMissing
from .scale import scale_settings
from .worker import TemporalError, connect

# The client polls a workflow that has just recorded something, or asked a lookup, again after
# POLL_MIN_S, and doubles the wait after each poll that finds nothing, up to POLL_S: a run
# whose nodes follow each other quickly has its lookups answered in tens of milliseconds (a
# node downstream of one that ran waits on one), while a run busy in long calls is asked
# twice a second, as before. A fixed 0.5 s made each such lookup wait 0.25 s on average.
POLL_MIN_S = 0.05
POLL_S = 0.5
QUERY_TIMEOUT_S = 10.0


def next_poll_wait(wait: float, found: bool) -> float:
    """How long to wait before the next poll, after one that waited `wait` and `found`
    records or lookups (or not)."""
    return POLL_MIN_S if found else min(2 * wait, POLL_S)


@dataclass(frozen=True)
class TemporalSettings:
    address: str = "localhost:7233"
    namespace: str = "default"
    task_queue: str = wire.DEFAULT_TASK_QUEUE
    blob_dir: Path | None = None  # default: `blobs` beside the database
    lookup_timeout_s: float = wire.LOOKUP_TIMEOUT_S  # a lookup unanswered this long is a miss
    detach: bool = False  # submit the run and return: it finishes on the workers, `collect` records it


def default_blob_dir(db_path: Path) -> Path:
    return Path(db_path).parent / "blobs"


def activity_settings(task_queue: str) -> dict:
    """How activities are scheduled; part of the workflow input, so fixed for a run."""
    from ..retry import BACKOFF_BASE, BACKOFF_MAX
    return {"task_queue": task_queue,
            "heartbeat_s": float(os.environ.get("AGENTFLOW_TEMPORAL_HEARTBEAT", "30")),
            "backoff_s": max(0.001, BACKOFF_BASE), "max_backoff_s": BACKOFF_MAX,
            "default_timeout_s": 600.0, "grace_s": 30.0, "extra_attempts": 2}


async def execute_temporal(req: RunRequest, reporter: Reporter, settings: TemporalSettings) -> RunOutcome:
    """A run on Temporal, followed to its end, or with `settings.detach` submitted and left to
    the workers (outcome `detached`; the run is recorded as waiting until collected)."""
    store = Store.open_writer(req.db_path)
    try:
        run_id, resuming = pick_run(store, req)
        client = await connect(settings.address, settings.namespace,
                               settings.blob_dir or default_blob_dir(req.db_path))
        ledger = Ledger(store, run_id)
        await ledger.open(req.plan, req.plan_hash, req.inputs, resuming)
        follower = _Follower(ledger, reporter, run_id, client)
        wf_id = wire.workflow_id(req.plan["flow"], run_id)
        status = "failed"
        try:
            handle = await follower.reattach(client, wf_id) if resuming else None
            if handle is None:
                if resuming:
                    await ledger.restart_failed()
                    await ledger.restart_sessions()  # the new execution rebuilds them, as locally
                config = await _workflow_input(req, store, run_id, resuming, settings)
                follower.begin("", 0)  # durable before the workflow exists: `collect` knows a Temporal run by it
                await ledger.commit()
                try:
                    started = await client.start_workflow(wire.WORKFLOW, config, id=wf_id,
                                                          task_queue=settings.task_queue)
                except RPCError as err:
                    raise TemporalError(f"Temporal refused to start workflow {wf_id}: {err}") from None
                follower.begin(started.result_run_id or "", 0)
                handle = _latest(client, wf_id, started.result_run_id)
            if settings.detach and not follower.finished:
                status, value, failure = DETACHED, None, None
            else:
                status, value, failure = await follower.follow(handle)
        except asyncio.CancelledError:  # Ctrl-C or SIGTERM before following began
            status = "cancelled"
            raise
        except BlobMissing as err:
            raise TemporalError(f"{err}; once it is there, `--resume` collects the run") from None
        finally:
            await ledger.close(recorded_status(status))
        return RunOutcome(run_id, status, value, failure, questions=list(follower.waiting.values()))
    finally:
        store.close()


DETACHED = "detached"  # the outcome of a run no client follows (any more): it goes on on the workers


def recorded_status(status: str) -> str:
    """A run no client follows is recorded as waiting (for `collect`, or `--resume`)."""
    return "waiting" if status == DETACHED else status


def temporal_run_plan(db_path: Path, run_id: str) -> schema.Plan:
    """The plan of a run that ran on Temporal, from its database (what `collect` needs)."""
    if not db_path.exists():
        raise UsageError(f"there is no database {db_path}; give the one the run was started with (--db)")
    with Store.open_reader(db_path) as store:
        run = store.get_run(run_id)
        if run is None:
            raise UsageError(f"there is no run {run_id} in {db_path}; `agentflow runs` lists them")
        if store.get_meta(temporal_cursor_key(run_id)) is None:
            raise UsageError(f"run {run_id} did not run on Temporal: there is nothing to collect "
                             f"(`agentflow show {run_id}` shows it)")
        return json.loads(store.get_meta(plan_meta_key(run["plan_hash"])) or "null")


async def collect_temporal(db_path: Path, run_id: str, plan: schema.Plan, reporter: Reporter,
                           settings: TemporalSettings) -> RunOutcome:
    """`agentflow collect`: records everything the run's workflow did since this database last
    heard of it, following it to its end if it still runs (Ctrl-C stops following, never the
    run: outcome `detached`). Starts nothing: a failed run stays failed until `--resume`."""
    store = Store.open_writer(db_path)
    try:
        run = store.get_run(run_id)
        assert run is not None, "temporal_run_plan checked it"
        client = await connect(settings.address, settings.namespace, settings.blob_dir or default_blob_dir(db_path))
        ledger = Ledger(store, run_id)
        follower = _Follower(ledger, reporter, run_id, client)
        wf_id = wire.workflow_id(plan["flow"], run_id)
        handle = await follower.attach(client, wf_id)
        if handle is None:
            raise TemporalError(f"Temporal (namespace {settings.namespace}) has no workflow {wf_id}: its history "
                                f"is gone, or this is another server (--address); `run --resume {run_id}` "
                                f"runs what the database lacks")
        await ledger.open(plan, run["plan_hash"], run["inputs"], resuming=False)
        status = DETACHED
        try:
            status, value, failure = await follower.follow(handle, stop_cancels=False)
        except BlobMissing as err:
            raise TemporalError(f"{err}; once it is there, `agentflow collect {run_id}` collects the run") from None
        finally:
            await ledger.close(recorded_status(status))
        return RunOutcome(run_id, status, value, failure, questions=list(follower.waiting.values()))
    finally:
        store.close()


async def deliver_answer(settings: TemporalSettings, db_path: Path, node, value: object, by: str) -> bool:
    """Signals a person's answer to the workflow of a Temporal run (`node`: answers.Waiting);
    False when that workflow is not running any more."""
    client = await connect(settings.address, settings.namespace, settings.blob_dir or default_blob_dir(db_path))
    handle = client.get_workflow_handle(wire.workflow_id(node.flow, node.run_id))
    try:
        if (await handle.describe()).status != WorkflowExecutionStatus.RUNNING:
            return False
        await handle.signal(wire.ANSWER_SIGNAL, {"node": node.node_id, "key": node.key, "value": value, "by": by})
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return False
        raise TemporalError(f"cannot send the answer to workflow {handle.id}: {err}") from None
    return True


# ---------------------------------------------------------------- the reuse-only pass

class _Prefetch(Ledger):
    """A dry-run ledger that keeps every stored result the engine reaches."""

    def __init__(self, store: Store, run_id: str, plan: schema.Plan) -> None:
        super().__init__(store, run_id, dry_run=True)
        self.memory_roles = schema.session_roles(plan)
        self.found: dict[str, object] = {}
        self.session_steps: dict[str, list] = {}  # key -> what its reuse added to a session

    async def reused(self, node_id, role, key, def_hash, inputs):
        session = await self.load_session(role) if role in self.memory_roles else None
        before = len(session) if session is not None else 0
        value = await super().reused(node_id, role, key, def_hash, inputs)
        self.found[key] = value
        if session is not None and len(session) > before:
            self.session_steps[key] = session[before:]
        return value

    async def explain(self, node_id, def_hash, inputs, *, cacheable):
        return ""  # nobody reads it: skip the query


async def _workflow_input(req: RunRequest, store: Store, run_id: str, resuming: bool,
                          settings: TemporalSettings) -> dict:
    pre = _Prefetch(store, run_id, req.plan)
    await pre.open(req.plan, req.plan_hash, req.inputs, resuming)
    agent_memory = copy.deepcopy(pre.agent_memory)  # as the run starts: the pass below adds to it
    try:
        options = replace(req.options, run_id=run_id, dry_run=True)
        engine = Engine(req.plan, pre, options, LocalExecutor(), SilentReporter())
        code_versions = {name: engine.code_version(name) for name in req.plan["tools"]}
        try:
            await engine.run(req.inputs)
        except (DryRunStop, NodeFailure, RunAborted):
            pass  # the workflow meets the same failure, and reports it
        journals = {}
        if resuming:
            for node_id, state in pre.resumed.items():  # a failed node starts over: no journal
                if state.status not in ("succeeded", "failed") and state.key:
                    turns = await pre.load_turns(node_id, state.key)
                    if turns:
                        journals[node_id] = {"key": state.key, "turns": turns}
        resumed = {node_id: state.key for node_id, state in pre.resumed.items()
                   if state.status == "succeeded" and state.key}
    finally:
        await pre.close("dry-run")
    return {
        "plan": req.plan, "inputs": req.inputs, "code_versions": code_versions,
        "known": pre.found, "resumed": resumed, "journals": journals,
        "session_steps": pre.session_steps, "agent_memory": agent_memory,
        "recipes": [wire.recipe_to_wire(r) for r in store.latest_recipes()],
        "options": {"run_id": run_id, "spec_dir": str(req.options.spec_dir),
                    "workspace": str(req.options.workspace), "concurrency": req.options.concurrency,
                    "model": req.options.model, "force": list(req.options.force), "no_cache": req.options.no_cache,
                    "lookup_timeout_s": settings.lookup_timeout_s},
        "activity": activity_settings(settings.task_queue), "scale": scale_settings(),
    }


# ---------------------------------------------------------------- following a workflow

def _latest(client: Client, wf_id: str, first_run_id: str | None) -> WorkflowHandle:
    """The workflow of a run, whichever run of it is the latest: queries, signals and the
    result follow it across continue-as-new."""
    return client.get_workflow_handle(wf_id, first_execution_run_id=first_run_id)


class _Follower:
    def __init__(self, ledger: Ledger, reporter: Reporter, run_id: str, client: Client) -> None:
        self.client = client  # child workflows are asked for their lookups too
        self.ledger = ledger
        self.reporter = reporter
        self.run_id = run_id
        self.cursor_key = temporal_cursor_key(run_id)
        self.execution = ""
        self.cursor = 0
        self.answered: set[tuple[str, str]] = set()  # (workflow id, lookup key) this client has answered
        # What the run is doing, from its events: calls running, and nodes waiting for a person
        # (node -> question); with only the latter, the client need not follow any longer.
        self.running: set[str] = set()
        self.waiting: dict[str, dict] = {}
        self.settled = False  # the last poll applied every event and left no lookup pending
        self.status: WorkflowExecutionStatus | None = None  # of the execution `attach` found
        self.finished = False  # the workflow found by `reattach` had completed: only its records are left

    def begin(self, execution: str, cursor: int) -> None:
        self.execution, self.cursor = execution, cursor
        self.answered.clear()  # a new execution asks anew
        self._save()

    def _save(self) -> None:
        """Buffers how far the run's events are recorded. It commits in the same transaction
        as the events it counts, so a client killed at any moment neither skips events nor
        records one twice (a second llm_calls row, turn or session step)."""
        self.ledger.store.set_meta(self.cursor_key, json.dumps({"execution": self.execution, "cursor": self.cursor}))

    def _saved_cursor(self, execution: str) -> int:
        saved = json.loads(self.ledger.store.get_meta(self.cursor_key) or "{}")
        return int(saved.get("cursor", 0)) if saved.get("execution") == execution else 0

    async def attach(self, client: Client, wf_id: str) -> WorkflowHandle | None:
        """The workflow's latest execution, to be followed from where this database's records
        of it stop; None if Temporal has none."""
        try:
            desc = await client.get_workflow_handle(wf_id).describe()
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return None
            raise TemporalError(f"cannot describe workflow {wf_id}: {err}") from None
        # Records are numbered across continue-as-new, and the saved cursor is keyed on the
        # first run of the chain; the handle follows whichever run is the latest.
        first = desc.raw_description.workflow_execution_info.first_run_id or desc.run_id
        self.execution, self.cursor = first, self._saved_cursor(first)
        self.status = desc.status
        await self._recorded_state()
        return _latest(client, wf_id, first)

    async def reattach(self, client: Client, wf_id: str) -> WorkflowHandle | None:
        """The workflow to follow on `--resume`, or None when a new execution must start, once
        what the ended one did is recorded: a failed run that no client followed is recorded
        as failed, and its failed nodes start over in the new execution."""
        handle = await self.attach(client, wf_id)
        if handle is None or self.status == WorkflowExecutionStatus.RUNNING:
            return handle
        if self.status == WorkflowExecutionStatus.COMPLETED:
            result = await handle.result()
            if self.cursor < result.get("base", 0) + len(result["events"]) and result["status"] != "failed":
                self.finished = True
                return handle  # finished while no client followed it: collect, and done
            await self.apply(self.unread(result))
            return None  # a new execution continues the run
        await self.drain(handle)  # cancelled, terminated...: keep what it did, then start anew
        return None

    async def _recorded_state(self) -> None:
        """Which calls run and which nodes wait, as recorded before this client re-attached."""
        from ..human import QUESTION
        store, loop = self.ledger.store, asyncio.get_running_loop()
        states = await loop.run_in_executor(self.ledger.pool, store.run_progress, self.ledger.run_id)
        self.running = {n for n, st in states.items() if st.status == "running" and st.key}
        for n, st in states.items():
            if st.status == "waiting" and st.key:  # a call that delegated to a person asks nothing itself
                turns = await loop.run_in_executor(self.ledger.pool, store.load_turns, self.ledger.run_id, n, st.key)
                self.waiting.update((n, t.payload) for t in turns if t.kind == QUESTION)

    def only_people_left(self) -> bool:
        """Nothing is looked up, some node waits for a person, and every call still running
        waits for one of them (it delegated to a person)."""
        return self.settled and bool(self.waiting) and all(
            any(w.startswith(r + "/") for w in self.waiting) for r in self.running)

    async def follow(self, handle: WorkflowHandle, stop_cancels: bool = True) -> tuple[str, object, NodeFailure | None]:
        """Records the workflow's events until it ends: (status, value, failure). Ctrl-C or
        SIGTERM cancels the workflow, or with `stop_cancels` false leaves it running (`detached`)."""
        result_task = asyncio.ensure_future(handle.result())
        wait = POLL_MIN_S
        try:
            while not result_task.done():
                await asyncio.wait({result_task}, timeout=wait)
                if not result_task.done():
                    seen = (self.cursor, len(self.answered))
                    await self.poll(handle)
                    wait = next_poll_wait(wait, (self.cursor, len(self.answered)) != seen)
                    if self.only_people_left():  # the workflow waits on without this client
                        result_task.cancel()
                        return "waiting", None, None
            result = result_task.result()
        except WorkflowFailureError as err:
            await self.drain(handle)
            cancelled = isinstance(err.cause, TemporalCancelled)
            return ("cancelled" if cancelled else "failed"), None, \
                None if cancelled else NodeFailure("", None, f"workflow {handle.id} ended: {err.cause or err}")
        except asyncio.CancelledError:  # Ctrl-C: cancel the workflow and its activities
            task = asyncio.current_task()
            if task is not None and hasattr(task, "uncancel"):
                task.uncancel()
            result_task.cancel()
            if not stop_cancels:
                return DETACHED, None, None
            await self.cancel(handle)
            return "cancelled", None, None
        await self.apply(self.unread(result))
        failure = result.get("failure")
        return result["status"], result.get("value"), None if not failure else NodeFailure(
            failure["node_id"], failure["role"], failure["message"], failure.get("attempts", 1))

    def unread(self, result: dict) -> list[dict]:
        """The records of a workflow result this database lacks: the result holds the records
        from number `base` on (its run's, and what its predecessors' left unread)."""
        return result["events"][max(0, self.cursor - result.get("base", 0)):]

    async def cancel(self, handle: WorkflowHandle) -> None:
        try:
            await handle.cancel()
            await asyncio.wait_for(handle.result(), QUERY_TIMEOUT_S * 3)
        except (Exception, asyncio.TimeoutError):
            pass  # it ended cancelled (WorkflowFailureError), or did not answer in time
        await self.drain(handle)

    async def poll(self, handle: WorkflowHandle) -> bool:
        """Applies the events the workflow has that we do not, and answers the stored-result
        lookups it waits on; False if it did not answer."""
        self.settled = False
        while True:
            try:
                page = await asyncio.wait_for(handle.query(wire.PROGRESS_QUERY, self.cursor), QUERY_TIMEOUT_S)
            except (Exception, asyncio.TimeoutError):
                return False  # no worker answered now; the next poll or the result will
            if page["events"]:
                await self.apply(page["events"])
            if not page["events"] or self.cursor >= page["total"]:
                lookups = page.get("lookups") or {}
                self.settled = not lookups
                await self.answer(handle, lookups)
                await self.answer_children(page.get("children") or [])
                if page.get("handover") and self.cursor >= page["total"]:  # its next run need not carry them
                    await self.signal(handle, wire.READ_SIGNAL, self.cursor)
                return True

    async def answer_children(self, children: list[str]) -> None:
        """Answers the lookups of the child workflows running (chunks of a large `for`,
        delegated calls), and of theirs."""
        for child_id in children:
            child = self.client.get_workflow_handle(child_id)
            try:
                page = await asyncio.wait_for(child.query(wire.PROGRESS_QUERY, -1), QUERY_TIMEOUT_S)
            except (Exception, asyncio.TimeoutError):
                continue  # it ended meanwhile, or no worker answered now
            self.settled = self.settled and not page["lookups"]
            await self.answer(child, page["lookups"])
            await self.answer_children(page.get("children") or [])

    async def signal(self, handle: WorkflowHandle, name: str, arg: object) -> bool:
        """False when the signal did not land (the workflow ended, the server did not answer)."""
        try:  # large values go through the blob codec like any payload
            await asyncio.wait_for(handle.signal(name, arg), QUERY_TIMEOUT_S)
        except (Exception, asyncio.TimeoutError):
            return False
        return True

    async def answer(self, handle: WorkflowHandle, lookups: dict[str, bool]) -> None:
        """Answers the workflow's pending lookups from DuckDB: one bulk read, one signal. A key
        is answered once per client (the workflow may still list it until the signal lands)."""
        keys = [k for k in lookups if (handle.id, k) not in self.answered]
        if not keys:
            return
        store = self.ledger.store
        loop = asyncio.get_running_loop()
        found = await loop.run_in_executor(self.ledger.pool, store.lookup_results, keys)
        steps = {}
        for key in keys:  # only session calls' keys that have a result: few
            if lookups[key] and key in found:
                journal = await loop.run_in_executor(self.ledger.pool, store.result_journal, key, SESSION_STEP)
                steps[key] = [step["messages"] for step in journal]
        answer = {"found": {k: found[k][0] for k in keys if k in found},
                  "missing": [k for k in keys if k not in found], "session": steps}
        if await self.signal(handle, wire.LOOKUP_SIGNAL, answer):  # else the next poll asks again
            self.answered.update((handle.id, k) for k in keys)

    async def drain(self, handle: WorkflowHandle) -> None:
        await self.poll(handle)

    async def apply(self, events: list[dict]) -> None:
        """Writes events through the normal Ledger, and how far it got, in one transaction:
        all of a page or none of it."""
        with self.ledger.store.commits_held():
            await self._record(events)
            self.cursor += len(events)
            self._save()
        await self.ledger.flush()

    async def _record(self, events: list[dict]) -> None:
        ledger = self.ledger
        for e in events:
            op = e["op"]
            if op == "report":
                self.reporter.node(e["node"], e["status"], cached=e["cached"], detail=e["detail"])
            elif op == "node_started":
                self.running.add(e["node"])
                ledger.node_started(e["node"], e["role"], e["key"], e["def_hash"], e["inputs"])
            elif op == "node_waiting":
                self.running.discard(e["node"])
                if e["question"] is not None:
                    self.waiting[e["node"]] = e["question"]
                await ledger.node_waiting(e["node"], e["role"], e["key"], e["question"])
            elif op == "structure_started":
                ledger.structure_started(e["node"])
            elif op == "reused":
                await ledger.reused(e["node"], e["role"], e["key"], e["def_hash"], e["inputs"])
            elif op == "node_succeeded":
                self.running.discard(e["node"])
                self.waiting.pop(e["node"], None)
                try:
                    ledger.node_succeeded(e["node"], e["role"], e["key"], NodeOutcome(
                        e["value"], e["attempts"], e["prompt_tokens"], e["completion_tokens"], e["cost_usd"]))
                except NodeFailure as failure:  # a value too large to store is the node's failure here
                    await ledger.node_failed(e["node"], e["role"], failure.message, failure.attempts)
            elif op == "node_failed":
                self.running.discard(e["node"])
                await ledger.node_failed(e["node"], e["role"], e["error"], e["attempts"])
            elif op == "node_cancelled":
                self.running.discard(e["node"])
                ledger.node_cancelled(e["node"], e["role"])
            elif op == "node_skipped":
                ledger.node_skipped(e["node"], e["role"])
            elif op == "structure_done":
                ledger.structure_done(e["node"], e["status"], e.get("cached", False))
            elif op == "llm_call":
                response = SimpleNamespace(**{k: v for k, v in e.items() if k != "op"})
                ledger.record_llm_call(e["node"], response)
            elif op == "turn":
                await ledger.append_turn(e["node"], e["key"], e["message"])
            elif op == "program":
                ledger.record_program(e["node"], e["attempt"], e["source"], e["status"], e["diagnostics"])
            elif op == "session":
                await ledger.append_session(e["role"], e["messages"])
            elif op == "child_workflow":
                ledger.store.set_meta(child_workflow_key(self.run_id, e["workflow"]),
                                      json.dumps({"inside": e["inside"], "items": e["items"]}))
            elif op == "recipe":
                await ledger.save_recipe(wire.recipe_from_wire(e["recipe"]), e["node"])
