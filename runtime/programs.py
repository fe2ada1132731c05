"""Running a program a model wrote (`run_program`, a role with `programs = true`).

The program is compiled where the parser may be loaded (the executor's `compile_program`: in
this process, or an activity), then run on the run's engine as nested nodes under its task
call, `<call>/program#<n>/...`: each journaled, reused by key and resumed like any node. Its
result, or why it did not compile or failed, is the tool's result the model reads.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from agentflow.compiler.schema import RUN_PROGRAM, CompiledProgram

from .engine import DryRunStop, Engine, NodeFailure, NodeJob, RunAborted, Scope
from .evaluate import ExpressionError

if TYPE_CHECKING:
    from .task import TaskCall

REJECTED = "The program did not compile, so nothing ran. Fix these errors and call run_program again.\n\n"


async def run_program(call: TaskCall, number: int, source: str) -> str:
    """Program `number` of task call `call`: compiled, run, and recorded (the `programs` view)."""
    engine, job = call.engine, call.job
    program_id = f"{job.node_id}/program#{number}"
    compiled = await engine.executor.compile_program(engine, source, job.target, job.node_id)
    if isinstance(compiled, str):
        engine.ledger.record_program(job.node_id, number, source, "rejected", compiled)
        return REJECTED + compiled
    engine.ledger.record_program(job.node_id, number, source, "running", None)
    engine.ledger.structure_started(program_id)
    engine.reporter.node(program_id, "running")
    view = engine.nested(compiled["nodes"], compiled["prefix"], compiled["max_nodes"])
    try:
        value = await _run(view, compiled, program_id, job.args)
    except (NodeFailure, RunAborted, ExpressionError) as err:
        failure = view.failure or NodeFailure(program_id, None, str(err))
        engine.ledger.structure_done(program_id, "failed")
        engine.reporter.node(program_id, "failed", detail=failure.message)
        engine.ledger.record_program(job.node_id, number, source, "failed", failure.message)
        return f"error: the program failed at {failure.node_id}: {failure.message}"
    except BaseException:
        engine.ledger.structure_done(program_id, "cancelled")
        engine.reporter.node(program_id, "cancelled")
        raise
    cached = program_id not in engine.ran_inside
    engine.ledger.structure_done(program_id, "succeeded", cached=cached)
    engine.reporter.node(program_id, "succeeded", cached=cached)
    engine.ledger.record_program(job.node_id, number, source, "succeeded", None)
    return json.dumps(value, ensure_ascii=False)


async def explain_programs(engine: Engine, job: NodeJob) -> None:
    """For `--dry-run`: decides the nodes of the programs a task call that will run had begun
    (in its journal, when it resumes), as their own nodes, reused or run and why."""
    journal = await engine.ledger.load_turns(job.node_id, job.key)
    for number, source in enumerate(program_sources(journal), 1):
        compiled = None if source is None else \
            await engine.executor.compile_program(engine, source, job.target, job.node_id)
        if compiled is None or isinstance(compiled, str):
            continue
        view = engine.nested(compiled["nodes"], compiled["prefix"], compiled["max_nodes"])
        try:
            await _run(view, compiled, f"{job.node_id}/program#{number}", job.args)
        except (DryRunStop, NodeFailure, RunAborted, ExpressionError):
            pass  # what depends on a node that would run is not known before it runs


async def _run(view: Engine, compiled: CompiledProgram, program_id: str, args: dict) -> Any:
    """The program's value, its nodes run on `view` (its engine) under `program_id`; the task
    call's arguments are its parameters."""
    return await view.block(compiled["body"], Scope(program_id, compiled["prefix"], dict(args)))


def program_sources(journal: list[dict]) -> list[str | None]:
    """The source of each `run_program` call in a journal, in order (None: unreadable arguments)."""
    sources: list[str | None] = []
    for m in journal:
        for call in m.get("tool_calls") or () if m["role"] == "assistant" else ():
            if call["function"]["name"] == RUN_PROGRAM:
                try:
                    source = json.loads(call["function"].get("arguments") or "{}").get("source")
                except (ValueError, AttributeError):
                    source = None
                sources.append(source if isinstance(source, str) else None)
    return sources


def programs_answered(journal: list[dict]) -> int:
    """How many programs a task call's journal has results for: a resumed call numbers its next
    program after them, as the uninterrupted call did."""
    return sum(1 for m in journal if m["role"] == "tool" and m.get("name") == RUN_PROGRAM)
