"""The scripted model's rule files: parsing a script into rules, and matching a request."""
from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .interface import ModelError, ModelRequest

_MATCH_KEYS = ("node", "task", "turn", "attempt", "contains")
_REPLY_KEYS = ("content", "tool_calls", "echo", "raw", "error")
_ERROR_KINDS = ("rate_limit", "server", "timeout", "fatal")


@dataclass(frozen=True)
class Rule:
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


def parse_script(path: Path, text: str) -> list[Rule]:
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
        rules.append(Rule(
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
