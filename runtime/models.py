"""Model clients: one interface, two implementations (scripted, litellm).

A client makes ONE model call and classifies its failure; the caller (the task runner) owns
the turn loop, retries with backoff, validation and repair.

- `ScriptedModelClient` is built in and deterministic: no key, no network. Unscripted, it
  answers with a value synthesized from the output schema, seeded by a hash of the request.
  With `model = "scripted:<path>"` it first consults a JSON script of rules (see
  `ScriptedModelClient` for the format).
- `LiteLLMModelClient` calls `litellm.acompletion`. litellm is imported lazily, on the first
  call: importing this module never imports it, and nothing else in agentflow imports it.

Structured output with litellm: `response_format = {"type": "json_schema", ...}` is sent when
litellm says the model supports response schemas, or when the model is `openai/...` and an
`api_base` is set (an OpenAI-compatible server: vLLM, llama.cpp, LM Studio, a proxy...; they
accept json_schema or ignore it, and the caller validates either way). Otherwise the schema is
appended to the system message as an instruction to answer with JSON only.

Cost of litellm, and the settings chosen for it (litellm 1.106, measured at 1,000 calls and
concurrency 100 against a local keep-alive server): importing it takes ~2 s of CPU, and each
call 3-4 ms, of which the openai SDK it drives (building, sending, parsing) takes ~40%, its
wrapper, its openai handler and the `completion()` that `acompletion` runs on a worker thread
~25%, and its logging and pricing of the response 20% (priced model) to 30% (unpriced: the
price map's fallback lookups). What we set, and why:
- `LITELLM_LOCAL_MODEL_COST_MAP=True` (before the import): the bundled price map, no fetch
  at import; `LITELLM_TELEMETRY=False`, `suppress_debug_info`, quiet loggers: no output of
  litellm's own on our terminal.
- The cost of a response is the one litellm computed while logging it
  (`_hidden_params["response_cost"]`, None when the model has no price), not a second
  `completion_cost()`: the same number, ~0.1 ms (priced model) to ~0.2 ms (unpriced: fallback
  lookups) less per call.
- The cyclic GC is paused during the import and everything is frozen (`gc.freeze()`) after
  it: the import creates some 400,000 objects that the GC tracks and that live as long as
  the process. The collections the import triggers find almost nothing to free (~0.5 s of
  it), and every later full collection would traverse them again (~0.2 s each; a run of
  1,000 calls has several). The price: cyclic garbage that exists at that moment (a few
  thousand blocks) is only freed at exit.
- litellm keeps one HTTP client per api_base and key, with a keep-alive connection pool, so
  there is no client or session of ours to share.
Tried and not set, as they did not lower the CPU per call: `LITELLM_RUST=True` (its logger
opt-in only moves the two secret-redaction passes per call to Rust; chat completions stay in
Python), `disable_aiohttp_transport` (httpx's own transport: ~1.5 ms more per call), a
one-thread default executor for `completion()`.
"""
from __future__ import annotations

import asyncio
import atexit
import copy
import datetime
import email.utils
import functools
import gc
import hashlib
import json
import logging
import math
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from agentflow.compiler.hashing import canonical_json, framed_sha256

from .redaction import configured_secrets, redact

__all__ = [
    "ToolCall",
    "ModelRequest",
    "ModelResponse",
    "ModelError",
    "TransientModelError",
    "ModelClient",
    "ScriptedModelClient",
    "LiteLLMModelClient",
    "client_for",
    "is_scripted",
    "load_litellm",
    "missing_key_message",
    "synthesize_value",
]


# --------------------------------------------------------------------------------------------
# The interface
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: dict


@dataclass(frozen=True)
class ModelRequest:
    model: str  # litellm id, or "scripted" / "scripted:<path to script json>"
    messages: tuple[dict, ...]  # OpenAI chat messages
    tools: tuple[dict, ...]  # OpenAI tool schemas {"type": "function", "function": {...}}
    output_schema: dict | None  # JSON schema of the answer; None: a plain string answer
    output_name: str  # e.g. "Review" (the response_format name)
    node_id: str  # e.g. "main/reviews[2]/attempt#1/review"
    task: str  # "role.task"
    turn: int  # 1-based model turn within this task call
    attempt: int  # 1-based attempt of the node
    temperature: float | None = None
    max_tokens: int | None = None
    timeout_s: float | None = None
    api_base: str | None = None
    api_key_env: str | None = None  # NAME of the env var holding the key, read at call time
    script_dir: str | None = None  # where relative script paths resolve (the spec's directory)


@dataclass(frozen=True)
class ModelResponse:
    content: str | None
    tool_calls: tuple[ToolCall, ...]
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None
    latency_ms: float
    model: str


class ModelError(Exception):
    """A permanent failure (bad request, auth, unknown model, script error). User-facing text."""


