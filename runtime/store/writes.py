"""Batched writes: the writer buffers facts in memory and commits them in one transaction.

Callers buffer facts (`node_started`, `node_finished`, `record_llm_call`, `append_turn`, ...)
and `flush()` writes them all in one transaction. A fact is durable once `flush()` has
returned; a kill at any moment leaves the last committed flush.

Writes (measured on duckdb 2.0, see tests/bench/bench_store.py)
----------------------------------------------------------------
* A batch is one `INSERT INTO t SELECT * FROM (SELECT unnest($1::T[]) AS a, ...)` per
  table over list parameters: ~80x faster than `executemany`. Columns whose values
  are all equal (run id, status, NULLs) are sent as one scalar, since converting and
  unnesting lists is most of a batch's cost.
* Statement planning dominates small flushes (~0.5-3 ms each), and `ON CONFLICT`
  (planned as a MERGE with a scan) costs ~5x a plain INSERT. So rows known to be new
  (nodes of a run begun by this writer and not yet written, results) are appended
  with plain INSERTs; a key that turns out to exist fails the transaction, which is
  written again with upserts (and upserts are used from then on).
* A one-node flush costs ~4 ms while the writer is attached, ~10 ms after it has
  detached; 10k nodes with results write in a few hundred ms.

Group commit: `flush()` from several threads (or `await flush_async()` from several
tasks) writes one batch at a time; a caller whose facts went out in another caller's
batch returns as soon as that commits.
"""
from __future__ import annotations

import math
import os
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Sequence

import duckdb

from agentflow.compiler.hashing import canonical_json, digest, escape_surrogates

from .. import faults
from .access import IDLE_DETACH_MAX_WAL_BYTES, IDLE_DETACH_S, FileAccess
from .records import (FINAL_NODE_STATUSES, FINAL_RUN_STATUSES, NO_VALUE, AgentRecipe, bounded,
                      bounded_json, canonical_text, ordered_json, storable, to_json)
from .schema import PUBLIC_VIEWS, one_transaction

AUTO_FLUSH_S = 0.25  # the janitor flushes facts this old once no new one came for 50 ms,
AUTO_FLUSH_MAX_S = 0.75  # and facts this old in any case
JANITOR_TICK_S = 0.02
# Under group commit, costly facts (a task-loop step; a model call or the result of a call
# that took COSTLY_CALL_US or longer) this much past their window are committed by the thread
# that records the next node's end, not left to the janitor: see `_keep_up`.
OVERDUE_S = 0.05
COSTLY_CALL_US = 10_000

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)


def _utc(at: datetime | None) -> int:
    """Microseconds since the epoch, UTC: how buffered times travel to a TIMESTAMP column
    (cheaper to make and to convert than datetimes; naive datetimes are taken as UTC)."""
    if at is None:
        return time.time_ns() // 1000
    if at.tzinfo is None:
        at = at.replace(tzinfo=timezone.utc)
    return (at - _EPOCH) // _MICROSECOND


class _NodeUpdate:
    """Pending facts about one node since the last flush, merged in memory."""

    __slots__ = ("role", "key", "def_hash", "input_hash", "input_hashes", "started_at", "has_state",
                 "status", "cached", "attempts", "finished_at", "error", "output_hash",
                 "d_prompt", "d_completion", "d_cost", "d_calls")

    def __init__(self) -> None:
        self.role = self.key = self.def_hash = self.input_hash = self.input_hashes = None
        self.started_at = None
        self.has_state = False
        self.status: str | None = None
        self.cached = False
        self.attempts: int | None = None
        self.finished_at = self.error = self.output_hash = None
        self.d_prompt = self.d_completion = self.d_calls = 0
        self.d_cost = 0.0

    def identity(self, role, key, def_hash, input_hash, input_hashes, started_at) -> None:
        if role is not None:
            self.role = role
        if key is not None:
            self.key = key
        if def_hash is not None:
            self.def_hash = def_hash
        if input_hash is not None:
            self.input_hash = input_hash
        if input_hashes is not None:
            self.input_hashes = input_hashes
        if started_at is not None:
            self.started_at = started_at

    def state(self, status, cached, attempts, finished_at, error, output_hash) -> None:
        self.has_state = True
        self.status, self.cached, self.finished_at = status, cached, finished_at
        self.error, self.output_hash = error, output_hash
        if attempts is not None:
            self.attempts = attempts

    def absorb_newer(self, newer: "_NodeUpdate") -> "_NodeUpdate":
        """self (older, from a failed flush) followed by newer; returns the merge."""
        self.identity(newer.role, newer.key, newer.def_hash, newer.input_hash, newer.input_hashes,
                      newer.started_at)
        if newer.has_state:
            self.state(newer.status, newer.cached, newer.attempts, newer.finished_at, newer.error,
                       newer.output_hash)
        self.d_prompt += newer.d_prompt
        self.d_completion += newer.d_completion
        self.d_cost += newer.d_cost
        self.d_calls += newer.d_calls
        return self


def _duration_ms(started: int | None, finished: int | None) -> int | None:
    """DuckDB's `date_diff('millisecond', started, finished)` of two `_utc` times."""
    return None if started is None or finished is None else finished // 1000 - started // 1000


