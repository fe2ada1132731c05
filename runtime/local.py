"""The in-process executor: runs task loops and tool calls in this process."""
from __future__ import annotations

from typing import Any, Awaitable, Callable

from .engine import Engine, NodeFailure, NodeJob, NodeOutcome, NodeWaiting
from .tools import ToolError


class LocalExecutor:
    def __init__(self, ask: Callable[[dict], Awaitable[Any]] | None = None) -> None:
        self.ask = ask  # `run --interactive`: asks a person on the terminal (human.TerminalAsker)

    async def execute(self, engine: Engine, job: NodeJob) -> NodeOutcome:
        from .task import TaskCall, run_tool
        if job.kind == "task":
            if engine.is_human(job.kind, job.target):
                return await self.human(engine, job)
            return await TaskCall(engine, job).run()
        try:
            return NodeOutcome(await run_tool(engine, job.target, job.args))
        except ToolError as err:
            raise NodeFailure(job.node_id, None, str(err)) from None

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