class TransientModelError(ModelError):
    """Rate limit, 5xx, timeout, connection error: worth retrying with backoff.

    `retry_after` is the provider's Retry-After hint in seconds, when it gave one.
    """

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@runtime_checkable
class ModelClient(Protocol):
    async def complete(self, request: ModelRequest) -> ModelResponse: ...


_clients: dict[str, ModelClient] = {}
_clients_lock = threading.Lock()


def is_scripted(model: str) -> bool:
    return model == "scripted" or model.startswith("scripted:")


def client_for(model: str) -> ModelClient:
    """The client for a model id: the scripted one for "scripted[:...]", litellm otherwise.

    Instances are shared (one per kind); neither keeps per-request state apart from the
    scripted client's script cache and `times` counters.
    """
    kind = "scripted" if is_scripted(model) else "litellm"
    with _clients_lock:
        client = _clients.get(kind)
        if client is None:
            client = ScriptedModelClient() if kind == "scripted" else LiteLLMModelClient()
            _clients[kind] = client
        return client


# --------------------------------------------------------------------------------------------
# Helpers shared by both clients
# --------------------------------------------------------------------------------------------


def _text_of(content: Any) -> str:
    """The text of a message's content (a string, a list of content parts, or None)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return json.dumps(content, sort_keys=True, default=str)


def _rough_tokens(text: str) -> int:
    return max(1, (len(text) + 3) // 4)


_SEED_LABEL = b"agentflow-scripted-v1"  # seeds keep their own label: the same request, the same answer


# --------------------------------------------------------------------------------------------
# Schema synthesis (the unscripted answer of the scripted model)
# --------------------------------------------------------------------------------------------

_MAX_DEPTH = 8


class _Synth:
    """Deterministic values for a JSON schema. Each value depends on the seed and on its path
    in the instance (not on draw order), so sibling fields differ and stay stable."""

    def __init__(self, seed: bytes, root: Any) -> None:
        self.seed = seed
        self.root = root

    def n(self, path: str, salt: str = "") -> int:
        return int.from_bytes(hashlib.sha256(self.seed + b"\0" + (path + "\0" + salt).encode()).digest()[:8], "big")

    def tag(self, path: str) -> str:
        return f"{self.n(path, 'tag'):016x}"[:6]

    def resolve(self, ref: str) -> Any:
        if not ref.startswith("#"):
            raise ModelError(f"scripted model: cannot resolve external schema reference {ref!r}")
        target: Any = self.root
        for raw in ref[1:].split("/"):
            if not raw:
                continue
            part = raw.replace("~1", "/").replace("~0", "~")
            if isinstance(target, dict) and part in target:
                target = target[part]
            elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
                target = target[int(part)]
            else:
                raise ModelError(f"scripted model: schema reference {ref!r} does not resolve")
        return target

    def value(self, schema: Any, name: str, path: str, depth: int = 0) -> Any:
        if schema is True or schema == {} or schema is None:
            return self.any_json(name, path)
        if schema is False:
            raise ModelError(f"scripted model: the schema at {path or '/'} accepts no value")
        if not isinstance(schema, dict):
            raise ModelError(f"scripted model: unsupported schema at {path or '/'}: {schema!r}")
        if "$ref" in schema:
            rest = {k: v for k, v in schema.items() if k not in ("$ref", "$defs", "definitions")}
            target = self.resolve(schema["$ref"])
            merged = {**target, **rest} if isinstance(target, dict) and rest else target
            return self.value(merged, name, path, depth + 1)
        if "const" in schema:
            return copy.deepcopy(schema["const"])
        if "enum" in schema and schema["enum"]:
            options = schema["enum"]
            return copy.deepcopy(options[self.n(path, "enum") % len(options)])
        if schema.get("allOf"):
            merged = {k: v for k, v in schema.items() if k != "allOf"}
            for part in schema["allOf"]:
                part = self.resolve(part["$ref"]) if isinstance(part, dict) and "$ref" in part else part
                if isinstance(part, dict):
                    for key, val in part.items():
                        if key == "properties":
                            merged["properties"] = {**merged.get("properties", {}), **val}
                        elif key == "required":
                            merged["required"] = sorted({*merged.get("required", []), *val})
                        else:
                            merged.setdefault(key, val)
            return self.value(merged, name, path, depth + 1)
        for key in ("anyOf", "oneOf"):
            if schema.get(key):
                options = schema[key]
                non_null = [o for o in options if not _is_null_schema(o)]
                if depth >= _MAX_DEPTH and len(non_null) < len(options):
                    return None  # cut recursion where null is allowed
                # Prefer a real value: null is only chosen when nothing else is allowed.
                pool = non_null or options
                chosen = pool[self.n(path, key) % len(pool)]
                if isinstance(chosen, dict):
                    siblings = {k: v for k, v in schema.items() if k not in (key, "title", "description", "default")}
                    if siblings:
                        chosen = {**siblings, **chosen}
                return self.value(chosen, name, path, depth + 1)
        kind = schema.get("type")
        if isinstance(kind, list):
            real = [k for k in kind if k != "null"]
            if not real:
                return None
            if depth >= _MAX_DEPTH and "null" in kind:
                return None
            kind = real[self.n(path, "type") % len(real)]
        if kind is None:
            if "properties" in schema or "additionalProperties" in schema:
                kind = "object"
            elif "items" in schema or "prefixItems" in schema:
                kind = "array"
            else:
                return self.any_json(name, path)
        if kind == "object":
            return self.object(schema, name, path, depth)
        if kind == "array":
            return self.array(schema, name, path, depth)
        if kind == "string":
            return self.string(schema, name, path)
        if kind == "integer":
            return self.integer(schema, path)
        if kind == "number":
            return self.number(schema, path)
        if kind == "boolean":
            return self.n(path, "bool") % 2 == 0
        if kind == "null":
            return None
        raise ModelError(f"scripted model: unsupported schema type {kind!r} at {path or '/'}")

    def any_json(self, name: str, path: str) -> Any:
        return {"note": f"{name} {self.tag(path)}"}

    def object(self, schema: dict, name: str, path: str, depth: int) -> dict:
        props: dict = schema.get("properties") or {}
        required = list(schema.get("required") or [])
        keys = [k for k in props if k in required] if depth >= _MAX_DEPTH else list(props)
        out = {key: self.value(props[key], key, f"{path}/{key}", depth + 1) for key in keys}
        for key in required:  # required but undeclared: anything goes unless additionalProperties says
            if key not in out:
                extra = schema.get("additionalProperties", True)
                out[key] = self.value(extra if isinstance(extra, dict) else True, key, f"{path}/{key}", depth + 1)
        extra = schema.get("additionalProperties")
        if not props and isinstance(extra, dict) and extra and depth < _MAX_DEPTH:
            key = f"{name}_{self.tag(path + '/key')}"
            out[key] = self.value(extra, name, f"{path}/{key}", depth + 1)
        return out

    def array(self, schema: dict, name: str, path: str, depth: int) -> list:
        low = int(schema.get("minItems", 0))
        high = schema.get("maxItems")
        prefix = schema.get("prefixItems") or []
        if depth >= _MAX_DEPTH:
            count = max(low, len(prefix))
        else:
            count = max(low, len(prefix), 1 + self.n(path, "len") % 3)
        if high is not None:
            count = min(count, int(high))
        items = schema.get("items", True)
        out = []
        for i in range(count):
            sub = prefix[i] if i < len(prefix) else items
            if sub is False:
                break
            out.append(self.value(sub, name, f"{path}/{i}", depth + 1))
        if schema.get("uniqueItems"):
            unique: list = []
            for item in out:
                if item not in unique:
                    unique.append(item)
            out = unique if len(unique) >= low else out
        return out

    def string(self, schema: dict, name: str, path: str) -> str:
        tag = self.tag(path)
        fmt = schema.get("format")
        n = self.n(path, "fmt")
        if fmt == "date-time":
            text = f"2024-{1 + n % 12:02d}-{1 + n % 28:02d}T{n % 24:02d}:{n % 60:02d}:00Z"
        elif fmt == "date":
            text = f"2024-{1 + n % 12:02d}-{1 + n % 28:02d}"
        elif fmt == "time":
            text = f"{n % 24:02d}:{n % 60:02d}:00"
        elif fmt == "email":
            text = f"user{tag}@example.com"
        elif fmt in ("uri", "url"):
            text = f"https://example.com/{tag}"
        elif fmt == "uuid":
            h = hashlib.sha256(self.seed + path.encode()).hexdigest()
            text = f"{h[:8]}-{h[8:12]}-4{h[13:16]}-8{h[17:20]}-{h[20:32]}"
        else:
            text = f"{name} {tag}"
        low = int(schema.get("minLength", 0))
        high = schema.get("maxLength")
        if len(text) < low:
            text = (text + " " + tag * (low // 6 + 1))[:max(low, len(text))]
        if high is not None and len(text) > int(high):
            text = text[: int(high)]
        return text

    def integer(self, schema: dict, path: str) -> int:
        low, high = _span_of(*_bounds(schema, integer=True), 100)
        if high < low:
            raise ModelError(f"scripted model: empty integer range at {path or '/'}")
        value = low + self.n(path, "int") % (high - low + 1)
        step = schema.get("multipleOf")
        if isinstance(step, int) and step > 0:
            snapped = value - value % step
            value = snapped if snapped >= low else snapped + step
        return value

    def number(self, schema: dict, path: str) -> float:
        low, high = _span_of(*_bounds(schema, integer=False), 100.0)
        fraction = (self.n(path, "num") % 10_000) / 10_000
        value = round(low + (high - low) * fraction, 2)
        return min(max(value, low), high)


def _span_of(low: Any, high: Any, width: Any) -> tuple[Any, Any]:
    """A schema's bounds with missing ends filled: `width` wide, from 0 when both are missing."""
    if low is None and high is None:
        return 0 * width, width
    if low is None:
        return high - width, high
    if high is None:
        return low, low + width
    return low, high