class _Batch:
    """Everything buffered since the last flush; swapped out whole by `flush()`."""

    def __init__(self) -> None:
        self.runs: dict[str, dict] = {}
        self.nodes: dict[tuple[str, str], _NodeUpdate] = {}
        self.results: dict[str, tuple] = {}
        self.llm_calls: list[tuple] = []
        self.turns: list[tuple] = []  # run_id, node_id, key, kind, payload, at
        self.turn_resets: set[tuple[str, str]] = set()
        self.sessions: list[tuple] = []  # run_id, role, message, at
        self.programs: dict[tuple[str, str, int], tuple] = {}  # (run, node, attempt) -> its latest row
        self.session_resets: set[str] = set()  # run ids
        self.agent_turns: list[tuple] = []  # agent, run_id, node_id, message, tokens, at
        self.meta: dict[str, str] = {}
        self.version = 0
        self.since: float | None = None  # monotonic time of the first and the last fact
        self.last = 0.0
        self.costly = False  # holds a fact that costs a model call or a slow call to redo

    def empty(self) -> bool:
        return not (self.runs or self.nodes or self.results or self.llm_calls or self.turns
                    or self.turn_resets or self.sessions or self.session_resets or self.agent_turns or self.meta
                    or self.programs)

    def absorb_newer(self, newer: "_Batch") -> "_Batch":
        """Put a batch whose flush failed back in front of what was buffered since."""
        for run_id, upd in newer.runs.items():
            self.runs[run_id] = {**self.runs.get(run_id, {}), **upd}
        for ident, node_upd in newer.nodes.items():
            old = self.nodes.get(ident)
            self.nodes[ident] = node_upd if old is None else old.absorb_newer(node_upd)
        self.results.update(newer.results)
        self.llm_calls += newer.llm_calls
        if newer.turn_resets:
            self.turns = [t for t in self.turns if (t[0], t[1]) not in newer.turn_resets]
        self.turns += newer.turns
        self.turn_resets |= newer.turn_resets
        if newer.session_resets:
            self.sessions = [s for s in self.sessions if s[0] not in newer.session_resets]
        self.sessions += newer.sessions
        self.session_resets |= newer.session_resets
        self.agent_turns += newer.agent_turns
        self.meta.update(newer.meta)
        self.programs.update(newer.programs)
        self.version = max(self.version, newer.version)
        self.since = min((s for s in (self.since, newer.since) if s is not None), default=None)
        self.last = max(self.last, newer.last)
        self.costly = self.costly or newer.costly
        return self


# Column kinds for batched writes: SQL type of the parameter, and how to finish the value.
_KINDS = {
    "V": ("VARCHAR", "{}"), "J": ("VARCHAR", "({})::JSON"), "T": ("BIGINT", "make_timestamp({})"),
    "I": ("INTEGER", "{}"), "B": ("BIGINT", "{}"), "D": ("DOUBLE", "{}"), "L": ("BOOLEAN", "{}"),
}


def _select(columns: Sequence[tuple[str, str, Any]]) -> tuple[str, list]:
    """A `SELECT` producing one row per list element, and its parameters.

    Each column is (name, kind, values). A column whose values are all equal (run id,
    status, NULLs...) becomes one scalar parameter instead of a list: converting and
    unnesting lists is most of the cost of a batch. A one-row batch (every commit of a
    strict run) is a bare `SELECT` of scalars: DuckDB plans it in ~2/3 of the time."""
    n = len(columns[0][2])
    inner, params = [], []
    lists = False
    for name, kind, values in columns:
        sql_type, finish = _KINDS[kind]
        first = values[0]
        if values.count(first) == n:
            if first is None:
                expr = f"NULL::{sql_type}"
            else:
                params.append(first)
                expr = f"${len(params)}::{sql_type}"
        else:
            params.append(values)
            expr = f"unnest(${len(params)}::{sql_type}[])"
            lists = True
        inner.append(f"{finish.format(expr)} AS {name}")
    return "SELECT " + ", ".join(inner) + ("" if lists or n == 1 else f" FROM range({n})"), params


def _insert(con: "_Statements", into: str, columns: Sequence[tuple[str, str, Any]], suffix: str = "") -> None:
    """`into SELECT <one row per element> suffix`: a whole batch in one statement."""
    sql, params = _select(columns)
    con.insert(f"{into} {sql} {suffix}", params, rows=len(columns[0][2]))


def _literal(value: Any) -> str | None:
    """`value` spelled as an SQL literal, or None when it has no safe spelling."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else None
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"  # standard SQL: no backslash escapes
    return None


class _Statements:
    """A connection, and the one-row INSERTs it has prepared. Every commit of a strict run
    writes one row per table, and DuckDB runs `EXECUTE` of a prepared statement with
    literal arguments in about a quarter of the CPU it spends planning the statement anew
    (DuckDB takes no parameters in `EXECUTE`, hence literals)."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con
        self._prepared: dict[str, str] = {}  # statement -> its name

    def execute(self, sql: str, params: list | None = None) -> duckdb.DuckDBPyConnection:
        return self.con.execute(sql) if params is None else self.con.execute(sql, params)

    def insert(self, sql: str, params: list, rows: int) -> None:
        args = _literals(params) if rows == 1 else None
        if args is None:
            self.con.execute(sql, params)
            return
        name = self._prepared.get(sql)
        if name is None:
            name = self._prepared[sql] = f"agentflow_row_{len(self._prepared)}"
            self.con.execute(f"PREPARE {name} AS {sql}")
        self.con.execute(f"EXECUTE {name}({args})" if params else f"EXECUTE {name}")


def _literals(params: list) -> str | None:
    """`params` as a list of SQL literals, or None when one has no safe spelling."""
    spelled = []
    for param in params:
        text = _literal(param)
        if text is None:
            return None
        spelled.append(text)
    return ", ".join(spelled)


def _in_transaction(con: duckdb.DuckDBPyConnection, statements: Sequence[tuple[str, list]]) -> None:
    """Run `(sql, params)` statements in one transaction: all of them or none."""
    try:
        con.execute("BEGIN")
        for sql, params in statements:
            con.execute(sql, params)
        con.execute("COMMIT")
    except BaseException:
        try:
            con.execute("ROLLBACK")
        except duckdb.Error:
            pass
        raise


