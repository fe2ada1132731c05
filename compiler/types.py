"""The type IR of the language, its JSON schemas and (lazily) pydantic validators.

Records are referred to by name (`RecordT`) and looked up in a `TypeTable`, so
recursive types work and two spellings of one type compare equal.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence, Union

PRIMITIVES = ("str", "int", "float", "bool", "json")


@dataclass(frozen=True)
class Prim:
    name: str  # one of PRIMITIVES

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class ListT:
    elem: "Type"

    def __str__(self) -> str:
        return f"list[{self.elem}]"


@dataclass(frozen=True)
class RecordT:
    """A declared record type, by name."""
    name: str

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class StructT:
    """An anonymous record: record literals and `repeat` results."""
    fields: tuple[tuple[str, "Type"], ...]

    def __str__(self) -> str:
        return "{" + ", ".join(f"{n}: {t}" for n, t in self.fields) + "}"

    def field(self, name: str) -> "Type | None":
        return next((t for n, t in self.fields if n == name), None)


@dataclass(frozen=True)
class LiteralT:
    values: tuple[str, ...]

    def __str__(self) -> str:
        return " | ".join(f'"{v}"' for v in self.values)


@dataclass(frozen=True)
class OptionalT:
    inner: "Type"

    def __str__(self) -> str:
        return f"{self.inner}?"


@dataclass(frozen=True)
class NullT:
    def __str__(self) -> str:
        return "null"


@dataclass(frozen=True)
class AnyT:
    """Unknown: after an error, or `json`-derived; compatible with everything."""
    def __str__(self) -> str:
        return "unknown"


Type = Union[Prim, ListT, RecordT, StructT, LiteralT, OptionalT, NullT, AnyT]
STR, INT, FLOAT, BOOL, JSON = (Prim(n) for n in PRIMITIVES)
NULL, ANY = NullT(), AnyT()
# Made once: every call of a tool reads its parameters' types.
_NAMED_TYPES: dict[str, Type] = {"null": NULL, "unknown": ANY, **{t.name: t for t in (STR, INT, FLOAT, BOOL, JSON)}}

TypeTable = Mapping[str, tuple[tuple[str, Type], ...]]  # record name -> fields


def strip_optional(t: Type) -> Type:
    return t.inner if isinstance(t, OptionalT) else t


def record_fields(t: Type, table: TypeTable) -> tuple[tuple[str, Type], ...] | None:
    t = strip_optional(t)
    if isinstance(t, RecordT):
        return table.get(t.name)
    if isinstance(t, StructT):
        return t.fields
    return None


def is_assignable(src: Type, dst: Type, table: TypeTable) -> bool:
    """Whether a value of type `src` may be used where `dst` is expected."""
    if src is dst:  # the usual case (types resolved from one declaration are shared): no __eq__ calls
        return True
    if isinstance(src, AnyT) or isinstance(dst, AnyT) or dst == JSON or src == JSON:
        return True
    if src == dst:
        return True
    if isinstance(dst, OptionalT):
        return isinstance(src, NullT) or is_assignable(strip_optional(src), dst.inner, table)
    if isinstance(src, OptionalT) or isinstance(src, NullT):
        return False
    if dst == FLOAT and src == INT:
        return True
    if isinstance(src, LiteralT):
        return dst == STR or (isinstance(dst, LiteralT) and set(src.values) <= set(dst.values))
    if isinstance(src, ListT) and isinstance(dst, ListT):
        return is_assignable(src.elem, dst.elem, table)
    if isinstance(src, StructT) and isinstance(dst, (RecordT, StructT)):
        want = dict(record_fields(dst, table) or ())
        have = dict(src.fields)
        return set(have) <= set(want) and all(
            is_assignable(have[n], t, table) if n in have else isinstance(t, OptionalT)
            for n, t in want.items())
    return False


def join(a: Type, b: Type, table: TypeTable) -> Type | None:
    """The type of `x if c else y` and of list items: the wider of two, or None."""
    if isinstance(a, NullT):
        return b if isinstance(b, (OptionalT, AnyT)) else OptionalT(b) if not isinstance(b, NullT) else a
    if isinstance(b, NullT):
        return join(b, a, table)
    if is_assignable(a, b, table):
        return b
    if is_assignable(b, a, table):
        return a
    if isinstance(a, LiteralT) and isinstance(b, LiteralT):
        return LiteralT(tuple(dict.fromkeys(a.values + b.values)))
    if isinstance(strip_optional(a), LiteralT) and strip_optional(b) == STR or \
            isinstance(strip_optional(b), LiteralT) and strip_optional(a) == STR:
        return STR
    return None


def with_omitted_fields(t: Type, value: Any, table: TypeTable) -> Any:
    """`value` as a value of type `t`: each optional (`T?`) field that a record of `t` (at any
    depth: in fields and lists too) declares but the value lacks is added as null.

    A record literal bound to a name is typed on its own (`n = {text: t}`), so it may leave
    optional fields out and still be passed where its record type is expected; the run fills
    them, as the plan does for a literal written in place. A value that lacks none is returned
    as it is (the same object), so its hash is unchanged."""
    t = strip_optional(t)
    if isinstance(t, ListT) and isinstance(value, list):
        items = [with_omitted_fields(t.elem, item, table) for item in value]
        return value if all(new is old for new, old in zip(items, value)) else items
    fields = record_fields(t, table) if isinstance(value, dict) else None
    if not fields:
        return value
    filled = dict(value)
    for name, field_type in fields:
        if name in value:
            filled[name] = with_omitted_fields(field_type, value[name], table)
        elif isinstance(field_type, OptionalT):
            filled[name] = None
    return value if len(filled) == len(value) and all(filled[n] is value[n] for n in value) else filled


# ---------------------------------------------------------------- JSON schema

def json_schema(t: Type, table: TypeTable) -> dict:
    """A self-contained JSON schema; records go to `$defs` (pydantic/OpenAI style)."""
    defs: dict[str, dict] = {}
    if isinstance(t, RecordT):  # providers want an object at the root, not a $ref
        root = _object_schema(table.get(t.name, ()), table, defs, title=t.name)
    else:
        root = _schema(t, table, defs)
    if defs:
        root = {**root, "$defs": {k: defs[k] for k in sorted(defs)}}
    return root


def _schema(t: Type, table: TypeTable, defs: dict) -> dict:
    if isinstance(t, Prim):
        return {"str": {"type": "string"}, "int": {"type": "integer"}, "float": {"type": "number"},
                "bool": {"type": "boolean"}, "json": {}}[t.name]
    if isinstance(t, ListT):
        return {"type": "array", "items": _schema(t.elem, table, defs)}
    if isinstance(t, LiteralT):
        return {"type": "string", "enum": list(t.values)}
    if isinstance(t, OptionalT):
        return {"anyOf": [_schema(t.inner, table, defs), {"type": "null"}]}
    if isinstance(t, NullT):
        return {"type": "null"}
    if isinstance(t, RecordT):
        if t.name not in defs:
            defs[t.name] = {}
            defs[t.name] = _object_schema(table.get(t.name, ()), table, defs, title=t.name)
        return {"$ref": f"#/$defs/{t.name}"}
    if isinstance(t, StructT):
        return _object_schema(t.fields, table, defs)
    return {}


def _object_schema(fields, table, defs, title: str | None = None) -> dict:
    schema = {"type": "object",
              "properties": {n: _schema(ft, table, defs) for n, ft in fields},
              "required": [n for n, _ in fields],
              "additionalProperties": False}
    if title:
        schema["title"] = title
    return schema


# ---------------------------------------------------------------- serialisation

def type_to_json(t: Type) -> Any:
    """A compact, canonical JSON spelling of a type, for plans and hashes."""
    if isinstance(t, Prim):
        return t.name
    if isinstance(t, ListT):
        return {"list": type_to_json(t.elem)}
    if isinstance(t, RecordT):
        return {"record": t.name}
    if isinstance(t, StructT):
        return {"struct": [[n, type_to_json(ft)] for n, ft in t.fields]}
    if isinstance(t, LiteralT):
        return {"literal": list(t.values)}
    if isinstance(t, OptionalT):
        return {"optional": type_to_json(t.inner)}
    if isinstance(t, NullT):
        return "null"
    return "unknown"


def type_from_json(data: Any) -> Type:
    if isinstance(data, str):
        return _NAMED_TYPES.get(data) or Prim(data)
    (kind, value), = data.items()
    if kind == "list":
        return ListT(type_from_json(value))
    if kind == "record":
        return RecordT(value)
    if kind == "struct":
        return StructT(tuple((n, type_from_json(ft)) for n, ft in value))
    if kind == "literal":
        return LiteralT(tuple(value))
    return OptionalT(type_from_json(value))


# ---------------------------------------------------------------- validation (runtime)

class TypeMismatch(ValueError):
    """A value that does not fit its type. `errors()` lists the problems as pydantic words
    and locates them, so callers need not import pydantic to catch it."""

    def __init__(self, errors: Sequence[Mapping[str, Any]]) -> None:
        super().__init__("; ".join(str(e.get("msg")) for e in errors))
        self._errors = errors

    def errors(self) -> Sequence[Mapping[str, Any]]:
        return self._errors


class NotPlain(Exception):
    """The plain check cannot vouch for a value: pydantic decides, and words any error."""


Check = Callable[[Any], Any]
_EXACT = {"str": str, "int": int, "bool": bool}  # these take exactly their own type, unchanged
_FLOAT_EXACT_INT = 2 ** 53  # ints up to this size become floats without rounding


def _exact(kind: type) -> Check:
    def check(value: Any) -> Any:
        if type(value) is not kind:
            raise NotPlain
        return value
    return check


def _exact_items(kind: type) -> Check:
    """A list of one primitive type, checked in C: `list[int]` inputs of 100k items."""
    def check(value: Any) -> Any:
        if type(value) is not list or not set(map(type, value)) <= {kind}:
            raise NotPlain
        return list(value)
    return check


def _float(value: Any) -> float:
    kind = type(value)
    if kind is float and math.isfinite(value):
        return value
    if kind is int and -_FLOAT_EXACT_INT <= value <= _FLOAT_EXACT_INT:
        return float(value)
    raise NotPlain


def _plain_json(value: Any) -> Any:
    """A value of type `json`: JSON data (string keys, finite numbers) is taken as it is."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is float and math.isfinite(value):
        return value
    if kind is list:
        return [_plain_json(item) for item in value]
    if kind is dict and all(type(key) is str for key in value):
        return {key: _plain_json(item) for key, item in value.items()}
    raise NotPlain


