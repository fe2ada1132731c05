"""Run inputs: `--input NAME=VALUE`, `NAME=@file` and `--inputs file.json`, checked
against the entry choreography's parameter types before anything runs; the `--force`
patterns, checked against the plan's node ids; and the paths a run is given, checked
before anything is created."""
from __future__ import annotations

import difflib
import functools
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, Collection, Iterable

from agentflow.compiler import schema
from agentflow.compiler.errors import UsageError
from agentflow.compiler.hashing import SURROGATE
from agentflow.compiler.types import TypeMismatch, Validators, type_from_json


# Lists and objects inside one input value. Real inputs stay far below it; above it the
# JSON parser, type checks and hashing would recurse without bound.
MAX_INPUT_DEPTH = 100
_TOO_DEEP = f"nests lists and objects more than {MAX_INPUT_DEPTH} deep, the limit for an input value"
NAME_MAX, PATH_MAX = 255, 4095  # bytes: the longest file name and path Linux takes


class InputError(UsageError):
    """An input that is missing, unknown, unreadable or of the wrong type (exit 2)."""


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8-sig")  # a leading BOM is no part of the text
    except FileNotFoundError:
        raise InputError(f"input file {path} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"input file {path} is a directory; give the path of a file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read input file {path}: {err}") from None


def _load_json(text: str, subject: str, hint: str = "") -> Any:
    """`text` as JSON, or an InputError about `subject` (`hint` follows a syntax error)."""
    try:
        return json.loads(text)
    except RecursionError:
        reason = _TOO_DEEP
    except json.JSONDecodeError as err:
        reason = f"is not valid JSON: {err}{hint}"
    except ValueError:  # the one other failure: an integer too long to convert
        reason = f"holds an integer of more than {sys.get_int_max_str_digits()} digits"
    raise InputError(f"{subject} {reason}")


def _json_problem(value: Any) -> str | None:
    """Why `value` has no JSON text, or None: JSON has no infinities or NaN, and its text
    is Unicode, which a lone surrogate (an unpaired `\\ud800` escape) is not. Iterative,
    so no depth can crash it."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if surrogate := SURROGATE.search(item):
                return (f"holds a lone surrogate, U+{ord(surrogate.group()):04X} (an unpaired `\\ud800`-style "
                        f"escape), which is not Unicode text; give valid UTF-8")
        elif isinstance(item, float) and not math.isfinite(item):
            return (f"holds the number {item}, but infinite and NaN numbers are not JSON values (1e999 overflows "
                    f"to inf); give a finite number")
        elif isinstance(item, (list, dict)):
            if depth == MAX_INPUT_DEPTH:
                return _TOO_DEEP
            if isinstance(item, dict):
                stack.extend((key, depth) for key in item)
                item = item.values()
            if not _clean_scalars(item):
                stack.extend((child, depth + 1) for child in item)
    return None


def _clean_scalars(items: Collection) -> bool:
    """Whether `items` are all scalars in which no problem hides, checked in bulk: an input is
    often a long list of numbers or strings."""
    kinds = set(map(type, items))
    if not kinds <= {int, bool, type(None), float, str}:
        return False
    if float in kinds and not all(math.isfinite(x) for x in items if type(x) is float):
        return False
    return str not in kinds or not SURROGATE.search("".join(x for x in items if type(x) is str))


def parse_inputs(plan: schema.Plan, pairs: Iterable[str], inputs_file: str | None) -> dict[str, Any]:
    """The entry's arguments: raw text for `str` parameters, JSON for every other type."""
    params = {p["name"]: p for p in plan["params"]}
    raw: dict[str, Any] = {}
    if inputs_file:
        loaded = _load_json(_read(inputs_file), inputs_file)
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
            raw[name] = _load_json(text, f"input `{name}`", f" (a {_shown(params[name]['type'])} input is "
                                                             f"written as JSON; got {text[:60]!r})")
    return validate_inputs(plan, raw)


def validate_inputs(plan: schema.Plan, raw: dict[str, Any]) -> dict[str, Any]:
    """The entry's arguments, each checked against its parameter's type, defaults filled in."""
    params = {p["name"]: p for p in plan["params"]}
    for name in raw:
        if name not in params:
            raise InputError(_unknown(name, params))
    validators = Validators.from_plan_table(plan["type_table"])
    out = {}
    for p in plan["params"]:
        name = p["name"]
        if name not in raw or raw[name] is None and p["has_default"]:
            if not p["has_default"]:
                raise InputError(f"missing input `{name}` ({_shown(p['type'])}); pass it with "
                                 f"--input {name}=VALUE or in --inputs FILE.json")
            out[name] = p["default"]
            continue
        if problem := _json_problem(raw[name]):
            raise InputError(f"input `{name}` {problem}")
        try:
            out[name] = validators.validate(type_from_json(p["type"]), raw[name], strict=True)
        except TypeMismatch as err:
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


def path_problem(path: str, directory: bool) -> str | None:
    """Why `path` cannot be opened or made as a directory (or, if not `directory`, a file),
    or None. The checks touch nothing, so a rejected path leaves no half-made directories."""
    given = Path(path)
    if len(os.fsencode(given.absolute())) > PATH_MAX:
        return f"is longer than {PATH_MAX} bytes, the limit for a path"
    for name in map(os.fsencode, given.parts):
        if len(name) > NAME_MAX:
            return f"has a name of {len(name)} bytes, over the limit of {NAME_MAX} bytes"
    existing = next(p for p in (given, *given.parents) if os.path.exists(p))
    if existing != given:
        return None if existing.is_dir() else f"goes through {existing}, which is a file, not a directory"
    if existing.is_dir() != directory:
        return "is a file, not a directory" if directory else "is a directory, not a file"
    return None


# `--force` patterns are node ids as `--dry-run` prints them. `[*]` is any item of a `for`
# and `#*` any iteration of a `repeat` (so `[` is no glob character class); `*` and `?`
# glob. A pattern without `/` is a name: every node of that name, wherever it is. A node
# stands for everything inside it too (a `for`, `repeat` or sub-choreography call).
_PATTERN_PART = re.compile(r"(?P<any>\[\*\]|#\*)|(?P<index>\[\d+\]|#\d+)|(?P<glob>[*?])|(?P<text>[^*?\[#]+|.)")
_ANY_INDEX = {"[": (r"\[\d+\]", r"\[\*\]"), "#": (r"#\d+", r"#\*")}  # over instance ids, template ids
_GLOB = {"*": ".*", "?": "."}
_INSIDE = r"(?:[\[#/].*)?"


def _pattern_regex(pattern: str, templates: bool) -> str:
    """`pattern` as a regex over instance ids (`main/reviews[2]/attempt#1/review`), or with
    `templates` over template ids (`main/reviews[*]/attempt#*/review`), where an index
    stands for any: `[2]` may be an item of some run."""
    regex = [] if "/" in pattern else ["(?:.*/)?"]
    for part in _PATTERN_PART.finditer(pattern):
        text, kind = part.group(), part.lastgroup
        if kind == "glob":
            regex.append(_GLOB[text])
        elif kind == "any" or kind == "index" and templates:
            regex.append(_ANY_INDEX[text[0]][templates])
        else:
            regex.append(re.escape(text))
    return "".join(regex) + _INSIDE


@functools.lru_cache(maxsize=8)
def force_matcher(patterns: tuple[str, ...]) -> Callable[[str], bool]:
    """Whether an instance id is forced by one of `patterns`; compiled once per run."""
    regex = re.compile("|".join(f"(?:{_pattern_regex(p, templates=False)})" for p in patterns))
    return lambda node_id: regex.fullmatch(node_id) is not None


def check_force(plan: schema.Plan, patterns: Iterable[str]) -> None:
    """Every pattern names a node of the plan, so a typo is exit 2 before anything runs
    rather than a run that silently forces nothing."""
    ids = list(plan["nodes"])
    for pattern in patterns:
        regex = re.compile(_pattern_regex(pattern, templates=True))
        if not any(regex.fullmatch(node_id) for node_id in ids):
            names = ids if "/" in pattern else sorted({node_id.rsplit("/", 1)[-1] for node_id in ids})
            nearest = ", ".join(difflib.get_close_matches(pattern, names, n=3, cutoff=0))
            raise InputError(f"--force {pattern} matches no node of {plan['entry']}; nearest: {nearest} "
                             f"(`agentflow run --dry-run` lists the node ids)")

