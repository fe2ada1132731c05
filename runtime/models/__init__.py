"""Model clients: one interface, two implementations (scripted, litellm).

A client makes ONE model call and classifies its failure; the caller (the task runner) owns
the turn loop, retries with backoff, validation and repair.

- `ScriptedModelClient` is built in and deterministic: no key, no network. Unscripted, it
  answers with a value synthesized from the output schema, seeded by a hash of the request.
  With `model = "scripted:<path>"` it first consults a JSON script of rules (see
  `ScriptedModelClient` for the format).
- `LiteLLMModelClient` calls `litellm.acompletion`. litellm is imported lazily, on the first
  call: importing this package never imports it, and nothing else in agentflow imports it.

One job per module: `interface` (request, response, errors, the client protocol), `scripted`
(the deterministic model), `synthesis` (its answers synthesized from a schema), `script` (its
rule files), `litellm_client` (real models), `clients` (which client serves a model id).
"""
from __future__ import annotations

from .clients import client_for
from .interface import (
    ModelClient,
    ModelError,
    ModelRequest,
    ModelResponse,
    ToolCall,
    TransientModelError,
    is_scripted,
)
from .litellm_client import LiteLLMModelClient, import_litellm_in_background, load_litellm, missing_key_message
from .scripted import ScriptedModelClient
from .synthesis import synthesize_value

__all__ = [
    "ToolCall",
    "ModelRequest",
    "ModelResponse",
    "ModelError",
    "TransientModelError",
    "ModelClient",
    "ScriptedModelClient",
    "LiteLLMModelClient",
    "client_for",
    "import_litellm_in_background",
    "is_scripted",
    "load_litellm",
    "missing_key_message",
    "synthesize_value",
]
