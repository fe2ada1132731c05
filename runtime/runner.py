"""One `agentflow run`: open the store, pick or resume a run, execute the plan with an
engine, and report an outcome the CLI maps to an exit code."""
from __future__ import annotations

import asyncio
import secrets
import signal
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Awaitable, cast

from agentflow.compiler import schema
from agentflow.compiler.errors import UsageError
from agentflow.compiler.hashing import canonical_json, digest

from .credentials import check_credentials, model_uses
from .engine import Decision, Engine, NodeFailure, NodeWaiting, RunOptions, DryRunStop
from .ledger import Ledger
from .local import LocalExecutor
from .models import import_litellm_in_background
from .ports import NodeExecutor, Reporter
from .store import Preloaded, Store, StoreError


@dataclass(frozen=True)
class RunRequest:
    """What the user asked for; `options.run_id` is filled in once the run is picked."""

    plan: schema.Plan
    plan_hash: str
    inputs: dict
    db_path: Path
    options: RunOptions
    resume: bool = False
    resume_run_id: str | None = None
    interactive: bool = False  # a person answers human nodes on the terminal, instead of later
    durability: str = "group"  # or "strict": see ledger.py


@dataclass
class RunOutcome:
    run_id: str
    status: str  # succeeded | failed | cancelled | waiting | dry-run
    value: Any = None
    failure: NodeFailure | None = None
    decisions: list[Decision] = field(default_factory=list)
    questions: list[dict] = field(default_factory=list)  # of the nodes waiting for a person
    repeats: str | None = None  # a no-op rerun: the finished run whose result it reused whole


class ResumeError(UsageError):
    """`--resume` named a run that does not exist or belongs to another flow (exit 2)."""


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def pick_run(store: Store, req: RunRequest) -> tuple[str, bool]:
    """(run id, resuming?)."""
    plan = req.plan
    if not req.resume:
        return new_run_id(), False
    if req.resume_run_id:
        run = store.get_run(req.resume_run_id)
        if run is None:
            raise ResumeError(f"there is no run {req.resume_run_id} in {req.db_path}; `agentflow runs` lists them")
        if run["flow"] != plan["flow"] or run["entry"] != plan["entry"]:
            raise ResumeError(f"run {req.resume_run_id} ran {run['flow']}:{run['entry']}, "
                              f"not {plan['flow']}:{plan['entry']}")
        return req.resume_run_id, True
    run = store.latest_run(plan["flow"], plan["entry"], unfinished_only=True)
    if run is None:
        return new_run_id(), False
    return run["run_id"], True


class _NoHistory:
    """The (empty) history of a database that does not exist yet, for `--dry-run`, which
    reads what it needs and writes nothing, not even an empty database."""

    def get_run(self, run_id: str) -> None:
        return None

    def latest_run(self, *args, **kwargs) -> None:
        return None

    def run_progress(self, run_id: str) -> dict:
        return {}

    def agent_memory(self, agent: str, resumed_run: str | None = None) -> tuple[list, set]:
        return [], set()

    def lookup_results(self, keys) -> dict:
        return {}

    def preload_results(self, *args) -> Preloaded:
        return Preloaded({}, set())

    def last_node_records(self, *args, **kwargs) -> dict:
        return {}

    def result_journal(self, key: str, kind: str) -> list:
        return []

    def close(self, checkpoint: bool = True) -> None:
        pass


def start_model_imports(plan: schema.Plan, model_override: str | None) -> None:
    """When the run will call a real model, start importing litellm now, on a background
    thread: the import (~2 s of CPU) then overlaps the store's open and the run's start
    instead of delaying the first call. Not before the key check: a run that cannot start
    pays for no import."""
    if model_uses(plan, model_override):
        import_litellm_in_background()


def run_fingerprint(req: RunRequest, engine: Engine) -> str:
    """What a run's result depends on: the plan, the inputs, `--model` and the code version
    of every tool (the parts of node keys that are not node values)."""
    versions = {name: engine.code_version(name) for name in sorted(req.plan["tools"])}
    return digest("run", req.plan_hash, canonical_json(req.inputs), req.options.model or "",
                  canonical_json(versions))


