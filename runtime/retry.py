"""Exponential backoff with jitter for transient failures (tenacity does the work)."""
from __future__ import annotations

import asyncio
import os
import random
from typing import Awaitable, Callable, TypeVar

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

T = TypeVar("T")
# The first wait, in seconds; AGENTFLOW_BACKOFF_BASE lets tests and benchmarks shorten it.
BACKOFF_BASE = float(os.environ.get("AGENTFLOW_BACKOFF_BASE", "0.5"))
BACKOFF_MAX = 30.0


async def retrying(retries: int, transient: type[BaseException], fn: Callable[[], Awaitable[T]]) -> T:
    """`fn()`, retried up to `retries` more times while it raises `transient`.

    The first try runs bare: most calls succeed, and tenacity's set-up is not free
    when a fan-out makes thousands of calls."""
    try:
        return await fn()
    except transient:
        if retries <= 0:
            raise
    await asyncio.sleep(BACKOFF_BASE * (1 + random.random()))
    async for attempt in AsyncRetrying(retry=retry_if_exception_type(transient),
                                       stop=stop_after_attempt(max(0, retries)),
                                       wait=wait_exponential_jitter(initial=BACKOFF_BASE, max=BACKOFF_MAX,
                                                                  jitter=BACKOFF_BASE),
                                       reraise=True):
        with attempt:
            return await fn()
    raise AssertionError("unreachable")
