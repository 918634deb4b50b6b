"""Closed JSON schemas from pydantic models, and checking replies against them."""

from __future__ import annotations

import copy
import functools
import json
from typing import Any

import jsonschema
from pydantic import BaseModel, ValidationError

from .errors import RecordError

_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMAS = ("items", "additionalProperties", "not", "if", "then", "else", "contains")


def _close(node: Any) -> None:
    """Close one schema node and recurse by keyword (a field may be called "properties")."""
    if not isinstance(node, dict):
        return
    kind = node.get("type")
    if kind == "object" or (isinstance(kind, list) and "object" in kind) or "properties" in node:
        props = node.get("properties")
        if props is not None:
            # every property required: guided decoding must always emit them all
            node["required"] = list(props)
            node["additionalProperties"] = False
        elif "additionalProperties" not in node:
            node["additionalProperties"] = False
        # a typed map (`dict[str, X]`) keeps its value schema: closing it would forbid every key
    for key in _SUBSCHEMA_MAPS:
        for sub in (node.get(key) or {}).values():
            _close(sub)
    for key in _SUBSCHEMA_LISTS:
        for sub in node.get(key) or ():
            _close(sub)
    for key in _SUBSCHEMAS:
        _close(node.get(key))


@functools.lru_cache(maxsize=256)
def closed_schema(model: type[BaseModel]) -> dict:
    """The model's JSON schema with additionalProperties false and all properties required."""
    schema = copy.deepcopy(model.model_json_schema())
    _close(schema)
    return schema


def response_format(model: type[BaseModel]) -> dict:
    return {
        "type": "json_schema",
        "json_schema": {"name": model.__name__, "schema": closed_schema(model), "strict": True},
    }


@functools.lru_cache(maxsize=256)
def _validator(model: type[BaseModel]) -> jsonschema.protocols.Validator:
    schema = closed_schema(model)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls(schema)


def parse_reply(model: type[BaseModel], content: str, usage: Any = None) -> BaseModel:
    """Strict JSON, then the closed schema (catches extra keys), then the pydantic model."""
    try:
        # stdlib json is strict: raw control characters inside strings are rejected
        data = json.loads(content)
    except ValueError as exc:
        raise RecordError("invalid_json", f"{exc}; content starts {content[:120]!r}", usage) from None
    error = jsonschema.exceptions.best_match(_validator(model).iter_errors(data))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        raise RecordError("schema_invalid", f"at {where}: {error.message[:300]}", usage)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RecordError("schema_invalid", str(exc)[:500], usage) from None
