"""The store's side of persistent agents: their turns, numbered per generation, a call's turns
replaced when it is stored again, resets, and a database of the previous schema version
gaining the `agent_turns` view."""
from __future__ import annotations

from pathlib import Path

import duckdb

from agentflow.runtime.store import Store


def _say(store: Store, run_id: str, node_id: str, *contents: str) -> None:
    store.append_agent_turns("keeper", run_id, node_id, [{"role": "user", "content": c} for c in contents],
                             [1] * len(contents))


def test_turns_are_numbered_per_generation_and_a_call_stored_again_replaces_its_turns(tmp_path: Path) -> None:
    with Store.open_writer(tmp_path / "a.duckdb") as store:
        _say(store, "r1", "main/a", "one", "two")
        store.flush()
        _say(store, "r1", "main/b", "three")
        _say(store, "r1", "main/a", "one again")  # a forced re-run of main/a in the same run
        store.flush()
        calls, stored = store.agent_memory("keeper")
        assert calls == [[{"role": "user", "content": "three"}], [{"role": "user", "content": "one again"}]]
        assert stored == set()
        # a resumed run rebuilds its own calls: they are left out, and named
        assert store.agent_memory("keeper", resumed_run="r1") == ([], {"main/a", "main/b"})

        assert store.reset_agent("keeper") == 1
        assert store.agent_memory("keeper") == ([], set())
        _say(store, "r2", "main/a", "fresh")
        store.flush()
        assert [a["generation"] for a in store.agents()] == [1]
        assert [(a["agent"], a["turns"], a["tokens"], a["runs"]) for a in store.agents()] == [("keeper", 1, 1, 1)]
        generation, turns = store.agent_turns("keeper", 0)  # type: ignore[misc]
        assert (generation, [(t["turn"], t["message"]["content"]) for t in turns]) == (0, [(0, "three"), (1, "one again")])
        assert store.agent_turns("keeper", 2) is None and store.agent_turns("nobody") is None
        assert store.check_consistency() == []


def test_a_database_of_the_previous_version_gains_the_agent_turns_view(tmp_path: Path) -> None:
    db = tmp_path / "old.duckdb"
    with Store.open_writer(db) as store:
        store.begin_run("old", flow="f", entry="main", plan_hash="p", inputs={})
    con = duckdb.connect(str(db))  # what version 3 made: the same, without agents of either kind
    for stmt in ("DROP VIEW agent_turns", "DROP TABLE _agent_turns", "DROP TABLE _agent_resets",
                 "DROP VIEW agents", "DROP TABLE _agent_recipes",
                 "UPDATE meta SET value = '3' WHERE key = 'schema_version'"):
        con.execute(stmt)
    con.close()
    with Store.open_reader(db) as reader:  # a reader reads it as it is: no agents yet
        assert reader.agents() == [] and reader.agent_turns("keeper") is None
    with Store.open_writer(db) as store:  # a writer upgrades it
        assert store.get_run("old") is not None
        _say(store, "new", "main/a", "hello")
        store.flush()
        assert store.check_consistency() == []
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert con.execute("SELECT agent, generation, turn, role, content FROM agent_turns").fetchall() == [
            ("keeper", 0, 0, "user", "hello")]
    finally:
        con.close()
