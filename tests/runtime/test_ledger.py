"""The Ledger in this process, over a real Store on a DuckDB file: opening and closing a run,
reuse by key across runs, failed nodes starting over on resume, and role sessions."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from agentflow.compiler.hashing import canonical_json, digest
from agentflow.runtime.engine import NodeOutcome
from agentflow.runtime.history import list_runs, run_statuses
from agentflow.runtime.ledger import SESSION_STEP, BatchedReads, Ledger, child_workflow_of
from agentflow.runtime.store import Store, StoreError
from engine_support import DB, compiled, ledger_over

PLAN = compiled("""
    defaults {
      model = "scripted"
    }

    role s {
      memory = "session"
      task t(x: str) -> str { prompt = "S {x}" }
    }

    choreography main(x: str) -> str {
      first = s.t(x)
      return first
    }
""")
ASKED = [{"role": "user", "content": "S hi"}, {"role": "assistant", "content": "hello"}]


def stored_succeeded(ledger, node_id: str, key: str, value, role: str | None = None) -> None:
    ledger.node_started(node_id, role, key, "def", {"x": "h"})
    ledger.node_succeeded(node_id, role, key, NodeOutcome(value))


def test_open_records_a_running_run_and_close_its_final_status(tmp_path):
    async def main():
        async with ledger_over(PLAN, tmp_path, inputs={"x": "hi"}) as ledger:
            return ledger.store.get_run("run-1")

    during = asyncio.run(main())
    assert during is not None and during["status"] == "running" and during["flow"] == PLAN.data["flow"]
    (run,) = list_runs(str(tmp_path / DB))
    assert run["run_id"] == "run-1" and run["status"] == "succeeded"


def test_a_stored_result_is_found_by_its_key_and_reused_by_another_run(tmp_path):
    async def first():
        async with ledger_over(PLAN, tmp_path) as ledger:
            stored_succeeded(ledger, "main/first", "key-1", {"answer": 42})
            await ledger.flush()

    async def second():
        async with ledger_over(PLAN, tmp_path, run_id="run-2") as ledger:
            assert not await ledger.has_result("key-other")
            assert await ledger.has_result("key-1")
            assert ledger.resumed_key("main/first") is None  # a new run, not a resumed one
            return await ledger.reused("main/first", None, "key-1", "def", {"x": "h"})

    asyncio.run(first())
    assert asyncio.run(second()) == {"answer": 42}
    assert run_statuses(str(tmp_path / DB), "run-2", PLAN.data["flow"], PLAN.data["entry"]) == {"main/first": "cached"}


def test_on_resume_a_failed_node_starts_over_and_an_interrupted_one_keeps_its_journal(tmp_path):
    async def first():
        async with ledger_over(PLAN, tmp_path) as ledger:
            stored_succeeded(ledger, "main/done", "key-done", "v")
            for node_id, key in (("main/failed", "key-failed"), ("main/cut", "key-cut")):
                ledger.node_started(node_id, None, key, "def", {})
                await ledger.append_turn(node_id, key, {"role": "assistant", "content": node_id})
            await ledger.node_failed("main/failed", None, "boom", 1)

    async def resumed():
        async with ledger_over(PLAN, tmp_path, resuming=True) as ledger:
            return (ledger.resumed_key("main/done"), ledger.resumed_key("main/failed"),
                    await ledger.load_turns("main/failed", "key-failed"), await ledger.load_turns("main/cut", "key-cut"))

    asyncio.run(first())
    done, failed, failed_turns, cut_turns = asyncio.run(resumed())
    assert (done, failed) == ("key-done", None)
    assert failed_turns == []
    assert cut_turns == [{"role": "assistant", "content": "main/cut"}]


def test_restart_failed_forgets_the_journals_of_failures_recorded_since_open(tmp_path):
    async def main():
        async with ledger_over(PLAN, tmp_path) as ledger:
            ledger.node_started("main/first", None, "key-1", "def", {})
            await ledger.append_turn("main/first", "key-1", {"role": "assistant", "content": "x"})
            await ledger.node_failed("main/first", None, "boom", 1)
            before = len(ledger.store.load_turns("run-1", "main/first"))
            await ledger.restart_failed()
            return before, len(ledger.store.load_turns("run-1", "main/first"))

    assert asyncio.run(main()) == (1, 0)


def test_a_session_grows_by_call_and_its_hash_follows_it(tmp_path):
    async def main():
        async with ledger_over(PLAN, tmp_path) as ledger:
            empty = await ledger.session_hash("s")
            await ledger.append_session("s", ASKED)
            assert await ledger.load_session("s") == [ASKED]
            assert ledger.store.load_session("run-1", "s") == [ASKED]  # stored, for show
            grown = await ledger.session_hash("s")
            await ledger.restart_sessions()
            assert await ledger.load_session("s") == [] and ledger.store.load_session("run-1", "s") == []
            return empty, grown, await ledger.session_hash("s")

    empty, grown, restarted = asyncio.run(main())
    assert empty != grown and restarted == empty
    assert grown == digest("session", canonical_json([ASKED]))


def test_reusing_a_session_call_replays_what_it_added_to_its_session(tmp_path):
    async def first():
        async with ledger_over(PLAN, tmp_path) as ledger:
            ledger.node_started("main/first", "s", "key-s", "def", {})
            await ledger.append_turn("main/first", "key-s", {"role": SESSION_STEP, "messages": ASKED})
            ledger.node_succeeded("main/first", "s", "key-s", NodeOutcome("hello"))
            await ledger.flush()

    async def second():
        async with ledger_over(PLAN, tmp_path, run_id="run-2") as ledger:
            assert await ledger.has_result("key-s")
            value = await ledger.reused("main/first", "s", "key-s", "def", {})
            return value, await ledger.load_session("s")

    asyncio.run(first())
    assert asyncio.run(second()) == ("hello", [ASKED])


BARE_PLAN: Any = {"flow": "f", "entry": "main", "roles": {}}  # what `Ledger.open` reads of a plan


def one_result_stored(tmp_path: Path) -> Path:
    """A database whose run `r1` of flow `f` stored `{"v": 1}` under key `k-a`."""
    db = tmp_path / "agentflow.duckdb"
    with Store.open_writer(db) as s:
        s.begin_run("r1", flow="f", entry="main", plan_hash="p", inputs={})
        s.node_started("r1", "main/a", role=None, key="k-a")
        s.node_finished("r1", "main/a", status="succeeded", value={"v": 1})
        s.finish_run("r1", "succeeded")
    return db


def test_a_rerun_answers_lookups_from_what_it_preloaded(tmp_path: Path) -> None:
    db = one_result_stored(tmp_path)

    async def rerun() -> tuple[bool, bool]:
        store = Store.open_writer(db)
        ledger = Ledger(store, "r2")
        await ledger.open(BARE_PLAN, "p", {}, resuming=False)
        await ledger.close("cancelled")
        store.close()  # from now on, any question to the store fails
        with pytest.raises(StoreError, match="closed"):
            store.lookup_results(["k-a"])
        return await ledger.has_result("k-a"), await ledger.has_result("k-never-stored")

    assert asyncio.run(rerun()) == (True, False)


def test_calls_with_one_key_all_reuse_its_result_though_memory_hands_it_out_once(tmp_path: Path) -> None:
    """Identical calls of a rerun (a `for` over repeated items): the first takes the preloaded
    result, the others find it in the store."""
    db = one_result_stored(tmp_path)

    async def rerun() -> list:
        store = Store.open_writer(db)
        try:
            ledger = Ledger(store, "r2")
            await ledger.open(BARE_PLAN, "p", {}, resuming=False)
            found = await asyncio.gather(*(ledger.has_result("k-a") for _ in range(3)))
            values = [await ledger.reused(f"main/v[{i}]/a", None, "k-a", "def", {}) for i in range(3)]
            again = [await ledger.has_result("k-a"), await ledger.reused("main/w", None, "k-a", "def", {})]
            await ledger.close("succeeded")
            return [found, values, again]
        finally:
            store.close()

    assert asyncio.run(rerun()) == [[True] * 3, [{"v": 1}] * 3, [True, {"v": 1}]]


def test_a_node_is_shown_in_the_innermost_child_workflow_that_ran_it():
    root = "agentflow-f-r"
    chunk, inner = f"{root}/main/v[20:40]", f"{root}/main/v[20:40]/main/v[25]/y/a.b#1"
    children = {chunk: {"inside": "main/v[", "items": [20, 40]},
                inner: {"inside": "main/v[25]/y/a.b#1", "items": None}}
    assert child_workflow_of("main/v[25]/y", children) == chunk
    assert child_workflow_of("main/v[25]/y/a.b#1", children) == inner
    assert child_workflow_of("main/v[25]/y/a.b#1/c.d#1", children) == inner  # inline in the delegation
    assert child_workflow_of("main/v[40]/y", children) is None  # another chunk's item
    assert child_workflow_of("main/v[25]/y/a.b#10", children) == chunk  # not a prefix at a boundary
    assert child_workflow_of("main/w", children) is None


def test_reads_asked_for_in_one_loop_turn_are_one_read_and_a_failure_reaches_every_waiter() -> None:
    reads: list[list[str]] = []

    async def read(keys: list[str]) -> dict[str, str]:
        reads.append(keys)
        if "boom" in keys:
            raise StoreError("the database went away")
        return {k: k.upper() for k in keys if k != "missing"}

    async def main() -> None:
        batched = BatchedReads(read)
        assert await asyncio.gather(*(batched.get(k) for k in ("a", "missing", "a", "c"))) == ["A", None, "A", "C"]
        assert reads == [["a", "missing", "c"]]
        assert await batched.get("d") == "D" and reads[-1] == ["d"]  # a later turn: a read of its own
        failed = await asyncio.gather(batched.get("boom"), batched.get("e"), return_exceptions=True)
        assert [type(f) for f in failed] == [StoreError, StoreError] and reads[-1] == ["boom", "e"]

    asyncio.run(main())
