"""Whole-process run figures on generated fan-outs (issue: performance).

    python tests/bench/bench_run.py [--sizes 1000,10000,100000] [--llm-calls 1000]

Cases, one line of figures each:
  cold    N trivial python-tool nodes in a `for` fan-out: wall time, per-node overhead
  rerun   the same again, every node stored: wall time
  resume  a run killed half-way (SIGKILL), then --resume: wall time of the resume
  llm     M model calls of 50 ms each through litellm against a local OpenAI-protocol
          server (HTTP/1.1 keep-alive, as real providers), --concurrency 100 and
          replicas = 100: wall time against the ideal, split into the time to the first
          request (startup, compile, litellm import), the call phase and the time after
  rss     peak resident memory of the cold run and of the rerun (each child's own)
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from gen import BENCH_ENV, BENCH_TOOLS, fanout_program  # noqa: E402

ENV = {**BENCH_ENV, "AGENTFLOW_BACKOFF_BASE": "0.05"}


def agentflow(args: list[str], cwd: Path) -> tuple[float, int, str]:
    """(wall seconds, peak RSS in MB of this child alone, stderr tail)."""
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "agentflow", *args], cwd=cwd, env=ENV,
                                stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    if proc.returncode != 0:
        raise SystemExit(f"agentflow {' '.join(args)} exited {proc.returncode}:\n{stderr[-3000:]}")
    return wall, usage.ru_maxrss // 1024, stderr[-200:]


def startup(cwd: Path) -> float:
    return min(agentflow(["compile", "fan.agentflow"], cwd)[0] for _ in range(3))


def fanout_cases(n: int, tmp: Path) -> None:
    work = tmp / f"fan{n}"
    work.mkdir()
    (work / "fan.agentflow").write_text(fanout_program())
    (work / "benchtools.py").write_text(BENCH_TOOLS)
    (work / "in.json").write_text(json.dumps({"items": list(range(n))}))
    base = startup(work)
    run = ["run", "fan.agentflow", "--inputs", "in.json", "--concurrency", "64"]
    cold, rss, _ = agentflow(run, work)
    print(f"cold    N={n:>6}: {cold:6.2f} s  ({(cold - base) / n * 1e3:.3f} ms/node over a {base:.2f} s "
          f"compile)  peak RSS {rss} MB")
    rerun, rerun_rss, _ = agentflow(run, work)
    print(f"rerun   N={n:>6}: {rerun:6.2f} s  (every node reused; {(rerun - base) / n * 1e3:.3f} ms/node)  "
          f"peak RSS {rerun_rss} MB")
    # resume: fresh inputs (salt), killed when half of its nodes are stored
    resume_args = run + ["--input", f"salt={10 * n}"]  # values no earlier run stored
    proc = subprocess.Popen([sys.executable, "-m", "agentflow", *resume_args], cwd=work,
                            env={**ENV, "AGENTFLOW_PROGRESS_INTERVAL": "0.1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    done, tail = 0, []
    for line in proc.stderr:  # ` progress  DONE/TOTAL done (...)` every 0.1 s
        tail = (tail + [line])[-5:]
        if line.startswith(" progress  "):
            done = int(line.split()[1].split("/")[0])
        if done >= n // 2:
            break
    proc.send_signal(signal.SIGKILL)
    if proc.wait() != -signal.SIGKILL:
        raise SystemExit(f"the run to interrupt ended by itself ({proc.returncode}):\n{''.join(tail)}")
    resumed, _, _ = agentflow(resume_args + ["--resume"], work)
    print(f"resume  N={n:>6}: {resumed:6.2f} s  (killed after {done} nodes, then --resume)")


LLM_CONCURRENCY = 100
# A priced model name, as a user of a provider (or of a proxy in front of one) has: litellm
# prices every call. An unpriced name (e.g. a local model's) costs ~0.3 ms more per call in
# litellm's price-map fallback lookups.
LLM_SPEC = """
role caller {
  model = "openai/gpt-4o-mini"
  api_base = "%s"
  api_key_env = "AGENTFLOW_BENCH_KEY"
  replicas = 100
  retries = 0

  task ask(i: int) -> str {
    prompt = "call {i}"
  }
}

choreography main(items: list[int]) -> int {
  answers = for i in items {
    yield caller.ask(i)
  }
  return len(answers)
}
"""
LITELLM_IMPORT = ("import time; from agentflow.runtime.models import load_litellm; "
                  "start = time.perf_counter(); load_litellm(); print(time.perf_counter() - start)")


def llm_case(calls: int, tmp: Path) -> None:
    """The whole process, split at the server's first request and last answer."""
    from openai_server import OpenAIServer
    work = tmp / "llm"
    work.mkdir()
    # Headroom over the client's concurrency: a slot is freed just after its answer is sent,
    # so the client's next request may arrive before that.
    with OpenAIServer(latency_ms=50, max_concurrent=2 * LLM_CONCURRENCY, keep_alive=True) as server:
        (work / "llm.agentflow").write_text(LLM_SPEC % server.base_url)
        (work / "in.json").write_text(json.dumps({"items": list(range(calls))}))
        os.environ["AGENTFLOW_BENCH_KEY"] = ENV["AGENTFLOW_BENCH_KEY"] = "bench-key"
        started, server_cpu, run_cpu = time.time(), time.process_time(), children_cpu()
        wall, _, _ = agentflow(["run", "llm.agentflow", "--inputs", "in.json",
                                "--concurrency", str(LLM_CONCURRENCY)], work)
        server_cpu = time.process_time() - server_cpu  # this process only serves meanwhile
        run_cpu = children_cpu() - run_cpu
        stats = server.stats()
    ideal = calls * 0.05 / LLM_CONCURRENCY
    before = stats["first_chat_at"] - started
    phase = stats["last_answer_at"] - stats["first_chat_at"]
    after = wall - before - phase
    imported = float(subprocess.run([sys.executable, "-c", LITELLM_IMPORT], env=ENV, capture_output=True,
                                    text=True, check=True).stdout)
    print(f"llm     {calls} calls x 50 ms at concurrency {LLM_CONCURRENCY}: {wall:6.2f} s  (ideal {ideal:.2f} s, "
          f"x{wall / ideal:.2f}) = {before:.2f} s to the first request (litellm import alone: {imported:.2f} s)"
          f" + {phase:.2f} s call phase (x{phase / ideal:.2f}) + {after:.2f} s after the last answer; "
          f"run CPU {run_cpu:.2f} s, server CPU {server_cpu:.2f} s, {stats['chat_requests']} requests served")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--llm-calls", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(s) for s in args.sizes.split(",") if s):
            fanout_cases(n, Path(tmp))
        if args.llm_calls:
            llm_case(args.llm_calls, Path(tmp))


if __name__ == "__main__":
    main()
