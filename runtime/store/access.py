"""How processes share the database file: one writer, readers at any time.

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
  which checkpoints the WAL into the file, once idle for `IDLE_DETACH_S` with a log
  under `IDLE_DETACH_MAX_WAL_BYTES`, or as soon as a reader asks.
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
"""
from __future__ import annotations

import errno
import fcntl
import os
import re
import shlex
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Callable, TypeVar

import duckdb

from . import schema
from .errors import StoreEmpty, StoreError, StoreLocked, StoreNotADatabase, translate

IDLE_DETACH_S = 0.2  # writer lets go of the file after this long without a flush
# ... unless its write-ahead log has reached this size. Letting go checkpoints the log, which
# cuts the run's rows into a row group of their own, and a later checkpoint rewrites whole
# the row groups it can merge: a run resumed after a kill (whose log it replayed) let go as it
# started, and its closing checkpoint then rewrote ~350k rows of earlier runs (+190 MB, 2-4 s).
# A waiting reader still gets the file at once; other programs wait for the run to go idle
# with a smaller log, or to end.
IDLE_DETACH_MAX_WAL_BYTES = 8 << 20
READER_YIELD_S = 1.0  # a writer waits at most this long for waiting readers
READ_TIMEOUT_S = 5.0  # a reader gives up after this long
WRITE_ATTACH_TIMEOUT_S = 10.0  # a writer waits this long for another program to let go
# A writer closed without a checkpoint (a no-op rerun) leaves a write-ahead log smaller than
# this for the next open to replay (~6 ms of CPU per MB), instead of checkpointing it into the
# file (~16 ms per MB and the fsyncs): what it committed is durable in the log already. A
# bigger log is checkpointed all the same.
CLOSE_CHECKPOINT_WAL_BYTES = 8 << 20

# The writer's DuckDB runs its statements on one thread: its batches are small and many (one
# per commit under strict durability), where DuckDB's worker threads cost ~20% more CPU than
# they save, on a machine whose other cores run the tools. Its memory is DuckDB's default
# bound (80% of the machine's), not a tighter one: DuckDB holds a stored value whole, so a
# bound of 192 MB kept a rerun of 100k nodes at ~370 MB instead of ~460 MB, but a flow with
# six results of 30 MB could then neither write them in one commit nor read them back at its
# next run's start. Queries that need more than the bound spill to `<database>.tmp`.
#
# It checkpoints its log into the file when the log reaches WAL_CHECKPOINT_BYTES, not
# DuckDB's 16 MB. A checkpoint in the middle of a run cuts the tables' row groups where it
# falls, and a later checkpoint merges ("vacuums") the pieces by rewriting them whole: in a
# 100k-node rerun that rewrite took 1.5 s and +160 MB of memory, the run's peak (~460 MB).
# Under the bound, a run's rows are checkpointed when the writer lets go of the file: at the
# run's end, for a waiting reader, or when idle. The cost: a killed run leaves up to this much
# log, which the next open replays (~6 ms of CPU per MB: about a second), and the log's rows
# wait in memory until the checkpoint, as they would stay in DuckDB's cache after it.
WAL_CHECKPOINT_BYTES = 128 << 20
WRITER_CONFIG: dict[str, str | bool | int | float | list[str]] = {
    "threads": 1, "wal_autocheckpoint": f"{WAL_CHECKPOINT_BYTES >> 20}MB"}

_T = TypeVar("_T")
_DUCK_PID = re.compile(r"held in (.*?) \(PID (\d+)\)")


def _own_cmdline() -> str:
    argv = list(sys.argv) or ["python"]
    if argv[0] in ("-c", "-m", ""):
        argv = [os.path.basename(sys.executable)] + argv
    else:
        argv[0] = os.path.basename(argv[0])
    return shlex.join(argv)[:300]


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


def _describe(pid: int | None, cmdline: str | None) -> str:
    if pid is None:
        return "another process"
    return f"pid {pid}: {cmdline}" if cmdline else f"pid {pid}"


def _leave_log_on_detach(con: duckdb.DuckDBPyConnection) -> None:
    """Detaching from now on leaves the write-ahead log for the next open to replay. A DuckDB
    without the setting checkpoints as before."""
    try:
        con.execute("SET checkpoint_on_detach = 'DISABLED'")
    except duckdb.Error:
        pass


# Writers of this process, by resolved path: a reader here reads through them.
_WRITERS: "weakref.WeakValueDictionary[str, FileAccess]" = weakref.WeakValueDictionary()
_WRITERS_MU = threading.Lock()


