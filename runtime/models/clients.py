"""Which client serves a model id: one shared instance per kind."""
from __future__ import annotations

import threading

from .interface import ModelClient, is_scripted
from .litellm_client import LiteLLMModelClient
from .scripted import ScriptedModelClient

_clients: dict[str, ModelClient] = {}
_clients_lock = threading.Lock()


def client_for(model: str) -> ModelClient:
    """The client for a model id: the scripted one for "scripted[:...]", litellm otherwise.

    Instances are shared (one per kind); neither keeps per-request state apart from the
    scripted client's script cache and `times` counters.
    """
    kind = "scripted" if is_scripted(model) else "litellm"
    with _clients_lock:
        client = _clients.get(kind)
        if client is None:
            client = ScriptedModelClient() if kind == "scripted" else LiteLLMModelClient()
            _clients[kind] = client
        return client
