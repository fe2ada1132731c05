"""The interface every model client implements: one request in, one response out, and the
two ways a call fails (permanent, or worth retrying)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: dict


@dataclass(frozen=True)
class ModelRequest:
    model: str  # litellm id, or "scripted" / "scripted:<path to script json>"
    messages: tuple[dict, ...]  # OpenAI chat messages
    tools: tuple[dict, ...]  # OpenAI tool schemas {"type": "function", "function": {...}}
    output_schema: dict | None  # JSON schema of the answer; None: a plain string answer
    output_name: str  # e.g. "Review" (the response_format name)
    node_id: str  # e.g. "main/reviews[2]/attempt#1/review"
    task: str  # "role.task"
    turn: int  # 1-based model turn within this task call
    attempt: int  # 1-based attempt of the node
    temperature: float | None = None
    max_tokens: int | None = None
    timeout_s: float | None = None
    api_base: str | None = None
    api_key_env: str | None = None  # NAME of the env var holding the key, read at call time
    script_dir: str | None = None  # where relative script paths resolve (the spec's directory)


@dataclass(frozen=True)
class ModelResponse:
    content: str | None
    tool_calls: tuple[ToolCall, ...]
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None
    latency_ms: float
    model: str


class ModelError(Exception):
    """A permanent failure (bad request, auth, unknown model, script error). User-facing text."""


class TransientModelError(ModelError):
    """Rate limit, 5xx, timeout, connection error: worth retrying with backoff.

    `retry_after` is the provider's Retry-After hint in seconds, when it gave one.
    """

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@runtime_checkable
class ModelClient(Protocol):
    async def complete(self, request: ModelRequest) -> ModelResponse: ...


def is_scripted(model: str) -> bool:
    return model == "scripted" or model.startswith("scripted:")
