"""What travels through Temporal: plain JSON dicts, and the names both sides agree on."""
from __future__ import annotations

import dataclasses
from typing import Any

from ..models import ModelRequest, ModelResponse, ToolCall
from ..store import AgentRecipe
from ..tools import ToolSpec

WORKFLOW = "agentflow.run"
CHUNK_WORKFLOW = "agentflow.chunk"  # a slice of a large `for`'s items, a child of the run's workflow
DELEGATE_WORKFLOW = "agentflow.delegate"  # a delegated or created agent's call's loop, a child of its caller's
MODEL_ACTIVITY = "agentflow.model_call"
TOOL_ACTIVITY = "agentflow.tool_call"
PROGRAM_ACTIVITY = "agentflow.compile_program"  # a model's program, compiled off the workflow (no parser there)
PROGRESS_QUERY = "progress"
LOOKUP_SIGNAL = "lookups"  # the client's answer to the stored-result lookups the workflow asked for
ANSWER_SIGNAL = "answer"  # a person's answer to a node that waits (`agentflow answer`)
READ_SIGNAL = "read"  # how far the client has recorded the run's records (before a continue-as-new)
DEFAULT_TASK_QUEUE = "agentflow"
PAGE = 500  # events per progress query
LOOKUP_TIMEOUT_S = 3.0  # a lookup no client answered within this is a miss: its node runs


def workflow_id(flow: str, run_id: str) -> str:
    """Deterministic: the client that resumes a run finds its workflow again."""
    return f"agentflow-{flow}-{run_id}"


def request_to_wire(request: ModelRequest) -> dict:
    d = dataclasses.asdict(request)
    d["messages"] = list(request.messages)
    d["tools"] = list(request.tools)
    return d


def request_from_wire(d: dict) -> ModelRequest:
    return ModelRequest(**{**d, "messages": tuple(d["messages"]), "tools": tuple(d["tools"])})


def response_to_wire(response: ModelResponse) -> dict:
    d = dataclasses.asdict(response)
    d["tool_calls"] = [dataclasses.asdict(c) for c in response.tool_calls]
    return d


def response_from_wire(d: dict) -> ModelResponse:
    return ModelResponse(**{**d, "tool_calls": tuple(ToolCall(**c) for c in d["tool_calls"])})


def spec_to_wire(spec: ToolSpec) -> dict:
    d = dataclasses.asdict(spec)
    d["params"] = list(spec.params)
    d["target"] = spec.target if isinstance(spec.target, str) else list(spec.target)
    return d


def spec_from_wire(d: dict) -> ToolSpec:
    target: Any = d["target"] if isinstance(d["target"], str) else tuple(d["target"])
    return ToolSpec(**{**d, "params": tuple(d["params"]), "target": target})


def recipe_to_wire(recipe: AgentRecipe) -> dict:
    return {**dataclasses.asdict(recipe), "tools": list(recipe.tools)}


def recipe_from_wire(d: dict) -> AgentRecipe:
    return AgentRecipe(**{**d, "tools": tuple(d["tools"])})