def _bounds(schema: dict, *, integer: bool) -> tuple[Any, Any]:
    low = schema.get("minimum")
    high = schema.get("maximum")
    eps = 1 if integer else 1e-6
    if isinstance(schema.get("exclusiveMinimum"), (int, float)) and not isinstance(schema.get("exclusiveMinimum"), bool):
        low = schema["exclusiveMinimum"] + eps
    if isinstance(schema.get("exclusiveMaximum"), (int, float)) and not isinstance(schema.get("exclusiveMaximum"), bool):
        high = schema["exclusiveMaximum"] - eps
    if integer:
        low = None if low is None else math.ceil(low)
        high = None if high is None else math.floor(high)
    return low, high


def _is_null_schema(schema: Any) -> bool:
    return isinstance(schema, dict) and (schema.get("type") == "null" or ("const" in schema and schema["const"] is None))


def synthesize_value(schema: Any, seed: str | bytes, name: str = "value") -> Any:
    """A JSON value that fits `schema`, fully determined by `schema` and `seed`."""
    seed_bytes = seed.encode() if isinstance(seed, str) else seed
    return _Synth(seed_bytes, schema).value(schema, name, "")


# --------------------------------------------------------------------------------------------
# The scripted client
# --------------------------------------------------------------------------------------------

_MATCH_KEYS = ("node", "task", "turn", "attempt", "contains")
_REPLY_KEYS = ("content", "tool_calls", "echo", "raw", "error")
_ERROR_KINDS = ("rate_limit", "server", "timeout", "fatal")


