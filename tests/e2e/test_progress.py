"""What `agentflow run` prints on stderr while it runs: on a terminal a live display (done/total,
failed, running, percent, ETA), without one a summary line every few seconds and a final
summary, never one line per node; failures are printed as they happen, one line each. Real
`agentflow` subprocesses (one on a pseudo-terminal) on the scripted model."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from runtime_support import af, base_env, last_run, ok, show, write

SPEC = """
defaults {
  model = "scripted:script.json"
  retries = 0
}

role a {
  replicas = 4
  task t(x: str) -> str { prompt = "T {x}" }
}

choreography main(items: list[str]) -> list[str] {
  outs = for item in items {
    y = a.t(item)
    yield y
  }
  return outs
}
"""
SCRIPT = {"rules": [{"contains": "boom", "error": "server", "message": "the model broke"}]}
PROGRESS = re.compile(r" progress  (\d+)/(\d+) done \((\d+)%\), (\d+) failed, (\d+) running, eta (\?|\d+s|\d+m\d\ds|\d+h\d\dm)")


def _flow(root, items: list[str]):
    write(root / "flow.agentflow", SPEC)
    write(root / "script.json", json.dumps(SCRIPT))
    return ("run", "flow.agentflow", "--input", "items=" + json.dumps(items))


def test_without_a_terminal_a_fan_out_is_not_one_line_per_node(tmp_path):
    result = ok(af(tmp_path, *_flow(tmp_path, [f"i{k}" for k in range(300)]), timeout=300))
    lines = result.stderr.splitlines()
    assert "\x1b" not in result.stderr  # no control codes of the live display
    assert lines[-2:] == ["    nodes  301 succeeded", f"run {last_run(tmp_path)['run_id']} succeeded"]
    assert all(PROGRESS.fullmatch(line) for line in lines[:-2]), lines
    assert len(lines) <= 20, lines  # a line per 5 s, not one per node (302 before)


NAPS = """
tool nap(x: str) -> str {
  command = ["python", "-c", "import time; time.sleep(0.05); print('{x}')"]
}

choreography main(items: list[str]) -> list[str] {
  outs = for item in items {
    y = nap(item)
    yield y
  }
  return outs
}
"""


def test_summary_lines_come_every_interval_with_counts_that_only_grow(tmp_path):
    """Nodes that take a while (a process each, two at a time), so events span many intervals."""
    env = base_env(AGENTFLOW_PROGRESS_INTERVAL="0.1")
    write(tmp_path / "flow.agentflow", NAPS)
    items = json.dumps([f"i{k}" for k in range(60)])
    result = ok(af(tmp_path, "run", "flow.agentflow", "--concurrency", "2", "--input", f"items={items}",
                   env=env, timeout=300))
    found = [PROGRESS.fullmatch(line) for line in result.stderr.splitlines()[:-2]]
    assert found and all(found), result.stderr
    counts = [tuple(int(m.group(g)) for g in (1, 2, 3)) for m in found if m]
    assert len(counts) >= 2, result.stderr
    assert [c[0] for c in counts] == sorted(c[0] for c in counts)  # done only grows
    assert counts[-1][1] == 61  # the total: the `for` and its 60 items, once it expanded
    assert all(done <= total and pct == 100 * done // total for done, total, pct in counts)


def test_failures_are_printed_as_they_happen_with_node_and_error(tmp_path):
    result = ok(af(tmp_path, *_flow(tmp_path, ["a", "boom", "c"])), 3)
    error = show(tmp_path, last_run(tmp_path)["run_id"])["main/outs[1]/y"]["error"]
    lines = result.stderr.splitlines()
    assert f"   failed  main/outs[1]/y ({error})" in lines, result.stderr
    assert "the model broke" in error
    assert "   failed  main/outs (a node inside it failed)" in lines


def _run_on_a_terminal(cwd, args: list[str]) -> tuple[int, str, str]:
    """`agentflow ARGS` with stderr on a pseudo-terminal (stdout a pipe): exit code, what the
    terminal showed, stdout."""
    import pty
    main_fd, side_fd = pty.openpty()
    env = base_env(TERM="xterm-256color", COLUMNS="120")
    proc = subprocess.Popen([sys.executable, "-m", "agentflow", *args], cwd=cwd, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=side_fd)
    os.close(side_fd)
    shown = bytearray()
    while True:
        try:
            chunk = os.read(main_fd, 65536)
        except OSError:  # EIO: the process closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(main_fd)
    out = proc.stdout.read().decode() if proc.stdout else ""
    return proc.wait(60), shown.decode("utf-8", "replace"), out


def test_on_a_terminal_a_live_display_and_the_final_summary(tmp_path):
    args = list(_flow(tmp_path, [f"i{k}" for k in range(40)]))
    code, shown, out = _run_on_a_terminal(tmp_path, args)
    assert code == 0, shown
    assert len(json.loads(out)) == 40  # stdout holds the result alone
    assert "\x1b[" in shown  # the live display redraws itself
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown)
    assert "41/41 done (100%), 0 failed, 0 running" in plain, plain
    assert re.search(r"agentflow .*\d+/41 done", plain), plain
    assert "    nodes  41 succeeded" in plain and "Traceback" not in plain
    assert plain.rstrip().endswith(f"run {last_run(tmp_path)['run_id']} succeeded")
