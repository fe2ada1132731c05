"""Schema synthesis: the unscripted answer of the scripted model, a JSON value that fits an
output schema and is fully determined by the schema and a seed."""
from __future__ import annotations

import copy
import hashlib
import math
from typing import Any

from .interface import ModelError

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