@dataclass(frozen=True)
class _Rule:
    index: int
    node: str | None
    task: str | None
    turn: int | None
    attempt: int | None
    contains: str | None
    times: int | None
    reply: str  # one of _REPLY_KEYS
    value: Any
    message: str | None

    def matches(self, request: ModelRequest, last_text: str) -> bool:
        return (
            (self.node is None or _glob_match(self.node, request.node_id))
            and (self.task is None or _glob_match(self.task, request.task))
            and (self.turn is None or request.turn == self.turn)
            and (self.attempt is None or request.attempt == self.attempt)
            and (self.contains is None or self.contains in last_text)
        )


@functools.lru_cache(maxsize=512)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    """`*` matches any run of characters (slashes too), `?` one character; everything else,
    brackets included, is literal, because node ids are full of them: main/reviews[2]/*."""
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern), re.DOTALL)


def _glob_match(pattern: str, text: str) -> bool:
    return _glob_regex(pattern).fullmatch(text) is not None


def _parse_script(path: Path, text: str) -> list[_Rule]:
    def bad(what: str) -> ModelError:
        return ModelError(f"scripted model: invalid script {path}: {what}")

    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise bad(f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("rules"), list):
        raise bad('expected an object {"rules": [...]}')
    unknown_top = sorted(set(data) - {"rules", "comment", "description"})
    if unknown_top:
        raise bad(f"unknown top-level key(s) {', '.join(map(repr, unknown_top))}")
    rules = []
    for i, raw in enumerate(data["rules"]):
        where = f"rule {i + 1}"
        if not isinstance(raw, dict):
            raise bad(f"{where} is not an object")
        unknown = sorted(set(raw) - {*_MATCH_KEYS, *_REPLY_KEYS, "message", "times", "comment"})
        if unknown:
            raise bad(f"{where} has unknown key(s) {', '.join(map(repr, unknown))}")
        replies = [k for k in _REPLY_KEYS if k in raw]
        if len(replies) != 1:
            raise bad(f"{where} needs exactly one reply of {', '.join(_REPLY_KEYS)} (found {len(replies) or 'none'})")
        reply = replies[0]
        for key in ("node", "task", "contains"):
            if key in raw and not isinstance(raw[key], str):
                raise bad(f"{where}: {key!r} must be a string")
        for key in ("turn", "attempt", "times"):
            if key in raw and (not isinstance(raw[key], int) or isinstance(raw[key], bool) or raw[key] < 1):
                raise bad(f"{where}: {key!r} must be a positive integer")
        value = raw[reply]
        if reply == "tool_calls":
            if not isinstance(value, list) or not value:
                raise bad(f"{where}: 'tool_calls' must be a non-empty list")
            for j, call in enumerate(value):
                if not isinstance(call, dict) or not isinstance(call.get("name"), str) or not call["name"]:
                    raise bad(f"{where}: tool call {j + 1} needs a 'name' string")
                if not isinstance(call.get("arguments", {}), dict):
                    raise bad(f"{where}: tool call {j + 1} 'arguments' must be an object")
                extra = sorted(set(call) - {"name", "arguments", "id"})
                if extra:
                    raise bad(f"{where}: tool call {j + 1} has unknown key(s) {', '.join(map(repr, extra))}")
        elif reply == "echo" and value != "last":
            raise bad(f'{where}: \'echo\' must be "last"')
        elif reply == "raw" and not isinstance(value, str):
            raise bad(f"{where}: 'raw' must be a string")
        elif reply == "error" and value not in _ERROR_KINDS:
            raise bad(f"{where}: 'error' must be one of {', '.join(_ERROR_KINDS)}")
        if "message" in raw and (reply != "error" or not isinstance(raw["message"], str)):
            raise bad(f"{where}: 'message' is a string that goes with 'error'")
        rules.append(_Rule(
            index=i,
            node=raw.get("node"),
            task=raw.get("task"),
            turn=raw.get("turn"),
            attempt=raw.get("attempt"),
            contains=raw.get("contains"),
            times=raw.get("times"),
            reply=reply,
            value=value,
            message=raw.get("message"),
        ))
    return rules


