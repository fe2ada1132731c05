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
workflow: they share the run's concurrency limits, session locks and keys.
"""
from __future__ import annotations

import asyncio
import copy
import dataclasses
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError as TemporalCancelled
from temporalio.exceptions import TimeoutError as TemporalTimeout
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from agentflow.compiler import schema
    from agentflow.compiler.hashing import canonical_json, digest
    from agentflow.runtime.engine import Engine, NodeFailure, NodeJob, NodeOutcome, RunAborted, RunOptions
    from agentflow.runtime.human import answer_step, job_question
    from agentflow.runtime.local import LocalExecutor
    from agentflow.runtime.models import ModelError, ModelRequest, ModelResponse, TransientModelError
    from agentflow.runtime.store import AgentRecipe
    from agentflow.runtime.task import TaskCall
    from agentflow.runtime.tools import ToolError

    from . import wire


class WorkflowLedger:
    """The ledger the engine sees inside the workflow: no DuckDB, events instead of writes."""

    def __init__(self, events: list, config: dict, lookups: "Lookups") -> None:
        self.events = events
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
        self.events.append({"op": op, **fields})

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
        latest = self.recipes.get((recipe.creator, recipe.name))
        if latest is not None and latest.content_hash() == recipe.content_hash():
            return latest.version
        saved = dataclasses.replace(recipe, version=1 if latest is None else latest.version + 1)
        self.recipes[(recipe.creator, recipe.name)] = saved
        self.emit("recipe", node=node_id, recipe=wire.recipe_to_wire(recipe))
        return saved.version

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

    def __init__(self, timeout_s: float = wire.LOOKUP_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        self.pending: dict[str, bool] = {}  # key -> whether its session steps are wanted
        self.asked: dict[str, float] = {}  # pending key -> workflow time it was asked at
        self.answers: dict[str, dict | None] = {}
        self._expiry: asyncio.Task | None = None

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
    def __init__(self, events: list) -> None:
        self.events = events

    def node(self, node_id: str, status: str, *, cached: bool = False, detail: str = "") -> None:
        self.events.append({"op": "report", "node": node_id, "status": status, "cached": cached, "detail": detail})


class WorkflowEngine(Engine):
    ledger: WorkflowLedger

    def __init__(self, *args, code_versions: dict[str, str], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._code_versions = dict(code_versions)  # computed by the client: they read files

    def code_version(self, tool_name: str) -> str:
        return self._code_versions[tool_name]

    async def decide(self, iid, kind, target, key, def_hash, inputs):
        if kind == "task" and self.task_definition(target)["memory"] == "session":
            self.ledger.session_keys.add(key)  # a reuse from another run replays its session steps
        return await super().decide(iid, kind, target, key, def_hash, inputs)


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

    async def human(self, engine: Engine, job: NodeJob) -> NodeOutcome:
        """A person's answer: the workflow waits for it durably (no client need stay connected)
        until `agentflow answer` signals it, checked there against the node's question."""
        question = job_question(engine, job)
        await engine.note_waiting(job.node_id, engine.task_definition(job.target)["role"], job.key, question)
        await workflow.wait_condition(lambda: self.answers.get(job.node_id, {}).get("key") == job.key)
        given = self.answers.pop(job.node_id)
        await engine.ledger.append_turn(job.node_id, job.key, answer_step(given["value"], given["by"]))
        return NodeOutcome(given["value"])

    def _options(self, retries: int, timeout: Any) -> dict:
        s = self.s
        return dict(
            task_queue=s["task_queue"],
            start_to_close_timeout=timedelta(seconds=_seconds(timeout, s["default_timeout_s"]) + s["grace_s"]),
            heartbeat_timeout=timedelta(seconds=s["heartbeat_s"]),
            # a cancelled run ends once its calls have stopped (a tool's process killed)
            cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            retry_policy=RetryPolicy(initial_interval=timedelta(seconds=s["backoff_s"]), backoff_coefficient=2.0,
                                     maximum_interval=timedelta(seconds=s["max_backoff_s"]),
                                     maximum_attempts=retries + 1 + s["extra_attempts"],
                                     non_retryable_error_types=["ModelError", "ToolError"]))

    async def complete(self, call: TaskCall, request: ModelRequest) -> ModelResponse:
        """One model turn of `call` (a TaskCall), retries included; bumps `call.attempts`."""
        from dataclasses import replace
        retries = call.entry["retries"]
        payload = {"request": wire.request_to_wire(replace(request, attempt=call.attempts)), "retries": retries}
        try:
            result = await workflow.execute_activity(wire.MODEL_ACTIVITY, payload,
                                                     **self._options(retries, call.entry["timeout"]))
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
        result = await workflow.execute_activity(wire.PROGRAM_ACTIVITY, payload, **self._options(0, None))
        return result["program"]

    async def call_tool(self, engine: Engine, name: str, args: dict) -> Any:
        """One tool call, retries included; raises ToolError as a local call would."""
        entry = engine.plan["tools"][name]
        retries = entry["retries"]
        payload = {"spec": wire.spec_to_wire(engine.tool_spec(name)), "args": args, "retries": retries,
                   "spec_dir": str(engine.options.spec_dir), "workspace": str(engine.options.workspace)}
        try:
            result = await workflow.execute_activity(wire.TOOL_ACTIVITY, payload,
                                                     **self._options(retries, entry["timeout"]))
        except ActivityError as err:
            _raise_if_cancelled(err)
            raise ToolError(_failure(err, retries + 1)[1], tool=name) from None
        return result["value"]


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


