"""The generic workflow: the local engine's interpreter, run deterministically in workflow code.

`Engine` (runtime/engine.py) schedules with asyncio only (no clock, no randomness), so it runs
unchanged on Temporal's deterministic event loop. What differs from a local run:

- the ledger is `WorkflowLedger`: in memory, seeded by the client with the stored results it
  found (`known`), the resumed run's finished keys, session transcripts and task journals; every
  record it receives becomes an event the client reads back (query `progress`, and the
  workflow result) and writes to its DuckDB through the normal `Ledger`. A key it does not
  know (reached only once something ran) is a lookup: recorded in workflow state, shown by
  `progress`, answered by the client from DuckDB with the signal `lookups`, or a miss once
  unanswered for a few seconds (see `Lookups`);
- the executor is `TemporalExecutor`: the task loop (TaskCall) runs here, and each model call
  and each tool call is an activity with the spec's `retries` and `timeout`;
- tool code versions are computed by the client (they read files) and passed in.

`for`/`repeat` expansion, conditionals, delegation and sub-choreographies stay inline in this
workflow: they share the run's concurrency limits, session locks and keys. Two exceptions keep
any run's history small (runtime/temporal/scale.py): a large `for` runs its items in chunk
workflows (`ChunkWorkflow`), and a long history continues as new.
"""
from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import functools
from datetime import timedelta
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError as TemporalCancelled
from temporalio.exceptions import TimeoutError as TemporalTimeout
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from agentflow.compiler import schema
    from agentflow.compiler.hashing import canonical_json, digest
    from agentflow.compiler.names import template_id
    from agentflow.runtime.engine import (Engine, NodeFailure, NodeJob, NodeOutcome, RunAborted, RunOptions, Scope,
                                          enclosing)
    from agentflow.runtime.human import answer_step, job_question
    from agentflow.runtime.local import LocalExecutor
    from agentflow.runtime.models import ModelError, ModelRequest, ModelResponse, TransientModelError
    from agentflow.runtime.store import AgentRecipe
    from agentflow.runtime.task import TaskCall, ToolInterrupted
    from agentflow.runtime.tools import ToolError

    from . import wire
    from .scale import GatedSlots, Handover, agent_runs_apart, chunkable, outer_names, runs_apart

# The state a record puts its node in; a new run after continue-as-new does not record again
# what its predecessors recorded (the calls it reuses from their results, say).
_STATES = {"node_started": "running", "structure_started": "running", "reused": "succeeded",
           "node_succeeded": "succeeded", "node_failed": "failed", "node_cancelled": "cancelled",
           "node_waiting": "waiting", "node_skipped": "skipped"}


def _state(event: dict) -> str | None:
    return event["status"] if event["op"] in ("structure_done", "report") else _STATES.get(event["op"])


class Records:
    """A run's records for the client, numbered across continue-as-new: this run's `events`
    are numbers `base`, `base + 1`...; those before `base` the client has read already."""

    def __init__(self, carried: dict) -> None:
        self.base: int = carried.get("base", 0)
        self.events: list[dict] = list(carried.get("events", []))
        self.earlier: dict[str, str] = dict(carried.get("states", {}))  # node -> state a predecessor recorded
        self.states = dict(self.earlier)

    @property
    def total(self) -> int:
        return self.base + len(self.events)

    def add(self, event: dict) -> None:
        state = _state(event)
        if state is not None:
            earlier = self.earlier.get(event["node"])
            if earlier == state or earlier == "waiting" and state == "running":
                return  # recorded by a predecessor (a call it reused, a person it asked): a replay
            if event["op"] != "report":
                self.states[event["node"]] = state
        self.events.append(event)

    def page(self, since: int) -> list[dict]:
        """Records from number `since` on (none for a negative `since`: lookups only)."""
        if since < 0:
            return []
        start = max(0, since - self.base)
        return self.events[start:start + wire.PAGE]

    def unread(self, read: int) -> dict:
        """What a successor carries: the records from `read` on, and every node's state."""
        start = max(0, read - self.base)
        return {"base": self.base + start, "events": self.events[start:], "states": self.states}


