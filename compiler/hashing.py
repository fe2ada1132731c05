"""Canonical JSON and unambiguous digests, shared by plan hashes and runtime keys.

Every hash is over length-prefixed parts (Bazel-style), never plain concatenation, and
carries a format version so a change of key layout invalidates old keys explicitly.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

KEY_FORMAT_VERSION = "agentflow-key-v1"


def canonical_json(value: Any) -> str:
    """The one JSON spelling of a value: sorted keys, no whitespace, UTF-8 kept."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def digest(*parts: str | bytes) -> str:
    """sha256 over length-prefixed parts, so ("ab", "c") and ("a", "bc") differ."""
    h = hashlib.sha256(KEY_FORMAT_VERSION.encode())
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()


def value_hash(value: Any) -> str:
    """The version of a value: equal values hash equal, whichever node produced them."""
    return digest("value", canonical_json(value))
