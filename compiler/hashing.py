"""Canonical JSON and unambiguous digests, shared by plan hashes and runtime keys.

Every hash is over length-prefixed parts (Bazel-style), never plain concatenation, and
carries a format version so a change of key layout invalidates old keys explicitly.
"""
from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Iterable

KEY_FORMAT_VERSION = "agentflow-key-v1"


# One encoder for every call: `json.dumps` with options builds a new one each time, which
# costs more than encoding the small values of most keys.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
# ... and `JSONEncoder.encode` still builds its C encoder on every call: half the cost of a
# node key's inputs. This is that C encoder, built once (the same text; no check for circular
# references, which JSON values cannot have), or None where the C accelerator is missing.
_C_MAKE_ENCODER = getattr(json.encoder, "c_make_encoder", None)
_CANONICAL_C = _C_MAKE_ENCODER and _C_MAKE_ENCODER(
    None, _CANONICAL.default, json.encoder.encode_basestring, None, ":", ",", True, False, False)
_VERSION = KEY_FORMAT_VERSION.encode()


# A lone surrogate: what text decoded from bytes that are not UTF-8 holds, and JSON text cannot.
SURROGATE = re.compile(r"[\ud800-\udfff]")


def canonical_json(value: Any) -> str:
    """The one JSON spelling of a value: sorted keys, no whitespace, UTF-8 kept.

    A lone surrogate (a file name's undecodable byte, `\\udcff`) is written as a JSON escape,
    so the text is always valid UTF-8 (hashable, storable) and reads back as the same value;
    every other value is spelled as it always was, so existing keys stay valid."""
    if type(value) is int:  # most loop items and counters: the encoder would say the same
        return repr(value)
    text = "".join(_CANONICAL_C(value, 0)) if _CANONICAL_C else _CANONICAL.encode(value)
    return escape_surrogates(text)


def escape_surrogates(text: str) -> str:
    """`text` with each surrogate code point written as its `\\uXXXX` escape: always valid
    UTF-8. In JSON text surrogates occur only inside strings, where the escape means the same
    code point, so the JSON still reads back as the same value."""
    if text.isascii() or SURROGATE.search(text) is None:
        return text
    return SURROGATE.sub(_escape, text)


def _escape(match: re.Match) -> str:
    return f"\\u{ord(match.group()):04x}"


def as_json_reads_back(text: str) -> str:
    """`text` as JSON reads it back: a high surrogate followed by a low one becomes the one
    character they encode (lone surrogates stay). Values made outside JSON (a python tool's
    strings) pass through this, so what is stored equals what was hashed."""
    if text.isascii() or SURROGATE.search(text) is None:
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")


def digest(*parts: str | bytes) -> str:
    """sha256 over length-prefixed parts, so ("ab", "c") and ("a", "bc") differ."""
    return framed_sha256(_VERSION, parts).hex()


def framed_sha256(label: bytes, parts: Iterable[str | bytes]) -> bytes:
    """sha256 of `label`, then each part prefixed by its length: the one framing of every
    digest (keys here, the scripted model's seeds under a label of their own)."""
    chunks = [label]
    for part in parts:
        data = part.encode("utf-8", "surrogatepass") if isinstance(part, str) else part
        chunks += (len(data).to_bytes(8, "big"), data)
    return hashlib.sha256(b"".join(chunks)).digest()


def value_hash(value: Any) -> str:
    """The version of a value: equal values hash equal, whichever node produced them."""
    return digest("value", canonical_json(value))


def definition_hash(definition: Any) -> str:
    """The hash of a node's resolved definition; the runtime recomputes it after overrides."""
    return digest("definition", canonical_json(definition))
