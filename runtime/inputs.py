"""Run inputs: `--input NAME=VALUE`, `NAME=@file` and `--inputs file.json`, checked
against the entry choreography's parameter types before anything runs."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from agentflow.compiler.types import Validators, type_from_json


class InputError(Exception):
    """An input that is missing, unknown, unreadable or of the wrong type (exit 2)."""


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"input file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read input file {path}: {err}") from None


def parse_inputs(plan: dict, pairs: Iterable[str], inputs_file: str | None) -> dict[str, Any]:
    """The entry's arguments: raw text for `str` parameters, JSON for every other type."""
    params = {p["name"]: p for p in plan["params"]}
    raw: dict[str, Any] = {}
    if inputs_file:
        try:
            loaded = json.loads(_read(inputs_file))
        except json.JSONDecodeError as err:
            raise InputError(f"{inputs_file} is not valid JSON: {err}") from None
        if not isinstance(loaded, dict):
            raise InputError(f"{inputs_file} must hold a JSON object of parameter names to values")
        raw.update(loaded)
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name:
            raise InputError(f"--input {pair!r} should look like NAME=VALUE (or NAME=@file)")
        if name not in params:
            raise InputError(_unknown(name, params))
        if text.startswith("@"):
            text = _read(text[1:])
        if params[name]["type"] == "str":
            raw[name] = text
        else:
            try:
                raw[name] = json.loads(text)
            except json.JSONDecodeError:
                raise InputError(f"input `{name}` is a {_shown(params[name]['type'])}, so its value must be "
                                 f"JSON; got {text[:60]!r}") from None
    for name in raw:
        if name not in params:
            raise InputError(_unknown(name, params))
    return validate_inputs(plan, raw)


def validate_inputs(plan: dict, raw: dict[str, Any]) -> dict[str, Any]:
    from pydantic import ValidationError
    validators = Validators({n: tuple((f, type_from_json(t)) for f, t in fields)
                             for n, fields in plan["type_table"].items()})
    out = {}
    for p in plan["params"]:
        name = p["name"]
        if name not in raw or raw[name] is None and p["has_default"]:
            if not p["has_default"]:
                raise InputError(f"missing input `{name}` ({_shown(p['type'])}); pass it with "
                                 f"--input {name}=VALUE or in --inputs FILE.json")
            out[name] = p["default"]
            continue
        try:
            out[name] = validators.validate(type_from_json(p["type"]), raw[name], strict=True)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(x) for x in first.get("loc", ()))
            raise InputError(f"input `{name}` does not fit its type {_shown(p['type'])}: "
                             f"{where + ': ' if where else ''}{first.get('msg')}") from None
    return out


def _shown(t: Any) -> str:
    return str(type_from_json(t))


def _unknown(name: str, params: dict) -> str:
    known = ", ".join(f"`{n}`" for n in params) or "none"
    return f"the entry choreography has no parameter `{name}` (parameters: {known})"