def may_repeat(req: RunRequest, engine: Engine) -> bool:
    """Whether a run with a finished run's fingerprint would reuse every node of it: not
    with --force, --no-cache or --dry-run, nor when a task or tool opts out of reuse, nor
    with a persistent agent (its conversation has grown since)."""
    plan, options = req.plan, req.options
    return not (options.force or options.dry_run or schema.persistent_agents(plan)) and all(
        engine.cacheable(kind, name) for kind, table in (("task", plan["tasks"]), ("tool", plan["tools"]))
        for name in table)


async def execute(req: RunRequest, reporter: Reporter, executor: NodeExecutor | None = None) -> RunOutcome:
    if req.options.dry_run:  # it calls no model: no key needed
        store = Store.open_reader(req.db_path) if req.db_path.exists() else cast(Store, _NoHistory())
    else:
        check_credentials(req.plan, req.options.model)  # first: a run that cannot start writes nothing
        start_model_imports(req.plan, req.options.model)
        store = Store.open_writer(req.db_path)
    repeated = False
    try:
        run_id, resuming = pick_run(store, req)
        options = replace(req.options, run_id=run_id)
        ledger = Ledger(store, run_id, dry_run=req.options.dry_run, durability=req.durability)
        engine = Engine(req.plan, ledger, options, executor or LocalExecutor(ask=terminal_asker(req)), reporter)
        fingerprint = None if req.options.dry_run else run_fingerprint(req, engine)
        if fingerprint is not None and not resuming and may_repeat(req, engine):
            finished = store.finished_run(fingerprint)
            if finished is not None:  # no work to do (like ninja): record it, give its value
                store.copy_run(finished[0], run_id)
                repeated = True
                return RunOutcome(run_id, "succeeded", finished[1], repeats=finished[0])
        await ledger.open(req.plan, req.plan_hash, req.inputs, resuming, fingerprint)
        if resuming:
            await ledger.restart_sessions()
        status, value, failure = "succeeded", None, None
        try:
            value = await engine.run(req.inputs)
        except DryRunStop:
            status = "dry-run"
        except NodeFailure as err:
            status, failure = "failed", engine.failure or err
        except NodeWaiting:  # a failure elsewhere wins: the run failed
            status, failure = ("failed", engine.failure) if engine.failure else ("waiting", None)
        except asyncio.CancelledError:
            status = "cancelled"
        except BaseException:
            status = "failed"
            await ledger.close("failed")
            raise
        if req.options.dry_run:
            status = "dry-run"
        await ledger.close(status, value)
        return RunOutcome(run_id, status, value, failure, engine.decisions, engine.questions)
    finally:
        store.close(checkpoint=not repeated)  # a no-op rerun ends at once: its copy is in the log


def terminal_asker(req: RunRequest):
    """`--interactive`: a person answers on this terminal."""
    if not req.interactive:
        return None
    from .answers import checked
    from .human import TerminalAsker
    return TerminalAsker(checked)


def run_stoppable(main: Awaitable) -> tuple[Any, bool]:
    """`asyncio.run(main)`, where SIGTERM (docker stop, a CI cancel) cancels `main` as Ctrl-C
    does, so the run stops cleanly with its state saved instead of dying mid-write.
    Returns main's value (None if the cancellation escaped it) and whether SIGTERM came."""
    terminated = False

    async def guarded() -> Any:
        nonlocal terminated
        loop, task = asyncio.get_running_loop(), asyncio.current_task()
        assert task is not None, "a coroutine runs in a task"

        # A Python signal handler, as asyncio's own for Ctrl-C, not `loop.add_signal_handler`:
        # the loop sees those between two of its turns, and one turn can run thousands of
        # ready steps (SIGTERM took 4.4 s to reach a 100k-node run).
        def on_sigterm(signum: int, frame: object) -> None:
            nonlocal terminated
            if not terminated:  # a second SIGTERM must not cut the clean-up short
                terminated = True
                task.cancel()
                loop.call_soon_threadsafe(lambda: None)  # wakes a loop waiting in select()

        previous = signal.signal(signal.SIGTERM, on_sigterm)
        try:
            return await main
        except asyncio.CancelledError:
            if terminated:
                return None
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)

    value = asyncio.run(guarded())
    return value, terminated
