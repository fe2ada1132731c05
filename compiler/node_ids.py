"""Node ids, shared by the compiler (graphs of a run) and the runtime (which imports no
other compiler module but `hashing` and `types`, and this one).

A plan names nodes by template id (`main/reviews[*]/attempt#*/review`); a run names each
instance (`main/reviews[2]/attempt#1/review`): `[i]` a `for` item, `#n` a `repeat` iteration.
"""
from __future__ import annotations

import re

_INSTANCE = re.compile(r"\[\d+\]|#\d+")


def template_id(instance_id: str) -> str:
    """`main/reviews[2]/attempt#1/review` -> `main/reviews[*]/attempt#*/review`."""
    return _INSTANCE.sub(lambda m: "[*]" if m.group(0)[0] == "[" else "#*", instance_id)
