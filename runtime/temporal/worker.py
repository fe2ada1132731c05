"""`agentflow worker`: one process that runs agentflow workflows and activities from a task queue.

Start as many as you like, on as many machines as you like, against the same Temporal server
and task queue. Each needs the spec directories and workspace at the paths the client uses,
the same blob directory, and the environment variables the models read (API keys).
"""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from datetime import timedelta
from pathlib import Path

from temporalio.client import Client
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from agentflow.compiler.errors import UsageError

from .activities import Activities
from .codec import data_converter
from .workflow import ChunkWorkflow, DelegateWorkflow, RunWorkflow


class TemporalError(UsageError):
    """The Temporal server cannot be reached, or refused the run (exit 2)."""


async def connect(address: str, namespace: str, blob_dir: Path) -> Client:
    try:
        return await Client.connect(address, namespace=namespace, data_converter=data_converter(blob_dir))
    except Exception as err:  # the SDK raises RuntimeError with the gRPC cause
        raise TemporalError(f"cannot reach the Temporal server at {address} (namespace {namespace}): {err}") \
            from None


def default_identity() -> str:
    return f"agentflow-worker-{os.getpid()}@{socket.gethostname()}"


async def run_worker(address: str, namespace: str, task_queue: str, concurrency: int, blob_dir: Path,
                     identity: str | None = None, ready=None) -> None:
    identity = identity or default_identity()
    client = await connect(address, namespace, blob_dir)
    worker = Worker(
        client, task_queue=task_queue, identity=identity,
        workflows=[RunWorkflow, ChunkWorkflow, DelegateWorkflow], activities=[*_activities(identity)],
        max_concurrent_activities=concurrency,
        workflow_runner=SandboxedWorkflowRunner(restrictions=SandboxRestrictions.default),
        graceful_shutdown_timeout=timedelta(seconds=5),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with worker:
        print(f"worker {identity} polling task queue {task_queue} on {address}", file=sys.stderr, flush=True)
        if ready is not None:
            ready()
        await stop.wait()
    print(f"worker {identity} stopped", file=sys.stderr, flush=True)


def _activities(identity: str):
    acts = Activities(identity)
    return acts.model_call, acts.tool_call, acts.compile_program
