"""The three PATCH flavours: JSON merge patch, JSON patch and strategic merge patch."""

from __future__ import annotations

import copy
import json
from typing import Any

from edgemodel_dev.builtin_schemas import PatchMeta
from edgemodel_dev.errors import ApiError

JSON = dict[str, Any]

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
PATCH_TYPES = (MERGE_PATCH, JSON_PATCH, STRATEGIC_PATCH, APPLY_PATCH)


def patch_error(message: str) -> ApiError:
    return ApiError(422, "Invalid", f"the server rejected our request due to an error in our request: {message}")


# JSON merge patch (RFC 7386) ---------------------------------------------------------------
def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# JSON patch (RFC 6902) ---------------------------------------------------------------------
def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise patch_error(f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _walk(doc: Any, parts: list[str], path: str) -> Any:
    current = doc
    for part in parts:
        if isinstance(current, dict):
            if part not in current:
                raise patch_error(f"path {path!r} does not exist")
            current = current[part]
        elif isinstance(current, list):
            try:
                current = current[int(part)]
            except (ValueError, IndexError):
                raise patch_error(f"path {path!r} does not exist") from None
        else:
            raise patch_error(f"path {path!r} does not exist")
    return current


def _add(doc: Any, path: str, value: Any) -> Any:
    parts = _pointer(path)
    if not parts:
        return value
    parent = _walk(doc, parts[:-1], path)
    last = parts[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        if last == "-":
            parent.append(value)
        else:
            try:
                index = int(last)
            except ValueError:
                raise patch_error(f"invalid index in {path!r}") from None
            if not 0 <= index <= len(parent):
                raise patch_error(f"index out of range in {path!r}")
            parent.insert(index, value)
    else:
        raise patch_error(f"path {path!r} does not exist")
    return doc


def _remove(doc: Any, path: str) -> tuple[Any, Any]:
    parts = _pointer(path)
    if not parts:
        raise patch_error("cannot remove the whole document")
    parent = _walk(doc, parts[:-1], path)
    last = parts[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise patch_error(f"path {path!r} does not exist")
        return doc, parent.pop(last)
    if isinstance(parent, list):
        try:
            return doc, parent.pop(int(last))
        except (ValueError, IndexError):
            raise patch_error(f"path {path!r} does not exist") from None
    raise patch_error(f"path {path!r} does not exist")


def json_patch(target: Any, ops: Any) -> Any:
    if not isinstance(ops, list):
        raise ApiError(400, "BadRequest", "a JSON patch must be a list of operations")
    doc = copy.deepcopy(target)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise patch_error(f"invalid JSON patch operation {op!r}")
        kind, path = op["op"], op["path"]
        if kind == "add":
            doc = _add(doc, path, copy.deepcopy(op.get("value")))
        elif kind == "remove":
            doc, _ = _remove(doc, path)
        elif kind == "replace":
            _walk(doc, _pointer(path), path)
            doc, _ = _remove(doc, path) if _pointer(path) else (doc, None)
            doc = _add(doc, path, copy.deepcopy(op.get("value")))
        elif kind == "move":
            doc, value = _remove(doc, op["from"])
            doc = _add(doc, path, value)
        elif kind == "copy":
            value = copy.deepcopy(_walk(doc, _pointer(op["from"]), op["from"]))
            doc = _add(doc, path, value)
        elif kind == "test":
            actual = _walk(doc, _pointer(path), path)
            if actual != op.get("value"):
                raise patch_error(f"testing value {path} failed")
        else:
            raise patch_error(f"unknown JSON patch operation {kind!r}")
    return doc


# Strategic merge patch ---------------------------------------------------------------------
_ORDER = "$setElementOrder/"
_DELETE_PRIMITIVE = "$deleteFromPrimitiveList/"


def _strip(value: Any) -> Any:
    """Drop patch directives from a value that is inserted as a whole."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if not k.startswith("$") and v is not None}
    if isinstance(value, list):
        return [_strip(v) for v in value if not (isinstance(v, dict) and v.get("$patch") == "delete")]
    return value


def strategic_merge_patch(target: JSON, patch: JSON, meta: PatchMeta) -> JSON:
    result = _smp_map(target, patch, meta)
    return result if result is not None else {}


def _smp_map(original: JSON, patch: JSON, meta: PatchMeta) -> JSON | None:
    directive = patch.get("$patch")
    if directive == "delete":
        return None
    if directive == "replace":
        return dict(_strip(patch))
    result = copy.deepcopy(original) if isinstance(original, dict) else {}
    orders: dict[str, list[Any]] = {}
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys"):
            continue
        if key.startswith(_ORDER):
            orders[key[len(_ORDER):]] = value
            continue
        if key.startswith(_DELETE_PRIMITIVE):
            name = key[len(_DELETE_PRIMITIVE):]
            if isinstance(result.get(name), list):
                result[name] = [v for v in result[name] if v not in value]
            continue
        if value is None:
            result.pop(key, None)
            continue
        child = meta.field(key)
        current = result.get(key)
        if isinstance(value, dict):
            merged = _smp_map(current if isinstance(current, dict) else {}, value, child)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        elif isinstance(value, list) and "merge" in child.strategy.split(","):
            result[key] = _smp_list(current if isinstance(current, list) else [], value, child)
        else:
            result[key] = _strip(value)
    retain = patch.get("$retainKeys")
    if isinstance(retain, list):
        for key in list(result):
            if key not in retain:
                del result[key]
    for name, order in orders.items():
        if isinstance(result.get(name), list):
            result[name] = _reorder(result[name], order, meta.field(name).merge_key)
    return result


def _smp_list(original: list[Any], patch: list[Any], meta: PatchMeta) -> list[Any]:
    if any(isinstance(e, dict) and e.get("$patch") == "replace" for e in patch):
        return [_strip(e) for e in patch if not (isinstance(e, dict) and set(e) == {"$patch"})]
    key = meta.merge_key
    result = copy.deepcopy(original)
    if key is None:
        for value in patch:
            if value not in result:
                result.append(copy.deepcopy(value))
        return result
    items_meta = meta.items()
    for element in patch:
        if not isinstance(element, dict):
            result.append(copy.deepcopy(element))
            continue
        index = next(
            (i for i, e in enumerate(result) if isinstance(e, dict) and e.get(key) == element.get(key)), None
        )
        if element.get("$patch") == "delete":
            if index is not None:
                result.pop(index)
            continue
        if index is None:
            merged = _smp_map({}, element, items_meta)
            if merged is not None:
                result.append(merged)
        else:
            merged = _smp_map(result[index], element, items_meta)
            if merged is None:
                result.pop(index)
            else:
                result[index] = merged
    return result


def _reorder(items: list[Any], order: list[Any], key: str | None) -> list[Any]:
    def ident(value: Any) -> Any:
        return value.get(key) if key and isinstance(value, dict) else value

    wanted = [ident(o) for o in order]
    positions = {json_key(v): i for i, v in enumerate(wanted)}

    def rank(indexed: tuple[int, Any]) -> tuple[int, int]:
        index, value = indexed
        return (positions.get(json_key(ident(value)), len(wanted)), index)

    return [v for _, v in sorted(enumerate(items), key=rank)]


def json_key(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
