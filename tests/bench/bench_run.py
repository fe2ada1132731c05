"""Whole-process run figures on generated fan-outs (issue: performance).

    python tests/bench/bench_run.py [--sizes 1000,10000,100000] [--chains 2000,10000]
                                    [--repeats 10000] [--durabilities group,strict]
                                    [--llm 20x500@10,1000x50@100] [--tools sync|async]

Cases, one line of figures each:
  cold    N trivial python-tool nodes in a `for` fan-out: wall time, per-node overhead; the
          first run compiles, then the same first run in a copy reads the plan it cached
  no-op   the same again, nothing changed: no work to do (the finished run is copied)
  rerun   the same with an input no node reads: every node looked up and reused
  resume  a run killed half-way (SIGKILL), then --resume: wall time and peak RSS of the resume
  history `agentflow runs`, then `agentflow show` of the resumed run (every node listed)
  llm     M model calls of L ms each through litellm against a local OpenAI-protocol
          server (HTTP/1.1 keep-alive, as real providers), --concurrency C and
          replicas = 100 (`--llm MxL@C`, comma-separated; by default 20 x 500 ms at 10, the
          fixed cost of a small run, and 1,000 x 50 ms at 100, the cost per call): wall time
          against the ideal, split into the time to the first request (startup, compile,
          litellm import), the call phase and the time after the last answer (exit)
  rss     peak resident memory of the cold run and of the rerun (each child's own)
  chain   N python-tool steps `s{k} = step(k, s{k-1}.count)`, each needing the one before:
          cold, then a rerun with an input no step reads (every step looked up and reused),
          per durability
  repeat  `repeat max N` whose every iteration needs the previous one: cold and rerun

The python tools are sync functions (run on worker threads) unless `--tools async` makes them
coroutines (run on the event loop). The plan cache is the benchmark's own: a cold run
compiles, the runs after it read the plan back.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from gen import BENCH_ENV, BENCH_TOOLS, BENCH_TOOLS_ASYNC, chain_program, fanout_program, repeat_program  # noqa: E402

ENV = {**BENCH_ENV, "AGENTFLOW_BACKOFF_BASE": "0.05"}


def agentflow(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[float, int, float]:
    """(wall seconds, peak RSS in MB, CPU seconds (user + system)) of this child alone: on a
    shared machine its CPU time says more than its wall time."""
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "agentflow", *args], cwd=cwd, env=env or ENV,
                                stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    if proc.returncode != 0:
        raise SystemExit(f"agentflow {' '.join(args)} exited {proc.returncode}:\n{stderr[-3000:]}")
    return wall, usage.ru_maxrss // 1024, usage.ru_utime + usage.ru_stime


def startup(cwd: Path) -> float:
    """A compile's whole process, plan cache off: it leaves no plan for the cold run to read."""
    uncached = {**ENV, "AGENTFLOW_PLAN_CACHE": "off"}
    return min(agentflow(["compile", "fan.agentflow"], cwd, uncached)[0] for _ in range(3))


