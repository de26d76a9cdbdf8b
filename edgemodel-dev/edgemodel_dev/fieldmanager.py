"""Server-side apply's field ownership: ``metadata.managedFields`` in the ``FieldsV1`` format.

A manager's field set is the set of leaf paths it set. Path elements are ``f:<name>`` for a map
key and ``k:{"<mergeKey>":<value>}`` for an item of a list with a merge key (the built-in kinds'
``x-kubernetes-patch-merge-key`` lists, e.g. containers by ``name``); every other list is atomic
(one leaf), as is every list of a custom resource. What the emulator implements:

- An apply records its manager's set (operation ``Apply``); the next apply of the same manager
  removes the fields it set before, no longer sets, and no other manager owns.
- An apply that changes a field another manager owns is a 409 Conflict listing the fields, unless
  ``force=true``, which takes them over.
- Writes that are not applies record an ``Update`` entry for their manager (``fieldManager`` or
  the client's user agent) with the fields they changed, taking those over from every other
  manager; this happens once an object has managed fields, or when ``fieldManager`` is given.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from edgemodel_dev.builtin_schemas import PatchMeta

JSON = dict[str, Any]
Path = tuple[str, ...]
#: never owned: identity and server-set metadata
SKIP_TOP = frozenset({"apiVersion", "kind"})
SKIP_META = frozenset({"name", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp",
                       "deletionTimestamp", "deletionGracePeriodSeconds", "managedFields", "selfLink"})


def field_set(obj: JSON, meta: PatchMeta, *, skip_status: bool) -> set[Path]:
    """Leaf paths of an object (as a configuration to apply, or a stored object)."""
    out: set[Path] = set()
    for key, value in obj.items():
        if key in SKIP_TOP or (skip_status and key == "status"):
            continue
        if key == "metadata" and isinstance(value, dict):
            for mkey, mvalue in value.items():
                if mkey not in SKIP_META:
                    _walk(mvalue, meta.field("metadata").field(mkey), ("f:metadata", f"f:{mkey}"), out)
            continue
        _walk(value, meta.field(key), (f"f:{key}",), out)
    return out


def _walk(value: Any, meta: PatchMeta, path: Path, out: set[Path]) -> None:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            _walk(item, meta.field(key), (*path, f"f:{key}"), out)
    elif isinstance(value, list) and value and meta.merge_key and all(
            isinstance(i, dict) and meta.merge_key in i for i in value):
        for item in value:
            _walk(item, meta.items(), (*path, _item_key(meta.merge_key, item[meta.merge_key])), out)
    else:
        out.add(path)


def _item_key(key: str, value: Any) -> str:
    return "k:" + json.dumps({key: value}, separators=(",", ":"))


def _step(node: Any, element: str) -> tuple[Any, Any]:
    """(container, key-or-index) of one path element below ``node``; (None, None) when absent."""
    if element.startswith("f:") and isinstance(node, dict):
        name = element[2:]
        return (node, name) if name in node else (None, None)
    if element.startswith("k:") and isinstance(node, list):
        ((key, want),) = json.loads(element[2:]).items()
        for index, item in enumerate(node):
            if isinstance(item, dict) and item.get(key) == want:
                return node, index
    return None, None


def value_at(obj: Any, path: Path) -> tuple[bool, Any]:
    """(present, value) of one leaf path."""
    node = obj
    for element in path:
        container, key = _step(node, element)
        if container is None:
            return False, None
        node = container[key]
    return True, node


def remove(obj: JSON, path: Path) -> None:
    """Remove one leaf path, then every map or list item it leaves empty on the way up."""
    trail: list[tuple[Any, Any]] = []
    node: Any = obj
    for element in path:
        container, key = _step(node, element)
        if container is None:
            return
        trail.append((container, key))
        node = container[key]
    container, key = trail.pop()
    del container[key]
    while trail:
        container, key = trail.pop()
        child = container[key]
        if isinstance(child, (dict, list)) and not child:
            del container[key]
        else:
            break


def to_fields_v1(paths: set[Path]) -> JSON:
    tree: JSON = {}
    for path in sorted(paths):
        node = tree
        for element in path:
            node = node.setdefault(element, {})
    return tree


def from_fields_v1(tree: JSON, prefix: Path = ()) -> set[Path]:
    out: set[Path] = set()
    for element, child in (tree or {}).items():
        if element == ".":
            continue
        path = (*prefix, element)
        if isinstance(child, dict) and any(k != "." for k in child):
            out |= from_fields_v1(child, path)
        else:
            out.add(path)
    return out


def dotted(path: Path) -> str:
    """``.spec.replicas`` / ``.spec.containers[name="app"].image`` as conflict messages print it."""
    text = ""
    for element in path:
        if element.startswith("f:"):
            text += "." + element[2:]
        else:
            ((key, value),) = json.loads(element[2:]).items()
            text += f"[{key}={json.dumps(value)}]"
    return text


def entries(obj: JSON) -> list[JSON]:
    return copy.deepcopy((obj.get("metadata") or {}).get("managedFields") or [])


def owned(entry: JSON) -> set[Path]:
    return from_fields_v1(entry.get("fieldsV1") or {})


def entry(manager: str, operation: str, api_version: str, paths: set[Path], time: str,
          subresource: str = "") -> JSON:
    out: JSON = {"manager": manager, "operation": operation, "apiVersion": api_version, "time": time,
                 "fieldsType": "FieldsV1", "fieldsV1": to_fields_v1(paths)}
    if subresource:
        out["subresource"] = subresource
    return out


def is_entry_of(item: JSON, manager: str, operation: str, subresource: str) -> bool:
    return (item.get("manager") == manager and item.get("operation") == operation
            and (item.get("subresource") or "") == subresource)


def changed(old: JSON, new: JSON, meta: PatchMeta, *, skip_status: bool) -> set[Path]:
    """Leaf paths whose value differs between two states (added, changed or removed)."""
    before, after = field_set(old, meta, skip_status=skip_status), field_set(new, meta, skip_status=skip_status)
    out = (before ^ after)
    for path in before & after:
        if value_at(old, path) != value_at(new, path):
            out.add(path)
    return out
