"""Fixtures of the runtime integration tests; the helpers live in runtime_support."""
from __future__ import annotations

import pytest

from runtime_support import OpenAIServer


@pytest.fixture
def server():
    with OpenAIServer() as srv:
        yield srv
