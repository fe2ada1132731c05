"""Small deterministic arithmetic tools used by specs/specialist.agentflow."""
from __future__ import annotations


def add(a: int, b: int) -> int:
    """a + b."""
    return a + b


def multiply(a: int, b: int) -> int:
    """a * b."""
    return a * b
