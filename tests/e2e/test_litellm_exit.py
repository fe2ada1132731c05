"""How a run that calls a real model ends: litellm is imported on a background thread while
the run starts, and the process ends without the interpreter's teardown walk over litellm's
objects, yet exactly as a normal exit would be seen from outside: the users' `atexit`
handlers run, stdout is flushed, the exit code is the documented one and the database is
complete. And a litellm that cannot be imported is still one clear message.

Real `agentflow` subprocesses, a real DuckDB file, our OpenAI-protocol server on 127.0.0.1."""
from __future__ import annotations

import signal
from pathlib import Path

from runtime_support import (DB, OpenAIServer, af, af_start, base_env, llm_defaults, ok, outputs, requests_with,
                             result_json, runs, show, stop, wait_until, write)

# The tool registers an atexit handler when called and writes to a file it never closes; a
# module-level object's finalizer marks whether the interpreter's teardown ran (it frees
# module globals one by one).
TOOLS = """
import atexit
from pathlib import Path

HERE = Path(__file__).parent


class Finalized:
    def __del__(self, mark=(HERE / "teardown-ran").write_text):
        mark("yes")


KEEP = Finalized()
LOG = open(HERE / "tool.log", "w")  # never closed: its buffer holds what was written


def note(text):
    atexit.register((HERE / "atexit-ran").write_text, "saw " + text)
    LOG.write("noted " + text)
    return "noted " + text
"""
BODY = """
tool note(text: str) -> str {
  python = "tools:note"
}

role asker {
  task ask(text: str) -> str { prompt = "ASK {text}" }
}

choreography main(topic: str) -> json {
  answer = asker.ask(topic)
  noted = note(answer)
  return {answer: answer, noted: noted}
}
"""


def flow(tmp: Path, server: OpenAIServer) -> None:
    write(tmp / "tools.py", TOOLS)
    write(tmp / "flow.agentflow", llm_defaults(server, retries=0) + BODY)


def buffered_env() -> dict[str, str]:
    """The tests' environment with stdout block-buffered, as in a pipe of a real pipeline:
    a result not flushed before the process ends would be lost."""
    env = base_env()
    env.pop("PYTHONUNBUFFERED")
    return env


def test_a_litellm_run_skips_teardown_but_runs_atexit_handlers_and_flushes(tmp_path, server):
    flow(tmp_path, server)
    result = ok(af(tmp_path, "run", "flow.agentflow", "--input", "topic=tea", env=buffered_env()))
    assert result_json(result) == {"answer": "echo: ASK tea", "noted": "noted echo: ASK tea"}
    assert (tmp_path / "atexit-ran").read_text() == "saw echo: ASK tea"
    assert (tmp_path / "tool.log").read_text() == "noted echo: ASK tea"
    assert not (tmp_path / "teardown-ran").exists(), "the interpreter's teardown ran"
    (run,) = runs(tmp_path, cli=True)
    assert run["status"] == "succeeded"
    nodes = show(tmp_path, run["run_id"], cli=True)
    assert {nodes[n]["status"] for n in ("main/answer", "main/noted")} == {"succeeded"}
    again = ok(af(tmp_path, "run", "flow.agentflow", "--input", "topic=tea", env=buffered_env()))
    assert result_json(again) == result_json(result) and len(server.requests) == 1  # stored, reused


def test_a_failed_litellm_run_exits_3_with_its_message_and_atexit_handlers(tmp_path, server):
    flow(tmp_path, server)
    server.add_rule("ASK", {"status": 400, "message": "bad request"})
    result = ok(af(tmp_path, "run", "flow.agentflow", "--input", "topic=tea", env=buffered_env()), 3)
    assert "failed at main/answer" in result.stderr and "--resume" in result.stderr
    assert not (tmp_path / "atexit-ran").exists()  # the tool never ran
    assert not (tmp_path / "teardown-ran").exists()
    (run,) = runs(tmp_path, cli=True)
    assert run["status"] == "failed"
    assert show(tmp_path, run["run_id"], cli=True)["main/answer"]["status"] == "failed"


def test_sigterm_during_a_litellm_call_exits_143_with_the_state_saved(tmp_path, server):
    flow(tmp_path, server)
    server.add_rule("ASK", {"latency_ms": 60_000})
    proc = af_start(tmp_path, "run", "flow.agentflow", "--input", "topic=tea")
    try:
        wait_until(lambda: requests_with(server, "ASK tea"), timeout=60)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 143
    finally:
        stop(proc)
    _, err = outputs(proc)
    assert "Traceback" not in err and "terminated (SIGTERM): state saved" in err, err
    assert not (tmp_path / "teardown-ran").exists()
    (run,) = runs(tmp_path, cli=True)
    assert run["status"] == "cancelled"
    assert show(tmp_path, run["run_id"], cli=True)["main/answer"]["status"] == "cancelled"


def unimportable_litellm(tmp: Path) -> dict[str, str]:
    """An environment where `import litellm` fails, as with a broken installation."""
    write(tmp / "shadow" / "litellm.py", 'raise ImportError("this litellm is broken")\n')
    return base_env(PYTHONPATH=str(tmp / "shadow"))


def test_a_litellm_that_cannot_be_imported_fails_the_call_with_one_clear_message(tmp_path, server):
    flow(tmp_path, server)
    result = ok(af(tmp_path, "run", "flow.agentflow", "--input", "topic=tea", env=unimportable_litellm(tmp_path)), 3)
    assert ("the litellm package is needed for real models but cannot be imported: this litellm is broken"
            in result.stderr), result.stderr
    assert server.requests == []


def test_a_litellm_that_cannot_be_imported_for_the_key_check_is_one_line_and_exit_2(tmp_path, server):
    # Without api_key_env the key check asks litellm which variables the provider needs.
    write(tmp_path / "flow.agentflow", llm_defaults(server).replace('  api_key_env = "', '  # "') + BODY)
    write(tmp_path / "tools.py", TOOLS)
    result = ok(af(tmp_path, "run", "flow.agentflow", "--input", "topic=tea", env=unimportable_litellm(tmp_path)), 2)
    assert result.stderr.strip() == ("error: the litellm package is needed for real models but cannot be "
                                     "imported: this litellm is broken"), result.stderr
    assert not (tmp_path / DB).exists()
