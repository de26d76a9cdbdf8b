"""The upstream OpenAPI definitions of the built-in kinds (vendored, see ``gen_builtin_schemas``).

Used for strategic-merge-patch metadata, unknown-field detection and ``/openapi/v3``.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

JSON = dict[str, Any]
DATA = Path(__file__).parent / "builtin-schemas.json"


@functools.cache
def definitions() -> dict[str, JSON]:
    """Definition name -> OpenAPI v3 schema (refs point into ``#/components/schemas``)."""
    return dict(json.loads(DATA.read_text())["schemas"])


def resolve(schema: JSON | None) -> JSON | None:
    """Follow ``$ref`` (also when wrapped in a single-element ``allOf``)."""
    seen = 0
    while schema is not None and seen < 16:
        seen += 1
        if "$ref" in schema and isinstance(schema["$ref"], str):
            schema = definitions().get(schema["$ref"].rsplit("/", 1)[-1])
        elif len(schema.get("allOf") or []) == 1:
            merged = {k: v for k, v in schema.items() if k != "allOf"}
            target = resolve(schema["allOf"][0]) or {}
            schema = {**target, **merged}
        else:
            return schema
    return schema


class PatchMeta:
    """Strategic-merge-patch metadata at one place of an object (from the schema when known)."""

    def __init__(self, schema: JSON | None, strategy: str = "", merge_key: str | None = None) -> None:
        self.schema = resolve(schema)
        self.strategy = strategy
        self.merge_key = merge_key

    @classmethod
    def for_definition(cls, name: str) -> PatchMeta:
        return cls(definitions().get(name))

    def field(self, name: str) -> PatchMeta:
        if self.schema is None:
            return PatchMeta(None)
        props = self.schema.get("properties") or {}
        if name in props:
            prop = props[name]
            return PatchMeta(
                prop,
                str(prop.get("x-kubernetes-patch-strategy", "")),
                prop.get("x-kubernetes-patch-merge-key"),
            )
        extra = self.schema.get("additionalProperties")
        if isinstance(extra, dict):
            return PatchMeta(extra)
        return PatchMeta(None)

    def items(self) -> PatchMeta:
        if self.schema is None:
            return PatchMeta(None)
        return PatchMeta(self.schema.get("items"))


def unknown_fields(obj: Any, schema: JSON | None, path: str = "") -> list[str]:
    """Dotted paths of fields the schema does not know (``spec.containers[0].imagee``)."""
    schema = resolve(schema)
    if schema is None:
        return []
    found: list[str] = []
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return found
    if isinstance(obj, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, value in obj.items():
            where = f"{path}.{key}" if path else key
            if props is not None and key in props:
                found += unknown_fields(value, props[key], where)
            elif isinstance(extra, dict):
                found += unknown_fields(value, extra, where)
            elif props is not None and extra is None:
                found.append(where)
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for index, value in enumerate(obj):
            found += unknown_fields(value, schema["items"], f"{path}[{index}]")
    return found


def drop_fields(obj: Any, paths: list[str]) -> None:
    """Remove the fields ``unknown_fields`` reported."""
    for path in paths:
        parts = re.findall(r"[^.\[\]]+|\[\d+\]", path)
        current = obj
        for part in parts[:-1]:
            current = current[int(part[1:-1])] if part.startswith("[") else current.get(part)
            if current is None:
                break
        if isinstance(current, dict):
            current.pop(parts[-1], None)
