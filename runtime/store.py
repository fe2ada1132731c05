"""The run history: the one module that owns the DuckDB connection and runs SQL.

Every node's result is kept under its content key, so later runs reuse it and an
interrupted run resumes. Callers buffer facts (`node_started`, `node_finished`,
`record_llm_call`, `append_turn`, ...) and `flush()` writes them all in one
transaction. A fact is durable once `flush()` has returned; a kill at any moment
leaves the last committed flush and a database that opens and passes
`check_consistency()`. Values are stored as JSON text, never pickles.

The store keeps what it is given. Callers must not pass API keys or other secrets
in values, inputs, turns, sessions or errors.

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

Concurrency: one writer, readers at any time
--------------------------------------------
DuckDB lets one process open a file read-write and, while it does, no other process
can open it at all, not even read-only. Runs write for minutes while `agentflow runs`
and `agentflow show` must read. So:

* **Writer exclusivity** is our own advisory lock, `flock(LOCK_EX)` on `<db>.lock`,
  held for the writer's whole life and holding its pid and command line. The kernel
  drops it when the process dies (even by kill -9), so a stale lock never blocks; a
  second writer fails at once with `StoreLocked` naming the holder.
* **The database file is attached only while it is used.** Opening a DuckDB
  connection costs ~15-25 ms (instance start-up), but ATTACH/DETACH of a file on a
  live in-memory instance ~0.6 ms. So each `Store` owns one in-memory instance and
  ATTACHes the file to it. The writer stays attached while it is busy (back-to-back
  flushes then cost one commit each, not open + checkpoint + close), and detaches,
  which checkpoints the WAL into the file, once idle for `IDLE_DETACH_S` or as soon
  as a reader asks.
* **Readers ask through `<db>.wait`.** A reader holds `flock(LOCK_SH)` on it while it
  waits and reads; the writer tests it with a non-blocking `LOCK_EX` (microseconds)
  before each flush and from a janitor thread every `JANITOR_TICK_S`, detaches, and
  attaches again only when no reader waits (or after `READER_YIELD_S`). The reader
  attaches read-only, retrying with backoff while the file is still held, queries
  and detaches: it waits a few tens of milliseconds even while the writer flushes
  continuously, and sees everything flushed so far. The janitor also flushes facts
  buffered for `AUTO_FLUSH_S` once the caller pauses (and after `AUTO_FLUSH_MAX_S`
  regardless, so a bulk producer's batches are not cut into small upserts), so
  readers lag a writer by under a second even if it seldom calls `flush()`.
* Other programs that open the file (the duckdb CLI) do not know the protocol: we
  retry while they hold it, then report their pid from DuckDB's own lock error.
* Within one process, a reader of a path this process writes reads through the
  writer (DuckDB refuses to attach one file twice in a process).

Group commit: `flush()` from several threads (or `await flush_async()` from several
tasks) writes one batch at a time; a caller whose facts went out in another caller's
batch returns as soon as that commits.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shlex
import sys
import threading
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TypeVar

import duckdb

from agentflow.compiler.errors import UsageError
from agentflow.compiler.hashing import canonical_json, digest, escape_surrogates

from . import faults

SCHEMA_VERSION = 1
STATUSES = ("pending", "running", "succeeded", "failed", "skipped", "cancelled")
FINAL_NODE_STATUSES = ("succeeded", "failed", "skipped", "cancelled")
FINAL_RUN_STATUSES = ("succeeded", "failed", "cancelled")
RUN_STATUSES = STATUSES + ("interrupted",)  # interrupted: its process died before it could say
DIED_ERROR = "interrupted: the run's process died"  # the error of a node that was running then

IDLE_DETACH_S = 0.2  # writer lets go of the file after this long without a flush
AUTO_FLUSH_S = 0.25  # the janitor flushes facts this old once no new one came for 50 ms,
AUTO_FLUSH_MAX_S = 0.75  # and facts this old in any case
JANITOR_TICK_S = 0.02
READER_YIELD_S = 1.0  # a writer waits at most this long for waiting readers
READ_TIMEOUT_S = 5.0  # a reader gives up after this long
WRITE_ATTACH_TIMEOUT_S = 10.0  # a writer waits this long for another program to let go

PUBLIC_VIEWS: dict[str, tuple[str, ...]] = {
    "runs": ("run_id", "flow", "entry", "status", "started_at", "finished_at"),
    "node_runs": ("run_id", "node_id", "role", "status", "cached", "attempts", "started_at",
                  "finished_at", "error"),
    "llm_calls": ("run_id", "node_id", "model", "prompt_tokens", "completion_tokens", "cost_usd",
                  "latency_ms", "cached", "created_at"),
}

_SCHEMA = f"""
CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL);
CREATE TABLE _runs (
    run_id VARCHAR PRIMARY KEY, flow VARCHAR, entry VARCHAR, status VARCHAR NOT NULL,
    started_at TIMESTAMP, finished_at TIMESTAMP, plan_hash VARCHAR, inputs JSON, pid INTEGER);
CREATE TABLE _node_runs (
    run_id VARCHAR NOT NULL, node_id VARCHAR NOT NULL, role VARCHAR, status VARCHAR NOT NULL,
    cached BOOLEAN NOT NULL, attempts INTEGER NOT NULL, started_at TIMESTAMP,
    finished_at TIMESTAMP, error VARCHAR, key VARCHAR, def_hash VARCHAR, input_hash VARCHAR,
    input_hashes JSON, output_hash VARCHAR, duration_ms BIGINT,
    prompt_tokens BIGINT NOT NULL DEFAULT 0, completion_tokens BIGINT NOT NULL DEFAULT 0,
    cost_usd DOUBLE NOT NULL DEFAULT 0, llm_calls INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, node_id));
CREATE TABLE _results (
    key VARCHAR PRIMARY KEY, value JSON NOT NULL, value_hash VARCHAR NOT NULL,
    run_id VARCHAR, node_id VARCHAR, created_at TIMESTAMP);
