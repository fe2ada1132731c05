"""The in-process executor: runs task loops and tool calls in this process."""
from __future__ import annotations

from .engine import Engine, NodeFailure, NodeJob, NodeOutcome
from .tools import ToolError


class LocalExecutor:
    async def execute(self, engine: Engine, job: NodeJob) -> NodeOutcome:
        from .task import TaskCall, run_tool
        if job.kind == "task":
            return await TaskCall(engine, job).run()
        try:
            return NodeOutcome(await run_tool(engine, job.target, job.args))
        except ToolError as err:
            raise NodeFailure(job.node_id, None, str(err)) from None