class FileAccess:
    """One process's access to the database file: the writer lock, attaching and detaching
    the file on a private in-memory DuckDB instance, and reads that wait their turn."""

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
        self._io = threading.RLock()  # one user of the DuckDB connection at a time
        self._last_io = time.monotonic()
        self._stop = threading.Event()
        self._schema_checked = False

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

    def _lock_and_attach(self) -> None:
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
        self._duck = self._instance()
        with self._io:
            self._attach()
            schema.ensure_schema(self._duck, self._shown(), writer=True)
            schema.record_dead_runs(self._duck, self._shown())

    def _open_reader(self) -> None:
        self._check_path()
        self._while_a_writer_creates(self._check_exists)
        try:
            self._wait_fd = self._open_lock_file(self._wait_path, os.O_RDWR)
        except OSError:
            try:
                self._wait_fd = os.open(self._wait_path, os.O_RDONLY)
            except OSError:
                self._wait_fd = None  # cannot signal: plain retries still work
        self._duck = self._instance()
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

    def _release(self, remove_made_files: bool = False, checkpoint: bool = True) -> None:
        self._closed = True
        self._stop.set()
        with self._io:
            if self._attached:
                try:
                    self._detach(checkpoint=checkpoint or self._wal_bytes() >= CLOSE_CHECKPOINT_WAL_BYTES)
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

    def _wal_bytes(self) -> int:
        """The size of the database's write-ahead log (0 when there is none)."""
        try:
            return os.path.getsize(self.path.with_name(self.path.name + ".wal"))
        except OSError:
            return 0

    def _detach(self, checkpoint: bool = True) -> None:
        """Let go of the file; a writer checkpoints its log into it unless told not to."""
        assert self._duck is not None
        self._attached = False
        if not checkpoint:
            _leave_log_on_detach(self._duck)
        try:
            self._duck.execute("USE memory")
            self._duck.execute("DETACH db")
        except duckdb.Error as err:
            # a broken instance (after a fatal error) cannot be reused: start afresh
            try:
                self._duck.close()
            except duckdb.Error:
                pass
            self._duck = self._instance()
            raise self._translate(err) from None

    def _instance(self) -> duckdb.DuckDBPyConnection:
        """A new in-memory DuckDB instance to attach the file to. DuckDB draws a progress bar
        on standard output for a query that runs over 2 s (a checkpoint, `show` of a huge
        run), where a run prints only its result: its session never draws one."""
        if self.writer:
            con = duckdb.connect(":memory:", config={**WRITER_CONFIG, "temp_directory": f"{self.path}.tmp"})
        else:
            con = duckdb.connect(":memory:")
        con.execute("SET enable_progress_bar = false; SET enable_progress_bar_print = false")
        return con

    def _translate(self, err: duckdb.Error) -> StoreError:
        return translate(err, self._shown())

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
                self._attach_checked()
                try:
                    return self._run(query)
                finally:
                    self._detach()
            finally:
                if signalled and self._wait_fd is not None:
                    fcntl.flock(self._wait_fd, fcntl.LOCK_UN)

    def _check_exists(self) -> None:
        if not self.path.exists():
            raise StoreEmpty(f"no database at {self._shown()} (nothing has run there yet?); "
                             f"use --db to point at one")

    def _attach_checked(self) -> None:
        """Attach for a read, checking the schema version at the first one. Caller holds `_io`."""
        self._while_a_writer_creates(self._attach_once_checked)

    def _attach_once_checked(self) -> None:
        self._attach()
        if not self._schema_checked:
            try:
                self._run(lambda con: schema.ensure_schema(con, self._shown(), writer=False))
            except StoreError:
                self._detach()
                raise
            self._schema_checked = True

    def _while_a_writer_creates(self, attempt: Callable[[], None]) -> None:
        """`attempt()`, tried again while the database it finds is not there yet, empty or not
        yet a DuckDB file, and a live writer holds the lock: that writer is creating it (it
        takes the lock, then DuckDB makes the file, then the schema is committed). Up to
        READ_TIMEOUT_S; with no live writer the error is reported at once."""
        deadline = time.monotonic() + READ_TIMEOUT_S
        while True:
            try:
                attempt()
                return
            except (StoreEmpty, StoreNotADatabase):
                if self._live_writer_pid() is None or time.monotonic() > deadline:
                    raise
            time.sleep(0.01)

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

    def _live_writer_pid(self) -> int | None:
        """The pid of the process writing this database now, if any."""
        if self.writer:
            return os.getpid()
        pid, _ = _read_holder(self._lock_path, patience=0)
        return pid if pid is not None and _pid_alive(pid) else None

    def _flush_locked(self) -> None:
        """Write what is buffered, before a writer reads: `BatchedWriter` buffers."""
