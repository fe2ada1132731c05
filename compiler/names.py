"""Names both the compiler and the runtime know (one of the few compiler modules the runtime
may import: tests/runtime/test_imports.py lists them).

A plan names nodes by template id (`main/reviews[*]/attempt#*/review`); a run names each
instance (`main/reviews[2]/attempt#1/review`): `[i]` a `for` item, `#n` a `repeat` iteration.
"""
from __future__ import annotations

import re

# A tool's `builtin = "..."` (run by runtime/tools.py) -> the version of its behaviour, part of
# its calls' cache keys: bump it when the builtin changes, so cached results are not reused.
BUILTIN_TOOLS = {"fs.read": 1, "fs.write": 1, "fs.list": 1}

# A node status (and `cached`, a reused node) -> its colour wherever a run is drawn: `graph
# --run` and the run viewer page.
STATUS_COLORS = {
    "succeeded": "#b7e4c7",
    "cached": "#d8f3dc",
    "running": "#ffe8a3",
    "pending": "#e9ecef",
    "failed": "#f4a6a6",
    "skipped": "#dee2e6",
    "cancelled": "#ffd6a5",
    "waiting": "#a5d8ff",
}

_ITEM = re.compile(r"\[\d+\]")
_ITERATION = re.compile(r"#\d+")


def template_id(instance_id: str) -> str:
    """`main/reviews[2]/attempt#1/review` -> `main/reviews[*]/attempt#*/review` (progress asks
    for every node event: a plain substitution each, no Python call per match)."""
    if "[" not in instance_id and "#" not in instance_id:
        return instance_id
    return _ITERATION.sub("#*", _ITEM.sub("[*]", instance_id))
