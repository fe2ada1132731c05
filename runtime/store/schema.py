"""The database schema: its tables and public views, its version, and what an open does to a
database before use (create it, check its version, record runs whose process died)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import duckdb

from .errors import StoreEmpty, StoreError, StoreNotADatabase, StoreSchemaError, translate
from .records import DIED_ERROR

SCHEMA_VERSION = 5

PUBLIC_VIEWS: dict[str, tuple[str, ...]] = {
    "runs": ("run_id", "flow", "entry", "status", "started_at", "finished_at"),
    "node_runs": ("run_id", "node_id", "role", "status", "cached", "attempts", "started_at",
                  "finished_at", "error"),
    "llm_calls": ("run_id", "node_id", "model", "prompt_tokens", "completion_tokens", "cost_usd",
                  "latency_ms", "cached", "created_at"),
    "programs": ("run_id", "node_id", "attempt", "source", "status", "diagnostics", "created_at"),
    "agent_turns": ("agent", "generation", "turn", "role", "content", "tokens", "run_id", "node_id",
                    "created_at"),
    # the recipes of agents created at run time (`spawn = true`): `name` is namespaced by its
    # creator (`architect/math_solver`), one row per version
    "agents": ("name", "creator", "version", "instructions", "tools", "model", "depth", "created_run_id",
               "created_node_id", "created_at"),
}

# Programs models wrote (`run_program`): `node_id` is the task call, `attempt` numbers its
# programs (`<node_id>/program#<attempt>`); status rejected | running | succeeded | failed.
_PROGRAMS_TABLE = """CREATE TABLE _programs (
    run_id VARCHAR NOT NULL, node_id VARCHAR NOT NULL, attempt INTEGER NOT NULL, source VARCHAR,
    status VARCHAR NOT NULL, diagnostics VARCHAR, created_at TIMESTAMP,
    PRIMARY KEY (run_id, node_id, attempt))"""
_PROGRAMS_VIEW = f"CREATE VIEW programs AS SELECT {', '.join(PUBLIC_VIEWS['programs'])} FROM _programs"

# Persistent agents (`memory = "persistent"`): each agent's conversation across runs, one row
# per message, numbered within its generation; `agentflow agents reset` starts a new
# generation (a row in _agent_resets) and keeps the old one queryable.
_AGENT_TABLES = (
    "CREATE TABLE _agent_turns (agent VARCHAR NOT NULL, generation INTEGER NOT NULL, turn INTEGER NOT NULL, "
    "message JSON NOT NULL, tokens INTEGER NOT NULL, run_id VARCHAR, node_id VARCHAR, created_at TIMESTAMP)",
    "CREATE TABLE _agent_resets (agent VARCHAR NOT NULL, generation INTEGER NOT NULL, reset_at TIMESTAMP, "
    "PRIMARY KEY (agent, generation))",
    "CREATE VIEW agent_turns AS SELECT agent, generation, turn, message->>'role' AS role, "
    "message->>'content' AS content, tokens, run_id, node_id, created_at FROM _agent_turns",
)

# Keyed by recipe, not by run: a recipe outlives the run that created it.
_AGENT_RECIPES = """CREATE TABLE _agent_recipes (
    creator VARCHAR NOT NULL, name VARCHAR NOT NULL, version INTEGER NOT NULL, recipe_hash VARCHAR NOT NULL,
    instructions VARCHAR NOT NULL, tools JSON NOT NULL, model VARCHAR, depth INTEGER NOT NULL,
    created_run_id VARCHAR, created_node_id VARCHAR, created_at TIMESTAMP,
    PRIMARY KEY (creator, name, version))"""
_AGENTS_VIEW = ("CREATE VIEW agents AS SELECT creator || '/' || name AS name, creator, version, instructions, "
                "tools, model, depth, created_run_id, created_node_id, created_at FROM _agent_recipes")

_SCHEMA = f"""
CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL);
CREATE TABLE _runs (
    run_id VARCHAR PRIMARY KEY, flow VARCHAR, entry VARCHAR, status VARCHAR NOT NULL,
    started_at TIMESTAMP, finished_at TIMESTAMP, plan_hash VARCHAR, inputs JSON, pid INTEGER,
    fingerprint VARCHAR, value JSON);
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
{_PROGRAMS_TABLE};
{_PROGRAMS_VIEW};
{";".join(_AGENT_TABLES)};
{_AGENT_RECIPES};
{_AGENTS_VIEW};
INSERT INTO meta VALUES ('schema_version', '{SCHEMA_VERSION}');
"""

# The statements that bring a database of version N to N + 1, run in one transaction with
# the version bump; every version since the first release opens.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    # a run's fingerprint and value: a no-op rerun copies a finished run (runner.py)
    1: ("ALTER TABLE _runs ADD COLUMN fingerprint VARCHAR", "ALTER TABLE _runs ADD COLUMN value JSON"),
    # the programs models wrote (`programs = true`) and their public view
    2: (_PROGRAMS_TABLE, _PROGRAMS_VIEW),
    3: _AGENT_TABLES,  # persistent agents' conversations
    # agents created at run time: their recipes, and the public view `agents`
    4: (_AGENT_RECIPES, _AGENTS_VIEW),
}


def ensure_schema(con: duckdb.DuckDBPyConnection, where: str, writer: bool) -> None:
    """Create the schema in a new database (a writer only), or check an existing one's version."""
    try:
        names = {r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_catalog = 'db'"
        ).fetchall()}
        if "meta" not in names:
            if names:
                raise StoreNotADatabase(f"{where} is a DuckDB database but not an agentflow "
                                        f"one (it has no meta table); use --db to pick another file")
            if not writer:
                raise StoreEmpty(f"{where} is an empty database; nothing has run there yet")
            con.execute("BEGIN")
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    con.execute(stmt)
            con.execute("COMMIT")
            return
        row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except duckdb.Error as err:
        raise translate(err, where) from None
    if row is None or not str(row[0]).isdigit():
        raise StoreSchemaError(f"database {where} has no valid schema version "
                               f"({row[0] if row else 'missing'!r}); it was not written by "
                               f"agentflow or is damaged; use --db to pick another file")
    version = int(row[0])
    if version > SCHEMA_VERSION:
        raise StoreSchemaError(
            f"database {where} was written by a newer agentflow (schema version "
            f"{version}; this agentflow reads up to version {SCHEMA_VERSION}); upgrade agentflow "
            f"or use --db to pick another database")
    if version < min(MIGRATIONS):
        raise StoreSchemaError(f"database {where} has schema version {version}, which "
                               f"this agentflow cannot upgrade; use --db to start a new one")
    if version < SCHEMA_VERSION and writer:  # readers read older versions as they are
        migrate(con, version, where)


