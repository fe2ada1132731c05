"""Shared helpers for the in-process tests of the engine, the ledger and the task loop.

Real parts only: a plan compiled from source, the real `Ledger` over a real `Store` on a
DuckDB file in the test's tmp_path, the real `LocalExecutor` and the built-in scripted model.
Of our own are only `Events`, a reporter (a port the engine reports to) that keeps what it
is told, and `CountingExecutor`, the in-process executor counting its calls in flight.
"""
from __future__ import annotations

import asyncio
import textwrap
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

from agentflow.compiler.pipeline import compile_source
from agentflow.compiler.compiled import Plan
from agentflow.compiler.source import SourceFile
from agentflow.runtime.engine import Engine, NodeFailure, NodeJob, NodeOutcome, RunOptions
from agentflow.runtime.history import run_statuses
from agentflow.runtime.ledger import Ledger
from agentflow.runtime.local import LocalExecutor
from agentflow.runtime.store import Store

DB = "agentflow.duckdb"


def compiled(text: str, entry: str | None = None) -> Plan:
    """The plan of an `.agentflow` source (which must compile)."""
    compilation = compile_source(SourceFile("flow.agentflow", textwrap.dedent(text)), entry)
    assert compilation.plan is not None, [str(d) for d in compilation.diagnostics]
    return compilation.plan


class Events:
    """A reporter that keeps every event it is told."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, bool]] = []

    def node(self, node_id: str, status: str, *, cached: bool = False, detail: str = "") -> None:
        self.events.append((node_id, status, cached))

    def reused(self) -> set[str]:
        return {node for node, status, cached in self.events if cached}


class CountingExecutor(LocalExecutor):
    """The in-process executor, counting the most calls it ran at once (a call holds its
    slots while it runs; the commit that follows does not)."""

    def __init__(self) -> None:
        self.running = 0
        self.peak = 0

    async def execute(self, engine: Engine, job: NodeJob) -> NodeOutcome:
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            return await super().execute(engine, job)
        finally:
            self.running -= 1


@asynccontextmanager
async def ledger_over(plan: Plan, tmp_path: Path, *, run_id: str = "run-1", inputs: dict | None = None,
                      resuming: bool = False) -> AsyncIterator[Ledger]:
    """A ledger that has opened (or, `resuming`, reopened) run `run_id` in tmp_path's database;
    the run is closed after (failed if the block raised), and the store too."""
    store = Store.open_writer(tmp_path / DB)
    ledger = Ledger(store, run_id)
    status = "failed"
    try:
        await ledger.open(plan.data, plan.plan_hash, inputs or {}, resuming)
        yield ledger
        status = "succeeded"
    finally:
        await ledger.close(status)
        store.close()


@asynccontextmanager
async def engine_over(plan: Plan, tmp_path: Path, *, run_id: str = "run-1", inputs: dict | None = None,
                      resuming: bool = False, reporter: Events | None = None,
                      executor: LocalExecutor | None = None, **options: Any) -> AsyncIterator[Engine]:
    """An engine for `plan` over a `ledger_over` run, with the in-process executor."""
    async with ledger_over(plan, tmp_path, run_id=run_id, inputs=inputs, resuming=resuming) as ledger:
        run_options = RunOptions(run_id=run_id, spec_dir=tmp_path, workspace=tmp_path / "workspace", **options)
        yield Engine(plan.data, ledger, run_options, executor or LocalExecutor(), reporter or Events())


@dataclass
class Run:
    value: Any
    failure: NodeFailure | None
    statuses: dict[str, str]  # node id -> status as stored (`cached` for a reused node)


def run_plan(plan: Plan, tmp_path: Path, inputs: dict, **kwargs: Any) -> Run:
    """Runs `plan` to its end in this process (see `engine_over`)."""
    run_id = kwargs.setdefault("run_id", "run-1")

    async def main() -> tuple[Any, NodeFailure | None]:
        try:
            async with engine_over(plan, tmp_path, inputs=inputs, **kwargs) as engine:
                return await engine.run(inputs), None
        except NodeFailure as failure:  # the run is closed failed
            return None, engine.failure or failure

    value, failure = asyncio.run(main())
    return Run(value, failure, run_statuses(str(tmp_path / DB), run_id, plan.data["flow"], plan.data["entry"]))
