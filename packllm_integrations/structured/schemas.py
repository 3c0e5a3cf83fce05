"""JSON Schemas as the grammar library takes them exactly: depth, closed objects, ``oneOf`` as ``anyOf``.

:meth:`~packllm_integrations.structured.constraints.Constraint.json_schema` passes every
schema through these: a schema nested deeper than :data:`MAX_SCHEMA_DEPTH` is refused, a
``oneOf`` becomes the ``anyOf`` it equals or is refused (:func:`one_of_as_any_of`), and
objects are closed where that keeps every output valid (:func:`closed_schema`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError

__all__ = ["JSON_LAYOUT", "MAX_SCHEMA_DEPTH", "closed_schema", "nesting", "one_of_as_any_of"]

MAX_SCHEMA_DEPTH = 100
"""How deeply objects and arrays may nest in a JSON Schema (the grammar library's parser stops at 128)."""


def nesting(value: Any) -> int:
    """How deeply dicts and lists nest in ``value`` (without recursion, so any depth is measured).

    >>> nesting({"a": [{"b": 1}]}), nesting(3)
    (3, 0)
    """
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, Mapping) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if depth <= MAX_SCHEMA_DEPTH:  # deeper than the limit is enough to know
            stack.extend((child, depth + 1) for child in children)
    return deepest


JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
"""JSON as ``json.dumps`` writes it: no free whitespace for a model to wander in."""


def closed_schema(schema: Any) -> Any:
    """``schema`` with ``additionalProperties: false`` wherever an object lists its properties and says nothing.

    What matches the closed schema matches the original (it is a subset), and a model is
    kept from adding keys of its own after the ones asked for. An object whose keys other
    subschemas may add (``allOf``, ``anyOf``, ``oneOf``, ``$ref``, ``if``, ...) stays open, and so do
    the branches of an ``allOf`` (each must accept the others' keys) and those of an ``anyOf`` or
    ``oneOf`` beside ``properties``, ``required`` or other keywords about the same object.

    >>> closed_schema({"properties": {"a": {}}})
    {'properties': {'a': {}}, 'additionalProperties': False}
    >>> closed_schema({"allOf": [{"properties": {"a": {}}}, {"properties": {"b": {}}}]})
    {'allOf': [{'properties': {'a': {}}}, {'properties': {'b': {}}}]}
    >>> closed_schema({"required": ["a"], "anyOf": [{"properties": {"b": {}}}]})
    {'required': ['a'], 'anyOf': [{'properties': {'b': {}}}]}
    >>> closed_schema({"$defs": {"A": {"properties": {"a": {}}}}, "allOf": [{"$ref": "#/$defs/A"}]})["$defs"]
    {'A': {'properties': {'a': {}}}}
    """
    return _closed(schema, True, _open_refs(schema))


_SHARED_KEYS = frozenset({"allOf", "anyOf", "oneOf", "$ref", "if", "then", "else", "dependentSchemas"})
"""Keywords beside ``properties`` through which other subschemas may add keys to the same object."""


_ANNOTATIONS = frozenset(
    {"type", "title", "description", "$defs", "definitions", "$schema", "$id", "$comment", "examples", "default"}
    | {"discriminator", "anyOf", "oneOf"}
)
"""Keys beside an ``anyOf``/``oneOf`` that leave its branches alone: with any other (``properties``,
``required``...) the object's keys are not the branch's to close."""


def _closed(schema: Any, close: bool, keep_open: frozenset[str]) -> Any:
    if isinstance(schema, Mapping):
        alone = schema.keys() <= _ANNOTATIONS  # anyOf / oneOf branches may be closed
        out = {}
        for k, value in schema.items():
            if k in ("allOf", "anyOf", "oneOf") and isinstance(value, list):
                out[k] = [_closed(v, k != "allOf" and alone, keep_open) for v in value]
            elif k in ("$defs", "definitions") and isinstance(value, Mapping):
                out[k] = {d: _closed(v, f"#/{k}/{d}" not in keep_open, keep_open) for d, v in value.items()}
            else:
                out[k] = _closed(value, True, keep_open)
        if close and "properties" in out and "additionalProperties" not in out and not _SHARED_KEYS & out.keys():
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_closed(v, True, keep_open) for v in schema]
    return schema


def _open_refs(schema: Any) -> frozenset[str]:
    """The local ``$ref`` targets that stand as a branch :func:`_closed` leaves open (of an ``allOf``, or of an
    ``anyOf``/``oneOf`` beside other keywords): they must stay open too."""
    out: set[str] = set()
    stack = [schema]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, Mapping):
            alone = item.keys() <= _ANNOTATIONS
            for k, value in item.items():
                if isinstance(value, list) and (k == "allOf" or (k in ("anyOf", "oneOf") and not alone)):
                    out.update(b["$ref"] for b in value if isinstance(b, Mapping) and isinstance(b.get("$ref"), str))
                stack.append(value)
    return frozenset(out)