CREATE TABLE _turns (
    run_id VARCHAR NOT NULL, node_id VARCHAR NOT NULL, seq INTEGER NOT NULL, key VARCHAR,
    kind VARCHAR, payload JSON, created_at TIMESTAMP);
CREATE TABLE _llm_calls (
    run_id VARCHAR NOT NULL, node_id VARCHAR, model VARCHAR, prompt_tokens BIGINT,
    completion_tokens BIGINT, cost_usd DOUBLE, latency_ms DOUBLE, cached BOOLEAN,
    created_at TIMESTAMP);
CREATE TABLE _sessions (
    run_id VARCHAR NOT NULL, role VARCHAR NOT NULL, seq INTEGER NOT NULL, message JSON,
    created_at TIMESTAMP);
CREATE VIEW runs AS SELECT {", ".join(PUBLIC_VIEWS["runs"])} FROM _runs;
CREATE VIEW node_runs AS SELECT {", ".join(PUBLIC_VIEWS["node_runs"])} FROM _node_runs;
CREATE VIEW llm_calls AS SELECT {", ".join(PUBLIC_VIEWS["llm_calls"])} FROM _llm_calls;
INSERT INTO meta VALUES ('schema_version', '{SCHEMA_VERSION}');
"""


# ---------------------------------------------------------------- errors


class StoreError(UsageError):
    """A database problem the user can act on; `str(err)` is the whole message."""


class StoreLocked(StoreError):
    """Another process holds the database."""

    def __init__(self, message: str, path: Path, pid: int | None = None, cmdline: str | None = None) -> None:
        super().__init__(message)
        self.path, self.pid, self.cmdline = path, pid, cmdline


class StoreSchemaError(StoreError):
    """The database was written with a schema this version does not understand."""


class StoreNotADatabase(StoreError):
    """The path holds a file that is no agentflow database: an open that fails on it leaves
    nothing behind."""


# ---------------------------------------------------------------- records


@dataclass(frozen=True)
class NodeState:
    """What a run recorded about one node: enough to resume it or explain a re-run."""

    run_id: str
    node_id: str
    role: str | None
    status: str
    cached: bool
    attempts: int
    key: str | None
    def_hash: str | None
    input_hash: str | None
    input_hashes: dict[str, str] | None
    output_hash: str | None
    error: str | None


@dataclass(frozen=True)
class Turn:
    """One journaled step of a task call (a model response, a tool result...)."""

    seq: int
    kind: str
    payload: Any
    key: str | None


# ---------------------------------------------------------------- helpers

_NO_VALUE: Any = object()
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)
_T = TypeVar("_T")
_DUCK_PID = re.compile(r"held in (.*?) \(PID (\d+)\)")


def _utc(at: datetime | None) -> int:
    """Microseconds since the epoch, UTC: how buffered times travel to a TIMESTAMP column
    (cheaper to make and to convert than datetimes; naive datetimes are taken as UTC)."""
    if at is None:
        return time.time_ns() // 1000
    if at.tzinfo is None:
        at = at.replace(tzinfo=timezone.utc)
    return (at - _EPOCH) // _MICROSECOND


def _aware(at: datetime | None) -> datetime | None:
    return None if at is None else at.replace(tzinfo=timezone.utc)


def _json(value: Any) -> str:
    """The text a JSON column stores for a value (see `_storable`)."""
    return _storable(_canonical(value), value)


def _canonical(value: Any) -> str:
    try:
        return canonical_json(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"not storable as JSON: {err}") from None


# DuckDB's JSON columns refuse a lone surrogate even as a `\udcff` escape, so a value whose
# canonical text has one (an undecodable file name) is stored as {WRAPPED: its text}, and so
# is a value that itself looks like that wrapper; `_loaded` undoes exactly one wrapping.
WRAPPED = "agentflow:json"


def _storable(text: str, value: Any) -> str:
    if "\\ud" not in text and not (type(value) is dict and len(value) == 1 and WRAPPED in value):
        return text
    return canonical_json({WRAPPED: text})


def _loaded(text: str) -> Any:
    """The value stored as `text` by `_json`."""
    value = json.loads(text)
    if type(value) is dict and len(value) == 1 and WRAPPED in value:
        return json.loads(value[WRAPPED])
    return value


def _own_cmdline() -> str:
    argv = list(sys.argv) or ["python"]
    if argv[0] in ("-c", "-m", ""):
        argv = [os.path.basename(sys.executable)] + argv
    else:
        argv[0] = os.path.basename(argv[0])
    return shlex.join(argv)[:300]


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _is_lock_conflict(err: BaseException) -> bool:
    text = str(err)
    return "Could not set lock" in text or "Conflicting lock" in text


def _lock_files(path: Path) -> tuple[Path, Path]:
    return path.with_name(path.name + ".lock"), path.with_name(path.name + ".wait")


def _read_holder(lock_path: Path, patience: float = 0.1) -> tuple[int | None, str | None]:
    """The pid and command line a writer wrote into its lock file, if readable. A holder
    writes them right after locking, so give it `patience` seconds when it must exist."""
    deadline = time.monotonic() + patience
    while True:
        try:
            text = lock_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None, None
        first, _, rest = text.partition("\n")
        if first.strip().isdigit():
            return int(first), rest.strip() or None
        if time.monotonic() >= deadline:
            return None, None
        time.sleep(0.005)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _died(status: str, pid: int | None, holder: int | None) -> bool:
    """Whether a run recorded as running is dead: its process (kill -9, power loss) no
    longer holds the writer lock, so it can never record how it ended."""
    return status == "running" and (pid is None or pid != holder)


def _describe(pid: int | None, cmdline: str | None) -> str:
    if pid is None:
        return "another process"
    return f"pid {pid}: {cmdline}" if cmdline else f"pid {pid}"


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
        self.session_resets: set[str] = set()  # run ids
        self.meta: dict[str, str] = {}
        self.version = 0
        self.since: float | None = None  # monotonic time of the first and the last fact
        self.last = 0.0

    def empty(self) -> bool:
        return not (self.runs or self.nodes or self.results or self.llm_calls or self.turns
                    or self.turn_resets or self.sessions or self.session_resets or self.meta)

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
        self.meta.update(newer.meta)
        self.version = max(self.version, newer.version)
        self.since = min((s for s in (self.since, newer.since) if s is not None), default=None)
        self.last = max(self.last, newer.last)
        return self


# Column kinds for batched writes: SQL type of the parameter, and how to finish the value.
_KINDS = {
    "V": ("VARCHAR", "{}"), "J": ("VARCHAR", "({})::JSON"), "T": ("BIGINT", "make_timestamp({})"),
    "I": ("INTEGER", "{}"), "B": ("BIGINT", "{}"), "D": ("DOUBLE", "{}"), "L": ("BOOLEAN", "{}"),
}


def _select(columns: Sequence[tuple[str, str, Any]]) -> tuple[str, list]:
    """A `SELECT` producing one row per list element, and its parameters.

    Each column is (name, kind, values); kind "X" gives an SQL expression over the other
    columns instead. A column whose values are all equal (run id, status, NULLs...)
    becomes one scalar parameter instead of a list: converting and unnesting lists is
    most of the cost of a batch."""
    n = next(len(v) for _, k, v in columns if k != "X")
    inner, outer, params = [], [], []
    lists = False
    for name, kind, values in columns:
        if kind == "X":
            outer.append(f"{values} AS {name}")
            continue
        outer.append(name)
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
    sql = "SELECT " + ", ".join(inner) + ("" if lists else f" FROM range({n})")
    if any(k == "X" for _, k, _ in columns):
        sql = f"SELECT {', '.join(outer)} FROM ({sql})"
    return sql, params


def _insert(con: duckdb.DuckDBPyConnection, into: str, columns: Sequence[tuple[str, str, Any]],
            suffix: str = "") -> None:
    """`into SELECT * FROM (<one row per element>) suffix`: a whole batch in one statement."""
    sql, params = _select(columns)
    con.execute(f"{into} SELECT * FROM ({sql}) {suffix}", params)


# Writers of this process, by resolved path: a reader here reads through them.
_WRITERS: "weakref.WeakValueDictionary[str, Store]" = weakref.WeakValueDictionary()
_WRITERS_MU = threading.Lock()


# ---------------------------------------------------------------- the store


class Store:
    """The run history in one DuckDB file. Open with `open_writer` or `open_reader`."""

    # ------------------------------------------------------------ opening

    def __init__(self, path: Path, writer: bool) -> None:
        """Use `Store.open_writer` / `Store.open_reader`."""
        self.path = path
        self.writer = writer
        self._lock_path, self._wait_path = _lock_files(path)
        self._lock_fd: int | None = None
        self._wait_fd: int | None = None
        self._made_files: set[Path] = set()  # lock files this store created
        self._duck: duckdb.DuckDBPyConnection | None = None
        self._attached = False
        self._closed = False
        self._mu = threading.Lock()  # guards the buffer
        self._holds = 0  # open `commits_held()` blocks: while any is open, nothing commits
        self._io = threading.RLock()  # one user of the DuckDB connection at a time
        self._buf = _Batch()
        self._version = 0
        self._committed = 0
        self._last_io = time.monotonic()
        self._open_nodes: dict[tuple[str, str], str] = {}  # started, not finished: key
        self._turn_next: dict[tuple[str, str], int] = {}
        self._session_next: dict[tuple[str, str], int] = {}
        self._fresh_runs: set[str] = set()  # begun by this writer, absent before
        self._written: set[tuple[str, str]] = set()  # node rows this writer has written
        self._rows_of: dict[str, set[str]] = {}  # run -> its node rows, as read by this writer
        self._careful = False  # upsert everything (after a key turned out to exist)
        self._stop = threading.Event()
        self._janitor: threading.Thread | None = None
        self._background_error: BaseException | None = None  # the janitor's last failure
        self._schema_checked = False

    @classmethod
    def open_writer(cls, path: str | os.PathLike[str]) -> "Store":
        """Open (creating it and its directory if needed) for one run's writes.

        Raises StoreLocked if another process is writing this database."""
        store = cls(Path(path).absolute(), writer=True)
        try:
            store._open_writer()
        except BaseException as err:
            store._release(remove_made_files=isinstance(err, StoreNotADatabase))
            raise
        return store

    @classmethod
    def open_reader(cls, path: str | os.PathLike[str]) -> "Store":
        """Open an existing database for reading; works while a run is writing to it."""
        store = cls(Path(path).absolute(), writer=False)
        try:
            store._open_reader()
        except BaseException as err:
            store._release(remove_made_files=isinstance(err, StoreNotADatabase))
            raise
        return store

    def _check_path(self) -> None:
        if self.path.is_dir():
            raise StoreError(f"database path {self._shown()} is a directory, not a database file; "
                             f"give a file path with --db")

    def _shown(self) -> str:
        """The path as the user would write it: relative under the current directory."""
        try:
            rel = os.path.relpath(self.path)
        except ValueError:
            return str(self.path)
        return str(self.path) if rel.startswith("..") else rel

    def _open_writer(self) -> None:
        self._check_path()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock_fd = self._open_lock_file(self._lock_path, os.O_RDWR)
            self._wait_fd = self._open_lock_file(self._wait_path, os.O_RDWR)
        except OSError as err:
            raise StoreError(f"cannot create database {self._shown()}: {err.strerror}") from None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise StoreError(f"cannot lock database {self._shown()}: {err.strerror}") from None
            pid, cmd = _read_holder(self._lock_path)
            raise StoreLocked(
                f"database {self._shown()} is in use by another agentflow run "
                f"({_describe(pid, cmd)}); wait for it to finish or use --db to pick "
                f"another database", self.path, pid, cmd) from None
        os.ftruncate(self._lock_fd, 0)
        os.pwrite(self._lock_fd, f"{os.getpid()}\n{_own_cmdline()}\n".encode(), 0)
        if self.path.is_file() and self.path.stat().st_size == 0:
            self.path.unlink()  # killed while creating it: an empty file holds nothing
        with _WRITERS_MU:
            _WRITERS[str(self.path)] = self
        self._duck = duckdb.connect(":memory:")
        with self._io:
            self._attach()
            self._ensure_schema()
            self._record_dead_runs()
        self._janitor = threading.Thread(target=self._janitor_loop, name="agentflow-store", daemon=True)
        self._janitor.start()

    def _open_reader(self) -> None:
        self._check_path()
        if not self.path.exists():
            raise StoreError(f"no database at {self._shown()} (nothing has run there yet?); "
                             f"use --db to point at one")
        try:
            self._wait_fd = self._open_lock_file(self._wait_path, os.O_RDWR)
        except OSError:
            try:
                self._wait_fd = os.open(self._wait_path, os.O_RDONLY)
            except OSError:
                self._wait_fd = None  # cannot signal: plain retries still work
        self._duck = duckdb.connect(":memory:")
        self._read(lambda con: None)  # checks the schema version now, not at first use

    def _open_lock_file(self, path: Path, flags: int) -> int:
        """A descriptor on `path`, made if missing; remembers whether this store made it."""
        while True:
            try:
                fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                try:
                    return os.open(path, flags)
                except FileNotFoundError:  # removed meanwhile by an open that failed: make it
                    continue
            self._made_files.add(path)
            return fd

    # ------------------------------------------------------------ closing

    def close(self) -> None:
        """Flush, checkpoint and let go of the database and the writer lock."""
        if self._closed:
            return
        try:
            if self.writer:
                self._stop.set()
                if self._janitor is not None and self._janitor is not threading.current_thread():
                    self._janitor.join()
                self.flush()
        finally:
            self._release()

    def _release(self, remove_made_files: bool = False) -> None:
        self._closed = True
        self._stop.set()
        with self._io:
            if self._attached:
                try:
                    self._detach()
                except StoreError:
                    pass
            if self._duck is not None:
                try:
                    self._duck.close()
                except duckdb.Error:
                    pass
                self._duck = None
        with _WRITERS_MU:
            if _WRITERS.get(str(self.path)) is self:
                del _WRITERS[str(self.path)]
        if remove_made_files:
            self._remove_made_files()
        if self._lock_fd is not None:
            try:
                if self.writer:
                    os.ftruncate(self._lock_fd, 0)
            except OSError:
                pass
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None
        if self._wait_fd is not None:
            os.close(self._wait_fd)
            self._wait_fd = None

    def _remove_made_files(self) -> None:
        """Unlink the lock files this store made, each while it holds it alone. Another
        process that opened one meanwhile locks a file no longer there, which is harmless:
        it opens the same non-database and fails too."""
        for path, fd in ((self._lock_path, self._lock_fd), (self._wait_path, self._wait_fd)):
            if fd is None or path not in self._made_files:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if os.path.samestat(os.fstat(fd), os.stat(path)):
                    os.unlink(path)
            except OSError:  # held by another process, or gone: leave it
                pass

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ attaching

    def _readers_waiting(self) -> bool:
        if self._wait_fd is None:
            return False
        try:
            fcntl.flock(self._wait_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(self._wait_fd, fcntl.LOCK_UN)
        return False

    def _attach(self) -> None:
        """Attach the file (read-write for the writer). Caller holds `_io`."""
        assert self._duck is not None
        if self._attached:
            if not (self.writer and self._readers_waiting()):
                return
            self._detach()
        if self.writer:
            yield_until = time.monotonic() + READER_YIELD_S
            while self._readers_waiting() and time.monotonic() < yield_until:
                time.sleep(0.002)
        deadline = time.monotonic() + (WRITE_ATTACH_TIMEOUT_S if self.writer else READ_TIMEOUT_S)
        mode = "" if self.writer else " (READ_ONLY)"
        path_sql = str(self.path).replace("'", "''")
        delay = 0.001
        while True:
            try:
                self._duck.execute(f"ATTACH '{path_sql}' AS db{mode}")
                self._duck.execute("USE db")
                self._attached = True
                return
            except duckdb.Error as err:
                if not _is_lock_conflict(err):
                    raise self._translate(err) from None
                if time.monotonic() > deadline:
                    match = _DUCK_PID.search(str(err))
                    pid, prog = (int(match.group(2)), match.group(1)) if match else (None, None)
                    lpid, lcmd = _read_holder(self._lock_path)
                    if pid is not None and pid == lpid:
                        prog = lcmd or prog
                    what = "agentflow run" if pid is not None and pid == lpid else "process"
                    waited = WRITE_ATTACH_TIMEOUT_S if self.writer else READ_TIMEOUT_S
                    raise StoreLocked(
                        f"database {self._shown()} is held by another {what} "
                        f"({_describe(pid, prog)}) and did not become free within {waited:.0f} s; "
                        f"try again, or close that program", self.path, pid, prog) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.05)

    def _detach(self) -> None:
        assert self._duck is not None
        self._attached = False
        try:
            self._duck.execute("USE memory")
            self._duck.execute("DETACH db")
        except duckdb.Error as err:
            # a broken instance (after a fatal error) cannot be reused: start afresh
            try:
                self._duck.close()
            except duckdb.Error:
                pass
            self._duck = duckdb.connect(":memory:")
            raise self._translate(err) from None

    def _translate(self, err: duckdb.Error) -> StoreError:
        text = str(err)
        where = self._shown()
        if "Is a directory" in text:
            return StoreError(f"database path {where} is a directory, not a database file; "
                              f"give a file path with --db")
        if "not a valid DuckDB database file" in text:
            return StoreNotADatabase(f"{where} is not a DuckDB database (agentflow keeps its history "
                                     f"in one); move it away or use --db to pick another file")
        if "database does not exist" in text:
            return StoreError(f"no database at {where} (nothing has run there yet?); use --db "
                              f"to point at one")
        if "Corrupt" in text or "checksum" in text or isinstance(err, (duckdb.SerializationException,
                                                                      duckdb.FatalException)):
            return StoreError(f"database {where} is damaged ({_first_line(err)}); move it away "
                              f"or use --db to start a new one")
        if isinstance(err, duckdb.PermissionException) or "Permission denied" in text:
            return StoreError(f"cannot open database {where}: permission denied")
        return StoreError(f"database {where}: {_first_line(err)}")

    def _ensure_schema(self) -> None:
        con = self._duck
        assert con is not None
        try:
            names = {r[0] for r in con.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_catalog = 'db'"
            ).fetchall()}
            if "meta" not in names:
                if names:
                    raise StoreNotADatabase(f"{self._shown()} is a DuckDB database but not an agentflow "
                                            f"one (it has no meta table); use --db to pick another file")
                if not self.writer:
                    raise StoreError(f"{self._shown()} is an empty database; nothing has run there yet")
                con.execute("BEGIN")
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        con.execute(stmt)
                con.execute("COMMIT")
                return
            row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except duckdb.Error as err:
            raise self._translate(err) from None
        if row is None or not str(row[0]).isdigit():
            raise StoreSchemaError(f"database {self._shown()} has no valid schema version "
                                   f"({row[0] if row else 'missing'!r}); it was not written by "
                                   f"agentflow or is damaged; use --db to pick another file")
        version = int(row[0])
        if version > SCHEMA_VERSION:
            raise StoreSchemaError(
                f"database {self._shown()} was written by a newer agentflow (schema version "
                f"{version}; this agentflow reads up to version {SCHEMA_VERSION}); upgrade agentflow "
                f"or use --db to pick another database")
        if version < SCHEMA_VERSION:  # no older schema has shipped yet
            raise StoreSchemaError(f"database {self._shown()} has schema version {version}, which "
                                   f"this agentflow cannot upgrade; use --db to start a new one")

    def _record_dead_runs(self) -> None:
        """Runs still recorded as running are dead (this writer holds the lock, so no other
        writer lives): record them as interrupted and their running nodes as cancelled, so
        the public views stop saying `running` too. One cheap query when there are none."""
        con = self._duck
        assert con is not None
        try:
            if not con.execute("SELECT count(*) FROM _runs WHERE status = 'running'").fetchone()[0]:  # type: ignore[index]  # duckdb: count(*) has a row
                return
            con.execute("BEGIN")
            con.execute("UPDATE _node_runs SET status = 'cancelled', error = $1 WHERE status = 'running' "
                        "AND run_id IN (SELECT run_id FROM _runs WHERE status = 'running')", [DIED_ERROR])
            con.execute("UPDATE _runs SET status = 'interrupted' WHERE status = 'running'")
            con.execute("COMMIT")
        except duckdb.Error as err:
            try:
                con.execute("ROLLBACK")
            except duckdb.Error:
                pass
            raise self._translate(err) from None

    def _read(self, query: Callable[[duckdb.DuckDBPyConnection], _T], *, flush: bool = True) -> _T:
        """Run a read against the file, whoever is writing it. The writer flushes first, to
        read its own writes, unless the query looks at what is buffered itself (`flush=False`;
        no batch is being written meanwhile)."""
        if self._closed:
            raise StoreError("the store is closed")
        if self.writer:
            with self._io:
                if flush:
                    self._flush_locked()
                self._attach()
                self._last_io = time.monotonic()
                return self._run(query)
        with _WRITERS_MU:
            local = _WRITERS.get(str(self.path))
        if local is not None and not local._closed:
            return local._read(query)
        with self._io:
            signalled = self._signal_wait()
            try:
                self._attach()
                try:
                    if not self._schema_checked:
                        self._ensure_schema()
                        self._schema_checked = True
                    return self._run(query)
                finally:
                    self._detach()
            finally:
                if signalled and self._wait_fd is not None:
                    fcntl.flock(self._wait_fd, fcntl.LOCK_UN)

    def _signal_wait(self) -> bool:
        """Tell the writer a reader is waiting (shared lock on `<db>.wait`)."""
        if self._wait_fd is None:
            return False
        deadline = time.monotonic() + READ_TIMEOUT_S
        while True:
            try:
                fcntl.flock(self._wait_fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                return True
            except OSError:  # the writer is probing it this very microsecond
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.001)

    def _run(self, query: Callable[[duckdb.DuckDBPyConnection], _T]) -> _T:
        assert self._duck is not None
        try:
            return query(self._duck)
        except duckdb.Error as err:
            raise self._translate(err) from None

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

    def _node(self, buf: _Batch, run_id: str, node_id: str) -> _NodeUpdate:
        upd = buf.nodes.get((run_id, node_id))
        if upd is None:
            upd = buf.nodes[(run_id, node_id)] = _NodeUpdate()
        return upd

    def begin_run(self, run_id: str, *, flow: str, entry: str | None, plan_hash: str | None,
                  inputs: Any, at: datetime | None = None) -> None:
        """A run starts (or resumes: its first start time is kept, status is running again)."""
        row = dict(flow=flow, entry=entry, plan_hash=plan_hash, inputs=_json(inputs), pid=os.getpid(),
                   status="running", started_at=_utc(at), finished_at=None)
        with self._mu:
            buf = self._buffer()
            buf.runs[run_id] = {**buf.runs.get(run_id, {}), **row}

    def finish_run(self, run_id: str, status: str, at: datetime | None = None) -> None:
        """A run ends: succeeded, failed or cancelled (interrupted; rerun resumes)."""
        if status not in FINAL_RUN_STATUSES:
            raise ValueError(f"run status must be one of {FINAL_RUN_STATUSES}, not {status!r}")
        with self._mu:
            buf = self._buffer()
            buf.runs[run_id] = {**buf.runs.get(run_id, {}), "status": status, "finished_at": _utc(at)}

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
            upd.identity(role, key, def_hash, input_hash, input_hashes, _utc(at))
            upd.state("running", False, attempts, None, None, None)
            if key is not None:
                self._open_nodes[(run_id, node_id)] = key

    def node_finished(self, run_id: str, node_id: str, *, status: str, value: Any = _NO_VALUE,
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
            if value is _NO_VALUE:
                raise ValueError(f"node_finished({node_id!r}, status='succeeded') needs its value")
            canonical = _canonical(value)
            text = _storable(canonical, value)
            value_hash = value_hash or digest("value", canonical)  # = hashing.value_hash(value)
        if error is not None:  # e.g. a tool's message naming an undecodable file name
            error = escape_surrogates(error)
        finished = _utc(at)
        with self._mu:
            buf = self._buffer()
            key = key or self._open_nodes.pop((run_id, node_id), None)
            self._open_nodes.pop((run_id, node_id), None)
            if status == "succeeded":
                if key is None:
                    raise ValueError(f"node_finished({node_id!r}, status='succeeded') needs the "
                                     f"node's key (pass key= or give it to node_started)")
                buf.results[key] = (text, value_hash, run_id, node_id, finished)
            upd = self._node(buf, run_id, node_id)
            upd.identity(role, key, None, None, None, None)
            upd.state(status, cached and status == "succeeded", attempts, finished, error,
                      value_hash if status == "succeeded" else None)
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
            if node_id is not None and not cached:
                upd = self._node(buf, run_id, node_id)
                upd.d_prompt += int(prompt_tokens or 0)
                upd.d_completion += int(completion_tokens or 0)
                upd.d_cost += float(cost_usd or 0.0)
                upd.d_calls += 1

    def append_turn(self, run_id: str, node_id: str, *, key: str | None, kind: str, payload: Any,
                    at: datetime | None = None) -> None:
        """Journal one step of a task call, so an interrupted call resumes at that step."""
        text = _json(payload)
        with self._mu:
            self._buffer().turns.append((run_id, node_id, key, kind, text, _utc(at)))

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
        texts = [_json(m) for m in messages]
        with self._mu:
            buf = self._buffer()
            buf.sessions.extend((run_id, role, t, now) for t in texts)

    def reset_sessions(self, run_id: str) -> None:
        """Forget a run's session memory (e.g. before a resumed run rebuilds it)."""
        with self._mu:
            buf = self._buffer()
            buf.sessions = [s for s in buf.sessions if s[0] != run_id]
            buf.session_resets.add(run_id)

    def set_meta(self, key: str, value: str) -> None:
        """Buffers a bookkeeping entry, committed in one transaction with the facts it
        describes (e.g. how far a Temporal client has recorded a workflow's events)."""
        with self._mu:
            self._buffer().meta[key] = value

    def get_meta(self, key: str) -> str | None:
        row = self._read(lambda con: con.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone())
        return row[0] if row else None

    # ------------------------------------------------------------ flushing (writer)

    def flush(self) -> None:
        """Write everything buffered so far in one transaction; durable on return.

        Cheap when nothing is buffered; call it whenever a fact must be safe (before
        anything depending on a node starts, after each journaled turn)."""
        if not self.writer:
            return
        with self._mu:
            target = self._version
        with self._io:
            if self._committed >= target:
                return
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
        faults.after_commit()

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
        con = self._duck
        assert con is not None
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
            if b.llm_calls:
                cols = list(map(list, zip(*b.llm_calls)))
                _insert(con, "INSERT INTO _llm_calls", list(zip(
                    PUBLIC_VIEWS["llm_calls"], ("V", "V", "V", "B", "B", "D", "D", "L", "T"), cols)))
            if b.results:
                cols = list(map(list, zip(*b.results.values())))
                _insert(con, "INSERT OR REPLACE INTO _results" if careful else "INSERT INTO _results",
                        [("key", "V", list(b.results))] + list(zip(
                    ("value", "value_hash", "run_id", "node_id", "created_at"), ("J", "V", "V", "V", "T"), cols)))
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
                         inputs="J", pid="I")
            _insert(con, "INSERT INTO _runs", [("run_id", "V", [rid for rid, _ in full])] +
                    [(c, k, [r[c] for _, r in full]) for c, k in kinds.items()],
                    "ON CONFLICT (run_id) DO UPDATE SET flow = excluded.flow, entry = excluded.entry, "
                    "status = excluded.status, started_at = coalesce(_runs.started_at, excluded.started_at), "
                    "finished_at = excluded.finished_at, plan_hash = excluded.plan_hash, "
                    "inputs = excluded.inputs, pid = excluded.pid")
        if ends:
            _insert(con, "INSERT INTO _runs (run_id, status, finished_at)", [
                ("run_id", "V", [rid for rid, _ in ends]), ("status", "V", [r["status"] for _, r in ends]),
                ("finished_at", "T", [r["finished_at"] for _, r in ends])],
                "ON CONFLICT (run_id) DO UPDATE SET status = excluded.status, finished_at = excluded.finished_at")
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
                ("duration_ms", "X", "date_diff('millisecond', started_at, finished_at)"),
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
                if since is not None and (now - since >= AUTO_FLUSH_MAX_S or
                                          now - since >= AUTO_FLUSH_S and now - last >= 0.05):
                    with self._io:
                        if not self._stop.is_set():
                            self._flush_locked()
                if self._attached and (time.monotonic() - self._last_io >= IDLE_DETACH_S
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

    # ------------------------------------------------------------ reads

    def lookup_results(self, keys: Iterable[str]) -> dict[str, tuple[Any, str]]:
        """Stored results for the keys that have one: key -> (value, value_hash). One query.

        The writer answers from its buffer what it has not written yet, so a lookup never
        waits for a flush of the rows buffered meanwhile (a rerun buffers one per node)."""
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return {}

        def query(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str, str]]:
            with self._mu:
                pending = self._buf.results if self.writer else {}
                buffered = [(k, pending[k][0], pending[k][1]) for k in wanted if k in pending]
            rest = [k for k in wanted if k not in pending] if buffered else wanted
            return buffered + con.execute(
                "SELECT r.key, r.value, r.value_hash FROM _results r SEMI JOIN "
                "(SELECT unnest($1::VARCHAR[]) AS key) q ON r.key = q.key", [rest]).fetchall()

        return {k: (_loaded(v), h) for k, v, h in self._read(query, flush=False)}

    def has_results(self, keys: Iterable[str]) -> set[str]:
        """The keys that have a stored result, without loading the values."""
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return set()
        rows = self._read(lambda con: con.execute(
            "SELECT r.key FROM _results r SEMI JOIN (SELECT unnest($1::VARCHAR[]) AS key) q "
            "ON r.key = q.key", [wanted]).fetchall())
        return {r[0] for r in rows}

    _NODE_COLS = ("run_id, node_id, role, status, cached, attempts, key, def_hash, input_hash, "
                  "input_hashes, output_hash, error")

    @staticmethod
    def _node_state(row: tuple) -> NodeState:
        (run_id, node_id, role, status, cached, attempts, key, def_hash, input_hash, input_hashes,
         output_hash, error) = row
        return NodeState(run_id, node_id, role, status, cached, attempts, key, def_hash, input_hash,
                         None if input_hashes is None else json.loads(input_hashes), output_hash, error)

    def run_node_states(self, run_id: str) -> dict[str, NodeState]:
        """Every node a run recorded, by node id: what `--resume` reuses or re-runs.

        The writer remembers which rows the run has (it is the only writer): the nodes a
        resumed run adds are then appended like a new run's, not upserted (~5x the cost)."""
        rows = self._read(lambda con: con.execute(
            f"SELECT {self._NODE_COLS} FROM _node_runs WHERE run_id = $1", [run_id]).fetchall())
        states = {r[1]: self._node_state(r) for r in rows}
        if self.writer:
            with self._mu:
                self._rows_of[run_id] = set(states)
        return states

    def last_node_records(self, flow: str, node_ids: Iterable[str] | None = None, *,
                          exclude_run: str | None = None) -> dict[str, NodeState]:
        """The newest record of each node in earlier runs of a flow (that had a key), to
        explain why a node re-runs ("prompt changed", "input x changed")."""
        ids = None if node_ids is None else list(dict.fromkeys(node_ids))
        sql = (f"SELECT {', '.join('n.' + c.strip() for c in self._NODE_COLS.split(','))} "
               f"FROM _node_runs n JOIN _runs r USING (run_id) "
               f"WHERE r.flow = $1 AND n.key IS NOT NULL AND n.run_id IS DISTINCT FROM $2 "
               + ("" if ids is None else "AND n.node_id IN (SELECT unnest($3::VARCHAR[])) ")
               + "QUALIFY row_number() OVER (PARTITION BY n.node_id ORDER BY "
                 "coalesce(n.finished_at, n.started_at) DESC NULLS LAST, r.started_at DESC) = 1")
        params: list = [flow, exclude_run] + ([] if ids is None else [ids])
        rows = self._read(lambda con: con.execute(sql, params).fetchall())
        return {r[1]: self._node_state(r) for r in rows}

    def load_turns(self, run_id: str, node_id: str, key: str | None = None) -> list[Turn]:
        """A task call's journal, in order; with `key`, only steps taken under that key."""
        rows = self._read(lambda con: con.execute(
            "SELECT seq, kind, payload, key FROM _turns WHERE run_id = $1 AND node_id = $2 "
            "AND ($3::VARCHAR IS NULL OR key = $3) ORDER BY seq", [run_id, node_id, key]).fetchall())
        return [Turn(s, k, _loaded(p), ky) for s, k, p, ky in rows]

    def result_journal(self, key: str, kind: str) -> list[Any]:
        """The journal steps of one kind that the call which produced the result stored
        under `key` took, in order (e.g. what a session call added to its role's session)."""
        rows = self._read(lambda con: con.execute(
            "SELECT t.payload FROM _turns t JOIN _results r ON t.run_id = r.run_id AND t.node_id = r.node_id "
            "WHERE r.key = $1 AND t.key = $1 AND t.kind = $2 ORDER BY t.seq", [key, kind]).fetchall())
        return [_loaded(r[0]) for r in rows]

    def node_journal(self, run_id: str, node_id: str) -> dict | None:
        """What `show RUN NODE` prints beyond its row: {"key"; "result": its stored value, or
        absent when it has none; "steps": the journal of the call that produced it (this run's, or
        for a reused node the run that stored it), in order}; None when the run has no node."""
        def query(con: duckdb.DuckDBPyConnection) -> tuple[tuple | None, list[tuple], tuple | None]:
            row = con.execute("SELECT key FROM _node_runs WHERE run_id = $1 AND node_id = $2",
                              [run_id, node_id]).fetchone()
            if row is None or row[0] is None:
                return row, [], None
            steps = con.execute("SELECT payload FROM _turns WHERE run_id = $1 AND node_id = $2 AND key = $3 "
                                "ORDER BY seq", [run_id, node_id, row[0]]).fetchall()
            if not steps:
                steps = con.execute(
                    "SELECT t.payload FROM _turns t JOIN _results r ON t.run_id = r.run_id AND t.node_id = r.node_id "
                    "WHERE r.key = $1 AND t.key = $1 ORDER BY t.seq", [row[0]]).fetchall()
            return row, steps, con.execute("SELECT value FROM _results WHERE key = $1", [row[0]]).fetchone()

        row, steps, result = self._read(query)
        if row is None:
            return None
        found: dict[str, Any] = {"key": row[0], "steps": [_loaded(s[0]) for s in steps]}
        if result is not None:
            found["result"] = _loaded(result[0])
        return found

    def load_session(self, run_id: str, role: str) -> list[Any]:
        """A role's session memory in this run, oldest message first."""
        rows = self._read(lambda con: con.execute(
            "SELECT message FROM _sessions WHERE run_id = $1 AND role = $2 ORDER BY seq",
            [run_id, role]).fetchall())
        return [_loaded(r[0]) for r in rows]

    _RUN_SQL = (
        "SELECT r.run_id, r.flow, r.entry, r.status, r.started_at, r.finished_at, r.plan_hash, r.inputs, "
        "r.pid, count(n.node_id), "
        + ", ".join(f"count(*) FILTER (WHERE n.status = '{s}')" for s in STATUSES)
        + ", count(*) FILTER (WHERE n.cached), coalesce(sum(n.prompt_tokens), 0), "
        "coalesce(sum(n.completion_tokens), 0), coalesce(sum(n.cost_usd), 0) "
        "FROM _runs r LEFT JOIN _node_runs n USING (run_id) {where} GROUP BY ALL "
        "ORDER BY r.started_at DESC NULLS LAST, r.run_id DESC {limit}")

    def _runs(self, where: str = "", params: list | None = None, limit: int | None = None) -> list[dict]:
        sql = self._RUN_SQL.format(where=where, limit="" if limit is None else f"LIMIT {int(limit)}")
        rows = self._read(lambda con: con.execute(sql, params or []).fetchall())
        holder = self._live_writer_pid()
        out = []
        for row in rows:
            (run_id, flow, entry, status, started, finished, plan_hash, inputs, pid, total) = row[:10]
            counts = dict(zip(STATUSES, row[10:16]))
            cached, ptok, ctok, cost = row[16:20]
            died = _died(status, pid, holder)
            out.append({
                "run_id": run_id, "flow": flow, "entry": entry, "status": "interrupted" if died else status,
                "started_at": _aware(started), "finished_at": _aware(finished),
                "live": status == "running" and not died,
                "plan_hash": plan_hash, "inputs": None if inputs is None else _loaded(inputs),
                "pid": pid, "nodes": total, **counts, "cached": cached,
                "prompt_tokens": int(ptok), "completion_tokens": int(ctok), "cost_usd": float(cost)})
        return out

    def _live_writer_pid(self) -> int | None:
        """The pid of the process writing this database now, if any."""
        if self.writer:
            return os.getpid()
        pid, _ = _read_holder(self._lock_path, patience=0)
        return pid if pid is not None and _pid_alive(pid) else None

    def list_runs(self, limit: int | None = None) -> list[dict]:
        """Runs, newest first, with node counts per status, tokens and cost. A run recorded
        as running whose process is gone reads `interrupted`, with `live` false."""
        return self._runs(limit=limit)

    def get_run(self, run_id: str) -> dict | None:
        """One run as in `list_runs`, or None."""
        found = self._runs("WHERE r.run_id = $1", [run_id])
        return found[0] if found else None

    def latest_run(self, flow: str, entry: str | None = None, *, unfinished_only: bool = False) -> dict | None:
        """The newest run of a flow (and entry), e.g. the one `--resume` continues;
        unfinished means anything but succeeded."""
        where = "WHERE r.flow = $1 AND ($2::VARCHAR IS NULL OR r.entry = $2)"
        if unfinished_only:
            where += " AND r.status <> 'succeeded'"
        found = self._runs(where, [flow, entry], limit=1)
        return found[0] if found else None

    def run_nodes(self, run_id: str) -> list[dict]:
        """Each node of a run for `show`: status, reused or not, attempts, duration, tokens, cost,
        error. The nodes a dead run (see `list_runs`) left running read `cancelled`."""
        def query(con: duckdb.DuckDBPyConnection) -> tuple[tuple | None, list[tuple]]:
            run = con.execute("SELECT status, pid FROM _runs WHERE run_id = $1", [run_id]).fetchone()
            return run, con.execute(
                "SELECT node_id, role, status, cached, attempts, duration_ms, prompt_tokens, completion_tokens, "
                "cost_usd, llm_calls, error, started_at, finished_at FROM _node_runs WHERE run_id = $1 "
                "ORDER BY started_at NULLS LAST, node_id", [run_id]).fetchall()

        run, rows = self._read(query)
        died = run is not None and _died(run[0], run[1], self._live_writer_pid())
        nodes = []
        for n, role, st, c, a, d, p, ct, cost, calls, e, s, f in rows:
            if died and st == "running":
                st, e = "cancelled", DIED_ERROR
            nodes.append({"node": n, "role": role, "status": st, "cached": bool(c), "attempts": a,
                          "duration_ms": d, "prompt_tokens": p, "completion_tokens": ct, "cost_usd": cost,
                          "llm_calls": calls, "error": e, "started_at": _aware(s), "finished_at": _aware(f)})
        return nodes

    def check_consistency(self) -> list[str]:
        """Problems found in the database (empty when sound): the schema version, the
        public views, statuses, and that every succeeded node has its stored result."""
        def check(con: duckdb.DuckDBPyConnection) -> list[str]:
            problems = []
            row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None or row[0] != str(SCHEMA_VERSION):
                problems.append(f"schema_version is {row[0] if row else 'missing'!r}, expected {SCHEMA_VERSION}")
            for view, cols in PUBLIC_VIEWS.items():
                found = tuple(r[0] for r in con.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_catalog = 'db' "
                    "AND table_name = $1 ORDER BY ordinal_position", [view]).fetchall())
                if found != cols:
                    problems.append(f"view {view} has columns {found}, expected {cols}")
            queries = {
                "node runs with an unknown status":
                    f"SELECT count(*) FROM _node_runs WHERE status NOT IN {STATUSES}",
                "runs with an unknown status": f"SELECT count(*) FROM _runs WHERE status NOT IN {RUN_STATUSES}",
                "succeeded nodes without a key or output hash":
                    "SELECT count(*) FROM _node_runs WHERE status = 'succeeded' AND (key IS NULL OR output_hash IS NULL)",
                "succeeded nodes whose result is missing":
                    "SELECT count(*) FROM _node_runs n ANTI JOIN _results r ON n.key = r.key "
                    "WHERE n.status = 'succeeded' AND n.key IS NOT NULL",
                "node runs of unknown runs": "SELECT count(*) FROM _node_runs n ANTI JOIN _runs r USING (run_id)",
                "duplicate journal steps":
                    "SELECT count(*) FROM (SELECT 1 FROM _turns GROUP BY run_id, node_id, seq HAVING count(*) > 1)",
                "duplicate session messages":
                    "SELECT count(*) FROM (SELECT 1 FROM _sessions GROUP BY run_id, role, seq HAVING count(*) > 1)",
            }
            for label, sql in queries.items():
                n = con.execute(sql).fetchone()[0]  # type: ignore[index]  # duckdb: count(*) has a row
                if n:
                    problems.append(f"{n} {label}")
            return problems
        return self._read(check)