class ScriptedModelClient:
    """The built-in deterministic model.

    Without a script it answers with a value synthesized from `output_schema` (JSON text), or
    a short string when `output_schema` is None; it never calls tools. The value is seeded by
    a hash of (model, messages, output schema, node id), so the same request gives the same
    answer and a different request a different one.

    With `model = "scripted:<path>"` (relative to `request.script_dir`, else the working
    directory) it reads a script::

        {"rules": [
          {"node": "main/plan", "content": {"modules": []}},
          {"task": "coder.*", "turn": 1, "tool_calls": [{"name": "write_file",
                                                         "arguments": {"path": "a.py", "content": "x"}}]},
          {"task": "coder.*", "turn": 2, "echo": "last"},
          {"node": "main/reviews[0]/*", "attempt": 1, "error": "rate_limit", "times": 1},
          {"contains": "validation error", "raw": "not json {"}
        ]}

    Match fields (all optional, all must hold): `node` and `task` (globs on node_id and
    "role.task": `*` any characters, `?` one, the rest literal), `turn`, `attempt`, `contains`
    (substring of the last message's content). Replies (exactly one): `content` (a string,
    or any JSON value, which is serialized), `tool_calls` (ids are "call_<turn>_<i>", i from
    1, unless given), `echo: "last"` (the last message's content), `raw` (verbatim text),
    `error` ("rate_limit" | "server" | "timeout" raise TransientModelError, "fatal" raises
    ModelError; optional `message`). Extension: `times: N` makes a rule apply to its first N
    matching requests in this process only (e.g. fail once, then succeed). The first
    matching rule wins; no match falls back to synthesis. A script is re-read when its file
    changes.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._scripts: dict[Path, tuple[tuple[int, int], list[_Rule]]] = {}
        self._used: dict[tuple[Path, tuple[int, int], int], int] = {}

    async def complete(self, request: ModelRequest) -> ModelResponse:
        start = time.perf_counter()
        rule = self._match(request)
        tool_calls: tuple[ToolCall, ...] = ()
        if rule is None:
            content: str | None = self._synthesize(request)
        elif rule.reply == "error":
            message = rule.message or f"scripted {rule.value.replace('_', ' ')} error"
            text = f"scripted model ({request.node_id}): {message}"
            if rule.value == "fatal":
                raise ModelError(text)
            raise TransientModelError(text)
        elif rule.reply == "content":
            content = rule.value if isinstance(rule.value, str) else json.dumps(rule.value, ensure_ascii=False)
        elif rule.reply == "raw":
            content = rule.value
        elif rule.reply == "echo":
            content = _text_of(request.messages[-1].get("content")) if request.messages else ""
        else:  # tool_calls
            content = None
            tool_calls = tuple(
                ToolCall(
                    id=call.get("id") or f"call_{request.turn}_{i}",
                    name=call["name"],
                    arguments=copy.deepcopy(call.get("arguments", {})),
                )
                for i, call in enumerate(rule.value, start=1)
            )
        prompt_text = canonical_json(list(request.messages)) + (canonical_json(list(request.tools)) if request.tools else "")
        completion_text = (content or "") + (canonical_json([c.arguments for c in tool_calls]) if tool_calls else "")
        return ModelResponse(
            content=content,
            tool_calls=tool_calls,
            prompt_tokens=_rough_tokens(prompt_text),
            completion_tokens=_rough_tokens(completion_text),
            cost_usd=0.0,
            latency_ms=(time.perf_counter() - start) * 1000,
            model=request.model,
        )

    # -- synthesis --------------------------------------------------------------------------
    @staticmethod
    def _seed(request: ModelRequest) -> bytes:
        return framed_sha256(_SEED_LABEL, (
            request.model,
            canonical_json(list(request.messages)),
            canonical_json(request.output_schema),
            request.node_id,
        ))

    def _synthesize(self, request: ModelRequest) -> str:
        seed = self._seed(request)
        if request.output_schema is None:
            return f"scripted answer to {request.task or 'the request'} ({seed.hex()[:8]})"
        value = _Synth(seed, request.output_schema).value(request.output_schema, request.output_name or "value", "")
        return json.dumps(value, ensure_ascii=False)

    # -- scripts ----------------------------------------------------------------------------
    def _script_path(self, request: ModelRequest) -> Path | None:
        if request.model == "scripted":
            return None
        raw = request.model[len("scripted:"):].strip()
        if not raw:
            raise ModelError('scripted model: "scripted:" needs a script path, e.g. "scripted:script.json"')
        path = Path(raw).expanduser()
        if not path.is_absolute():
            path = Path(request.script_dir or os.getcwd()) / path
        return path.resolve()

    def _load(self, path: Path) -> tuple[tuple[int, int], list[_Rule]]:
        try:
            stat = path.stat()
            version = (stat.st_mtime_ns, stat.st_size)
            with self._lock:
                cached = self._scripts.get(path)
            if cached is not None and cached[0] == version:
                return cached
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ModelError(f"scripted model: script {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelError(f"scripted model: cannot read script {path}: {exc}") from None
        entry = (version, _parse_script(path, text))
        with self._lock:
            self._scripts[path] = entry
        return entry

    def _match(self, request: ModelRequest) -> _Rule | None:
        path = self._script_path(request)
        if path is None:
            return None
        version, rules = self._load(path)
        last_text = _text_of(request.messages[-1].get("content")) if request.messages else ""
        for rule in rules:
            if not rule.matches(request, last_text):
                continue
            if rule.times is None:
                return rule
            with self._lock:
                key = (path, version, rule.index)
                used = self._used.get(key, 0)
                if used < rule.times:
                    self._used[key] = used + 1
                    return rule
        return None


# --------------------------------------------------------------------------------------------
# The litellm client
# --------------------------------------------------------------------------------------------

_litellm: Any = None
_litellm_lock = threading.Lock()


def load_litellm() -> Any:
    """Import litellm once, quietly, with the bundled cost map (no network fetch)."""
    global _litellm
    with _litellm_lock:
        if _litellm is None:
            os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
            os.environ.setdefault("LITELLM_TELEMETRY", "False")
            try:
                litellm = _import_out_of_gc_reach()
            except ImportError as exc:  # pragma: no cover - litellm is a dependency
                raise ModelError(f"the litellm package is needed for real models but cannot be imported: {exc}") from None
            litellm.suppress_debug_info = True
            litellm.telemetry = False
            litellm.set_verbose = False
            for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "litellm"):
                logging.getLogger(name).setLevel(logging.ERROR)
            _litellm = litellm
        return _litellm


def _import_out_of_gc_reach() -> Any:
    """`import litellm` with the cyclic GC paused, then its objects frozen (see the module
    docstring); interpreter exit unfreezes them, so that they are freed as before (DuckDB's
    bindings report the objects of theirs that are not)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        import litellm
    finally:
        if enabled:
            gc.enable()
    gc.freeze()
    atexit.register(gc.unfreeze)
    return litellm


