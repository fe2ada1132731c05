"""What a tool is (`ToolSpec`), where its call runs (`ToolContext`), and how a call fails
(`ToolError`, `TransientToolError`): the vocabulary every kind of tool shares."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ToolSpec:
    """One declared tool, as the runtime needs it."""

    name: str
    params: tuple[str, ...]  # parameter names in declaration order
    kind: str  # "python" | "command" | "builtin"
    target: str | tuple[str, ...]  # "module.path:function" | argv template | "fs.read" ...
    returns_str: bool  # command stdout is returned as text when True, parsed as JSON otherwise
    timeout_s: float | None = None
    cwd: str | None = None  # relative to the workspace (command tools)


@dataclass(frozen=True)
class ToolContext:
    """Where a tool call runs."""

    spec_dir: Path  # the .agentflow file's directory: python tools resolve here first
    workspace: Path  # the confinement root of fs builtins and the default cwd of commands


class ToolError(Exception):
    """A tool failed in a way the calling model should see. `str(err)` is the message."""

    def __init__(
        self,
        message: str,
        *,
        tool: str | None = None,
        exit_status: int | None = None,
        stderr: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.tool = tool
        self.exit_status = exit_status  # command tools: the exit status (negative: signal)
        self.stderr = stderr  # command tools: the tail of stderr

    def __str__(self) -> str:
        return self.message


class TransientToolError(ToolError):
    """A timeout or a passing OS failure: worth retrying with backoff."""


def tool_failure(spec: ToolSpec, text: str, cls: type[ToolError] = ToolError) -> ToolError:
    """A ToolError whose message names the tool: `tool NAME: text`."""
    return cls(f"tool {spec.name}: {text}", tool=spec.name)

