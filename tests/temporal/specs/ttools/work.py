"""Tools of the Temporal tests: slow enough to be caught running, big enough to need the blob store."""
from __future__ import annotations

import asyncio


async def slow(x: int, seconds: float) -> int:
    await asyncio.sleep(seconds)
    return x * 10


def big(n: int) -> str:
    return "".join(chr(97 + i % 26) for i in range(n))


def measure(text: str) -> int:
    return len(text)


def shout(text: str) -> str:
    return text.upper() + "!"


async def same(text: str, seconds: float) -> str:
    await asyncio.sleep(seconds)
    return text


async def wait_for(path: str) -> str:
    """Returns once the file `path` exists: a call that runs exactly as long as a test wants."""
    from pathlib import Path
    while not Path(path).exists():
        await asyncio.sleep(0.05)
    return path


def inc(x: int) -> int:
    return x + 1