def one_of_as_any_of(schema: Any) -> Any:
    """``schema`` with each ``oneOf`` as an ``anyOf``, where that is the same schema; any other ``oneOf`` raises.

    llguidance enforces "at least one branch", not "exactly one". The two agree where no value
    can match two branches, which is proved for each pair by one of: types that do not meet,
    ``const``/``enum`` values that do not meet, or a property one of them requires whose
    ``const``/``enum`` values in the two do not meet (a discriminator, as pydantic writes
    tagged unions). Local ``$ref``s are followed. A ``oneOf`` not proved so raises
    :class:`~packllm_integrations.errors.ConfigError` naming where it is.

    >>> cat = {"properties": {"kind": {"const": "cat"}}, "required": ["kind"]}
    >>> dog = {"properties": {"kind": {"const": "dog"}}, "required": ["kind"]}
    >>> list(one_of_as_any_of({"oneOf": [cat, dog]}))
    ['anyOf']
    >>> one_of_as_any_of({"oneOf": [{"type": "integer"}, {"type": "number"}]})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    packllm_integrations.errors.ConfigError: constraint='#/oneOf' is invalid: expected a oneOf (at #/oneOf) ...
    """
    return _exact(schema, schema, "#")


def _exact(schema: Any, root: Any, path: str) -> Any:
    if isinstance(schema, list):
        return [_exact(v, root, f"{path}/{i}") for i, v in enumerate(schema)]
    if not isinstance(schema, Mapping):
        return schema
    out = {key: _exact(value, root, f"{path}/{key}") for key, value in schema.items() if key != "oneOf"}
    branches = schema.get("oneOf")
    if not isinstance(branches, list):
        return out if branches is None else {**out, "oneOf": branches}
    for i in range(len(branches)):
        for j in range(i + 1, len(branches)):
            if not _disjoint(branches[i], branches[j], root):
                raise ConfigError(
                    "constraint",
                    f"{path}/oneOf",
                    f"a oneOf (at {path}/oneOf) whose branches no value can match two of (branches {i} and {j} "
                    "may overlap, "
                    "and the grammar can only enforce 'at least one'): use anyOf, or tell the branches "
                    "apart by types or by a required property's const or enum",
                )
    exact = _exact(branches, root, f"{path}/oneOf")
    if "anyOf" not in out:
        return {**out, "anyOf": exact}
    return {**out, "allOf": [*out.get("allOf", []), {"anyOf": exact}]}  # beside an anyOf of its own


def _resolved(schema: Any, root: Any) -> Any:
    """``schema``, its local ``$ref`` followed (a few hops at most; None where it cannot be followed)."""
    for _ in range(8):
        if not isinstance(schema, Mapping) or not isinstance(schema.get("$ref"), str):
            return schema
        ref = schema["$ref"]
        if not ref.startswith("#"):
            return None
        target: Any = root
        for part in filter(None, ref[1:].split("/")):
            part = part.replace("~1", "/").replace("~0", "~")
            target = target.get(part) if isinstance(target, Mapping) else None
        if target is None or len(schema) > 1:  # siblings of a $ref: not worth the proof
            return None
        schema = target
    return None


_NUMBERS = frozenset({"integer", "number"})


def _disjoint(a: Any, b: Any, root: Any) -> bool:
    """Whether no value can match both ``a`` and ``b`` (False: not proved)."""
    a, b = _resolved(a, root), _resolved(b, root)
    if a is False or b is False:
        return True
    if not isinstance(a, Mapping) or not isinstance(b, Mapping):
        return False
    ta, tb = _types(a), _types(b)
    if ta is not None and tb is not None and not (ta & tb or (ta & _NUMBERS and tb & _NUMBERS)):
        return True
    va, vb = _values(a), _values(b)
    if va is not None and vb is not None and not va & vb:
        return True
    pa, pb = a.get("properties"), b.get("properties")
    if not isinstance(pa, Mapping) or not isinstance(pb, Mapping):
        return False
    required = [k for r in (a.get("required"), b.get("required")) if isinstance(r, list) for k in r]
    for key in required:  # present in every value of both, so within both value sets
        if isinstance(key, str) and key in pa and key in pb:
            x, y = _values(_resolved(pa[key], root)), _values(_resolved(pb[key], root))
            if x is not None and y is not None and not x & y:
                return True
    return False


def _types(schema: Mapping[str, Any]) -> frozenset[str] | None:
    kind = schema.get("type")
    if isinstance(kind, str):
        return frozenset({kind})
    if isinstance(kind, list) and all(isinstance(k, str) for k in kind):
        return frozenset(kind)
    return None


def _values(schema: Any) -> frozenset[str] | None:
    """The values ``schema`` allows by ``const`` or ``enum``, as comparable keys (None: not limited so, or
    not comparable)."""
    if not isinstance(schema, Mapping):
        return None
    if "const" in schema:
        values = [schema["const"]]
    elif isinstance(schema.get("enum"), list):
        values = schema["enum"]
    else:
        return None
    try:
        return frozenset(json.dumps(_canonical(v), sort_keys=True, allow_nan=False) for v in values)
    except (TypeError, ValueError):
        return None


def _canonical(value: Any) -> Any:
    """``value`` with equal JSON numbers written alike (JSON Schema's ``1`` and ``1.0`` are one value)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, Mapping):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value