class WorkflowLedger:
    """The ledger the engine sees inside the workflow: no DuckDB, events instead of writes."""

    def __init__(self, records: Records, config: dict, lookups: "Lookups") -> None:
        self.records = records
        self.lookups = lookups
        self.results: dict[str, Any] = dict(config.get("known") or {})
        self.resumed: dict[str, str] = dict(config.get("resumed") or {})
        self.sessions: dict[str, list] = {}  # rebuilt in program order, as the local Ledger does
        self.journals: dict[str, dict] = dict(config.get("journals") or {})
        # What a session call added to its role's session, by result key: every reuse replays
        # it, as the local Ledger does (later calls' keys depend on the session).
        self.session_steps: dict[str, list] = dict(config.get("session_steps") or {})
        self.session_roles = schema.session_roles(config["plan"])
        self.agents = schema.persistent_agents(config["plan"])  # role -> its persistent agent
        # A persistent agent's conversation as the client read it from its database, then this run's calls.
        self.agent_memory: dict[str, list] = copy.deepcopy(config.get("agent_memory") or {})
        self._last_step: dict[str, list] = {}
        self.session_keys: set[str] = set()  # keys of session calls: their lookups want session steps too
        # agents created at run time, latest version by (creator, name)
        self.recipes = {(r.creator, r.name): r for r in map(wire.recipe_from_wire, config.get("recipes") or [])}

    def emit(self, op: str, **fields: Any) -> None:
        self.records.add({"op": op, **fields})

    def resumed_key(self, node_id: str) -> str | None:
        return self.resumed.get(node_id)

    async def has_result(self, key: str) -> bool:
        """Known here (the client's reuse-only pass, or this run), or else asked of the client,
        which reads its database: the lookups of one workflow turn reach it together."""
        if key not in self.results:
            answer = await self.lookups.ask(key, key in self.session_keys)
            if answer is None:
                return False
            self.results[key] = answer["value"]
            if answer.get("session") is not None:
                self.session_steps.setdefault(key, answer["session"])
        return True

    async def explain(self, node_id: str, def_hash: str, inputs: dict, *, cacheable: bool) -> str:
        return "no stored result"

    def node_started(self, node_id: str, role: str | None, key: str, def_hash: str, inputs: dict) -> None:
        self.emit("node_started", node=node_id, role=role, key=key, def_hash=def_hash, inputs=inputs)

    def structure_started(self, node_id: str) -> None:
        self.emit("structure_started", node=node_id)

    async def reused(self, node_id: str, role: str | None, key: str, def_hash: str, inputs: dict) -> Any:
        if role is not None and role in self.session_roles:
            # no event: the client's Ledger.reused replays these steps into its database itself
            self._conversation(role).extend(copy.deepcopy(self.session_steps.get(key, [])))
        self.emit("reused", node=node_id, role=role, key=key, def_hash=def_hash, inputs=inputs)
        return copy.deepcopy(self.results[key])

    def node_succeeded(self, node_id: str, role: str | None, key: str, outcome: NodeOutcome) -> None:
        self.results[key] = outcome.value
        if role in self._last_step:
            self.session_steps[key] = [self._last_step.pop(role)]
        self.emit("node_succeeded", node=node_id, role=role, key=key, value=outcome.value,
                  attempts=outcome.attempts, prompt_tokens=outcome.prompt_tokens,
                  completion_tokens=outcome.completion_tokens, cost_usd=outcome.cost_usd)

    async def node_failed(self, node_id: str, role: str | None, error: str, attempts: int) -> None:
        self.emit("node_failed", node=node_id, role=role, error=error, attempts=attempts)

    def node_cancelled(self, node_id: str, role: str | None) -> None:
        self.emit("node_cancelled", node=node_id, role=role)

    async def node_waiting(self, node_id: str, role: str | None, key: str, question: dict | None) -> None:
        self.emit("node_waiting", node=node_id, role=role, key=key, question=question)

    def node_skipped(self, node_id: str, role: str | None) -> None:
        self.emit("node_skipped", node=node_id, role=role)

    def structure_done(self, node_id: str, status: str, cached: bool = False) -> None:
        self.emit("structure_done", node=node_id, status=status, cached=cached)

    def record_llm_call(self, node_id: str, response: ModelResponse) -> None:
        self.emit("llm_call", node=node_id, model=response.model, prompt_tokens=response.prompt_tokens,
                  completion_tokens=response.completion_tokens, cost_usd=response.cost_usd,
                  latency_ms=response.latency_ms)

    def record_program(self, node_id: str, attempt: int, source: str, status: str, diagnostics: str | None) -> None:
        self.emit("program", node=node_id, attempt=attempt, source=source, status=status, diagnostics=diagnostics)

    async def load_turns(self, node_id: str, key: str) -> list[dict]:
        journal = self.journals.get(node_id)
        return list(journal["turns"]) if journal and journal.get("key") == key else []

    async def append_turn(self, node_id: str, key: str, message: dict) -> None:
        self.emit("turn", node=node_id, key=key, message=message)

    async def tool_started(self, node_id: str, key: str, step: dict) -> None:
        await self.append_turn(node_id, key, step)

    def _conversation(self, role: str) -> list[list[dict]]:
        """A session role's session, or a persistent role's agent's conversation."""
        agent = self.agents.get(role)
        return self.agent_memory.setdefault(agent, []) if agent else self.sessions.setdefault(role, [])

    async def load_session(self, role: str) -> list[list[dict]]:
        return self._conversation(role)

    async def append_session(self, role: str, messages: list[dict]) -> None:
        self._conversation(role).append(messages)
        self._last_step[role] = messages  # the call finishing now, under its role's session lock
        self.emit("session", role=role, messages=messages)

    async def session_hash(self, role: str) -> str:
        return digest("session", canonical_json(await self.load_session(role)))

    async def flush(self) -> None:
        return None

    async def save_recipe(self, recipe: AgentRecipe, node_id: str) -> int:
        """Versioned here as the store versions it (the client seeded the latest versions); the
        client stores it from the event."""
        saved, new = self.versioned(recipe)
        if new:
            self.emit("recipe", node=node_id, recipe=wire.recipe_to_wire(recipe))
        return saved.version

    def versioned(self, recipe: AgentRecipe) -> tuple[AgentRecipe, bool]:
        """`recipe` as the latest version of its agent: the latest itself when equal to it
        (False), else the next version (True). Also how a parent learns what a child created."""
        latest = self.recipes.get((recipe.creator, recipe.name))
        if latest is not None and latest.content_hash() == recipe.content_hash():
            return latest, False
        saved = dataclasses.replace(recipe, version=1 if latest is None else latest.version + 1)
        self.recipes[(recipe.creator, recipe.name)] = saved
        return saved, True

    def recipes_to_wire(self) -> list[dict]:
        """The latest recipes, as a child workflow or a successor after continue-as-new is given them."""
        return [wire.recipe_to_wire(r) for r in self.recipes.values()]

    async def latest_recipes(self, creator: str) -> list[AgentRecipe]:
        return sorted((r for (c, _), r in self.recipes.items() if c == creator), key=lambda r: r.name)


