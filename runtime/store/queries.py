"""Queries: the reads behind reuse and resume (results, node states, journals, sessions) and
behind `runs` and `show` (runs and their nodes), and the consistency check."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Iterable

import duckdb

from .records import DIED_ERROR, RUN_STATUSES, STATUSES, AgentRecipe, NodeProgress, NodeState, Preloaded, Turn, loaded
from .schema import PUBLIC_VIEWS, SCHEMA_VERSION
from .writes import BatchedWriter


def _aware(at: datetime | None) -> datetime | None:
    return None if at is None else at.replace(tzinfo=timezone.utc)


def _died(status: str, pid: int | None, holder: int | None) -> bool:
    """Whether a run recorded as running is dead: its process (kill -9, power loss) no
    longer holds the writer lock, so it can never record how it ended."""
    return status == "running" and (pid is None or pid != holder)


class Queries(BatchedWriter):
    """A store's reads. The writer answers some from what it has buffered or remembers."""

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

        return {k: (loaded(v), h) for k, v, h in self._read(query, flush=False)}

    def values_by_hash(self, hashes: Iterable[str]) -> dict[str, Any]:
        """Stored result values by value hash, for the hashes some result has: a node keeps
        its inputs as hashes, and most inputs are earlier nodes' results (`agentflow ui`)."""
        wanted = list(dict.fromkeys(hashes))
        if not wanted:
            return {}
        rows = self._read(lambda con: con.execute(
            "SELECT value_hash, any_value(value) FROM _results WHERE value_hash IN "
            "(SELECT unnest($1::VARCHAR[])) GROUP BY value_hash", [wanted]).fetchall())
        return {h: loaded(v) for h, v in rows}

    def preload_results(self, flow: str, max_rows: int, max_bytes: int, max_keys: int) -> Preloaded:
        """The newest stored result of each node of the flow's earlier runs, by key, up to
        `max_rows` results or `max_bytes` of value text, and every other stored key if there
        are at most `max_keys` keys: what a rerun looks up, in two queries instead of one per
        node."""
        def query(con: duckdb.DuckDBPyConnection) -> Preloaded:
            cursor = con.execute(
                "SELECT r.key, r.value_hash || ' ' || r.value FROM _results r SEMI JOIN ("
                "SELECT n.key FROM _node_runs n JOIN _runs u USING (run_id) WHERE u.flow = $1 "
                "AND n.status = 'succeeded' AND n.key IS NOT NULL QUALIFY row_number() OVER ("
                "PARTITION BY n.node_id ORDER BY n.finished_at DESC NULLS LAST) = 1) k ON r.key = k.key "
                "LIMIT $2", [flow, max_rows])
            values: dict[str, str] = {}
            size = 0
            while size <= max_bytes and (rows := cursor.fetchmany(4096)):
                values.update(rows)
                size += sum(len(found) for _, found in rows)
            count = con.execute("SELECT count(*) FROM _results").fetchone()[0]  # type: ignore[index]  # duckdb: count(*) has a row
            others: set[int] | None = None
            if count <= max_keys:
                others, cursor = set(), con.execute("SELECT key FROM _results")
                while rows := cursor.fetchmany(8192):
                    others.update(hash(key) for (key,) in rows if key not in values)
            return Preloaded(values, others)
        return self._read(query)

    def finished_run(self, fingerprint: str) -> tuple[str, Any] | None:
        """(run id, value) of the newest succeeded run with this fingerprint (plan, inputs,
        tool code: see runner.py), whose every node a rerun would reuse; or None."""
        row = self._read(lambda con: con.execute(
            "SELECT run_id, value FROM _runs WHERE fingerprint = $1 AND status = 'succeeded' "
            "AND value IS NOT NULL ORDER BY finished_at DESC NULLS LAST LIMIT 1", [fingerprint]).fetchone())
        return None if row is None else (row[0], loaded(row[1]))

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

    def run_progress(self, run_id: str) -> dict[str, NodeProgress]:
        """The status and key of every node a run recorded, by node id: what `--resume`
        reuses or re-runs (`node_state` reads one node whole).

        The writer remembers which rows the run has (it is the only writer): the nodes a
        resumed run adds are then appended like a new run's, not upserted (~5x the cost)."""
        rows = self._read(lambda con: con.execute(
            "SELECT node_id, status, key FROM _node_runs WHERE run_id = $1", [run_id]).fetchall())
        shared = {status: status for status in STATUSES}  # one string per status, not per node
        progress = {node: NodeProgress(shared.get(status, status), key) for node, status, key in rows}
        if self.writer:
            with self._mu:
                self._rows_of[run_id] = set(progress)
        return progress

    def node_state(self, run_id: str, node_id: str) -> NodeState | None:
        """One node's whole record in a run, or None."""
        row = self._read(lambda con: con.execute(
            f"SELECT {self._NODE_COLS} FROM _node_runs WHERE run_id = $1 AND node_id = $2",
            [run_id, node_id]).fetchone())
        return None if row is None else self._node_state(row)

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
        return [Turn(s, k, loaded(p), ky) for s, k, p, ky in rows]

    def result_journal(self, key: str, kind: str) -> list[Any]:
        """The journal steps of one kind that the call which produced the result stored
        under `key` took, in order (e.g. what a session call added to its role's session)."""
        rows = self._read(lambda con: con.execute(
            "SELECT t.payload FROM _turns t JOIN _results r ON t.run_id = r.run_id AND t.node_id = r.node_id "
            "WHERE r.key = $1 AND t.key = $1 AND t.kind = $2 ORDER BY t.seq", [key, kind]).fetchall())
        return [loaded(r[0]) for r in rows]

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
        found: dict[str, Any] = {"key": row[0], "steps": [loaded(s[0]) for s in steps]}
        if result is not None:
            found["result"] = loaded(result[0])
        return found

    def load_session(self, run_id: str, role: str) -> list[Any]:
        """A role's session memory in this run, oldest message first."""
        rows = self._read(lambda con: con.execute(
            "SELECT message FROM _sessions WHERE run_id = $1 AND role = $2 ORDER BY seq",
            [run_id, role]).fetchall())
        return [loaded(r[0]) for r in rows]

    # ------------------------------------------------------------ persistent agents

    def agent_memory(self, agent: str, resumed_run: str | None = None) -> tuple[list[list[Any]], set[str]]:
        """A persistent agent's conversation in its current generation, one list of messages
        per call, oldest first; without the turns `resumed_run` stored (a resumed run adds
        them again in program order), whose calls' node ids come second."""
        def query(con: duckdb.DuckDBPyConnection) -> list[tuple]:
            return con.execute(
                "SELECT run_id, node_id, message FROM _agent_turns WHERE agent = $1 AND generation = "
                "(SELECT coalesce(max(generation), 0) FROM _agent_resets WHERE agent = $1) ORDER BY turn",
                [agent]).fetchall()
        calls: list[list[Any]] = []
        stored: set[str] = set()
        last = None
        for run_id, node_id, message in self._read(query) if self._has_agents() else ():
            if run_id == resumed_run:
                stored.add(node_id)
                continue
            if (run_id, node_id) != last:
                calls.append([])
                last = (run_id, node_id)
            calls[-1].append(loaded(message))
        return calls, stored

    def agents(self) -> list[dict]:
        """Every persistent agent: its current generation's turn count and tokens, and when
        it was last used (or reset), most recently used first."""
        if not self._has_agents():
            return []
        rows = self._read(lambda con: con.execute(
            "WITH g AS (SELECT agent, max(generation) AS generation, max(reset_at) AS reset_at FROM _agent_resets "
            "GROUP BY agent), a AS (SELECT DISTINCT agent FROM _agent_turns UNION SELECT agent FROM g) "
            "SELECT a.agent, coalesce(g.generation, 0), count(t.turn), coalesce(sum(t.tokens), 0), "
            "greatest(max(t.created_at), any_value(g.reset_at)), count(DISTINCT t.run_id) "
            "FROM a LEFT JOIN g USING (agent) LEFT JOIN _agent_turns t ON t.agent = a.agent "
            "AND t.generation = coalesce(g.generation, 0) GROUP BY ALL ORDER BY 5 DESC NULLS LAST, 1").fetchall())
        return [{"agent": a, "generation": g, "turns": n, "tokens": tok, "last_used": _aware(at), "runs": r}
                for a, g, n, tok, at, r in rows]

    def agent_turns(self, agent: str, generation: int | None = None) -> tuple[int, list[dict]] | None:
        """(generation, its turns in order) of a persistent agent: the current generation
        unless one is named; None when the agent has no such generation."""
        if not self._has_agents():
            return None

        def query(con: duckdb.DuckDBPyConnection) -> tuple[int | None, list[tuple]]:
            reset, used = con.execute(  # type: ignore[misc]  # duckdb: a SELECT without FROM has a row
                "SELECT (SELECT max(generation) FROM _agent_resets WHERE agent = $1), "
                "EXISTS (SELECT 1 FROM _agent_turns WHERE agent = $1)", [agent]).fetchone()
            current = reset or 0
            wanted = current if generation is None else generation
            if (reset is None and not used) or not 0 <= wanted <= current:
                return None, []
            return wanted, con.execute(
                "SELECT turn, message, tokens, run_id, node_id, created_at FROM _agent_turns "
                "WHERE agent = $1 AND generation = $2 ORDER BY turn", [agent, wanted]).fetchall()

        wanted, rows = self._read(query)
        if wanted is None:
            return None
        return wanted, [{"turn": t, "message": loaded(m), "tokens": n, "run_id": r, "node_id": node,
                         "created_at": _aware(at)} for t, m, n, r, node, at in rows]

    def _has_agents(self) -> bool:
        """Whether the database has the agents' tables (a reader may open an older one)."""
        return bool(self._read(lambda con: con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_catalog = 'db' "
            "AND table_name = '_agent_turns'").fetchone()[0]))  # type: ignore[index]  # duckdb: count(*) has a row

    # Node figures are summed per run first, then joined: grouping the joined rows by the run's
    # columns hashed its inputs once per node (100k nodes of a run with 600 KB of inputs: 13 s).
    _RUN_SQL = (
        "SELECT r.run_id, r.flow, r.entry, r.status, r.started_at, r.finished_at, r.plan_hash, r.inputs, "
        "r.pid, coalesce(n.total, 0), "
        + ", ".join(f"coalesce(n.{s}, 0)" for s in STATUSES)
        + ", coalesce(n.cached, 0), coalesce(n.prompt_tokens, 0), coalesce(n.completion_tokens, 0), "
        "coalesce(n.cost_usd, 0) FROM _runs r LEFT JOIN (SELECT run_id, count(*) AS total, "
        + ", ".join(f"count(*) FILTER (WHERE status = '{s}') AS {s}" for s in STATUSES)
        + ", count(*) FILTER (WHERE cached) AS cached, sum(prompt_tokens) AS prompt_tokens, "
        "sum(completion_tokens) AS completion_tokens, sum(cost_usd) AS cost_usd "
        "FROM _node_runs GROUP BY run_id) n USING (run_id) {where} "
        "ORDER BY r.started_at DESC NULLS LAST, r.run_id DESC {limit}")

    def _runs(self, where: str = "", params: list | None = None, limit: int | None = None) -> list[dict]:
        sql = self._RUN_SQL.format(where=where, limit="" if limit is None else f"LIMIT {int(limit)}")
        rows = self._read(lambda con: con.execute(sql, params or []).fetchall())
        holder = self._live_writer_pid()
        out = []
        for row in rows:
            (run_id, flow, entry, status, started, finished, plan_hash, inputs, pid, total) = row[:10]
            counts = dict(zip(STATUSES, row[10:10 + len(STATUSES)]))
            cached, ptok, ctok, cost = row[10 + len(STATUSES):]
            died = _died(status, pid, holder)
            out.append({
                "run_id": run_id, "flow": flow, "entry": entry, "status": "interrupted" if died else status,
                "started_at": _aware(started), "finished_at": _aware(finished),
                "live": status == "running" and not died,
                "plan_hash": plan_hash, "inputs": None if inputs is None else loaded(inputs),
                "pid": pid, "nodes": total, **counts, "cached": cached,
                "prompt_tokens": int(ptok), "completion_tokens": int(ctok), "cost_usd": float(cost)})
        return out

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

    def run_nodes(self, run_id: str, node_id: str | None = None) -> list[dict]:
        """Each node of a run for `show` (or only `node_id`'s, one of 100k without reading the
        others): status, reused or not, attempts, duration, tokens, cost, error. The nodes a
        dead run (see `list_runs`) left running read `cancelled`."""
        died, rows = self._node_rows(
            run_id, "node_id, status, role, cached, attempts, duration_ms, prompt_tokens, completion_tokens, "
                    "cost_usd, llm_calls, error, started_at, finished_at", node_id)
        nodes = []
        for n, st, role, c, a, d, p, ct, cost, calls, e, s, f in rows:
            if died and st == "running":
                st, e = "cancelled", DIED_ERROR
            nodes.append({"node": n, "role": role, "status": st, "cached": bool(c), "attempts": a,
                          "duration_ms": d, "prompt_tokens": p, "completion_tokens": ct, "cost_usd": cost,
                          "llm_calls": calls, "error": e, "started_at": _aware(s), "finished_at": _aware(f)})
        return nodes

    def run_statuses(self, run_id: str) -> dict[str, tuple[str, bool]]:
        """node id -> (status, reused) of each node of a run, as `run_nodes` has them: what
        `agentflow ui` reads every second, without the rest of the rows (at 100k nodes those
        took 0.5 s, the file held from the writer meanwhile)."""
        died, rows = self._node_rows(run_id, "node_id, status, cached")
        return {n: ("cancelled" if died and st == "running" else st, bool(c)) for n, st, c in rows}

    def _node_rows(self, run_id: str, columns: str, node_id: str | None = None) -> tuple[bool, list[tuple]]:
        """(whether the run died, its nodes' `columns`, node id then status first), in the
        order `show` lists them."""
        def query(con: duckdb.DuckDBPyConnection) -> tuple[tuple | None, list[tuple]]:
            run = con.execute("SELECT status, pid FROM _runs WHERE run_id = $1", [run_id]).fetchone()
            return run, con.execute(
                f"SELECT {columns} FROM _node_runs WHERE run_id = $1 AND ($2::VARCHAR IS NULL OR node_id = $2) "
                "ORDER BY started_at NULLS LAST, node_id", [run_id, node_id]).fetchall()

        run, rows = self._read(query)
        return run is not None and _died(run[0], run[1], self._live_writer_pid()), rows

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
                "duplicate agent turns": "SELECT count(*) FROM (SELECT 1 FROM _agent_turns "
                                         "GROUP BY agent, generation, turn HAVING count(*) > 1)",
            }
            for label, sql in queries.items():
                n = con.execute(sql).fetchone()[0]  # type: ignore[index]  # duckdb: count(*) has a row
                if n:
                    problems.append(f"{n} {label}")
            return problems
        return self._read(check)

    def latest_recipes(self, creator: str | None = None) -> list[AgentRecipe]:
        """The latest version of every agent `creator` (or anyone) created, by name."""
        rows = self._read(lambda con: con.execute(
            "SELECT creator, name, instructions, tools, model, depth, version FROM _agent_recipes "
            "WHERE $1::VARCHAR IS NULL OR creator = $1 "
            "QUALIFY version = max(version) OVER (PARTITION BY creator, name) ORDER BY creator, name",
            [creator]).fetchall())
        return [AgentRecipe(c, n, i, tuple(loaded(t)), m, d, v) for c, n, i, t, m, d, v in rows]

    def agent_versions(self) -> list[dict]:
        """Every version of every created agent, as the `agents` view has them, by name and
        version: who created whom (`agents --tree`)."""
        cols = PUBLIC_VIEWS["agents"]

        def query(con: duckdb.DuckDBPyConnection) -> list[tuple]:
            if not con.execute("SELECT count(*) FROM information_schema.tables WHERE table_catalog = 'db' "
                               "AND table_name = 'agents'").fetchone()[0]:  # type: ignore[index]
                return []  # a reader of a database older than the view: no agent was created there
            return con.execute(f"SELECT {', '.join(cols)} FROM agents ORDER BY name, version").fetchall()

        rows = self._read(query)
        return [{**dict(zip(cols, row)), "tools": loaded(row[cols.index("tools")]),
                 "created_at": _aware(row[cols.index("created_at")])} for row in rows]

    def meta_under(self, prefix: str) -> dict[str, str]:
        """The meta entries whose keys start with `prefix`, by key."""
        return dict(self._read(lambda con: con.execute("SELECT key, value FROM meta WHERE starts_with(key, ?)",
                                                       [prefix]).fetchall()))

    def has_meta(self, key: str) -> bool:
        """Whether a committed meta entry exists (without reading its value: a plan's is
        megabytes). Nothing buffered is committed first."""
        return self._read(lambda con: con.execute("SELECT 1 FROM meta WHERE key = ?", [key]).fetchone(),
                          flush=False) is not None

    def get_meta(self, key: str) -> str | None:
        row = self._read(lambda con: con.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone())
        return row[0] if row else None
