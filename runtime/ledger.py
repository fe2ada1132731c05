"""The engine's asynchronous view of the store: group commit and batched lookups.

All store calls run on one worker thread, in order, so the event loop never blocks on
DuckDB. A run starts by preloading the results its flow's earlier runs stored (bounded by
`PRELOAD_MAX_*`), so most lookups are answered in memory; the others made in the same loop
turn become one query.

Durability: under `strict`, a node's result is committed by the `flush()` the engine awaits
after `node_succeeded`, so nothing that depends on it starts before it is durable. Under
`group` (the default), `flush()` returns at once and the store commits whatever is buffered
at least every `GROUP_COMMIT_S` and at the end of the run: a kill loses at most that window,
whose nodes run again on resume (their keys are content hashes, so a lost result that comes
out different changes its dependents' keys too).
"""
from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Awaitable, Callable, Iterator

from agentflow.compiler import schema
from agentflow.compiler.hashing import canonical_json, digest

from . import faults
from .engine import NodeFailure, NodeOutcome
from .inputs import InputError
from .store import NO_VALUE, AgentRecipe, NodeProgress, NodeState, Preloaded, Store, ValueTooLarge, result_too_large


# The journal step in which a session call records what it adds to its role's session.
SESSION_STEP = "session"
# The journal step written (and committed) before a non-idempotent tool runs: one with no
# result after it was interrupted, and is not run again (see task.interrupted_calls).
TOOL_STARTED_STEP = "tool_started"
# The journal's first step: the messages a call started from (system, session, prompt), for
# `show RUN NODE`; a resumed call renders them afresh, it does not replay this step.
PROMPT_STEP = "prompt"


def estimated_tokens(messages: list[dict]) -> int:
    """About how many tokens `messages` take (4 characters a token): what compaction budgets
    and `agentflow agents` counts."""
    return sum(len(json.dumps(m, ensure_ascii=False)) for m in messages) // 4


def structure_key(run_id: str, node_id: str) -> str:
    """The key a finished structure instance is stored under (with a null value: a
    structure's value is its calls' values, stored with them)."""
    return f"structure:{run_id}:{node_id}"

DURABILITIES = ("group", "strict")
GROUP_COMMIT_S = 0.1  # under group durability, buffered facts commit at most this late
# A run preloads at most this many stored results, or about this much value text, and the
# set of stored keys if there are at most this many; beyond, lookups ask the store.
PRELOAD_MAX_ROWS = 200_000
PRELOAD_MAX_BYTES = 64 << 20
PRELOAD_MAX_KEYS = 200_000


def plan_meta_key(plan_hash: str) -> str:
    """The meta entry holding a run's plan, by its hash: runs of one plan share it."""
    return f"plan:{plan_hash}"


def child_workflow_key(run_id: str, workflow_id: str) -> str:
    """The meta entry of a child workflow of a Temporal run: which nodes ran in it (`show`)."""
    return f"temporal_child/{run_id}/{workflow_id}"


def child_workflow_of(node_id: str, children: dict[str, dict]) -> str | None:
    """The innermost child workflow (by id) whose work included `node_id`: a delegated call's
    ({"inside": its node}) or a chunk's ({"inside": "<loop>[", "items": [start, end]})."""
    def covers(child: dict) -> bool:
        inside, items = child["inside"], child.get("items")
        if items is None:
            return node_id == inside or node_id.startswith(inside + "/")
        index = node_id[len(inside):].split("]", 1)[0] if node_id.startswith(inside) else ""
        return index.isdigit() and items[0] <= int(index) < items[1]
    return max((wf for wf, child in children.items() if covers(child)), key=len, default=None)


def temporal_cursor_key(run_id: str) -> str:
    """The meta entry of a Temporal run: how far its client has recorded the workflow's events
    (its presence says the run is a Temporal run)."""
    return f"temporal_cursor/{run_id}"


def rerun_reason(last: NodeState | None, def_hash: str | None, inputs: dict) -> str:
    """Why a cacheable node has no result to reuse, from the flow's last record of it."""
    if last is None:
        return "never run"
    if last.status == "failed":
        return "failed last time"
    if last.def_hash and last.def_hash != def_hash:
        return "definition changed"
    before = last.input_hashes or {}
    changed = sorted(n for n in inputs if before.get(n) != inputs[n])
    if changed:
        return "input " + ", ".join(f"`{n}`" for n in changed) + " changed"
    return "no stored result"


