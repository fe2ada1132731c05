"""Ctrl-C and SIGTERM stop a run at once even when none of its calls ever suspends (a trivial
async tool, results reused from memory), with its state saved for `--resume`. Such calls once
kept the event loop, where the signals cancel a run, until the last item of the fan-out.
Real `agentflow` processes, a real DuckDB file."""
from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from runtime_support import af, base_env, last_run, ok, write

ITEMS = 20_000

SPEC = """
tool square(x: int) -> int {
  python = "tools:square"
}

choreography main(items: list[int], note: str = "") -> int {
  results = for i in items {
    yield square(i)
  }
  return len(results)
}
"""


@pytest.fixture
def flow(tmp_path):
    write(tmp_path / "flow.agentflow", SPEC)
    write(tmp_path / "tools.py", "async def square(x):\n    return x * x\n")
    write(tmp_path / "in.json", json.dumps({"items": list(range(ITEMS))}))
    return tmp_path


def _signalled_once_started(root, sig: int, *extra: str) -> tuple[int, str]:
    """Runs the flow, sends `sig` once a twentieth of its items are done, and gives the exit
    code and stderr."""
    proc = subprocess.Popen([sys.executable, "-m", "agentflow", "run", "flow.agentflow", "--inputs", "in.json",
                             *extra], cwd=root, env=base_env(AGENTFLOW_PROGRESS_INTERVAL="0.05"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if line.startswith(" progress  ") and int(line.split()[1].split("/")[0]) >= ITEMS // 20:
            proc.send_signal(sig)
            break
    else:
        raise AssertionError("the run ended before it was signalled:\n" + "".join(seen[-5:]))
    rest = proc.stderr.read()
    return proc.wait(60), "".join(seen) + rest


def test_ctrl_c_stops_a_fan_out_whose_calls_never_suspend_and_resume_finishes_it(flow):
    code, err = _signalled_once_started(flow, signal.SIGINT)
    assert code == 130 and "interrupted: state saved" in err, err[-2000:]
    run = last_run(flow)
    assert run["status"] == "cancelled" and run["succeeded"] < ITEMS // 2, run
    ok(af(flow, "run", "flow.agentflow", "--inputs", "in.json", "--resume", timeout=120))
    finished = last_run(flow)
    assert (finished["run_id"], finished["status"], finished["succeeded"]) == (run["run_id"], "succeeded", ITEMS + 1)


def test_sigterm_stops_a_rerun_that_reuses_every_result_from_memory(flow):
    ok(af(flow, "run", "flow.agentflow", "--inputs", "in.json", timeout=120))
    code, err = _signalled_once_started(flow, signal.SIGTERM, "--input", "note=again")
    assert code == 143, err[-2000:]
    run = last_run(flow)
    assert run["status"] == "cancelled" and run["cached"] < ITEMS // 2, run
