"""Shared helpers for the tests of `agentflow ui`: a flow whose fan-out can be held
running, and the real `agentflow ui` command serving on a free port of 127.0.0.1."""
from __future__ import annotations

import json
import socket
import subprocess
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from agentflow.runtime.store import StoreError
from runtime_support import af, af_start, base_env, ok, outputs, runs, show, stop, wait_until, write

SPEC = """
defaults {
  model = "scripted:script.json"
}

tool hold(text: str) -> str {
  python = "tools:hold"
}

tool shout(text: str) -> str {
  python = "tools:shout"
}

role writer {
  tools = [shout]
  task draft(topic: str) -> str { prompt = "Write one line about {topic}." }
  task title(drafts: list[str]) -> str { prompt = "Title these drafts: {drafts}" }
}

choreography main(topics: list[str]) -> str {
  drafts = for topic in topics {
    text = writer.draft(topic)
    held = hold(text)
    yield held
  }
  return writer.title(drafts)
}
"""
# `hold` waits for a `go` file beside it (a test keeps the fan-out running until it says go),
# and fails if there is a `fail` file.
TOOLS = """
import asyncio
from pathlib import Path

HERE = Path(__file__).parent


async def hold(text):
    while not (HERE / "go").exists():
        await asyncio.sleep(0.02)
    if (HERE / "fail").exists():
        raise ValueError("told to fail")
    return "held " + text


def shout(text):
    return text.upper() + "!"
"""
# The title call asks for the `shout` tool, then answers with what it returned.
SCRIPT = """
{"rules": [
  {"task": "writer.title", "turn": 1, "tool_calls": [{"name": "shout", "arguments": {"text": "three drafts"}}]},
  {"task": "writer.title", "turn": 2, "echo": "last"}
]}
"""
TOPICS = ("--input", 'topics=["owls", "tides", "maps"]')
FAN_OUT_TEXT = "main/drafts[*]/text"  # the collapsed box of the three `writer.draft` calls


def flow(cwd: Path, *, go: bool = True) -> Path:
    write(cwd / "flow.agentflow", SPEC)
    write(cwd / "tools.py", TOOLS)
    write(cwd / "script.json", SCRIPT)
    if go:
        (cwd / "go").touch()
    return cwd


def finished_run(cwd: Path) -> str:
    """Runs the flow to the end; its run id."""
    ok(af(flow(cwd), "run", "flow.agentflow", *TOPICS))
    return runs(cwd)[0]["run_id"]


def start_held_run(cwd: Path) -> tuple[subprocess.Popen, str]:
    """Starts the flow with its fan-out held running; (process, run id) once all three hold.
    The database may hold earlier runs: the run is the one that begins now."""
    before = newest_run(cwd)
    proc = af_start(flow(cwd, go=False), "run", "flow.agentflow", *TOPICS)

    def begun() -> str | None:
        newest = newest_run(cwd)
        return newest if newest != before else None

    run_id = wait_until(begun, what="the run to begin")
    wait_until(lambda: sum(n["status"] == "running" for n in show(cwd, run_id).values()
                           if n["node"].endswith("/held")) == 3, what="three holds running")
    return proc, run_id


def newest_run(cwd: Path) -> str | None:
    """The newest run's id; None while the database does not exist or is being created."""
    try:
        found = runs(cwd)
    except StoreError:
        return None
    return found[0]["run_id"] if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> tuple[int, str, str]:
    """(status, content type, body) of a GET, errors included."""
    try:
        with urllib.request.urlopen(url, timeout=20) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode()


def get_json(url: str, status: int = 200):
    code, _, body = get(url)
    assert code == status, (code, body)
    return json.loads(body)


def post_answer(url: str, run_id: str, answer: dict, origin: str | None = "own",
                host: str | None = None) -> tuple[int, dict]:
    """(status, JSON body) of the page's answer POST, sent as its page sends it (Origin: the
    server's own) unless `origin` or `host` say otherwise (None: no Origin header)."""
    headers = {"Content-Type": "application/json"}
    if origin is not None:
        headers["Origin"] = url if origin == "own" else origin
    if host is not None:
        headers["Host"] = host
    request = urllib.request.Request(f"{url}/api/runs/{run_id}/answer", data=json.dumps(answer).encode(),
                                     headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@contextmanager
def ui_server(cwd: Path, *args: str, env: dict | None = None) -> Iterator[str]:
    """`agentflow ui` on a free port, in `cwd`; yields its base URL and stops it after."""
    port = free_port()
    proc = af_start(cwd, "ui", "--port", str(port), *args, env=env or base_env())
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, outputs(proc)
        try:
            return get(url + "/")[0] == 200
        except OSError:
            return False

    try:
        wait_until(up, timeout=90, what="agentflow ui to serve")  # a loaded machine starts it slowly
        yield url
    finally:
        stop(proc)