class BatchedReads:
    """One store read for every key asked for in one turn of the event loop, the items of a
    fan-out asking together: a read per key cost a round trip to the store's thread each, and
    for a reader (`--dry-run`) a re-attach of the database and a replay of any log a killed run
    left (hours at 50k nodes). `read(keys)` gives what it found, by key."""

    def __init__(self, read: Callable[[list[str]], Awaitable[dict[str, Any]]]) -> None:
        self._read = read
        self._waiting: dict[str, list[asyncio.Future]] = {}

    async def get(self, key: str) -> Any:
        """What the read found for `key`, or None."""
        loop = asyncio.get_running_loop()
        if not self._waiting:
            loop.call_soon(self._start)
        future = loop.create_future()
        self._waiting.setdefault(key, []).append(future)
        return await future

    def _start(self) -> None:
        batch, self._waiting = self._waiting, {}

        async def run() -> None:
            try:
                found = await self._read(list(batch))
            except BaseException as err:  # every waiter sees the failure
                for futures in batch.values():
                    for f in futures:
                        if not f.done():
                            f.set_exception(err)
                return
            for key, futures in batch.items():
                for f in futures:
                    if not f.done():
                        f.set_result(found.get(key))
        asyncio.ensure_future(run())


class Ledger:
    def __init__(self, store: Store, run_id: str, *, dry_run: bool = False, durability: str = "strict") -> None:
        self.store = store
        self.run_id = run_id
        self.dry_run = dry_run
        self.durability = durability
        self.preloaded = Preloaded({}, None)  # nothing in memory: every lookup asks the store
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agentflow-store")
        self.resumed: dict[str, NodeProgress] = {}
        self.previous: dict[str, dict] = {}
        self._results = BatchedReads(lambda keys: self._io(self.store.lookup_results, keys))
        self._last_records = BatchedReads(lambda ids: self._io(self.store.last_node_records, self.flow, ids))
        # What `has_result` found, kept for `reused`: a reuse costs no second query.
        self._found: dict[str, tuple] = {}
        self._flush_waiters: list[asyncio.Future] = []
        self._flushing: asyncio.Task | None = None
        self._sessions: dict[str, list[list[dict]]] = {}
        self.session_roles: set[str] = set()
        self.agents: dict[str, str] = {}  # role -> its persistent agent
        # A persistent agent's conversation: what earlier runs stored, then this run's calls.
        self.agent_memory: dict[str, list[list[dict]]] = {}
        self._agent_stored: set[str] = set()  # the resumed run's calls whose agent turns are stored
        self._agent_unsaved: dict[str, list[dict]] = {}  # agent -> what its current call added

    async def _io(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    # ------------------------------------------------------------ run lifecycle

    async def open(self, plan: schema.Plan, plan_hash: str, inputs: dict, resuming: bool,
                   fingerprint: str | None = None) -> None:
        self.flow = plan["flow"]
        self.session_roles = schema.session_roles(plan)
        if resuming:
            self.resumed = await self._io(self.store.run_progress, self.run_id)
        self.agents = schema.persistent_agents(plan)
        for agent in sorted(set(self.agents.values())):
            calls, stored = await self._io(self.store.agent_memory, agent, self.run_id if resuming else None)
            self.agent_memory[agent] = calls
            self._agent_stored |= stored
        if self.dry_run:
            await self._preload()
            return
        if self.durability == "group":
            self.store.commit_within(GROUP_COMMIT_S)
        self._forget_failed_journals(self.resumed)
        try:
            self.store.begin_run(self.run_id, flow=plan["flow"], entry=plan["entry"], plan_hash=plan_hash,
                                 inputs=inputs, fingerprint=fingerprint)
        except ValueTooLarge as err:
            raise InputError(f"the run's inputs are {err}; pass large data as a file and its path") from None
        try:  # the run is recorded before it waits for anything else
            if not await self._io(self.store.has_meta, plan_meta_key(plan_hash)):  # the plan's runs share it
                self.store.set_meta(plan_meta_key(plan_hash), canonical_json(plan))  # what `agentflow ui` draws
            await self.commit()
            await self._preload()
        except asyncio.CancelledError:  # Ctrl-C or SIGTERM as it began: it ends cancelled, not running
            self.store.finish_run(self.run_id, "cancelled")  # the store's close writes it
            raise

    async def _preload(self) -> None:
        self.preloaded = await self._io(self.store.preload_results, self.flow, PRELOAD_MAX_ROWS,
                                        PRELOAD_MAX_BYTES, PRELOAD_MAX_KEYS)

    async def close(self, status: str, value: Any = NO_VALUE) -> None:
        """The run ends; a succeeded run's `value` is kept for a no-op rerun to print."""
        if not self.dry_run:
            self.store.finish_run(self.run_id, status, value=value if status == "succeeded" else NO_VALUE)
            await self.commit()
        self.pool.shutdown(wait=True)

    # ------------------------------------------------------------ decisions

    def resumed_key(self, node_id: str) -> str | None:
        state = self.resumed.get(node_id)
        return state.key if state is not None and state.status == "succeeded" else None

    async def has_result(self, key: str) -> bool:
        found = await self._lookup(key)
        if found is not None:
            self._found[key] = found
        return found is not None

    async def _lookup(self, key: str):
        if self.preloaded.answers(key):
            return self.preloaded.result(key)
        return await self._results.get(key)

    async def explain(self, node_id: str, def_hash: str, inputs: dict, *, cacheable: bool) -> str:
        """Why a node must run: the cause a user can act on."""
        if not cacheable:
            return "not cacheable (cache = false or --no-cache)"
        return rerun_reason(await self._last_records.get(node_id), def_hash, inputs)

    # ------------------------------------------------------------ node records

    def node_started(self, node_id: str, role: str | None, key: str, def_hash: str, inputs: dict) -> None:
        if not self.dry_run:
            self.store.node_started(self.run_id, node_id, role=role, key=key, def_hash=def_hash,
                                    input_hashes=inputs)

    def structure_started(self, node_id: str) -> None:
        """A `for`, `repeat` or sub-choreography instance began (it has no key of its own)."""
        if not self.dry_run:
            self.store.node_started(self.run_id, node_id, role=None)

    async def reused(self, node_id: str, role: str | None, key: str, def_hash: str, inputs: dict) -> Any:
        found = self._found.pop(key, None) or await self._lookup(key)
        if found is None:
            raise LookupError(f"stored result of {node_id} disappeared")
        value, stored_hash = found
        if role in self.session_roles:
            # what the call added to its role's session joins this run's session again, in
            # program order, as if it had run here (later calls' keys depend on it); also for
            # a call that finished in the resumed run, whose session is rebuilt
            for step in await self._io(self.store.result_journal, key, SESSION_STEP):
                await self.append_session(role, step["messages"])
        if not self.dry_run:
            with self._with_agent_turns(node_id, role, again=node_id not in self._agent_stored):
                self.store.node_reused(self.run_id, node_id, role=role, key=key, value_hash=stored_hash,
                                       def_hash=def_hash, input_hashes=inputs)
        return value

    def node_succeeded(self, node_id: str, role: str | None, key: str, outcome: NodeOutcome) -> None:
        """Buffers a success; the caller awaits `flush()` before anyone may use the value. A
        value too large to store fails the node (NodeFailure)."""
        try:
            with self._with_agent_turns(node_id, role, again=True):
                self.store.node_finished(self.run_id, node_id, status="succeeded", value=outcome.value,
                                         attempts=outcome.attempts, key=key, role=role)
        except ValueTooLarge as err:
            raise NodeFailure(node_id, role, result_too_large(err), outcome.attempts) from None
        self.preloaded.stored(key)

    @contextmanager
    def _with_agent_turns(self, node_id: str, role: str | None, *, again: bool) -> Iterator[None]:
        """Buffers what a call added to its persistent agent's conversation, and the call's
        record buffered inside the block, in one `commits_held()`: a kill keeps both or
        neither, so a resumed run never loses or repeats a turn. Not `again` for a call of the
        resumed run whose turns are stored already (its reuse rebuilds the conversation in
        memory only). Other calls' records are buffered as they are."""
        agent = self.agents.get(role) if role is not None else None
        messages = self._agent_unsaved.pop(agent, None) if agent is not None else None
        if agent is None or messages is None or not again:
            yield
            return
        with self.store.commits_held():
            self._agent_stored.discard(node_id)
            self.store.append_agent_turns(agent, self.run_id, node_id, messages,
                                          [estimated_tokens([m]) for m in messages])
            yield

    async def node_failed(self, node_id: str, role: str | None, error: str, attempts: int) -> None:
        self.store.node_finished(self.run_id, node_id, status="failed", error=error, attempts=attempts, role=role)
        await self.flush()

    async def node_waiting(self, node_id: str, role: str | None, key: str, question: dict | None) -> None:
        """A node waits for a person: its question (None for a call waiting on a delegation) is
        journaled under its key, what `agentflow answer` checks an answer against, and
        committed with the node's status."""
        if question is not None:
            self.store.append_turn(self.run_id, node_id, key=key, kind=question["role"], payload=question)
        self.store.node_finished(self.run_id, node_id, status="waiting", key=key, role=role)
        await self.flush()

    def node_cancelled(self, node_id: str, role: str | None) -> None:
        self.store.node_finished(self.run_id, node_id, status="cancelled", error="interrupted", role=role)

    def node_skipped(self, node_id: str, role: str | None) -> None:
        if not self.dry_run:
            self.store.node_finished(self.run_id, node_id, status="skipped", role=role, attempts=0)

    def structure_done(self, node_id: str, status: str, cached: bool = False) -> None:
        """A structure instance ended; `cached` when every call inside it was reused."""
        if not self.dry_run:
            self.store.node_finished(self.run_id, node_id, status=status, value=None, key=structure_key(self.run_id, node_id)
                                     if status == "succeeded" else None, cached=cached)

    def record_llm_call(self, node_id: str, response) -> None:
        if not self.dry_run:
            self.store.record_llm_call(self.run_id, node_id, model=response.model,
                                       prompt_tokens=response.prompt_tokens,
                                       completion_tokens=response.completion_tokens, cost_usd=response.cost_usd,
                                       latency_ms=response.latency_ms)

    def record_program(self, node_id: str, attempt: int, source: str, status: str, diagnostics: str | None) -> None:
        if not self.dry_run:
            self.store.record_program(self.run_id, node_id, attempt, source=source, status=status,
                                      diagnostics=diagnostics)

    # ------------------------------------------------------------ journal and sessions

    async def load_turns(self, node_id: str, key: str) -> list[dict]:
        if node_id not in self.resumed:  # a journal belongs to its run: a new node has none (no query)
            return []
        turns = await self._io(self.store.load_turns, self.run_id, node_id, key)
        return [t.payload for t in turns]

    async def append_turn(self, node_id: str, key: str, message: dict) -> None:
        """Journals a step of a task call (durable at the next commit point, see `flush`)."""
        self.store.append_turn(self.run_id, node_id, key=key, kind=message["role"], payload=message)
        await self.flush()

    async def tool_started(self, node_id: str, key: str, step: dict) -> None:
        self.store.append_turn(self.run_id, node_id, key=key, kind=step["role"], payload=step)
        await self.commit()  # even under group durability

    async def load_session(self, role: str) -> list[list[dict]]:
        """The role's session as it stands now, one list of messages per call. It starts empty
        in every process: a resumed run rebuilds it in program order (see `restart_sessions`).
        A persistent agent's starts with what earlier runs stored (see `open`)."""
        agent = self.agents.get(role)
        if agent is not None:
            return self.agent_memory[agent]
        return self._sessions.setdefault(role, [])

    async def restart_failed(self) -> None:
        """What `open` does on `--resume`, again for failures recorded since (those of a
        Temporal execution that `reattach` drained): each failed node starts over."""
        self._forget_failed_journals(await self._io(self.store.run_progress, self.run_id))
        await self.flush()

    def _forget_failed_journals(self, states: dict) -> None:
        """A failed node starts over, its journal forgotten; an interrupted call resumes its journal."""
        for node_id, state in states.items():
            if state.status == "failed":
                self.store.reset_turns(self.run_id, node_id)

    async def restart_sessions(self) -> None:
        """Before a resumed run continues: its sessions are rebuilt in program order as its
        calls are reused or run, never loaded whole (each call's key depends on the session
        as it stood before that call), so what an earlier process stored is forgotten first."""
        self._sessions.clear()
        if not self.dry_run:
            self.store.reset_sessions(self.run_id)
            await self.flush()

    async def append_session(self, role: str, messages: list[dict]) -> None:
        calls = await self.load_session(role)
        calls.append(messages)
        if role in self.agents:  # stored with the call's result (see `_with_agent_turns`)
            self._agent_unsaved[self.agents[role]] = messages
        elif not self.dry_run:
            self.store.append_session(self.run_id, role, [messages])
            await self.flush()

    async def session_hash(self, role: str) -> str:
        return digest("session", canonical_json(await self.load_session(role)))

    # ------------------------------------------------------------ agents created at run time

    async def save_recipe(self, recipe: AgentRecipe, node_id: str) -> int:
        return await self._io(self.store.save_recipe, recipe, self.run_id, node_id)

    async def latest_recipes(self, creator: str) -> list[AgentRecipe]:
        return await self._io(self.store.latest_recipes, creator)

    # ------------------------------------------------------------ group commit

    async def flush(self) -> None:
        """Where a fact must be durable before anything depends on it: under strict
        durability, `commit()`; under group durability it returns at once (the store
        commits within `GROUP_COMMIT_S`), counted as a commit point by `faults`."""
        if self.dry_run:
            return
        if self.durability == "group":
            faults.deferred_commit()
            return
        await self.commit()

    async def commit(self) -> None:
        """Returns once everything buffered so far is committed. Concurrent callers share
        one commit (group commit): the store writes whole batches, never row by row."""
        if self.dry_run:
            return
        future = asyncio.get_running_loop().create_future()
        self._flush_waiters.append(future)
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.ensure_future(self._flush_loop())
        await future

    async def _flush_loop(self) -> None:
        while self._flush_waiters:
            waiters, self._flush_waiters = self._flush_waiters, []
            try:
                await self._io(self.store.flush)
            except BaseException as err:
                for f in waiters:
                    if not f.done():
                        f.set_exception(err)
                continue
            for f in waiters:
                if not f.done():
                    f.set_result(None)

