"""The in-process executor: runs task loops, model calls and tool calls in this process."""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from .engine import Engine, NodeFailure, NodeJob, NodeOutcome, NodeWaiting
from .models import ModelRequest, ModelResponse, TransientModelError, client_for
from .retry import retrying
from .task import TaskCall, ToolInterrupted, interrupted_tool_node, run_tool, tool_node_started
from .tools import ToolError, TransientToolError, call_tool

if TYPE_CHECKING:
    from agentflow.compiler.schema import CompiledProgram


class LocalExecutor:
    def __init__(self, ask: Callable[[dict], Awaitable[Any]] | None = None) -> None:
        self.ask = ask  # `run --interactive`: asks a person on the terminal (human.TerminalAsker)

    async def execute(self, engine: Engine, job: NodeJob) -> NodeOutcome:
        if job.kind == "task":
            if engine.is_human(job.kind, job.target):
                return await self.human(engine, job)
            return await TaskCall(engine, job).run()
        await tool_node_started(engine, job)
        try:
            return NodeOutcome(await run_tool(engine, job.target, job.args))
        except ToolInterrupted:
            raise interrupted_tool_node(job) from None
        except ToolError as err:
            raise NodeFailure(job.node_id, None, str(err)) from None

    async def complete(self, call: TaskCall, request: ModelRequest) -> ModelResponse:
        client = client_for(request.model)
        tries = 0

        async def once() -> ModelResponse:
            nonlocal tries
            if tries:  # a retry is a new attempt; the first try of a turn is not
                call.attempts += 1
            tries += 1
            return await client.complete(replace(request, attempt=call.attempts))

        return await retrying(call.entry["retries"], TransientModelError, once)

    async def compile_program(self, engine: Engine, source: str, target: str, call_id: str) -> CompiledProgram | str:
        from agentflow.compiler.programs import compile_program
        return compile_program(source, engine.plan, target, call_id)

    async def call_tool(self, engine: Engine, name: str, args: dict) -> Any:
        spec = engine.tool_spec(name)
        return await retrying(engine.plan["tools"][name]["retries"], TransientToolError,
                              lambda: call_tool(spec, args, engine.tool_context()))

    async def human(self, engine: Engine, job: NodeJob) -> NodeOutcome:
        """A person's answer, asked on the terminal; without one (no `--interactive`, or end of
        input) the node waits for `agentflow answer`."""
        from .human import answer_step, current_user, job_question
        question = job_question(engine, job)
        if self.ask is None:
            raise NodeWaiting(question)
        try:
            value = await self.ask(question)
        except EOFError:
            raise NodeWaiting(question) from None
        await engine.ledger.append_turn(job.node_id, job.key, question)
        await engine.ledger.append_turn(job.node_id, job.key, answer_step(value, current_user()))
        return NodeOutcome(value)