def _unsure(value: Any) -> Any:
    raise NotPlain


class Validators:
    """Validators for the types of one program, built on first use: a plain Python check
    that takes the common values (JSON data of exactly the declared types) in a few
    microseconds each, and pydantic TypeAdapters for everything else, which decide
    conversions ("3" for a model's int) and word every error.

    pydantic is imported here only, lazily, so `agentflow compile` stays fast and a run
    whose values are plain needs no pydantic at all.
    """

    def __init__(self, table: TypeTable) -> None:
        self.table = table
        self._models: dict[str, Any] = {}
        self._adapters: dict[Type, Any] = {}
        self._checks: dict[Type, Check] = {}

    @classmethod
    def from_plan_table(cls, type_table: dict) -> "Validators":
        """Validators for a plan's `type_table` (record name -> [[field, type JSON], ...])."""
        return cls({n: tuple((f, type_from_json(t)) for f, t in fields) for n, fields in type_table.items()})

    def _adapter(self, t: Type):
        adapter = self._adapters.get(t)
        if adapter is None:
            from pydantic import TypeAdapter
            adapter = self._adapters[t] = TypeAdapter(self._py(t))
        return adapter

    def validate(self, t: Type, value: Any, *, strict: bool = False) -> Any:
        """The value as JSON-compatible data, or TypeMismatch. `strict` refuses conversions
        such as "3" for an int (for what users type; models get lax parsing). Values of
        exactly the declared types are the same either way, and skip pydantic."""
        try:
            return self._check(t)(value)
        except (NotPlain, RecursionError):
            return self.validate_by_pydantic(t, value, strict=strict)

    def validate_by_pydantic(self, t: Type, value: Any, *, strict: bool = False) -> Any:
        """`validate` without the plain check: the reference that check agrees with."""
        from pydantic import ValidationError
        adapter = self._adapter(t)
        try:
            return adapter.dump_python(adapter.validate_python(value, strict=strict), mode="json")
        except ValidationError as err:
            raise TypeMismatch(err.errors()) from None

    def validate_json(self, t: Type, text: str) -> Any:
        """`validate` for JSON text (lax), or TypeMismatch."""
        from pydantic import ValidationError
        adapter = self._adapter(t)
        try:
            return adapter.dump_python(adapter.validate_json(text), mode="json")
        except ValidationError as err:
            raise TypeMismatch(err.errors()) from None

    def _check(self, t: Type) -> Check:
        check = self._checks.get(t)
        if check is None:
            check = self._checks[t] = self._plain_check(t)
        return check

    def _plain_check(self, t: Type) -> Check:
        """The plain check of `t`: its value as pydantic would give it back, or NotPlain."""
        if isinstance(t, Prim):
            return _float if t.name == "float" else _plain_json if t.name == "json" else _exact(_EXACT[t.name])
        if isinstance(t, ListT):
            if isinstance(t.elem, Prim) and t.elem.name in _EXACT:
                return _exact_items(_EXACT[t.elem.name])
            return self._list_check(t.elem)
        if isinstance(t, OptionalT):
            return self._optional_check(t.inner)
        if isinstance(t, NullT):
            return _exact(type(None))
        if isinstance(t, LiteralT):
            return self._literal_check(frozenset(t.values))
        if isinstance(t, AnyT):
            return _plain_json
        fields = record_fields(t, self.table)
        return _unsure if fields is None else self._record_check(fields)

    def _list_check(self, elem: Type) -> Check:
        def check(value: Any) -> Any:
            if type(value) is not list:
                raise NotPlain
            item = self._check(elem)
            return [item(v) for v in value]
        return check

    def _optional_check(self, inner: Type) -> Check:
        def check(value: Any) -> Any:
            return None if value is None else self._check(inner)(value)
        return check

    @staticmethod
    def _literal_check(values: frozenset[str]) -> Check:
        def check(value: Any) -> Any:
            if type(value) is not str or value not in values:
                raise NotPlain
            return value
        return check

    def _record_check(self, fields: tuple[tuple[str, Type], ...]) -> Check:
        """A record: a dict of exactly its fields, given back in their declared order.
        Field checks are looked up when called, so recursive records need no forward refs."""
        names = frozenset(n for n, _ in fields)

        def check(value: Any) -> Any:
            if type(value) is not dict or value.keys() != names:
                raise NotPlain
            return {n: self._check(ft)(value[n]) for n, ft in fields}
        return check

    def _py(self, t: Type) -> Any:
        from typing import Any as TAny, List, Literal, Optional
        from pydantic import ConfigDict, create_model
        if isinstance(t, Prim):
            return {"str": str, "int": int, "float": float, "bool": bool, "json": TAny}[t.name]
        if isinstance(t, ListT):
            return List[self._py(t.elem)]  # type: ignore[misc]  # a type made at run time
        if isinstance(t, LiteralT):
            return Literal[t.values]
        if isinstance(t, OptionalT):
            return Optional[self._py(t.inner)]
        if isinstance(t, NullT):
            return type(None)
        if isinstance(t, RecordT):
            if t.name not in self._models:
                self._models[t.name] = t.name  # forward reference for recursive records
                fields: dict[str, Any] = {n: (self._py(ft), ...) for n, ft in self.table.get(t.name, ())}
                model = create_model(t.name, __config__=ConfigDict(extra="forbid", strict=False), **fields)
                self._models[t.name] = model
                model.model_rebuild(_types_namespace=dict(self._models))
            return self._models[t.name]
        if isinstance(t, StructT):
            fields = {n: (self._py(ft), ...) for n, ft in t.fields}
            return create_model("Record", __config__=ConfigDict(extra="forbid"), **fields)
        return TAny