def missing_key_message(model: str, roles: list[str], variables: list[str]) -> str:
    """The one line that says which variables a model needs, for whom, and what to do."""
    who = ("role " if len(roles) == 1 else "roles ") + ", ".join(roles)
    them = "it" if len(variables) == 1 else "them"
    return f"model {model} ({who}) needs {' and '.join(variables)}; set {them} in the environment"


def _json_instruction(schema: dict, name: str) -> str:
    return (
        f"Answer with only a JSON value for {name} that matches this JSON schema, "
        f"with no other text and no code fences:\n{json.dumps(schema, ensure_ascii=False)}"
    )


def _with_instruction(messages: list[dict], instruction: str) -> list[dict]:
    """Append `instruction` to the system message, adding one when there is none."""
    if messages and messages[0].get("role") == "system":
        first = dict(messages[0])
        content = first.get("content")
        if isinstance(content, list):
            first["content"] = [*content, {"type": "text", "text": "\n\n" + instruction}]
        else:
            first["content"] = (content + "\n\n" if content else "") + instruction
        return [first, *messages[1:]]
    return [{"role": "system", "content": instruction}, *messages]


class LiteLLMModelClient:
    """Real models through litellm: one `acompletion` call per `complete`, no retries inside."""

    def uses_response_format(self, request: ModelRequest) -> bool:
        """Whether the schema goes in `response_format` (else into the system message)."""
        if request.output_schema is None:
            return False
        if request.api_base and request.model.startswith("openai/"):
            return True  # an OpenAI-compatible server: json_schema is the protocol's way
        litellm = load_litellm()
        try:
            return bool(litellm.supports_response_schema(model=request.model))
        except Exception:
            return False

    async def complete(self, request: ModelRequest) -> ModelResponse:
        api_key = None
        if request.api_key_env:
            api_key = os.environ.get(request.api_key_env)
            if not api_key:
                role = request.task.split(".", 1)[0] if request.task else "?"
                raise ModelError(missing_key_message(request.model, [role], [request.api_key_env]))
        litellm = load_litellm()
        messages = [_wire_message(m) for m in request.messages]
        kwargs: dict[str, Any] = {
            "model": request.model,
            "num_retries": 0,
            "max_retries": 0,
        }
        if request.output_schema is not None:
            if self.uses_response_format(request):
                kwargs["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {
                        "name": _response_format_name(request.output_name),
                        "schema": request.output_schema,
                        "strict": False,
                    },
                }
            else:
                messages = _with_instruction(messages, _json_instruction(request.output_schema, request.output_name))
        kwargs["messages"] = messages
        if request.tools:
            kwargs["tools"] = [dict(t) for t in request.tools]
        if request.temperature is not None:
            kwargs["temperature"] = request.temperature
        if request.max_tokens is not None:
            kwargs["max_tokens"] = request.max_tokens
        if request.timeout_s is not None:
            kwargs["timeout"] = request.timeout_s
        if request.api_base:
            kwargs["api_base"] = request.api_base
        if api_key:
            kwargs["api_key"] = api_key

        start = time.perf_counter()
        try:
            if request.timeout_s is not None:
                # litellm enforces `timeout`; this bounds anything it does around the request.
                response = await asyncio.wait_for(litellm.acompletion(**kwargs), request.timeout_s + 5.0)
            else:
                response = await litellm.acompletion(**kwargs)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # classified below; never re-raised raw
            raise _classify(exc, request, litellm) from None
        latency_ms = (time.perf_counter() - start) * 1000
        return _parse_response(response, request, latency_ms)


