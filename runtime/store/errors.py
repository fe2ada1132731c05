"""The store's errors: each one a message the user can act on (a `UsageError`, exit code 2)."""
from __future__ import annotations

from pathlib import Path

import duckdb

from agentflow.compiler.errors import UsageError

class StoreError(UsageError):
    """A database problem the user can act on; `str(err)` is the whole message."""


class StoreLocked(StoreError):
    """Another process holds the database."""

    def __init__(self, message: str, path: Path, pid: int | None = None, cmdline: str | None = None) -> None:
        super().__init__(message)
        self.path, self.pid, self.cmdline = path, pid, cmdline


class StoreSchemaError(StoreError):
    """The database was written with a schema this version does not understand."""


class StoreEmpty(StoreError):
    """No run has stored anything there: no file, or a DuckDB database with nothing in it."""


class StoreNotADatabase(StoreError):
    """The path holds a file that is no agentflow database: an open that fails on it leaves
    nothing behind."""


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def translate(err: duckdb.Error, where: str) -> StoreError:
    """The message for a DuckDB error on the database the user knows as `where`."""
    text = str(err)
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