class Lookups:
    """Stored-result lookups the workflow asks the client, and the client's answers (signal `lookups`).

    A key the ledger does not know is recorded in `pending` (workflow state, which the
    `progress` query shows); the client answers every pending key it sees with one bulk read
    of its database and one signal, {"found": {key: value}, "missing": [key], "session":
    {key: steps}}. Queries are answered between workflow tasks, so every lookup made in one
    workflow turn reaches the client in the same request. Lookups are an optimisation, never
    a dependency: a key still unanswered `timeout_s` after it was asked (no client follows the
    run) is a miss, and its node runs. One workflow timer at a time serves every pending key."""

    def __init__(self, timeout_s: float = wire.LOOKUP_TIMEOUT_S, missing: Iterable[str] = ()) -> None:
        self.timeout_s = timeout_s
        self.pending: dict[str, bool] = {}  # key -> whether its session steps are wanted
        self.asked: dict[str, float] = {}  # pending key -> workflow time it was asked at
        self.answers: dict[str, dict | None] = dict.fromkeys(missing)  # a predecessor's misses
        self._expiry: asyncio.Task | None = None

    def missing(self) -> list[str]:
        """The keys known to be misses (answered so, or unanswered in time): a successor
        after continue-as-new does not ask them again."""
        return [key for key, answer in self.answers.items() if answer is None]

    async def ask(self, key: str, session: bool) -> dict | None:
        if key not in self.answers:
            self.asked.setdefault(key, workflow.time())
            self.pending[key] = self.pending.get(key, False) or session
            if self._expiry is None or self._expiry.done():
                self._expiry = asyncio.create_task(self._expire())
            await workflow.wait_condition(lambda: key in self.answers)
        return self.answers[key]

    async def _expire(self) -> None:
        """Until nothing is pending: sleeps until the oldest pending key is due (or everything
        is answered), then makes every key due by then a miss."""
        while self.pending:
            due = min(self.asked[key] for key in self.pending) + self.timeout_s
            wait = due - workflow.time()
            if wait > 0:
                try:
                    await workflow.wait_condition(lambda: not self.pending, timeout=wait)
                    continue
                except asyncio.TimeoutError:
                    pass
            for key in [k for k in self.pending if self.asked[k] + self.timeout_s <= due]:
                self._settle(key, None)

    def answer(self, answer: dict) -> None:
        steps = answer.get("session") or {}
        for key, value in (answer.get("found") or {}).items():
            if key in self.pending:
                self._settle(key, {"value": value, "session": steps.get(key)})
        for key in answer.get("missing") or []:
            if key in self.pending:
                self._settle(key, None)

    def _settle(self, key: str, answer: dict | None) -> None:
        self.answers[key] = answer
        del self.pending[key], self.asked[key]