def _wire_message(message: dict) -> dict:
    """A copy of `message` as providers expect it: tool-call arguments as JSON text."""
    out = dict(message)
    calls = out.get("tool_calls")
    if calls:
        wired = []
        for call in calls:
            call = dict(call)
            function = dict(call.get("function") or {})
            if not isinstance(function.get("arguments", ""), str):
                function["arguments"] = json.dumps(function["arguments"], ensure_ascii=False)
            call["function"] = function
            call.setdefault("type", "function")
            wired.append(call)
        out["tool_calls"] = wired
    return out


def _response_format_name(name: str) -> str:
    """OpenAI requires ^[a-zA-Z0-9_-]{1,64}$ for the schema name."""
    cleaned = "".join(c if (c.isascii() and c.isalnum()) or c in "_-" else "_" for c in (name or "answer"))
    return cleaned[:64] or "answer"


def _parse_response(response: Any, request: ModelRequest, latency_ms: float) -> ModelResponse:
    try:
        choice = response.choices[0]
        message = choice.message
    except (AttributeError, IndexError, TypeError):
        raise TransientModelError(f"model {request.model}: the provider returned a response without choices") from None
    content = getattr(message, "content", None)
    calls = []
    for i, call in enumerate(getattr(message, "tool_calls", None) or [], start=1):
        function = getattr(call, "function", None)
        name = getattr(function, "name", None)
        raw_args = getattr(function, "arguments", None)
        if not name:
            raise TransientModelError(f"model {request.model}: the model returned a tool call without a name")
        if raw_args is None or (isinstance(raw_args, str) and not raw_args.strip()):
            arguments: Any = {}
        elif isinstance(raw_args, dict):
            arguments = raw_args
        else:
            try:
                arguments = json.loads(raw_args)
            except (TypeError, ValueError):
                arguments = None
        if not isinstance(arguments, dict):
            # Malformed output of the model: a new sample usually fixes it, so let the caller retry.
            raise TransientModelError(
                f"model {request.model}: the model called tool {name!r} with arguments that are not a JSON object"
            )
        calls.append(ToolCall(id=getattr(call, "id", None) or f"call_{request.turn}_{i}", name=name, arguments=arguments))
    if calls and content == "":
        content = None
    usage = getattr(response, "usage", None)
    prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
    completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
    # litellm prices every response while logging it; None: the model is not in its price map.
    hidden = getattr(response, "_hidden_params", None)
    cost = hidden.get("response_cost") if isinstance(hidden, dict) else None
    return ModelResponse(
        content=content,
        tool_calls=tuple(calls),
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cost_usd=float(cost) if cost is not None else None,
        latency_ms=latency_ms,
        model=request.model,
    )


# A provider's Retry-After above this many seconds is cut to it (both engines wait for the
# hint instead of their backoff): a run waits, but not for hours.
RETRY_AFTER_MAX = 60.0


