"""The ledger against a real store: what a run preloads answers its lookups in memory."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agentflow.runtime.ledger import Ledger
from agentflow.runtime.store import Store, StoreError

PLAN = {"flow": "f", "entry": "main", "roles": {}}


def test_a_rerun_answers_lookups_from_what_it_preloaded(tmp_path: Path) -> None:
    db = tmp_path / "agentflow.duckdb"
    with Store.open_writer(db) as s:
        s.begin_run("r1", flow="f", entry="main", plan_hash="p", inputs={})
        s.node_started("r1", "main/a", role=None, key="k-a")
        s.node_finished("r1", "main/a", status="succeeded", value={"v": 1})
        s.finish_run("r1", "succeeded")

    async def rerun() -> tuple[bool, bool]:
        store = Store.open_writer(db)
        ledger = Ledger(store, "r2")
        await ledger.open(PLAN, "p", {}, resuming=False)
        await ledger.close("cancelled")
        store.close()  # from now on, any question to the store fails
        with pytest.raises(StoreError, match="closed"):
            store.lookup_results(["k-a"])
        return await ledger.has_result("k-a"), await ledger.has_result("k-never-stored")

    assert asyncio.run(rerun()) == (True, False)
