"""Settings every test directory shares."""
from __future__ import annotations

import os
import shutil
import signal
import tempfile

import pytest

from openai_server import OpenAIServer

# A runner may start the tests with SIGINT ignored (a background job of a script does). A
# child inherits an ignored signal, but a handled one is reset to the default at exec: with a
# handler here, the `agentflow` processes the tests start see the Ctrl-C the tests send them.
signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_configure(config):
    """The plan cache of every `agentflow` the tests start lives in a directory of this test
    process's own (XDG_CACHE_HOME), never in the user's ~/.cache."""
    config.cache_home = tempfile.mkdtemp(prefix="agentflow-test-cache-")
    os.environ["XDG_CACHE_HOME"] = config.cache_home


def pytest_unconfigure(config):
    shutil.rmtree(getattr(config, "cache_home", ""), ignore_errors=True)


@pytest.fixture
def server():
    """The project's own OpenAI-protocol server on 127.0.0.1, for the litellm path."""
    with OpenAIServer() as srv:
        yield srv
