"""Decoding of the protobuf request bodies kubectl sends for a few built-in kinds.

kubectl's imperative commands (``kubectl create configmap|secret|namespace|serviceaccount``,
``kubectl auth can-i``) and helm's deletes (``DeleteOptions``) post ``application/vnd.kubernetes.protobuf``: the ``k8s\\0`` magic, then
a ``runtime.Unknown`` envelope whose ``raw`` field holds the object. The emulator always answers
in JSON (kubectl accepts it); other kinds in protobuf get 415 with a hint to use ``-f``.
Field numbers follow k8s.io/api ``generated.proto``.
"""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

from edgemodel_dev.errors import ApiError

JSON = dict[str, Any]
MAGIC = b"k8s\x00"
CONTENT_TYPE = "application/vnd.kubernetes.protobuf"

# message -> field number -> (json name, kind, repeated); kind: str, bytes, bool, int, a message
# name, "map:str" / "map:bytes" (map<string, string|bytes>), "time".
Field = tuple[str, str, bool]
MESSAGES: dict[str, dict[int, Field]] = {
    "Unknown": {1: ("typeMeta", "TypeMeta", False), 2: ("raw", "bytes", False),
                3: ("contentEncoding", "str", False), 4: ("contentType", "str", False)},
    "TypeMeta": {1: ("apiVersion", "str", False), 2: ("kind", "str", False)},
    "ObjectMeta": {
        1: ("name", "str", False), 2: ("generateName", "str", False), 3: ("namespace", "str", False),
        5: ("uid", "str", False), 6: ("resourceVersion", "str", False), 7: ("generation", "int", False),
        8: ("creationTimestamp", "time", False), 9: ("deletionTimestamp", "time", False),
        10: ("deletionGracePeriodSeconds", "int", False), 11: ("labels", "map:str", False),
        12: ("annotations", "map:str", False), 13: ("ownerReferences", "OwnerReference", True),
        14: ("finalizers", "str", True),
    },
    "OwnerReference": {1: ("kind", "str", False), 3: ("name", "str", False), 4: ("uid", "str", False),
                       5: ("apiVersion", "str", False), 6: ("controller", "bool", False),
                       7: ("blockOwnerDeletion", "bool", False)},
    "ConfigMap": {1: ("metadata", "ObjectMeta", False), 2: ("data", "map:str", False),
                  3: ("binaryData", "map:bytes", False), 4: ("immutable", "bool", False)},
    "Secret": {1: ("metadata", "ObjectMeta", False), 2: ("data", "map:bytes", False), 3: ("type", "str", False),
               4: ("stringData", "map:str", False), 5: ("immutable", "bool", False)},
    "Namespace": {1: ("metadata", "ObjectMeta", False), 2: ("spec", "NamespaceSpec", False)},
    "NamespaceSpec": {1: ("finalizers", "str", True)},
    "ServiceAccount": {1: ("metadata", "ObjectMeta", False), 2: ("secrets", "ObjectReference", True),
                       3: ("imagePullSecrets", "LocalObjectReference", True),
                       4: ("automountServiceAccountToken", "bool", False)},
    "ObjectReference": {1: ("kind", "str", False), 2: ("namespace", "str", False), 3: ("name", "str", False),
                        4: ("uid", "str", False), 5: ("apiVersion", "str", False),
                        6: ("resourceVersion", "str", False), 7: ("fieldPath", "str", False)},
    "LocalObjectReference": {1: ("name", "str", False)},
    "SelfSubjectAccessReview": {1: ("metadata", "ObjectMeta", False), 2: ("spec", "SSARSpec", False)},
    "SSARSpec": {1: ("resourceAttributes", "ResourceAttributes", False),
                 2: ("nonResourceAttributes", "NonResourceAttributes", False)},
    "ResourceAttributes": {1: ("namespace", "str", False), 2: ("verb", "str", False), 3: ("group", "str", False),
                           4: ("version", "str", False), 5: ("resource", "str", False),
                           6: ("subresource", "str", False), 7: ("name", "str", False)},
    "NonResourceAttributes": {1: ("path", "str", False), 2: ("verb", "str", False)},
    # helm uninstall sends its DELETE bodies in protobuf
    "DeleteOptions": {1: ("gracePeriodSeconds", "int", False), 2: ("preconditions", "Preconditions", False),
                      3: ("orphanDependents", "bool", False), 4: ("propagationPolicy", "str", False),
                      5: ("dryRun", "str", True)},
    "Preconditions": {1: ("uid", "str", False), 2: ("resourceVersion", "str", False)},
    "Time": {1: ("seconds", "int", False), 2: ("nanos", "int", False)},
    "MapEntry": {1: ("key", "bytes", False), 2: ("value", "bytes", False)},
}
KINDS = {"ConfigMap", "Secret", "Namespace", "ServiceAccount", "SelfSubjectAccessReview", "DeleteOptions"}


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) pairs: ints for varints, bytes for length-delimited fields."""
    pos = 0
    out: list[tuple[int, int | bytes]] = []
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            out.append((number, value))
        elif wire == 2:
            length, pos = _varint(data, pos)
            out.append((number, data[pos:pos + length]))
            pos += length
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
    return out


def _decode(data: bytes, message: str) -> JSON:
    spec = MESSAGES[message]
    obj: JSON = {}
    for number, value in _fields(data):
        if number not in spec:
            continue
        name, kind, repeated = spec[number]
        if kind.startswith("map:"):
            entry = _decode(bytes(value), "MapEntry") if isinstance(value, bytes) else {}
            key = bytes(entry.get("key", b"")).decode()
            raw = bytes(entry.get("value", b""))
            obj.setdefault(name, {})[key] = raw.decode() if kind == "map:str" else base64.b64encode(raw).decode()
            continue
        if kind == "str":
            decoded: Any = bytes(value).decode() if isinstance(value, bytes) else str(value)
        elif kind == "bytes":
            decoded = value
        elif kind == "bool":
            decoded = bool(value)
        elif kind == "int":
            decoded = int(value) if isinstance(value, int) else 0
        elif kind == "time":
            seconds = _decode(bytes(value), "Time").get("seconds", 0) if isinstance(value, bytes) else 0
            decoded = dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        else:
            decoded = _decode(bytes(value), kind) if isinstance(value, bytes) else {}
        if repeated:
            obj.setdefault(name, []).append(decoded)
        elif decoded not in ("", 0, False) or kind not in ("str", "int", "bool"):
            obj[name] = decoded  # like Go's omitempty: zero scalars are absent
    return obj


def decode_object(body: bytes) -> JSON:
    """The JSON form of a protobuf-encoded object of one of :data:`KINDS`."""
    if not body.startswith(MAGIC):
        raise ApiError(400, "BadRequest", "protobuf body without the k8s magic prefix")
    try:
        envelope = _decode(body[len(MAGIC):], "Unknown")
        type_meta = envelope.get("typeMeta") or {}
        kind = str(type_meta.get("kind", ""))
        if kind not in KINDS:
            raise ApiError(415, "UnsupportedMediaType",
                           f"the emulated API server decodes protobuf only for {', '.join(sorted(KINDS))}, "
                           f"not {kind or 'this kind'}; send the object as JSON or YAML instead "
                           f"(e.g. `kubectl create -f file.yaml`)")
        obj = _decode(bytes(envelope.get("raw", b"")), kind)
    except ValueError as exc:
        raise ApiError(400, "BadRequest", f"could not decode the protobuf body: {exc}") from None
    obj["apiVersion"] = type_meta.get("apiVersion", "v1")
    obj["kind"] = kind
    return obj