@workflow.defn(name=wire.WORKFLOW, sandboxed=True)
class RunWorkflow:
    def __init__(self) -> None:
        self.events: list[dict] = []
        self.lookups = Lookups()
        self.answers: dict[str, dict] = {}

    @workflow.query(name=wire.PROGRESS_QUERY)
    def progress(self, since: int) -> dict:
        return {"events": self.events[since:since + wire.PAGE], "total": len(self.events),
                "lookups": dict(self.lookups.pending)}

    @workflow.signal(name=wire.LOOKUP_SIGNAL)
    def answer_lookups(self, answer: dict) -> None:
        self.lookups.answer(answer)

    @workflow.signal(name=wire.ANSWER_SIGNAL)
    def answer(self, given: dict) -> None:
        """{"node", "key", "value", "by"}: taken by the node when its key matches (a later answer
        replaces one not taken yet)."""
        self.answers[given["node"]] = given

    @workflow.run
    async def run(self, config: dict) -> dict:
        o = config["options"]
        options = RunOptions(run_id=o["run_id"], spec_dir=Path(o["spec_dir"]), workspace=Path(o["workspace"]),
                             concurrency=o["concurrency"], model=o["model"], force=tuple(o["force"]),
                             no_cache=o["no_cache"])
        self.lookups.timeout_s = float(o.get("lookup_timeout_s", wire.LOOKUP_TIMEOUT_S))
        ledger = WorkflowLedger(self.events, config, self.lookups)
        engine = WorkflowEngine(config["plan"], ledger, options, TemporalExecutor(config["activity"], self.answers),
                                EventReporter(self.events), code_versions=config["code_versions"])
        status, value, failure = "succeeded", None, None
        try:
            value = await engine.run(config["inputs"])
        except (NodeFailure, RunAborted) as err:
            status = "failed"
            f = engine.failure or (err if isinstance(err, NodeFailure) else None)
            failure = None if f is None else {"node_id": f.node_id, "role": f.role, "message": f.message,
                                              "attempts": f.attempts}
        except asyncio.CancelledError:
            raise  # the workflow ends cancelled; its events stay readable by query
        except Exception as err:  # a bug, not a node: fail the run, never loop on the workflow task
            status = "failed"
            failure = {"node_id": "", "role": None, "message": f"internal error: {type(err).__name__}: {err}",
                       "attempts": 1}
        return {"status": status, "value": value, "failure": failure, "events": self.events}
