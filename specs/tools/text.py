"""Small deterministic text tools used by specs/support_triage.agentflow."""
from __future__ import annotations

import re


def word_count(text: str) -> int:
    """How many words a text has."""
    return len(re.findall(r"\w+", text))


def keywords(text: str, limit: int = 5) -> list[str]:
    """The most frequent words of four letters or more, most frequent first."""
    counts: dict[str, int] = {}
    for word in re.findall(r"[a-z]{4,}", text.lower()):
        counts[word] = counts.get(word, 0) + 1
    return [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]]


async def normalize(text: str) -> str:
    """Whitespace collapsed and trimmed (an async tool, to show both kinds work)."""
    return " ".join(text.split())
