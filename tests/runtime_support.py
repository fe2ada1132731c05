"""Shared helpers for the runtime's integration tests (a module of its own: `conftest`
is a name every test directory has).

Everything here drives real parts: `agentflow` subprocesses (cwd = the test's tmp_path), a
real DuckDB file, and our OpenAI-protocol test server on 127.0.0.1 reached through litellm.
Nothing of the project is mocked.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Callable

TESTS = Path(__file__).resolve().parent
from polling import wait_until  # noqa: F401  (re-exported for the tests)
from openai_server import OpenAIServer

SECRET = "sk-agentflow-test-Q7v9ZkP2xW"  # the value of AGENTFLOW_TEST_KEY in every subprocess
KEY_ENV = "AGENTFLOW_TEST_KEY"
DB = ".agentflow/agentflow.duckdb"


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTFLOW_", "OPENAI_"))}
    env.update({
        "AGENTFLOW_BACKOFF_BASE": "0.01",
        KEY_ENV: SECRET,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "NO_COLOR": "1",
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra)
    return env


def af(cwd: Path, *args: str, timeout: float = 60, env: dict | None = None) -> subprocess.CompletedProcess:
    """Runs `python -m agentflow ARGS` in `cwd` and waits for it."""
    return subprocess.run([sys.executable, "-m", "agentflow", *args], cwd=cwd, env=env or base_env(),
                          capture_output=True, text=True, timeout=timeout)


def af_start(cwd: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    """Starts `python -m agentflow ARGS` in `cwd` without waiting; output goes to files."""
    out = open(cwd / f"proc-{time.monotonic_ns()}.out", "w+")
    err = open(cwd / f"proc-{time.monotonic_ns()}.err", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "agentflow", *args], cwd=cwd, env=env or base_env(),
                            stdout=out, stderr=err, text=True)
    proc.out_file, proc.err_file = out, err  # type: ignore[attr-defined]
    return proc


def outputs(proc: subprocess.Popen) -> tuple[str, str]:
    """stdout and stderr of a finished `af_start` process."""
    texts = []
    for f in (proc.out_file, proc.err_file):  # type: ignore[attr-defined]
        f.flush()
        f.seek(0)
        texts.append(f.read())
        f.close()
    return texts[0], texts[1]


def ok(result: subprocess.CompletedProcess, code: int = 0) -> subprocess.CompletedProcess:
    assert result.returncode == code, (
        f"exit {result.returncode}, expected {code}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}")
    assert "Traceback" not in result.stderr, result.stderr
    return result


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def runs(cwd: Path, db: str = DB, *, cli: bool = False) -> list[dict]:
    """`agentflow runs --json`: through a subprocess with `cli`, else in this process through
    the same history functions (a reader that the writer lets in, like the CLI's)."""
    if cli:
        return json.loads(ok(af(cwd, "runs", "--db", db, "--json")).stdout)
    from agentflow.runtime.history import rows_json, list_runs
    return json.loads(rows_json(list_runs(str(cwd / db))))


def last_run(cwd: Path, db: str = DB, *, cli: bool = False) -> dict:
    return runs(cwd, db, cli=cli)[0]


def show(cwd: Path, run_id: str, db: str = DB, *, cli: bool = False) -> dict[str, dict]:
    """`agentflow show RUN --json`, by node id (in this process unless `cli`)."""
    if cli:
        rows = json.loads(ok(af(cwd, "show", run_id, "--db", db, "--json")).stdout)
    else:
        from agentflow.runtime.history import rows_json, run_nodes
        rows = json.loads(rows_json(run_nodes(str(cwd / db), run_id)))
    return {r["node"]: r for r in rows}


def ran(nodes: dict[str, dict]) -> set[str]:
    """Nodes that really ran and succeeded in this run (not reused)."""
    return {n for n, r in nodes.items() if r["status"] == "succeeded" and not r["cached"]}


def reused(nodes: dict[str, dict]) -> set[str]:
    return {n for n, r in nodes.items() if r["cached"]}


def result_json(result: subprocess.CompletedProcess) -> Any:
    return json.loads(result.stdout)


def create_agent(name: str, instructions: str, tools: list[str], **extra) -> dict:
    """A scripted model's `create_agent` call (a role with `spawn = true`)."""
    return {"name": "create_agent", "arguments": {"name": name, "instructions": instructions, "tools": tools, **extra}}


def call_agent(name: str, prompt: str) -> dict:
    """A scripted model's `call_agent` call."""
    return {"name": "call_agent", "arguments": {"name": name, "prompt": prompt}}


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)


# A tool for handoff tests: `pay.log` beside it counts its calls; the first one sleeps until
# the test kills the process running it.
HANDOFF_TOOLS = """
import time
from pathlib import Path

def pay(amount):
    log = Path(__file__).with_name("pay.log")
    first = not log.exists()
    with open(log, "a") as f:
        f.write(f"pay {amount}\\n")
    if first:
        time.sleep(60)  # the test kills the run here, the first time
    return f"paid {amount}"
"""


def llm_defaults(server: OpenAIServer, retries: int = 2, extra: str = "") -> str:
    """A `defaults` block that sends every role to the test server through litellm."""
    return (f'defaults {{\n  model = "openai/gpt-4o-mini"\n  api_base = "{server.base_url}"\n'
            f'  api_key_env = "{KEY_ENV}"\n  retries = {retries}\n{extra}}}\n')


def requests_with(server: OpenAIServer, marker: str) -> list[dict]:
    """The chat requests whose last user message contains `marker`."""
    def last_user(messages):
        for m in reversed(messages or []):
            if m.get("role") == "user":
                return m.get("content") if isinstance(m.get("content"), str) else json.dumps(m.get("content"))
        return ""
    return [r for r in server.requests if marker in last_user(r["messages"])]


def assert_no_secret(*places: Path | str) -> None:
    """The key's value appears in none of these files (every DuckDB file beside a path too) or texts."""
    for place in places:
        if isinstance(place, Path):
            files = [place] if place.is_file() else []
            files += [p for p in place.parent.glob(place.name + "*") if p.is_file() and p != place]
            for f in files:
                assert SECRET.encode() not in f.read_bytes(), f"the API key leaked into {f}"
        else:
            assert SECRET not in place, "the API key leaked into an output"


APPROVAL = TESTS.parent / "specs" / "approval.agentflow"  # the example with a step a person approves


def approval(cwd: Path) -> Path:
    """The example spec, as shipped, in the test's directory."""
    return Path(shutil.copy(APPROVAL, cwd / "approval.agentflow"))


def wait_for_answer(cwd: Path, spec: str = "approval.agentflow") -> str:
    """Runs the spec until it waits for a person (exit 4); its run id."""
    result = ok(af(cwd, "run", spec), 4)
    assert result.stdout == ""
    return last_run(cwd)["run_id"]
