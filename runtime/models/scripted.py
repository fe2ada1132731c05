"""The built-in deterministic `scripted` model: no key, no network."""
from __future__ import annotations

import copy
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from agentflow.compiler.hashing import canonical_json, framed_sha256

from .interface import ModelError, ModelRequest, ModelResponse, ToolCall, TransientModelError
from .script import Rule, parse_script
from .synthesis import synthesize_value


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
        self._scripts: dict[Path, tuple[tuple[int, int], list[Rule]]] = {}
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
        value = synthesize_value(request.output_schema, seed, request.output_name or "value")
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

    def _load(self, path: Path) -> tuple[tuple[int, int], list[Rule]]:
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
        entry = (version, parse_script(path, text))
        with self._lock:
            self._scripts[path] = entry
        return entry

    def _match(self, request: ModelRequest) -> Rule | None:
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
