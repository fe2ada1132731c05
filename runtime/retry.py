"""Exponential backoff with jitter for transient failures (tenacity does the work), or the
wait the failure itself asks for (a provider's Retry-After, see `TransientModelError`).

tenacity is imported at the first retry: a run whose calls all succeed at once never pays
its import (~8 ms), and this module is cheap enough for the executor to import up front."""
from __future__ import annotations

import asyncio
import os
import random
from typing import TYPE_CHECKING, Awaitable, Callable, TypeVar

if TYPE_CHECKING:
    from tenacity import RetryCallState

T = TypeVar("T")
# The first wait, in seconds; AGENTFLOW_BACKOFF_BASE lets tests and benchmarks shorten it.
BACKOFF_BASE = float(os.environ.get("AGENTFLOW_BACKOFF_BASE", "0.5"))
BACKOFF_MAX = 30.0


def hinted_wait(error: BaseException | None, backoff: float) -> float:
    """The wait before retrying after `error`: its `retry_after` hint when it has one (the
    raiser caps it), else `backoff`."""
    hint = getattr(error, "retry_after", None)
    return backoff if hint is None else hint


class _HintOrBackoff:
    """tenacity's wait: the failed attempt's hint, else exponential backoff with jitter."""

    def __init__(self) -> None:
        from tenacity import wait_exponential_jitter
        self.backoff = wait_exponential_jitter(multiplier=BACKOFF_BASE, max=BACKOFF_MAX, jitter=BACKOFF_BASE)

    def __call__(self, state: RetryCallState) -> float:
        return hinted_wait(state.outcome.exception() if state.outcome else None, self.backoff(state))


async def retrying(retries: int, transient: type[BaseException], fn: Callable[[], Awaitable[T]]) -> T:
    """`fn()`, retried up to `retries` more times while it raises `transient`.

    The first try runs bare: most calls succeed, and tenacity's set-up is not free
    when a fan-out makes thousands of calls."""
    try:
        return await fn()
    except transient as error:
        if retries <= 0:
            raise
        first_wait = hinted_wait(error, BACKOFF_BASE * (1 + random.random()))
    await asyncio.sleep(first_wait)
    from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt
    async for attempt in AsyncRetrying(retry=retry_if_exception_type(transient),
                                       stop=stop_after_attempt(max(0, retries)),
                                       wait=_HintOrBackoff(), reraise=True):
        with attempt:
            return await fn()
    raise AssertionError("unreachable")