def fanout_cases(n: int, tmp: Path, tools: str) -> None:
    work = tmp / f"fan{n}"
    work.mkdir()
    (work / "fan.agentflow").write_text(fanout_program())
    (work / "benchtools.py").write_text(tools)
    (work / "in.json").write_text(json.dumps({"items": list(range(n))}))
    base = startup(work)
    run = ["run", "fan.agentflow", "--inputs", "in.json", "--concurrency", "64"]
    cold, rss, cpu = agentflow(run, work)
    print(f"cold    N={n:>6}: {cold:6.2f} s  ({(cold - base) / n * 1e3:.3f} ms/node over a {base:.2f} s "
          f"compile)  CPU {cpu:.2f} s  peak RSS {rss} MB", flush=True)
    compiled = tmp / f"fan{n}-compiled"  # the same first run, after `agentflow compile` (plan cached)
    shutil.copytree(work, compiled, ignore=shutil.ignore_patterns(".agentflow"))
    warm, _, cpu = agentflow(run, compiled)
    print(f"cold    N={n:>6}: {warm:6.2f} s  (its plan compiled before, by the run above)  CPU {cpu:.2f} s",
          flush=True)
    rerun, rerun_rss, cpu = agentflow(run, work)
    print(f"no-op   N={n:>6}: {rerun:6.2f} s  (nothing changed: no work to do)  CPU {cpu:.2f} s  "
          f"peak RSS {rerun_rss} MB", flush=True)
    reuse, reuse_rss, cpu = agentflow(run + ["--input", "note=rerun"], work)
    print(f"rerun   N={n:>6}: {reuse:6.2f} s  (every node reused; {(reuse - base) / n * 1e3:.3f} ms/node)  "
          f"CPU {cpu:.2f} s  peak RSS {reuse_rss} MB", flush=True)
    # resume: fresh inputs (salt), killed when half of its nodes are stored
    resume_args = run + ["--input", f"salt={10 * n}"]  # values no earlier run stored
    proc = subprocess.Popen([sys.executable, "-m", "agentflow", *resume_args], cwd=work,
                            env={**ENV, "AGENTFLOW_PROGRESS_INTERVAL": "0.02"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    done, tail = 0, []
    for line in proc.stderr:  # ` progress  DONE/TOTAL done (...)` every 0.02 s
        tail = (tail + [line])[-5:]
        if line.startswith(" progress  "):
            done = int(line.split()[1].split("/")[0])
        if done >= n // 2:
            break
    proc.send_signal(signal.SIGKILL)
    if proc.wait() == -signal.SIGKILL:
        resumed, resumed_rss, _ = agentflow(resume_args + ["--resume"], work)
        print(f"resume  N={n:>6}: {resumed:6.2f} s  (killed after {done} nodes, then --resume)  "
              f"peak RSS {resumed_rss} MB", flush=True)
    elif proc.returncode == 0:  # a small fan-out on a fast machine: nothing left to resume
        print(f"resume  N={n:>6}: none (the run finished before it was killed half-way)", flush=True)
    else:
        raise SystemExit(f"the run to interrupt failed ({proc.returncode}):\n{''.join(tail)}")
    listed, _, _ = agentflow(["runs"], work)
    runs = json.loads(subprocess.run([sys.executable, "-m", "agentflow", "runs", "--json"], cwd=work, env=ENV,
                                     capture_output=True, text=True, check=True).stdout)
    shown, _, _ = agentflow(["show", runs[0]["run_id"]], work)
    print(f"history N={n:>6}: runs {listed:.2f} s ({len(runs)} runs), show of the resumed run {shown:.2f} s",
          flush=True)


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


def llm_case(calls: int, latency_ms: int, concurrency: int, tmp: Path) -> None:
    """The whole process, split at the server's first request and last answer."""
    from openai_server import OpenAIServer
    work = tmp / f"llm{calls}x{latency_ms}@{concurrency}"
    work.mkdir()
    # Headroom over the client's concurrency: a slot is freed just after its answer is sent,
    # so the client's next request may arrive before that.
    with OpenAIServer(latency_ms=latency_ms, max_concurrent=2 * concurrency, keep_alive=True) as server:
        (work / "llm.agentflow").write_text(LLM_SPEC % server.base_url)
        (work / "in.json").write_text(json.dumps({"items": list(range(calls))}))
        os.environ["AGENTFLOW_BENCH_KEY"] = ENV["AGENTFLOW_BENCH_KEY"] = "bench-key"
        started, server_cpu, run_cpu = time.time(), time.process_time(), children_cpu()
        wall, _, _ = agentflow(["run", "llm.agentflow", "--inputs", "in.json",
                                "--concurrency", str(concurrency)], work)
        server_cpu = time.process_time() - server_cpu  # this process only serves meanwhile
        run_cpu = children_cpu() - run_cpu
        stats = server.stats()
    ideal = -(-calls // concurrency) * latency_ms / 1000  # rounds of calls, each one latency
    before = stats["first_chat_at"] - started
    phase = stats["last_answer_at"] - stats["first_chat_at"]
    after = wall - before - phase
    imported = float(subprocess.run([sys.executable, "-c", LITELLM_IMPORT], env=ENV, capture_output=True,
                                    text=True, check=True).stdout)
    print(f"llm     {calls} calls x {latency_ms} ms at concurrency {concurrency}: {wall:6.2f} s  (ideal {ideal:.2f} s, "
          f"x{wall / ideal:.2f}) = {before:.2f} s to the first request (litellm import alone: {imported:.2f} s)"
          f" + {phase:.2f} s call phase (x{phase / ideal:.2f}) + {after:.2f} s after the last answer; "
          f"run CPU {run_cpu:.2f} s, server CPU {server_cpu:.2f} s, {stats['chat_requests']} requests served")


def sequential_cases(kind: str, n: int, program: str, tmp: Path, tools: str,
                     durabilities: list[str]) -> dict[str, tuple[float, float]]:
    """Cold run and full-reuse rerun of a program whose every step needs the one before,
    under each durability; returns {durability: (cold, rerun)} in seconds."""
    figures = {}
    for durability in durabilities:
        work = tmp / f"{kind}{n}-{durability}"
        work.mkdir()
        (work / "seq.agentflow").write_text(program)
        (work / "benchtools.py").write_text(tools)
        run = ["run", "seq.agentflow", "--durability", durability]
        cold, rss, cold_cpu = agentflow(run, work)
        rerun, _, rerun_cpu = agentflow(run + ["--input", "note=rerun"], work)
        figures[durability] = (cold, rerun)
        print(f"{kind:<7} N={n:>6} {durability:<6}: cold {cold:6.2f} s ({cold / n * 1e3:.3f} ms/step, "
              f"CPU {cold_cpu:.2f} s), rerun {rerun:6.2f} s ({rerun / n * 1e3:.3f} ms/step, CPU "
              f"{rerun_cpu:.2f} s)  peak RSS {rss} MB", flush=True)
    return figures


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--chains", default="2000,10000")
    parser.add_argument("--repeats", default="10000")
    parser.add_argument("--durabilities", default="group,strict")
    parser.add_argument("--tools", choices=("sync", "async"), default="sync")
    parser.add_argument("--llm", default="20x500@10,1000x50@100", help="model-call cases: CALLSxMS@CONCURRENCY,...")
    args = parser.parse_args()
    tools = BENCH_TOOLS_ASYNC if args.tools == "async" else BENCH_TOOLS
    with tempfile.TemporaryDirectory() as tmp:
        ENV["AGENTFLOW_CACHE_DIR"] = str(Path(tmp) / "cache")
        for n in (int(s) for s in args.sizes.split(",") if s):
            fanout_cases(n, Path(tmp), tools)
        durabilities = args.durabilities.split(",")
        chains = {n: sequential_cases("chain", n, chain_program(n), Path(tmp), tools, durabilities)
                  for n in (int(s) for s in args.chains.split(",") if s)}
        for n in (int(s) for s in args.repeats.split(",") if s):
            loop = sequential_cases("repeat", n, repeat_program(n), Path(tmp), tools, durabilities)
            if n in chains and "group" in durabilities:
                print(f"repeat  N={n:>6}: cold {loop['group'][0] / chains[n]['group'][0]:.2f}x the chain's "
                      f"(target <= 1.5x)")
        for case in (c for c in args.llm.split(",") if c):
            calls, rest = case.split("x")
            latency_ms, concurrency = rest.split("@")
            llm_case(int(calls), int(latency_ms), int(concurrency), Path(tmp))


if __name__ == "__main__":
    main()
