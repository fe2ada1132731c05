"""The ports of the engine: what it needs from the ledger, the executor and the reporter.

Two engines implement them: the local one (`ledger.Ledger` over DuckDB, `local.LocalExecutor`,
`progress.*Reporter`) and the Temporal workflow (`temporal.workflow.WorkflowLedger`,
`TemporalExecutor`, `EventReporter`). The engine and the task loop see only these types.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from agentflow.compiler.schema import CompiledProgram

    from .engine import Engine, NodeJob, NodeOutcome
    from .models import ModelRequest, ModelResponse
    from .store import AgentRecipe
    from .task import TaskCall


class RunLedger(Protocol):
    """The record of a run: what the engine and the task loop read from it and write to it.

    One calling convention per method, by one rule: a method is async when its caller must
    wait, for an answer from the store (`has_result`, `reused`, `explain`, `load_turns`,
    `load_session`, `session_hash`, `latest_recipes`, `save_recipe`) or for durability (`flush`, and the records that commit
    before the run may go on: `node_failed`, `node_waiting`, `append_turn`, `append_session`). Every other
    record is sync and only buffers: it never waits, so the engine records a node's status
    without yielding to the event loop (and without a coroutine per node in a fan-out of
    100k), and the Temporal ledger turns it into an event at once. A result becomes durable
    at the `flush()` the engine awaits after `node_succeeded`.
    """

    # decisions
    def resumed_key(self, node_id: str) -> str | None:
        """The key of the node if it finished in the resumed run."""
        ...

    async def has_result(self, key: str) -> bool: ...

    async def explain(self, node_id: str, def_hash: str, inputs: dict, *, cacheable: bool) -> str:
        """Why a node must run (what `--dry-run` prints)."""
        ...

    async def reused(self, node_id: str, role: str | None, key: str, def_hash: str, inputs: dict) -> Any:
        """Records the reuse of a stored result, and returns that result."""
        ...

    # node records
    def node_started(self, node_id: str, role: str | None, key: str, def_hash: str, inputs: dict) -> None: ...

    def node_succeeded(self, node_id: str, role: str | None, key: str, outcome: NodeOutcome) -> None: ...

    async def node_failed(self, node_id: str, role: str | None, error: str, attempts: int) -> None: ...

    async def node_waiting(self, node_id: str, role: str | None, key: str, question: dict | None) -> None:
        """A node waits for a person's answer (its question journaled); committed before the run
        stops waiting, like a failure."""

    def node_cancelled(self, node_id: str, role: str | None) -> None: ...

    def node_skipped(self, node_id: str, role: str | None) -> None: ...

    def structure_started(self, node_id: str) -> None: ...

    def structure_done(self, node_id: str, status: str, cached: bool = False) -> None: ...

    def record_llm_call(self, node_id: str, response: ModelResponse) -> None: ...

    def record_program(self, node_id: str, attempt: int, source: str, status: str, diagnostics: str | None) -> None:
        """The `attempt`-th program task call `node_id` wrote, as it stands (the `programs` view)."""

    async def flush(self) -> None:
        """Returns once every record buffered so far is durable."""
        ...

    # a task call's journal, and its role's session
    async def load_turns(self, node_id: str, key: str) -> list[dict]: ...

    async def append_turn(self, node_id: str, key: str, message: dict) -> None: ...

    async def tool_started(self, node_id: str, key: str, step: dict) -> None:
        """Journals that a non-idempotent tool call starts, durable before it runs under any
        durability: a call resumed after a crash must know the tool may have acted."""
        ...

    async def load_session(self, role: str) -> list[list[dict]]: ...

    async def append_session(self, role: str, messages: list[dict]) -> None: ...

    async def session_hash(self, role: str) -> str: ...

    # agents created at run time (`spawn = true`): their recipes outlive the run
    async def save_recipe(self, recipe: AgentRecipe, node_id: str) -> int:
        """Stores a recipe created by the call `node_id`, unless it equals its agent's latest
        version; the version it is. Durable on return."""
        ...

    async def latest_recipes(self, creator: str) -> list[AgentRecipe]:
        """The latest version of each agent `creator` created, in this run or any before."""
        ...


class NodeExecutor(Protocol):
    """Where calls run: in this process, or as Temporal activities. The engine decides
    whether a node runs; the executor runs it, and the model and tool calls inside it."""

    async def execute(self, engine: Engine, job: NodeJob) -> NodeOutcome: ...

    async def complete(self, call: TaskCall, request: ModelRequest) -> ModelResponse:
        """One model turn of `call`, its transient retries included (each adds to
        `call.attempts`); raises ModelError once they are spent."""
        ...

    async def compile_program(self, engine: Engine, source: str, target: str, call_id: str) -> CompiledProgram | str:
        """A program task call `call_id` (of task `target`) wrote, compiled in its scope; or its
        errors as text (compiler/programs.py). Where the parser may be loaded: not in a workflow."""
        ...

    async def call_tool(self, engine: Engine, name: str, args: dict) -> Any:
        """One tool call with checked `args`, its transient retries included; raises ToolError."""
        ...


class Reporter(Protocol):
    """Progress events, as nodes start and end."""

    def node(self, node_id: str, status: str, *, cached: bool = False, detail: str = "") -> None: ...
