"""Canonical JSON and unambiguous digests, shared by plan hashes and runtime keys.

Every hash is over length-prefixed parts (Bazel-style), never plain concatenation, and
carries a format version so a change of key layout invalidates old keys explicitly.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

KEY_FORMAT_VERSION = "agentflow-key-v1"


# One encoder for every call: `json.dumps` with options builds a new one each time, which
# costs more than encoding the small values of most keys.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_VERSION = KEY_FORMAT_VERSION.encode()


def canonical_json(value: Any) -> str:
    """The one JSON spelling of a value: sorted keys, no whitespace, UTF-8 kept."""
    if type(value) is int:  # most loop items and counters: the encoder would say the same
        return repr(value)
    return _CANONICAL.encode(value)


def digest(*parts: str | bytes) -> str:
    """sha256 over length-prefixed parts, so ("ab", "c") and ("a", "bc") differ."""
    chunks = [_VERSION]
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        chunks += (len(data).to_bytes(8, "big"), data)
    return hashlib.sha256(b"".join(chunks)).hexdigest()


def value_hash(value: Any) -> str:
    """The version of a value: equal values hash equal, whichever node produced them."""
    return digest("value", canonical_json(value))
