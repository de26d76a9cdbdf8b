"""Structural-schema semantics of CRDs: null pruning, defaulting, unknown-field pruning, validation.

Follows the apiextensions.k8s.io/v1 rules: nulls of non-nullable fields are dropped (then
defaulted), defaults apply recursively, unknown fields are pruned unless
``x-kubernetes-preserve-unknown-fields``; validation covers types (with
``x-kubernetes-int-or-string``), enum, required, minimum/maximum (exclusive as booleans),
lengths, patterns, item and property counts, uniqueness of sets and map lists, and
allOf/anyOf/oneOf/not, and CEL ``x-kubernetes-validations`` rules (with the subset of CEL that
:mod:`edgemodel_dev.cel` implements; rules beyond it are skipped and logged).
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import re
from typing import Any

from edgemodel_dev import cel
from edgemodel_dev.errors import cause

JSON = dict[str, Any]
ROOT_FIELDS = ("apiVersion", "kind", "metadata")
log = logging.getLogger(__name__)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _show(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value, sort_keys=True)


# nulls and defaults ------------------------------------------------------------------------
def drop_nulls(obj: Any, schema: JSON | None) -> None:
    """Remove null values of fields that are not ``nullable`` (before defaulting, like Kubernetes)."""
    if schema is None:
        return
    if isinstance(obj, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for key in list(obj):
            sub = props.get(key) if key in props else (extra if isinstance(extra, dict) else None)
            if obj[key] is None:
                if sub is not None and not sub.get("nullable"):
                    del obj[key]
            else:
                drop_nulls(obj[key], sub)
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for item in obj:
            drop_nulls(item, schema["items"])


def apply_defaults(obj: Any, schema: JSON | None) -> None:
    if schema is None:
        return
    if isinstance(obj, dict):
        props = schema.get("properties") or {}
        for key, sub in props.items():
            if key not in obj and isinstance(sub, dict) and "default" in sub:
                obj[key] = copy.deepcopy(sub["default"])
        extra = schema.get("additionalProperties")
        for key, value in obj.items():
            if key in props:
                apply_defaults(value, props[key])
            elif isinstance(extra, dict):
                apply_defaults(value, extra)
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for item in obj:
            apply_defaults(item, schema["items"])


# pruning -----------------------------------------------------------------------------------
def prune(obj: Any, schema: JSON | None, path: str = "", root: bool = False) -> list[str]:
    """Remove fields the schema does not specify; returns their paths."""
    if schema is None or schema.get("x-kubernetes-preserve-unknown-fields"):
        if schema is not None and isinstance(obj, dict):
            # preserved objects still prune inside the properties they do specify
            props = schema.get("properties") or {}
            return [p for key, sub in props.items() if key in obj
                    for p in prune(obj[key], sub, _join(path, key))]
        return []
    removed: list[str] = []
    if isinstance(obj, dict) and (schema.get("type") == "object" or "properties" in schema
                                  or "additionalProperties" in schema):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for key in list(obj):
            where = _join(path, key)
            if root and key in ROOT_FIELDS:
                if key != "metadata" and key in props:
                    removed += prune(obj[key], props[key], where)
                continue
            if key in props:
                removed += prune(obj[key], props[key], where)
            elif isinstance(extra, dict):
                removed += prune(obj[key], extra, where)
            elif extra is True:
                continue
            else:
                del obj[key]
                removed.append(where)
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(obj):
            removed += prune(item, schema["items"], f"{path}[{index}]")
    return removed


# validation --------------------------------------------------------------------------------
@functools.cache
def _pattern(text: str) -> re.Pattern[str]:
    return re.compile(text)


_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool))
    or (isinstance(v, float) and v.is_integer()),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
}


def validate(obj: Any, schema: JSON | None, path: str = "") -> list[JSON]:
    """Causes (reason, message, field) for every violation of the schema."""
    if schema is None:
        return []
    causes: list[JSON] = []
    where = path or "<root>"
    if obj is None:
        if not schema.get("nullable") and schema.get("type"):
            causes.append(cause(where, "FieldValueTypeInvalid",
                                f"Invalid value: \"null\": {where} in body must be of type {schema['type']}: \"null\""))
        return causes
    expected = schema.get("type")
    if schema.get("x-kubernetes-int-or-string"):
        if not (_TYPES["integer"](obj) or isinstance(obj, str)):
            causes.append(cause(where, "FieldValueTypeInvalid",
                                f"Invalid value: {_show(obj)}: {where} in body must be of type int-or-string"))
            return causes
    elif expected and expected in _TYPES and not _TYPES[expected](obj):
        causes.append(cause(where, "FieldValueTypeInvalid",
                            f"Invalid value: {_show(obj)}: {where} in body must be of type {expected}: "
                            f"{_show(_type_name(obj))}"))
        return causes
    if "enum" in schema and obj not in schema["enum"]:
        supported = ", ".join(_show(v) for v in schema["enum"])
        causes.append(cause(where, "FieldValueNotSupported",
                            f"Unsupported value: {_show(obj)}: supported values: {supported}"))
    if isinstance(obj, int | float) and not isinstance(obj, bool):
        causes += _numeric(obj, schema, where)
    if isinstance(obj, str):
        causes += _string(obj, schema, where)
    if isinstance(obj, list):
        causes += _array(obj, schema, path, where)
    if isinstance(obj, dict):
        causes += _object(obj, schema, path, where)
    for sub in schema.get("allOf") or []:
        causes += validate(obj, sub, path)
    if schema.get("anyOf") and not any(not validate(obj, s, path) for s in schema["anyOf"]):
        causes.append(cause(where, "FieldValueInvalid", f"Invalid value: {_show(obj)}: {where} in body "
                                                        "must match at least one schema in anyOf"))
    if schema.get("oneOf") and sum(not validate(obj, s, path) for s in schema["oneOf"]) != 1:
        causes.append(cause(where, "FieldValueInvalid", f"Invalid value: {_show(obj)}: {where} in body "
                                                        "must match exactly one schema in oneOf"))
    if isinstance(schema.get("not"), dict) and not validate(obj, schema["not"], path):
        causes.append(cause(where, "FieldValueInvalid", f"Invalid value: {_show(obj)}: {where} in body "
                                                        "must not validate the schema (not)"))
    return causes


def _type_name(value: Any) -> str:
    for name in ("boolean", "integer", "number", "string", "array", "object"):
        if _TYPES[name](value):
            return name
    return "null"


def _numeric(obj: float, schema: JSON, where: str) -> list[JSON]:
    causes = []
    if "minimum" in schema:
        low = schema["minimum"]
        if schema.get("exclusiveMinimum") and obj <= low:
            causes.append(cause(where, "FieldValueInvalid",
                                f"Invalid value: {_show(obj)}: {where} in body should be greater than {low}"))
        elif obj < low:
            causes.append(cause(where, "FieldValueInvalid", f"Invalid value: {_show(obj)}: {where} in body "
                                                            f"should be greater than or equal to {low}"))
    if "maximum" in schema:
        high = schema["maximum"]
        if schema.get("exclusiveMaximum") and obj >= high:
            causes.append(cause(where, "FieldValueInvalid",
                                f"Invalid value: {_show(obj)}: {where} in body should be less than {high}"))
        elif obj > high:
            causes.append(cause(where, "FieldValueInvalid", f"Invalid value: {_show(obj)}: {where} in body "
                                                            f"should be less than or equal to {high}"))
    if schema.get("multipleOf") and obj % schema["multipleOf"]:
        causes.append(cause(where, "FieldValueInvalid", f"Invalid value: {_show(obj)}: {where} in body "
                                                        f"should be a multiple of {schema['multipleOf']}"))
    return causes


def _string(obj: str, schema: JSON, where: str) -> list[JSON]:
    causes = []
    if "maxLength" in schema and len(obj) > schema["maxLength"]:
        causes.append(cause(where, "FieldValueTooLong", f"Too long: may not be more than {schema['maxLength']} bytes"))
    if "minLength" in schema and len(obj) < schema["minLength"]:
        causes.append(cause(where, "FieldValueInvalid", f"Invalid value: {_show(obj)}: {where} in body "
                                                        f"should be at least {schema['minLength']} chars long"))
    if "pattern" in schema and not _pattern(schema["pattern"]).search(obj):
        causes.append(cause(where, "FieldValueInvalid", f"Invalid value: {_show(obj)}: {where} in body "
                                                        f"should match '{schema['pattern']}'"))
    return causes


def _array(obj: list[Any], schema: JSON, path: str, where: str) -> list[JSON]:
    causes = []
    if "maxItems" in schema and len(obj) > schema["maxItems"]:
        causes.append(cause(where, "FieldValueTooMany",
                            f"Too many: {len(obj)}: must have at most {schema['maxItems']} items"))
    if "minItems" in schema and len(obj) < schema["minItems"]:
        causes.append(cause(where, "FieldValueInvalid", f"Invalid value: {len(obj)}: {where} in body "
                                                        f"should have at least {schema['minItems']} items"))
    list_type = schema.get("x-kubernetes-list-type")
    if schema.get("uniqueItems") or list_type == "set":
        seen: set[str] = set()
        for index, item in enumerate(obj):
            key = json.dumps(item, sort_keys=True)
            if key in seen:
                causes.append(cause(f"{path}[{index}]", "FieldValueDuplicate", f"Duplicate value: {key}"))
            seen.add(key)
    if list_type == "map":
        keys = schema.get("x-kubernetes-list-map-keys") or []
        seen_keys: set[str] = set()
        for index, item in enumerate(obj):
            if isinstance(item, dict):
                key = json.dumps({k: item.get(k) for k in keys}, sort_keys=True)
                if key in seen_keys:
                    causes.append(cause(f"{path}[{index}]", "FieldValueDuplicate", f"Duplicate value: {key}"))
                seen_keys.add(key)
    if isinstance(schema.get("items"), dict):
        for index, item in enumerate(obj):
            causes += validate(item, schema["items"], f"{path}[{index}]")
    return causes


def _object(obj: JSON, schema: JSON, path: str, where: str) -> list[JSON]:
    causes = []
    for key in schema.get("required") or []:
        if key not in obj:
            causes.append(cause(_join(path, key), "FieldValueRequired", "Required value"))
    if "maxProperties" in schema and len(obj) > schema["maxProperties"]:
        causes.append(cause(where, "FieldValueTooMany",
                            f"Too many: {len(obj)}: must have at most {schema['maxProperties']} items"))
    if "minProperties" in schema and len(obj) < schema["minProperties"]:
        causes.append(cause(where, "FieldValueInvalid", f"Invalid value: {len(obj)}: {where} in body "
                                                        f"should have at least {schema['minProperties']} properties"))
    props = schema.get("properties") or {}
    extra = schema.get("additionalProperties")
    for key, value in obj.items():
        if not path and key in ROOT_FIELDS:
            if key != "metadata" and key in props:
                causes += validate(value, props[key], key)
            continue
        if key in props:
            causes += validate(value, props[key], _join(path, key))
        elif isinstance(extra, dict):
            causes += validate(value, extra, _join(path, key))
    return causes


# CEL rules ---------------------------------------------------------------------------------
def _uses_old_self(rule: str) -> bool:
    return re.search(r"\boldSelf\b", rule) is not None


def validate_rules(obj: Any, schema: JSON | None, old: Any = None, path: str = "") -> list[JSON]:
    """Causes for every ``x-kubernetes-validations`` rule that does not hold (transition rules,
    which use ``oldSelf``, only on updates)."""
    if schema is None or obj is None:
        return []
    causes: list[JSON] = []
    for rule in schema.get("x-kubernetes-validations") or []:
        text = str(rule.get("rule", ""))
        if _uses_old_self(text) and old is None:
            continue
        message = rule.get("message") or f"failed rule: {text}"
        field = path + str(rule.get("fieldPath") or "") if path else str(rule.get("fieldPath") or "").lstrip(".")
        try:
            holds = cel.evaluate(cel.compile_rule(text), {"self": obj, "oldSelf": old})
        except cel.Unsupported as exc:
            log.debug("Skipped the CEL rule %r at %s: %s", text, path or "<root>", exc)
            continue
        except cel.EvalError as exc:
            causes.append(cause(field or "<root>", str(rule.get("reason") or "FieldValueInvalid"),
                                f'Invalid value: "object": {message} (evaluation error: {exc})'))
            continue
        if holds is not True:
            causes.append(cause(field or "<root>", str(rule.get("reason") or "FieldValueInvalid"),
                                f'Invalid value: "object": {message}'))
    if isinstance(obj, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for key, value in obj.items():
            sub = props.get(key) if key in props else (extra if isinstance(extra, dict) else None)
            if sub is not None and not (not path and key in ROOT_FIELDS):
                old_value = old.get(key) if isinstance(old, dict) else None
                causes += validate_rules(value, sub, old_value, _join(path, key))
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(obj):
            causes += validate_rules(item, schema["items"], None, f"{path}[{index}]")
    return causes


def process(obj: JSON, schema: JSON | None, old: JSON | None = None) -> tuple[list[str], list[JSON]]:
    """Null-prune, default, prune and validate a custom object in place (``old``: the stored
    object, for CEL transition rules on updates).

    Returns (pruned field paths, validation causes).
    """
    if schema is None:
        return [], []
    drop_nulls(obj, schema)
    apply_defaults(obj, schema)
    pruned = prune(obj, schema, root=True)
    causes = validate(obj, schema)
    return pruned, causes or validate_rules(obj, schema, old)