class EventReporter:
    def __init__(self, records: Records) -> None:
        self.records = records

    def node(self, node_id: str, status: str, *, cached: bool = False, detail: str = "") -> None:
        self.records.add({"op": "report", "node": node_id, "status": status, "cached": cached, "detail": detail})


class WorkflowEngine(Engine):
    """The engine in a workflow: its calls pass the `Handover`, and a large `for` runs in chunk
    workflows (`chunks`: the values of chunks done, by workflow id, carried on continue-as-new;
    `children`: the ids of chunk workflows running, which the client asks for lookups too)."""

    ledger: WorkflowLedger

    def __init__(self, *args, config: dict, chunks: dict[str, list], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.config = config
        self._code_versions = dict(config["code_versions"])  # computed by the client: they read files
        self.handover = Handover(config["scale"]["history"], lambda: self.failure is not None)
        self.global_slots = GatedSlots(max(1, self.options.concurrency), self.handover)
        self.chunks = chunks
        self.children: set[str] = set()
        self.delegations: set[str] = set()  # ids of delegated calls whose loops run in child workflows

    async def breathe(self) -> None:
        """Nothing: workflow code reads no clock, and Temporal delivers a cancellation to the
        workflow between its activations, whatever its calls do."""

    def code_version(self, tool_name: str) -> str:
        return self._code_versions[tool_name]

    async def decide(self, iid, kind, target, key, def_hash, inputs):
        if kind == "task" and self.task_definition(target)["memory"] == "session":
            self.ledger.session_keys.add(key)  # a reuse from another run replays its session steps
        return await super().decide(iid, kind, target, key, def_hash, inputs)

    async def for_items(self, iid: str, node: schema.ForNode, scope: Scope, items: list, start: int = 0) -> list:
        size = self.config["scale"]["chunk"]
        if len(items) <= size or not chunkable(self.plan, node):
            return await super().for_items(iid, node, scope, items, start)
        outer = {name: await self.lookup(name, scope) for name in sorted(outer_names(self.plan, node["body"]))
                 if _bound(scope, name)}
        values: list = []
        for first in range(0, len(items), size):  # one chunk at a time: the run's limits hold per chunk
            if self.failure is not None:
                raise RunAborted(iid)
            values += await self.chunk(iid, node, outer, items[first:first + size], start + first)
        return values

    async def chunk(self, iid: str, node: schema.ForNode, outer: dict, items: list, start: int) -> list:
        """Items `start`... of a loop, run in a chunk workflow."""
        child_id = f"{workflow.info().workflow_id}/{iid}[{start}:{start + len(items)}]"
        if child_id in self.chunks:  # done before this run continued as new
            return self.chunks[child_id]
        await self.handover.enter()
        try:
            result = await self.child(wire.CHUNK_WORKFLOW, child_id, f"{iid}[", {"chunk": {
                "iid": iid, "node": template_id(iid), "start": start, "items": items, "outer": outer}})
        finally:
            self.handover.leave()
        if result["ran"]:
            self.ran_inside.update(enclosing(f"{iid}[{start}]"))
        if result["status"] == "failed":
            self.failed_nodes += result["failed_nodes"][1:]
            f = result["failure"]
            raise self.fail(NodeFailure(f["node_id"], f["role"], f["message"], f["attempts"]))
        self.chunks[child_id] = result["value"]
        return result["value"]

    async def call(self, iid: str, kind: str, target: str, args: dict, role: str | None, nested: bool = False,
                   contained: bool = False) -> Any:
        if nested and self.runs_apart(target):
            self.delegations.add(iid)  # its task loop runs in a child workflow (`delegated`)
        return await super().call(iid, kind, target, args, role, nested, contained)

    def runs_apart(self, target: str) -> bool:
        """Whether a delegated call of `target`, or a call of the created agent `target`, runs
        its task loop in a child workflow."""
        if target in self.plan["tasks"]:
            return runs_apart(self.plan, {target})
        return agent_runs_apart(self.plan, self.task_definition(target))

    async def delegated(self, job: NodeJob) -> NodeOutcome:
        """A delegated task call's loop, or a created agent's, run in a delegate workflow (given
        the agent's task, which the plan does not declare). It passes no `Handover`: the call
        that delegated is running, so this workflow cannot hand over meanwhile."""
        child_id = f"{workflow.info().workflow_id}/{job.node_id}"
        agent = {} if job.target in self.plan["tasks"] else {job.target: self.task_entries[job.target]}
        result = await self.child(wire.DELEGATE_WORKFLOW, child_id, job.node_id,
                                  {"job": dataclasses.asdict(job), "agent_tasks": agent})
        self.failed_nodes += result["failed_nodes"]  # its own delegations'
        if result["status"] == "failed":
            f = result["failure"]
            raise NodeFailure(f["node_id"], f["role"], f["message"], f["attempts"])
        return NodeOutcome(**result["value"])

    async def child(self, workflow_type: str, child_id: str, inside: str, work: dict) -> dict:
        """Runs `work` in a child workflow, given the stored results and the resumed state of
        nodes whose ids start with `inside`, and the latest agent recipes. Its records join this
        run's, and the recipes it created this run's latest (versioned here in the order the client
        stores them); cancelling this run cancels it and waits for what it recorded."""
        config = {**{k: v for k, v in self.config.items() if k not in ("carried", "chunk", "job", "agent_tasks")},
                  "known": self.ledger.results, "recipes": self.ledger.recipes_to_wire(),
                  "resumed": {n: k for n, k in self.ledger.resumed.items() if n.startswith(inside)},
                  "journals": {n: j for n, j in self.ledger.journals.items() if n.startswith(inside)}, **work}
        chunk = work.get("chunk")
        self.ledger.emit("child_workflow", workflow=child_id, inside=inside,  # for `show RUN NODE`
                         items=[chunk["start"], chunk["start"] + len(chunk["items"])] if chunk else None)
        self.children.add(child_id)
        try:
            result = await kept_result(
                functools.partial(workflow.start_child_workflow, workflow_type, config, id=child_id,
                                  cancellation_type=workflow.ChildWorkflowCancellationType.WAIT_CANCELLATION_COMPLETED),
                says_cancelled=lambda result: result["status"] == "cancelled")
        finally:
            self.children.discard(child_id)
        for event in result["events"]:
            self.ledger.records.add(event)
            if event["op"] == "node_succeeded":  # later calls with the same key reuse it, as inline
                self.ledger.results[event["key"]] = event["value"]
            elif event["op"] == "recipe":
                self.ledger.versioned(wire.recipe_from_wire(event["recipe"]))
        if result["status"] == "cancelled":
            raise asyncio.CancelledError()
        return result

    async def run_chunk(self, chunk: dict) -> list:
        """A chunk workflow's work: the loop body over its items."""
        iid = chunk["iid"]
        node: schema.ForNode = self.nodes[chunk["node"]]  # type: ignore[assignment]
        outer = Scope(iid, chunk["node"], dict(chunk["outer"]))
        return await self.settled(self.for_items(iid, node, outer, chunk["items"], chunk["start"]))

    async def run_job(self, job: dict) -> dict:
        """A delegate workflow's work: the delegated call's task loop (its parent recorded its
        start and records its end)."""
        outcome = await self.settled(self.executor.execute(self, NodeJob(**job)))
        return dataclasses.asdict(outcome)


def _bound(scope: Scope | None, name: str) -> bool:
    while scope is not None:
        if name in scope.consts or name in scope.futures:
            return True
        scope = scope.parent
    return False


def _seconds(value: Any, default: float) -> float:
    return float(value) if value else default


class TemporalExecutor(LocalExecutor):
    """Task loops run in the workflow (inherited `execute`); model and tool calls are activities.

    Retries: a Temporal retry policy with the spec's `retries` (the activity marks an error
    non-retryable once they are spent) and `extra_attempts` more for attempts lost to a worker
    that died (heartbeat timeout). Timeouts: the spec's `timeout` is enforced inside the
    activity (as locally, a transient error); start-to-close is that plus a grace period."""

    def __init__(self, settings: dict, answers: dict[str, dict]) -> None:
        self.s = settings
        self.answers = answers  # node id -> a person's answer (signal `answer`), taken once

    async def execute(self, engine: Engine, job: NodeJob) -> NodeOutcome:
        if isinstance(engine, WorkflowEngine) and job.node_id in engine.delegations:
            return await engine.delegated(job)
        return await super().execute(engine, job)

    async def human(self, engine: Engine, job: NodeJob) -> NodeOutcome:
        """A person's answer: the workflow waits for it durably (no client need stay connected)
        until `agentflow answer` signals it, checked there against the node's question."""
        question = job_question(engine, job)
        await engine.note_waiting(job.node_id, engine.task_definition(job.target)["role"], job.key, question)
        await workflow.wait_condition(lambda: self.answers.get(job.node_id, {}).get("key") == job.key)
        given = self.answers.pop(job.node_id)
        await engine.ledger.append_turn(job.node_id, job.key, answer_step(given["value"], given["by"]))
        return NodeOutcome(given["value"])

    def _options(self, retries: int, timeout: Any, *, once: bool = False) -> dict:
        """`once`: a single attempt (a non-idempotent tool: never run again by Temporal)."""
        s = self.s
        return dict(
            task_queue=s["task_queue"],
            start_to_close_timeout=timedelta(seconds=_seconds(timeout, s["default_timeout_s"]) + s["grace_s"]),
            heartbeat_timeout=timedelta(seconds=s["heartbeat_s"]),
            # a cancelled run ends once its calls have stopped (a tool's process killed)
            cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            retry_policy=RetryPolicy(initial_interval=timedelta(seconds=s["backoff_s"]), backoff_coefficient=2.0,
                                     maximum_interval=timedelta(seconds=s["max_backoff_s"]),
                                     maximum_attempts=1 if once else retries + 1 + s["extra_attempts"],
                                     non_retryable_error_types=["ModelError", "ToolError"]))

    async def complete(self, call: TaskCall, request: ModelRequest) -> ModelResponse:
        """One model turn of `call` (a TaskCall), retries included; bumps `call.attempts`."""
        from dataclasses import replace
        retries = call.entry["retries"]
        payload = {"request": wire.request_to_wire(replace(request, attempt=call.attempts)), "retries": retries}
        try:
            result = await activity_result(wire.MODEL_ACTIVITY, payload,
                                           self._options(retries, call.entry["timeout"]))
        except ActivityError as err:
            _raise_if_cancelled(err)
            attempts, message, permanent = _failure(err, retries + 1)
            call.attempts += max(0, attempts - 1)
            raise (ModelError if permanent else TransientModelError)(message) from None
        call.attempts += max(0, int(result["attempt"]) - 1)
        return wire.response_from_wire(result["response"])

    async def compile_program(self, engine: Engine, source: str, target: str, call_id: str) -> schema.CompiledProgram | str:
        """A model's program, compiled by an activity (the parser stays out of the workflow)."""
        payload = {"source": source, "plan": engine.plan, "target": target, "call_id": call_id}
        result = await activity_result(wire.PROGRAM_ACTIVITY, payload, self._options(0, None))
        return result["program"]

    async def call_tool(self, engine: Engine, name: str, args: dict) -> Any:
        """One tool call, retries included; raises ToolError as a local call would.

        A non-idempotent tool's activity has one attempt (its transient retries happen inside
        it): one whose worker was lost is ToolInterrupted, as a call a crash interrupted locally."""
        entry = engine.plan["tools"][name]
        retries = entry["retries"]
        once = not entry.get("idempotent", True)
        payload = {"spec": wire.spec_to_wire(engine.tool_spec(name)), "args": args, "retries": retries,
                   "spec_dir": str(engine.options.spec_dir), "workspace": str(engine.options.workspace),
                   "once": once}
        try:
            result = await activity_result(wire.TOOL_ACTIVITY, payload,
                                           self._options(retries, entry["timeout"], once=once))
        except ActivityError as err:
            _raise_if_cancelled(err)
            if once and isinstance(err.cause, TemporalTimeout):
                raise ToolInterrupted(name) from None
            raise ToolError(_failure(err, retries + 1)[1], tool=name) from None
        return result["value"]


async def activity_result(name: str, payload: dict, options: dict) -> dict:
    """An activity's result, kept through a cancellation as `kept_result` keeps it."""
    async def start() -> asyncio.Task:
        return workflow.start_activity(name, payload, **options)
    return await kept_result(start)


async def kept_result(start: Callable[[], Awaitable[asyncio.Task]],
                      says_cancelled: Callable[[Any], bool] = lambda result: False) -> Any:
    """The result of the activity or child workflow `start` starts, as awaiting its handle
    gives it, except when the call is cancelled (Ctrl-C, SIGTERM, a failing sibling) while
    the activity or child runs.

    It is then asked to stop and waited for. One that finished all the same (a python
    function cannot be stopped; its result can arrive with the cancellation) keeps its
    result: it is returned, so the task loop journals it and `--resume` does not pay for it
    again, and the cancellation is asked again, to stop the caller at its next wait (unless
    the result `says_cancelled`: the caller raises it). Left to the SDK, such a result is
    dropped (it came with the cancellation) or swallows the cancellation, and the cancelled
    run goes on to its end."""
    task = asyncio.current_task()
    assert task is not None, "workflow code runs in a task"
    if task.cancelling():  # this call kept a result on its way out: it starts nothing more
        raise asyncio.CancelledError()
    handle = await start()
    try:
        return await asyncio.shield(handle)
    except asyncio.CancelledError:
        pass
    while not handle.done():
        with contextlib.suppress(asyncio.CancelledError):  # once asked, the call stops once
            # Conditions are checked once the workflow's loop is idle: a result that came
            # with the cancellation has then reached `handle`, which must not be cancelled
            # after it did (the SDK would drop the result).
            await workflow.wait_condition(lambda: True)
            handle.cancel()
            await asyncio.wait([handle])
    if handle.cancelled() or handle.exception() is not None:
        raise asyncio.CancelledError()
    if not says_cancelled(handle.result()):
        task.cancel()
    return handle.result()


def _raise_if_cancelled(err: ActivityError) -> None:
    """A call cancelled with its run is a cancellation for the engine, not a failed call."""
    if isinstance(err.cause, TemporalCancelled):
        raise asyncio.CancelledError() from None


def _failure(err: ActivityError, default_attempts: int) -> tuple[int, str, bool]:
    """(attempts made, message, permanent?) of a failed activity."""
    cause = err.cause
    if isinstance(cause, ApplicationError):
        details = cause.details[0] if cause.details and isinstance(cause.details[0], dict) else {}
        return int(details.get("attempt", default_attempts)), cause.message, cause.type in ("ModelError", "ToolError")
    if isinstance(cause, TemporalTimeout):
        kind = cause.type.name.lower().replace("_", "-") if cause.type is not None else "activity"
        return default_attempts, f"{kind} timeout (the worker ran out of time or was lost)", False
    return default_attempts, str(cause or err), False


class _Workflow:
    """What the run's workflow and its child workflows (chunks, delegations) share: the engine,
    its records, and the hand-over to a new run once the history is long (runtime/temporal/scale.py)."""

    def __init__(self) -> None:
        self.records = Records({})
        self.lookups = Lookups()
        self.answers: dict[str, dict] = {}
        self.read = 0  # how far the client has recorded the records (signal `read`)
        self.handing_over = False
        self.engine: WorkflowEngine | None = None

    @workflow.query(name=wire.PROGRESS_QUERY)
    def progress(self, since: int) -> dict:
        return {"events": self.records.page(since), "total": self.records.total,
                "lookups": dict(self.lookups.pending), "handover": self.handing_over,
                "children": sorted(self.engine.children) if self.engine else []}

    @workflow.signal(name=wire.LOOKUP_SIGNAL)
    def answer_lookups(self, answer: dict) -> None:
        self.lookups.answer(answer)

    async def execute(self, config: dict) -> dict:
        """The engine's outcome, or a hand-over to a new run of this workflow (continue-as-new)
        once the history is long. Cancelling the workflow cancels the engine, which stops its
        calls and chunks and records them cancelled: the outcome says "cancelled"."""
        carried = config.get("carried") or {}
        self.records = Records(carried)
        # The lookup timeout holds in every workflow of the run (chunks, delegations, a run after
        # continue-as-new): their config carries the run's options.
        self.lookups = Lookups(float(config["options"].get("lookup_timeout_s", wire.LOOKUP_TIMEOUT_S)),
                               carried.get("missing", []))
        self.answers.update(carried.get("answers", {}))
        engine = self.engine = self._engine(config, carried)
        work = asyncio.ensure_future(self._outcome(engine, config))
        try:
            await workflow.wait_condition(lambda: work.done() or (engine.handover.ready() and not self.lookups.pending))
            if not work.done():
                await self._hand_over(engine, config)
        except asyncio.CancelledError:
            work.cancel()
            await asyncio.wait([work])
            # A call that kept its result asks to be cancelled again (`kept_result`): when the
            # work ends before another wait, asyncio ends it cancelled and drops its outcome.
            return self._ended(engine, "cancelled") if work.cancelled() else work.result()
        return work.result()

    def _engine(self, config: dict, carried: dict) -> WorkflowEngine:
        o = config["options"]
        options = RunOptions(run_id=o["run_id"], spec_dir=Path(o["spec_dir"]), workspace=Path(o["workspace"]),
                             concurrency=o["concurrency"], model=o["model"], force=tuple(o["force"]),
                             no_cache=o["no_cache"])
        ledger = WorkflowLedger(self.records, config, self.lookups)
        ledger.session_steps.update(carried.get("session_steps", {}))
        engine = WorkflowEngine(config["plan"], ledger, options, TemporalExecutor(config["activity"], self.answers),
                                EventReporter(self.records), config=config, chunks=dict(carried.get("chunks", {})))
        engine.ran_inside.update(carried.get("ran_inside", []))
        for target, entry in config.get("agent_tasks", {}).items():  # a created agent's call's child
            engine.add_task(target, entry)
        return engine

    async def _outcome(self, engine: WorkflowEngine, config: dict) -> dict:
        status, value, failure = "succeeded", None, None  # type: tuple[str, Any, dict | None]
        try:
            if "chunk" in config:
                value = await engine.run_chunk(config["chunk"])
            elif "job" in config:
                value = await engine.run_job(config["job"])
            else:
                value = await engine.run(config["inputs"])
        except (NodeFailure, RunAborted) as err:
            status = "failed"
            f = engine.failure or (err if isinstance(err, NodeFailure) else None)
            failure = None if f is None else {"node_id": f.node_id, "role": f.role, "message": f.message,
                                              "attempts": f.attempts}
        except asyncio.CancelledError:
            status = "cancelled"  # its records stay readable by query
        except Exception as err:  # a bug, not a node: fail the run, never loop on the workflow task
            status = "failed"
            failure = {"node_id": "", "role": None, "message": f"internal error: {type(err).__name__}: {err}",
                       "attempts": 1}
        return self._ended(engine, status, value, failure)

    def _ended(self, engine: WorkflowEngine, status: str, value: Any = None, failure: dict | None = None) -> dict:
        """The outcome: a child's carries its records to its parent."""
        return {"status": status, "value": value, "failure": failure, "failed_nodes": engine.failed_nodes,
                "ran": bool(engine.ran_inside), "events": self.records.events, "base": self.records.base}

    async def _wait_for_reader(self, config: dict) -> int:
        """How far the records have been read when this run hands over (what it need not carry)."""
        return self.records.base

    async def _hand_over(self, engine: WorkflowEngine, config: dict) -> None:
        """Continues as new, carrying what the new run needs to go on where this one stops."""
        self.handing_over = True
        read = await self._wait_for_reader(config)
        ledger = engine.ledger
        carried = {**self.records.unread(read), "session_steps": ledger.session_steps,
                   "missing": self.lookups.missing(), "answers": self.answers,
                   "ran_inside": sorted(engine.ran_inside), "chunks": engine.chunks}
        workflow.continue_as_new({**config, "known": ledger.results, "recipes": ledger.recipes_to_wire(),
                                  "carried": carried})


@workflow.defn(name=wire.WORKFLOW, sandboxed=True)
class RunWorkflow(_Workflow):
    """A run: the client follows it by its workflow id, across continue-as-new."""

    @workflow.signal(name=wire.ANSWER_SIGNAL)
    def answer(self, given: dict) -> None:
        """{"node", "key", "value", "by"}: taken by the node when its key matches (a later answer
        replaces one not taken yet)."""
        self.answers[given["node"]] = given

    @workflow.signal(name=wire.READ_SIGNAL)
    def records_read(self, cursor: int) -> None:
        self.read = max(self.read, cursor)

    async def _wait_for_reader(self, config: dict) -> int:
        """A client following the run says how far it has read (signal `read`) once it has read
        everything; without one, within `handover_wait_s`, the new run carries all unread."""
        with contextlib.suppress(asyncio.TimeoutError):
            await workflow.wait_condition(lambda: self.read >= self.records.total,
                                          timeout=config["scale"]["handover_wait_s"])
        return max(self.read, self.records.base)

    @workflow.run
    async def run(self, config: dict) -> dict:
        outcome = await self.execute(config)
        if outcome["status"] == "cancelled":
            raise asyncio.CancelledError()  # the workflow ends cancelled; its records stay readable by query
        return {k: outcome[k] for k in ("status", "value", "failure", "events", "base")}


@workflow.defn(name=wire.CHUNK_WORKFLOW, sandboxed=True)
class ChunkWorkflow(_Workflow):
    """Some items of a large `for`, a child of the run's workflow. Its result carries its records
    to the parent, also when it was cancelled (it then ends completed, its status "cancelled"),
    so the parent's client reads every record."""

    @workflow.run
    async def run(self, config: dict) -> dict:
        return await self.execute(config)


@workflow.defn(name=wire.DELEGATE_WORKFLOW, sandboxed=True)
class DelegateWorkflow(_Workflow):
    """The task loop of a delegated call (`role.task` called from a task) or of a created
    agent's call (`call_agent`), a child of the workflow whose call delegated: its history is
    its own. Its result is as a chunk's."""

    @workflow.run
    async def run(self, config: dict) -> dict:
        return await self.execute(config)