def _agent_generations(con: "_Statements", agents: list[str]) -> dict[str, int]:
    """The current generation of each agent that was ever reset (the others are at 0)."""
    return dict(con.execute("SELECT agent, max(generation) FROM _agent_resets WHERE agent = ANY($1::VARCHAR[]) "
                            "GROUP BY agent", [agents]).fetchall())


def _write_agent_turns(con: "_Statements", turns: list[tuple]) -> None:
    """Agents' new turns, in their current generations, numbered on from the last turn; a
    call's earlier turns there are replaced (a call of a resumed run that runs again, forced
    or because its agent's state changed, stores them anew)."""
    agents = sorted({t[0] for t in turns})
    generations = _agent_generations(con, agents)
    calls = sorted({(t[0], t[1], t[2]) for t in turns})
    con.execute("DELETE FROM _agent_turns t USING (SELECT unnest($1::VARCHAR[]) AS a, unnest($2::VARCHAR[]) AS r, "
                "unnest($3::VARCHAR[]) AS n, unnest($4::INTEGER[]) AS g) d "
                "WHERE t.agent = d.a AND t.run_id = d.r AND t.node_id = d.n AND t.generation = d.g",
                [[c[0] for c in calls], [c[1] for c in calls], [c[2] for c in calls],
                 [generations.get(c[0], 0) for c in calls]])
    following = dict(con.execute(
        "SELECT t.agent, max(t.turn) + 1 FROM _agent_turns t JOIN (SELECT unnest($1::VARCHAR[]) AS a, "
        "unnest($2::INTEGER[]) AS g) d ON t.agent = d.a AND t.generation = d.g GROUP BY t.agent",
        [agents, [generations.get(a, 0) for a in agents]]).fetchall())
    numbers = []
    for agent, *_ in turns:
        numbers.append(following.get(agent, 0))
        following[agent] = numbers[-1] + 1
    _insert(con, "INSERT INTO _agent_turns", [
        ("agent", "V", [t[0] for t in turns]), ("generation", "I", [generations.get(t[0], 0) for t in turns]),
        ("turn", "I", numbers), ("message", "J", [t[3] for t in turns]), ("tokens", "I", [t[4] for t in turns]),
        ("run_id", "V", [t[1] for t in turns]), ("node_id", "V", [t[2] for t in turns]),
        ("created_at", "T", [t[5] for t in turns])])


