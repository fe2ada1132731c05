"""The run history: the one package that owns the DuckDB connection and runs SQL.

Every node's result is kept under its content key, so later runs reuse it and an
interrupted run resumes. Callers buffer facts (`node_started`, `node_finished`,
`record_llm_call`, `append_turn`, ...) and `flush()` writes them all in one
transaction. A fact is durable once `flush()` has returned; a kill at any moment
leaves the last committed flush and a database that opens and passes
`check_consistency()`. Values are stored as JSON text, never pickles.

The store keeps what it is given. Callers must not pass API keys or other secrets
in values, inputs, turns, sessions or errors.

One job per module:

* `access`: how processes share the file (the writer lock, attach/detach, readers' turn);
* `schema`: tables, public views, the schema version, what an open does to a database;
* `writes`: the writer's buffer, batched transactions, the janitor thread;
* `queries`: the reads for reuse, resume, journals, `runs` and `show`;
* `records`, `errors`: the statuses, records and value encoding; the errors.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

from .access import IDLE_DETACH_S, READ_TIMEOUT_S, READER_YIELD_S, WRITE_ATTACH_TIMEOUT_S
from .errors import StoreError, StoreLocked, StoreNotADatabase, StoreSchemaError
from .queries import Queries
from .records import (DIED_ERROR, AgentRecipe, FINAL_NODE_STATUSES, FINAL_RUN_STATUSES, MAX_VALUE_BYTES, NO_VALUE,
                      RUN_STATUSES, STATUSES, WRAPPED, NodeProgress, NodeState, Preloaded, Turn, ValueTooLarge,
                      bounded_json, result_too_large)
from .schema import PUBLIC_VIEWS, SCHEMA_VERSION
from .writes import AUTO_FLUSH_MAX_S, AUTO_FLUSH_S, JANITOR_TICK_S

__all__ = [
    "AgentRecipe", "AUTO_FLUSH_MAX_S", "AUTO_FLUSH_S", "DIED_ERROR", "FINAL_NODE_STATUSES", "FINAL_RUN_STATUSES",
    "IDLE_DETACH_S", "JANITOR_TICK_S", "MAX_VALUE_BYTES", "NO_VALUE", "PUBLIC_VIEWS", "Preloaded", "READER_YIELD_S", "READ_TIMEOUT_S",
    "RUN_STATUSES", "SCHEMA_VERSION", "STATUSES", "WRAPPED", "WRITE_ATTACH_TIMEOUT_S", "NodeProgress", "NodeState",
    "Store", "StoreError", "StoreLocked", "StoreNotADatabase", "StoreSchemaError", "Turn", "ValueTooLarge", "bounded_json", "result_too_large",
]


class Store(Queries):
    """The run history in one DuckDB file. Open with `open_writer` or `open_reader`."""

    @classmethod
    def open_writer(cls, path: str | os.PathLike[str]) -> "Store":
        """Open (creating it and its directory if needed) for one run's writes.

        Raises StoreLocked if another process is writing this database."""
        store = cls(Path(path).absolute(), writer=True)
        try:
            store._lock_and_attach()
            store._start_janitor()
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

    def close(self, checkpoint: bool = True) -> None:
        """Flush, checkpoint and let go of the database and the writer lock. Without
        `checkpoint`, a small write-ahead log is left for the next open to replay: for a
        writer that wrote little and should end at once (a no-op rerun)."""
        if self._closed:
            return
        try:
            if self.writer:
                self._stop.set()
                if self._janitor is not None and self._janitor is not threading.current_thread():
                    self._janitor.join()
                self.commit_buffered()
        finally:
            self._release(checkpoint=checkpoint)

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