def _retry_after_seconds(value: str) -> float | None:
    """A Retry-After header in seconds: delay-seconds or an HTTP date; None when unreadable."""
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # an HTTP date is GMT; a sloppy server may leave the zone out
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, when.timestamp() - time.time())


def _retry_after(exc: Exception) -> float | None:
    headers: Any  # litellm's, or the HTTP response's, or None
    for headers in (getattr(exc, "litellm_response_headers", None), getattr(getattr(exc, "response", None), "headers", None)):
        try:
            value = headers.get("retry-after") or headers.get("Retry-After")
        except Exception:  # no headers, or not a mapping
            continue
        seconds = _retry_after_seconds(str(value)) if value else None
        if seconds is not None:
            return min(seconds, RETRY_AFTER_MAX)
    return None


# litellm's wrapping of a provider's message: "litellm.AuthenticationError: AuthenticationError:
# OpenAIException - <the provider's message>".
_WRAPPING = re.compile(r"^(?:(?:litellm\.)?\w*(?:Error|Exception)(?::| -)\s*)+")
# Failures of credentials that the openai SDK reports as HTTP 500 without sending anything.
_LOCAL_KEY_FAILURES = {
    "Missing credentials": "no API key",
    "api_key client option must be set": "no API key",
    "Forbidden control character detected in headers": "the key contains a control character (a newline?)",
    "Illegal header value": "the key contains a control character (a newline?)",
}


def _provider_message(text: str) -> str:
    """The provider's own words in a litellm error text, one line, without litellm's wrapping."""
    return _WRAPPING.sub("", " ".join(text.split()))


def _local_key_failure(detail: str) -> str | None:
    return next((what for marker, what in _LOCAL_KEY_FAILURES.items() if marker in detail), None)


def _classify(exc: Exception, request: ModelRequest, litellm: Any) -> ModelError:
    """Map anything litellm (or the network under it) raises to ModelError / TransientModelError.
    Keys are masked in the raw text, before anything else touches it."""
    if isinstance(exc, ModelError):
        return exc
    secrets = configured_secrets(os.environ, [request.api_key_env] if request.api_key_env else [])
    detail = _provider_message(redact(str(exc), secrets)) or type(exc).__name__
    if len(detail) > 500:
        detail = detail[:500] + "..."
    status = getattr(exc, "status_code", None)
    status = status if isinstance(status, int) else None
    where = f"model {request.model}" + (f" at {request.api_base}" if request.api_base else "")

    def transient(what: str) -> TransientModelError:
        return TransientModelError(f"{where}: {what}: {detail}", retry_after=_retry_after(exc))

    def permanent(what: str) -> ModelError:
        return ModelError(f"{where}: {what}: {detail}")

    missing = re.search(r"No module named '([\w.]+)'", detail)
    if isinstance(exc, ImportError) or missing:
        # litellm imports some packages only at call time (e.g. `mcp` whenever tools are sent).
        package = missing.group(1).split(".")[0] if missing else getattr(exc, "name", None) or "?"
        return ModelError(f"{where}: litellm needs the Python package {package!r}, which is not installed: {detail}")
    ex = litellm.exceptions
    hint = f", check the key in {request.api_key_env}" if request.api_key_env else ""
    local = _local_key_failure(detail)
    if local is not None:
        return permanent(f"authentication failed ({local}{hint})")
    if status in (401, 403) or isinstance(exc, (ex.AuthenticationError, ex.PermissionDeniedError)):
        return permanent(f"authentication failed (HTTP {status or 401}{hint})")
    if isinstance(exc, getattr(ex, "ContextWindowExceededError", ())):
        return permanent("the prompt is longer than the model's context window")
    if isinstance(exc, ex.RateLimitError) or status == 429:
        return transient("rate limited (HTTP 429)")
    if isinstance(exc, ex.Timeout) or isinstance(exc, (asyncio.TimeoutError, TimeoutError)) or status == 408:
        return transient("timed out" + (f" after {request.timeout_s:g}s" if request.timeout_s else ""))
    if status is not None and (status >= 500 or status == 409):
        return transient(f"server error (HTTP {status})")
    transient_types = tuple(
        t for t in (
            getattr(ex, "APIConnectionError", None),
            getattr(ex, "ServiceUnavailableError", None),
            getattr(ex, "InternalServerError", None),
            getattr(ex, "BadGatewayError", None),
        ) if t is not None
    )
    if isinstance(exc, transient_types) or isinstance(exc, ConnectionError):
        return transient("connection or server error")
    if status == 404 or isinstance(exc, ex.NotFoundError):
        return permanent("not found (unknown model or wrong api_base?)")
    if isinstance(exc, (ex.BadRequestError, ex.UnprocessableEntityError)) or (status is not None and 400 <= status < 500):
        return permanent(f"the provider rejected the request (HTTP {status or 400})")
    return permanent(f"unexpected error {type(exc).__name__}")