class BatchedWriter(FileAccess):
    """The writer's side of a store: facts buffered in memory, committed in batches by
    `flush()` and by a janitor thread that also lets go of the file when idle."""

    def __init__(self, path: Path, writer: bool) -> None:
        super().__init__(path, writer)
        self._mu = threading.Lock()  # guards the buffer
        self._holds = 0  # open `commits_held()` blocks: while any is open, nothing commits
        self._buf = _Batch()
        self._version = 0
        self._committed = 0
        self._open_nodes: dict[tuple[str, str], tuple[str, int]] = {}  # started, not finished: key, start
        self._turn_next: dict[tuple[str, str], int] = {}
        self._session_next: dict[tuple[str, str], int] = {}
        self._fresh_runs: set[str] = set()  # begun by this writer, absent before
        self._written: set[tuple[str, str]] = set()  # node rows this writer has written
        self._rows_of: dict[str, set[str]] = {}  # run -> its node rows, as read by this writer
        self._careful = False  # upsert everything (after a key turned out to exist)
        self._statements: _Statements | None = None  # on the current connection
        self._janitor: threading.Thread | None = None
        self._background_error: BaseException | None = None  # the janitor's last failure
        self._commit_after = AUTO_FLUSH_MAX_S  # the janitor commits facts this old in any case
        self._overdue_after = math.inf  # a costly batch this old is committed by the next node's end

    def commit_within(self, seconds: float) -> None:
        """Group commit: buffered facts commit at most `seconds` after the first of them,
        whether or not anyone calls `flush()` (the janitor commits them)."""
        self._commit_after = max(0.0, seconds - JANITOR_TICK_S)
        self._overdue_after = seconds + OVERDUE_S

    def _start_janitor(self) -> None:
        self._janitor = threading.Thread(target=self._janitor_loop, name="agentflow-store", daemon=True)
        self._janitor.start()

    # ------------------------------------------------------------ buffering (writer)

    def _buffer(self) -> _Batch:
        """The batch to add to; caller holds `_mu`."""
        if not self.writer:
            raise RuntimeError("this store was opened for reading")
        if self._closed:
            raise RuntimeError("the store is closed")
        self._version += 1
        self._buf.version = self._version
        self._buf.last = time.monotonic()
        if self._buf.since is None:
            self._buf.since = self._buf.last
        return self._buf

    def _keep_up(self) -> None:
        """Group commit's bound for costly facts when the janitor is late: a node's end
        commits, on the caller's thread, what has waited past its window if it includes a
        task-loop step, or a model call or a call's result that took 10 ms or longer.

        The janitor may get the GIL late: DuckDB's client takes it back between the steps of
        each statement, and a thread waiting for it beside an event loop busy with trivial
        calls waits out a switch interval each time, or longer (the loop's `select()` lets go
        of the GIL too briefly to hand it over). Commits then lag by 0.5-1.9 s in 10k-node
        runs. The busy thread commits itself, or, if the janitor is mid-commit, waits for it
        on a lock, which hands the janitor the GIL. Only for costly facts: a commit on the
        loop's thread costs the loop ~45 us a node (+10-36% on a fan-out of trivial calls),
        and trivial results cost as little to compute again after a kill. Inside
        `commits_held()` nothing commits, so nothing waits either. Unlocked reads: a stale
        one at worst commits early or late by a fact."""
        buf = self._buf
        if buf.costly and not self._holds and buf.since is not None and \
                buf.last - buf.since >= self._overdue_after:
            self.commit_buffered()

    def _node(self, buf: _Batch, run_id: str, node_id: str) -> _NodeUpdate:
        upd = buf.nodes.get((run_id, node_id))
        if upd is None:
            upd = buf.nodes[(run_id, node_id)] = _NodeUpdate()
        return upd

    def begin_run(self, run_id: str, *, flow: str, entry: str | None, plan_hash: str | None,
                  inputs: Any, fingerprint: str | None = None, at: datetime | None = None) -> None:
        """A run starts (or resumes: its first start time is kept, status is running again).
        `fingerprint`: what its result depends on (see `finished_run`)."""
        row = dict(flow=flow, entry=entry, plan_hash=plan_hash, inputs=bounded_json(inputs), pid=os.getpid(),
                   status="running", started_at=_utc(at), finished_at=None, fingerprint=fingerprint,
                   value=None)
        with self._mu:
            buf = self._buffer()
            buf.runs[run_id] = {**buf.runs.get(run_id, {}), **row}

    def finish_run(self, run_id: str, status: str, at: datetime | None = None, *,
                   value: Any = NO_VALUE) -> None:
        """A run ends: succeeded, failed, cancelled (interrupted; rerun resumes) or waiting
        (for a person's answers; `--resume` continues). A succeeded run's `value` is kept, for
        a no-op rerun to print."""
        if status not in FINAL_RUN_STATUSES:
            raise ValueError(f"run status must be one of {FINAL_RUN_STATUSES}, not {status!r}")
        end = {"status": status, "finished_at": _utc(at), "value": None}
        if value is not NO_VALUE:
            try:
                end["value"] = ordered_json(value)
            except ValueError:  # kept only when storable; a no-op rerun then does not apply
                pass
        with self._mu:
            buf = self._buffer()
            buf.runs[run_id] = {**buf.runs.get(run_id, {}), **end}

    def node_pending(self, run_id: str, node_id: str, *, role: str | None = None,
                     key: str | None = None) -> None:
        """A node is known but waits for its inputs or a slot (so `show` lists it)."""
        with self._mu:
            upd = self._node(self._buffer(), run_id, node_id)
            upd.identity(role, key, None, None, None, None)
            upd.state("pending", False, 0, None, None, None)

    def node_started(self, run_id: str, node_id: str, *, role: str | None, key: str | None = None,
                     def_hash: str | None = None, input_hash: str | None = None,
                     input_hashes: dict[str, str] | None = None, attempts: int = 1,
                     at: datetime | None = None) -> None:
        """A node starts running; its key, definition and input hashes explain later re-runs."""
        with self._mu:
            upd = self._node(self._buffer(), run_id, node_id)
            started = _utc(at)
            upd.identity(role, key, def_hash, input_hash, input_hashes, started)
            upd.state("running", False, attempts, None, None, None)
            if key is not None:
                self._open_nodes[(run_id, node_id)] = (key, started)

    def node_finished(self, run_id: str, node_id: str, *, status: str, value: Any = NO_VALUE,
                      value_hash: str | None = None, error: str | None = None,
                      attempts: int | None = None, key: str | None = None, role: str | None = None,
                      cached: bool = False, at: datetime | None = None) -> str | None:
        """A node ends. A succeeded node's value is stored under its key (the key from
        `node_started` unless given) and its value hash returned; the result and the
        node row commit together at the next flush, so a stored success always has its
        value. Token and cost totals come from `record_llm_call`. `cached`: it succeeded
        without running anything (a structure whose every call was reused)."""
        if status not in FINAL_NODE_STATUSES:
            raise ValueError(f"node status must be one of {FINAL_NODE_STATUSES}, not {status!r}")
        text = None
        if status == "succeeded":
            if value is NO_VALUE:
                raise ValueError(f"node_finished({node_id!r}, status='succeeded') needs its value")
            canonical = bounded(canonical_text(value))
            text = storable(canonical, value)
            value_hash = value_hash or digest("value", canonical)  # = hashing.value_hash(value)
        if error is not None:  # e.g. a tool's message naming an undecodable file name
            error = escape_surrogates(error)
        finished = _utc(at)
        with self._mu:
            buf = self._buffer()
            opened = self._open_nodes.pop((run_id, node_id), None)
            if opened is not None:
                key = key or opened[0]
                buf.costly = buf.costly or finished - opened[1] >= COSTLY_CALL_US
            if status == "succeeded":
                if key is None:
                    raise ValueError(f"node_finished({node_id!r}, status='succeeded') needs the "
                                     f"node's key (pass key= or give it to node_started)")
                buf.results[key] = (text, value_hash, run_id, node_id, finished)
            upd = self._node(buf, run_id, node_id)
            upd.identity(role, key, None, None, None, None)
            upd.state(status, cached and status == "succeeded", attempts, finished, error,
                      value_hash if status == "succeeded" else None)
        self._keep_up()
        return value_hash

    def node_reused(self, run_id: str, node_id: str, *, role: str | None, key: str, value_hash: str,
                    def_hash: str | None = None, input_hash: str | None = None,
                    input_hashes: dict[str, str] | None = None, at: datetime | None = None) -> None:
        """A node succeeded without running: its key has a stored result."""
        now = _utc(at)
        with self._mu:
            upd = self._node(self._buffer(), run_id, node_id)
            upd.identity(role, key, def_hash, input_hash, input_hashes, now)
            upd.state("succeeded", True, 0, now, None, value_hash)
        self._keep_up()

    def record_llm_call(self, run_id: str, node_id: str | None, *, model: str, prompt_tokens: int = 0,
                        completion_tokens: int = 0, cost_usd: float | None = 0.0,
                        latency_ms: float | None = None, cached: bool = False,
                        at: datetime | None = None) -> None:
        """One model call; uncached calls also add to the node's token and cost totals."""
        now = _utc(at)
        with self._mu:
            buf = self._buffer()
            buf.llm_calls.append((run_id, node_id, model, int(prompt_tokens or 0),
                                  int(completion_tokens or 0), float(cost_usd or 0.0),
                                  None if latency_ms is None else float(latency_ms), bool(cached), now))
            if not cached and (latency_ms is None or latency_ms * 1000 >= COSTLY_CALL_US):
                buf.costly = True
            if node_id is not None and not cached:
                upd = self._node(buf, run_id, node_id)
                upd.d_prompt += int(prompt_tokens or 0)
                upd.d_completion += int(completion_tokens or 0)
                upd.d_cost += float(cost_usd or 0.0)
                upd.d_calls += 1

    def append_turn(self, run_id: str, node_id: str, *, key: str | None, kind: str, payload: Any,
                    at: datetime | None = None) -> None:
        """Journal one step of a task call, so an interrupted call resumes at that step."""
        text = to_json(payload)
        with self._mu:
            buf = self._buffer()
            buf.turns.append((run_id, node_id, key, kind, text, _utc(at)))
            buf.costly = True
        self._keep_up()

    def reset_turns(self, run_id: str, node_id: str) -> None:
        """Forget a node's journal (e.g. before re-running a node that failed)."""
        with self._mu:
            buf = self._buffer()
            buf.turns = [t for t in buf.turns if (t[0], t[1]) != (run_id, node_id)]
            buf.turn_resets.add((run_id, node_id))

    def append_session(self, run_id: str, role: str, messages: Sequence[Any],
                       at: datetime | None = None) -> None:
        """Append to a role's session memory (the transcript later calls of the role see)."""
        now = _utc(at)
        texts = [to_json(m) for m in messages]
        with self._mu:
            buf = self._buffer()
            buf.sessions.extend((run_id, role, t, now) for t in texts)

    def reset_sessions(self, run_id: str) -> None:
        """Forget a run's session memory (e.g. before a resumed run rebuilds it)."""
        with self._mu:
            buf = self._buffer()
            buf.sessions = [s for s in buf.sessions if s[0] != run_id]
            buf.session_resets.add(run_id)

    def record_program(self, run_id: str, node_id: str, attempt: int, *, source: str, status: str,
                       diagnostics: str | None = None, at: datetime | None = None) -> None:
        """A program a model wrote in task call `node_id` (its `attempt`-th), as it stands now."""
        with self._mu:
            self._buffer().programs[(run_id, node_id, attempt)] = (source, status, diagnostics, _utc(at))

    def append_agent_turns(self, agent: str, run_id: str, node_id: str, messages: Sequence[Any],
                           tokens: Sequence[int], at: datetime | None = None) -> None:
        """Add what one call said to a persistent agent's conversation (its current
        generation), replacing what that call stored there before (a forced re-run)."""
        now = _utc(at)
        with self._mu:
            self._buffer().agent_turns.extend((agent, run_id, node_id, to_json(m), n, now)
                                              for m, n in zip(messages, tokens))

    def reset_agent(self, agent: str, at: datetime | None = None) -> int:
        """Start a persistent agent's conversation afresh: a new generation (the old ones
        stay queryable). Committed at once; returns the new generation."""
        sql = ("INSERT INTO _agent_resets SELECT $1, coalesce(max(generation), 0) + 1, make_timestamp($2) "
               "FROM _agent_resets WHERE agent = $1 RETURNING generation")
        with self._io:
            self._flush_locked()
            self._attach()
            row = self._run(lambda con: con.execute(sql, [agent, _utc(at)]).fetchone())
            self._last_io = time.monotonic()
        assert row is not None  # INSERT ... RETURNING returns the row it inserted
        return row[0]

    def set_meta(self, key: str, value: str) -> None:
        """Buffers a bookkeeping entry, committed in one transaction with the facts it
        describes (e.g. how far a Temporal client has recorded a workflow's events)."""
        with self._mu:
            self._buffer().meta[key] = value

    def save_recipe(self, recipe: AgentRecipe, run_id: str, node_id: str, at: datetime | None = None) -> int:
        """Stores `recipe` as the next version of its agent, unless it equals the latest version
        (creating the same agent again is a no-op); the version it is. Committed at once, in a
        transaction of its own after whatever was buffered: the version must be known, and
        recipes are few."""
        recipe_hash = digest("recipe", recipe.content_hash())

        def save(con: duckdb.DuckDBPyConnection) -> int:
            with one_transaction(con, self._shown()):
                row = con.execute("SELECT version, recipe_hash FROM _agent_recipes WHERE creator = $1 AND name = $2 "
                                  "ORDER BY version DESC LIMIT 1", [recipe.creator, recipe.name]).fetchone()
                if row is not None and row[1] == recipe_hash:
                    return int(row[0])
                version = 1 if row is None else int(row[0]) + 1
                con.execute("INSERT INTO _agent_recipes VALUES ($1, $2, $3, $4, $5, $6::JSON, $7, $8, $9, $10, "
                            "make_timestamp($11))",
                            [recipe.creator, recipe.name, version, recipe_hash, recipe.instructions,
                             canonical_json(list(recipe.tools)), recipe.model, recipe.depth, run_id, node_id,
                             _utc(at)])
                return version

        with self._io:
            self._flush_locked()
            self._attach()
            version = self._run(save)
            self._last_io = time.monotonic()
        faults.after_commit()
        return version

    def copy_run(self, source: str, run_id: str, at: datetime | None = None) -> None:
        """Record a no-op rerun at once: a new succeeded run with `source`'s plan, inputs,
        fingerprint and value, its node rows (each reused, as a rerun would record it) and
        its sessions. One transaction; whatever was buffered commits before it."""
        now = _utc(at)
        copies = (
            ("INSERT INTO _runs (run_id, flow, entry, status, started_at, finished_at, plan_hash, inputs, "
             "pid, fingerprint, value) SELECT $2, flow, entry, 'succeeded', make_timestamp($3), "
             "make_timestamp($3), plan_hash, inputs, $4, fingerprint, value FROM _runs WHERE run_id = $1",
             [source, run_id, now, os.getpid()]),
            # Reused, as a rerun records them: every succeeded call, and every succeeded
            # structure that has a node inside (a `for` over an empty list reused nothing).
            # A node is inside a structure when the structure's id and a separator begin its id:
            # a hash join on the node id's first n characters, per length n of a structure id
            # (a handful), not a range join that sorts every node id.
            ("INSERT INTO _node_runs (run_id, node_id, role, status, cached, attempts, started_at, "
             "finished_at, key, def_hash, input_hash, input_hashes, output_hash, duration_ms) "
             "WITH s AS (SELECT node_id, length(node_id) AS n FROM _node_runs WHERE run_id = $1 "
             "AND starts_with(key, 'structure:')) "
             "SELECT $2, n.node_id, role, status, status = 'succeeded' AND (NOT starts_with(key, 'structure:') "
             "OR f.node_id IS NOT NULL), 0, make_timestamp($3), make_timestamp($3), key, def_hash, input_hash, "
             "input_hashes, output_hash, 0 FROM _node_runs n LEFT JOIN ("
             "SELECT DISTINCT s.node_id FROM _node_runs c, (SELECT DISTINCT n FROM s) l, s "
             "WHERE c.run_id = $1 AND s.n = l.n AND s.node_id = left(c.node_id, l.n) "
             "AND substr(c.node_id, l.n + 1, 1) IN ('/', '[', '#')) f ON f.node_id = n.node_id "
             "WHERE n.run_id = $1", [source, run_id, now]),
            ("INSERT INTO _sessions SELECT $2, role, seq, message, make_timestamp($3) FROM _sessions "
             "WHERE run_id = $1", [source, run_id, now]))
        with self._io:
            self._flush_locked()
            self._attach()
            self._run(lambda con: _in_transaction(con, copies))
            self._last_io = time.monotonic()
        faults.after_commit()

    # ------------------------------------------------------------ flushing (writer)

    def flush(self) -> None:
        """Write everything buffered so far in one transaction; durable on return.

        Cheap when nothing is buffered; call it whenever a fact must be safe (before
        anything depending on a node starts, after each journaled turn)."""
        if not self.writer:
            return
        self.commit_buffered()
        if not self._holds:  # inside `commits_held()` nothing commits: no point to stop at
            faults.after_commit()  # one commit point per call, whether or not the janitor wrote first

    def commit_buffered(self) -> None:
        """`flush()` without counting a commit point: closing the store writes what is left
        after the run's last commit, which is no point to stop a run at."""
        with self._mu:
            target = self._version
        with self._io:
            if self._committed < target:
                self._flush_locked()

    async def flush_async(self) -> None:
        """`flush()` on a worker thread, so an event loop keeps running meanwhile; tasks
        flushing at the same time share commits."""
        import asyncio
        await asyncio.to_thread(self.flush)

    @contextmanager
    def commits_held(self):
        """Everything buffered inside the block commits in one transaction, after it: flushes
        asked for meanwhile (by the caller, a read, the janitor) commit nothing. For a writer
        that records a group of facts which is only consistent whole (a Temporal client's
        page of events and how far it got)."""
        with self._mu:
            self._holds += 1
        try:
            yield
        finally:
            with self._mu:
                self._holds -= 1

    def _flush_locked(self) -> None:
        """Write the buffer in one transaction. Not a commit point for `faults` (only a
        `flush()` call is): the janitor's flushes fall where timing puts them, so counting
        them would make the N-th commit point of a run differ from one run to the next."""
        with self._mu:
            if self._holds:
                return
            if self._buf.empty():
                self._committed = self._buf.version or self._committed
                return
            batch, self._buf = self._buf, _Batch()
            self._buf.version = self._version
        try:
            self._attach()
            self._write(batch)
        except BaseException:
            with self._mu:
                self._buf = batch.absorb_newer(self._buf)
            raise
        self._committed = max(self._committed, batch.version)
        self._last_io = time.monotonic()

    def _write(self, b: _Batch) -> None:
        """One transaction. Rows are appended with plain INSERTs where they are known to be
        new (upserts cost ~5x more on duckdb 2.0); a key that turns out to exist makes
        the batch be written again with upserts."""
        try:
            self._write_once(b, careful=self._careful)
        except duckdb.ConstraintException:
            self._careful = True  # e.g. a forced re-run stores a key again: upsert from now on
            self._write_once(b, careful=True)

    def _write_once(self, b: _Batch, careful: bool) -> None:
        assert self._duck is not None
        if self._statements is None or self._statements.con is not self._duck:
            self._statements = _Statements(self._duck)
        con = self._statements
        turn_next = dict(self._turn_next)
        session_next = dict(self._session_next)
        fresh: set[str] = set()
        try:
            con.execute("BEGIN")
            if b.runs:
                fresh = self._write_runs(con, b.runs)
            if b.turn_resets:
                r, n = zip(*b.turn_resets)
                con.execute("DELETE FROM _turns t USING (SELECT unnest($1::VARCHAR[]) AS r, "
                            "unnest($2::VARCHAR[]) AS n) d WHERE t.run_id = d.r AND t.node_id = d.n",
                            [list(r), list(n)])
                for ident in b.turn_resets:
                    turn_next[ident] = 0
            if b.turns:
                run_ids, node_ids, keys, kinds, payloads, ats = map(list, zip(*b.turns))
                seqs = self._assign(con, "_turns", "node_id", turn_next, list(zip(run_ids, node_ids)))
                _insert(con, "INSERT INTO _turns", [
                    ("run_id", "V", run_ids), ("node_id", "V", node_ids), ("seq", "I", seqs),
                    ("key", "V", keys), ("kind", "V", kinds), ("payload", "J", payloads),
                    ("created_at", "T", ats)])
            if b.session_resets:
                con.execute("DELETE FROM _sessions WHERE run_id = ANY($1::VARCHAR[])", [list(b.session_resets)])
                session_next = {i: n for i, n in session_next.items() if i[0] not in b.session_resets}
            if b.sessions:
                run_ids, roles, messages, ats = map(list, zip(*b.sessions))
                seqs = self._assign(con, "_sessions", "role", session_next, list(zip(run_ids, roles)))
                _insert(con, "INSERT INTO _sessions", [
                    ("run_id", "V", run_ids), ("role", "V", roles), ("seq", "I", seqs),
                    ("message", "J", messages), ("created_at", "T", ats)])
            if b.agent_turns:
                _write_agent_turns(con, b.agent_turns)
            if b.llm_calls:
                cols = list(map(list, zip(*b.llm_calls)))
                _insert(con, "INSERT INTO _llm_calls", list(zip(
                    PUBLIC_VIEWS["llm_calls"], ("V", "V", "V", "B", "B", "D", "D", "L", "T"), cols)))
            if b.results:
                cols = list(map(list, zip(*b.results.values())))
                _insert(con, "INSERT OR REPLACE INTO _results" if careful else "INSERT INTO _results",
                        [("key", "V", list(b.results))] + list(zip(
                    ("value", "value_hash", "run_id", "node_id", "created_at"), ("J", "V", "V", "V", "T"), cols)))
            if b.programs:
                (run_ids, node_ids, attempts), rows = zip(*b.programs), zip(*b.programs.values())
                _insert(con, "INSERT OR REPLACE INTO _programs", list(zip(
                    PUBLIC_VIEWS["programs"], ("V", "V", "I", "V", "V", "V", "T"),
                    [list(run_ids), list(node_ids), list(attempts), *map(list, rows)])))
            if b.meta:
                con.execute("INSERT OR REPLACE INTO meta SELECT unnest($1::VARCHAR[]), unnest($2::VARCHAR[])",
                            [list(b.meta), list(b.meta.values())])
            new: set[tuple[str, str]] = set()
            if b.nodes:
                if not careful:  # nodes of a run begun here, never written before
                    runs = self._fresh_runs | fresh
                    new = {i for i in b.nodes if i not in self._written and (
                        i[0] in runs or i[0] in self._rows_of and i[1] not in self._rows_of[i[0]])}
                self._write_nodes(con, b.nodes, new)
            con.execute("COMMIT")
        except BaseException as err:
            try:
                con.execute("ROLLBACK")
            except duckdb.Error:
                pass
            if isinstance(err, duckdb.ConstraintException) and not careful:
                raise
            if isinstance(err, duckdb.Error):
                raise self._translate(err) from None
            raise
        self._turn_next, self._session_next = turn_next, session_next
        self._fresh_runs |= fresh
        self._written.update(i for i, u in b.nodes.items() if u.has_state)

    def _assign(self, con, table: str, col: str, counters: dict, idents: list[tuple[str, str]]) -> list[int]:
        """Sequence numbers continuing each (run, node|role) journal, in arrival order."""
        unknown = list({i for i in idents if i not in counters})
        if unknown:
            r, n = zip(*unknown)
            found = {(a, b): m for a, b, m in con.execute(
                f"SELECT t.run_id, t.{col}, max(t.seq) FROM {table} t JOIN (SELECT unnest($1::VARCHAR[]) AS r, "
                f"unnest($2::VARCHAR[]) AS n) d ON t.run_id = d.r AND t.{col} = d.n GROUP BY ALL",
                [list(r), list(n)]).fetchall()}
            for ident in unknown:
                counters[ident] = found[ident] + 1 if ident in found else 0
        seqs = []
        for ident in idents:
            seqs.append(counters[ident])
            counters[ident] += 1
        return seqs

    @staticmethod
    def _write_runs(con, runs: dict[str, dict]) -> set[str]:
        """Upsert runs; returns the ids begun here that did not exist before."""
        full = [(rid, r) for rid, r in runs.items() if "flow" in r]
        ends = [(rid, r) for rid, r in runs.items() if "flow" not in r]
        fresh: set[str] = set()
        if full:
            ids = [rid for rid, _ in full]
            fresh = set(ids) - {r[0] for r in con.execute(
                "SELECT run_id FROM _runs WHERE run_id IN (SELECT unnest($1::VARCHAR[]))", [ids]).fetchall()}
            kinds = dict(flow="V", entry="V", status="V", started_at="T", finished_at="T", plan_hash="V",
                         inputs="J", pid="I", fingerprint="V", value="J")
            _insert(con, "INSERT INTO _runs", [("run_id", "V", [rid for rid, _ in full])] +
                    [(c, k, [r[c] for _, r in full]) for c, k in kinds.items()],
                    "ON CONFLICT (run_id) DO UPDATE SET flow = excluded.flow, entry = excluded.entry, "
                    "status = excluded.status, started_at = coalesce(_runs.started_at, excluded.started_at), "
                    "finished_at = excluded.finished_at, plan_hash = excluded.plan_hash, "
                    "inputs = excluded.inputs, pid = excluded.pid, fingerprint = excluded.fingerprint, "
                    "value = excluded.value")
        if ends:
            _insert(con, "INSERT INTO _runs (run_id, status, finished_at, value)", [
                ("run_id", "V", [rid for rid, _ in ends]), ("status", "V", [r["status"] for _, r in ends]),
                ("finished_at", "T", [r["finished_at"] for _, r in ends]),
                ("value", "J", [r["value"] for _, r in ends])],
                "ON CONFLICT (run_id) DO UPDATE SET status = excluded.status, finished_at = excluded.finished_at, "
                "value = excluded.value")
        return fresh

    _NODE_UPSERT = (
        "ON CONFLICT (run_id, node_id) DO UPDATE SET "
        "role = coalesce(excluded.role, _node_runs.role), key = coalesce(excluded.key, _node_runs.key), "
        "def_hash = coalesce(excluded.def_hash, _node_runs.def_hash), "
        "input_hash = coalesce(excluded.input_hash, _node_runs.input_hash), "
        "input_hashes = coalesce(excluded.input_hashes, _node_runs.input_hashes), "
        "started_at = coalesce(excluded.started_at, _node_runs.started_at), "
        "status = excluded.status, cached = excluded.cached, attempts = {attempts}, "
        "finished_at = excluded.finished_at, error = excluded.error, output_hash = excluded.output_hash, "
        "duration_ms = date_diff('millisecond', coalesce(excluded.started_at, _node_runs.started_at), "
        "excluded.finished_at), "
        "prompt_tokens = _node_runs.prompt_tokens + excluded.prompt_tokens, "
        "completion_tokens = _node_runs.completion_tokens + excluded.completion_tokens, "
        "cost_usd = _node_runs.cost_usd + excluded.cost_usd, "
        "llm_calls = _node_runs.llm_calls + excluded.llm_calls")

    @classmethod
    def _write_nodes(cls, con, nodes: dict[tuple[str, str], _NodeUpdate], new: set[tuple[str, str]]) -> None:
        """`new` rows are appended; the others are upserted (attempts unknown, when a node
        finished without saying, keeps the stored count)."""
        for mode in ("new", "set", "keep"):
            group = [(i, u) for i, u in nodes.items() if u.has_state and (
                i in new if mode == "new" else i not in new and (u.attempts is None) == (mode == "keep"))]
            if not group:
                continue
            us = [u for _, u in group]
            _insert(con, "INSERT INTO _node_runs", [
                ("run_id", "V", [i[0] for i, _ in group]), ("node_id", "V", [i[1] for i, _ in group]),
                ("role", "V", [u.role for u in us]), ("status", "V", [u.status for u in us]),
                ("cached", "L", [u.cached for u in us]), ("attempts", "I", [u.attempts or 0 for u in us]),
                ("started_at", "T", [u.started_at for u in us]), ("finished_at", "T", [u.finished_at for u in us]),
                ("error", "V", [u.error for u in us]), ("key", "V", [u.key for u in us]),
                ("def_hash", "V", [u.def_hash for u in us]), ("input_hash", "V", [u.input_hash for u in us]),
                ("input_hashes", "J", [None if u.input_hashes is None else canonical_json(u.input_hashes)
                                       for u in us]),
                ("output_hash", "V", [u.output_hash for u in us]),
                ("duration_ms", "B", [_duration_ms(u.started_at, u.finished_at) for u in us]),
                ("prompt_tokens", "B", [u.d_prompt for u in us]),
                ("completion_tokens", "B", [u.d_completion for u in us]),
                ("cost_usd", "D", [u.d_cost for u in us]), ("llm_calls", "I", [u.d_calls for u in us])],
                "" if mode == "new" else
                cls._NODE_UPSERT.format(attempts="_node_runs.attempts" if mode == "keep" else "excluded.attempts"))
        usage = [(i, u) for i, u in nodes.items() if not u.has_state]
        if usage:
            us = [u for _, u in usage]
            sql, params = _select([
                ("r", "V", [i[0] for i, _ in usage]), ("n", "V", [i[1] for i, _ in usage]),
                ("dp", "B", [u.d_prompt for u in us]), ("dc", "B", [u.d_completion for u in us]),
                ("dcost", "D", [u.d_cost for u in us]), ("dn", "I", [u.d_calls for u in us])])
            con.execute(
                "UPDATE _node_runs SET prompt_tokens = prompt_tokens + d.dp, "
                "completion_tokens = completion_tokens + d.dc, cost_usd = cost_usd + d.dcost, "
                f"llm_calls = llm_calls + d.dn FROM ({sql}) d "
                "WHERE _node_runs.run_id = d.r AND _node_runs.node_id = d.n", params)

    def _janitor_loop(self) -> None:
        """Flush old facts and let go of the file when idle or when a reader waits."""
        while not self._stop.wait(JANITOR_TICK_S):
            try:
                with self._mu:
                    since, last = self._buf.since, self._buf.last
                now = time.monotonic()
                if since is not None and (now - since >= self._commit_after or
                                          now - since >= AUTO_FLUSH_S and now - last >= 0.05):
                    with self._io:
                        if not self._stop.is_set():
                            self._flush_locked()
                if self._attached and ((time.monotonic() - self._last_io >= IDLE_DETACH_S
                                        and self._wal_bytes() < IDLE_DETACH_MAX_WAL_BYTES)
                                       or self._readers_waiting()):
                    if self._io.acquire(blocking=False):
                        try:
                            if self._attached and not self._stop.is_set():
                                self._detach()
                        finally:
                            self._io.release()
            except Exception as err:  # kept for the caller's next flush to see
                self._background_error = err
                time.sleep(0.2)
