"""The in-process executor: runs task loops, model calls and tool calls in this process."""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .engine import Engine, NodeFailure, NodeJob, NodeOutcome
from .models import ModelRequest, ModelResponse, TransientModelError, client_for
from .retry import retrying
from .tools import ToolError, TransientToolError, call_tool

if TYPE_CHECKING:
    from .task import TaskCall


class LocalExecutor:
    async def execute(self, engine: Engine, job: NodeJob) -> NodeOutcome:
        from .task import TaskCall, run_tool
        if job.kind == "task":
            return await TaskCall(engine, job).run()
        try:
            return NodeOutcome(await run_tool(engine, job.target, job.args))
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

    async def call_tool(self, engine: Engine, name: str, args: dict) -> Any:
        spec = engine.tool_spec(name)
        return await retrying(engine.plan["tools"][name]["retries"], TransientToolError,
                              lambda: call_tool(spec, args, engine.tool_context()))