def migrate(con: duckdb.DuckDBPyConnection, version: int, where: str) -> None:
    """Upgrade a database from `version` to `SCHEMA_VERSION`, all steps in one transaction."""
    with one_transaction(con, where):
        for step in range(version, SCHEMA_VERSION):
            for stmt in MIGRATIONS[step]:
                con.execute(stmt)
        con.execute("UPDATE meta SET value = $1 WHERE key = 'schema_version'", [str(SCHEMA_VERSION)])


def record_dead_runs(con: duckdb.DuckDBPyConnection, where: str) -> None:
    """Runs still recorded as running are dead (this writer holds the lock, so no other
    writer lives): record them as interrupted and their running nodes as cancelled, so
    the public views stop saying `running` too. One cheap query when there are none."""
    try:
        if not con.execute("SELECT count(*) FROM _runs WHERE status = 'running'").fetchone()[0]:  # type: ignore[index]  # duckdb: count(*) has a row
            return
    except duckdb.Error as err:
        raise translate(err, where) from None
    with one_transaction(con, where):
        con.execute("UPDATE _node_runs SET status = 'cancelled', error = $1 WHERE status = 'running' "
                    "AND run_id IN (SELECT run_id FROM _runs WHERE status = 'running')", [DIED_ERROR])
        con.execute("UPDATE _runs SET status = 'interrupted' WHERE status = 'running'")


@contextmanager
def one_transaction(con: duckdb.DuckDBPyConnection, where: str) -> Iterator[None]:
    """The statements run inside it commit together or not at all; a failure is a StoreError."""
    try:
        con.execute("BEGIN")
        yield
        con.execute("COMMIT")
    except duckdb.Error as err:
        try:
            con.execute("ROLLBACK")
        except duckdb.Error:
            pass
        raise translate(err, where) from None
