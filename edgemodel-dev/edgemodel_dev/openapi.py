"""``/openapi/v2`` (an empty protobuf document) and ``/openapi/v3`` (real per-group-version docs).

kubectl needs ``/openapi/v2`` to answer and takes everything it uses from v3: whether the server
does field validation (the ``fieldValidation`` parameter of each kind's PATCH operation), the
strategic-merge-patch metadata of built-in kinds, and the schemas ``kubectl explain`` prints.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from edgemodel_dev.builtin_schemas import definitions
from edgemodel_dev.resources import Catalog, ResourceType

JSON = dict[str, Any]
META = "io.k8s.apimachinery.pkg.apis.meta.v1."
KUBERNETES_VERSION = "v1.36.0"


def _gvk(rt: ResourceType) -> JSON:
    return {"group": rt.group, "kind": rt.kind, "version": rt.version}


def _schema_name(rt: ResourceType) -> str:
    if rt.builtin and rt.definition:
        return rt.definition
    reversed_group = ".".join(reversed(rt.group.split(".")))
    return f"{reversed_group}.{rt.version}.{rt.kind}"


def _ref(name: str) -> JSON:
    return {"$ref": f"#/components/schemas/{name}"}


def _param(name: str) -> JSON:
    return {"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": True}}


def _custom_schema(rt: ResourceType) -> JSON:
    schema = copy.deepcopy(rt.schema or {"type": "object", "x-kubernetes-preserve-unknown-fields": True})
    props = schema.setdefault("properties", {})
    props["metadata"] = {"allOf": [_ref(META + "ObjectMeta")], "description": "Standard object's metadata."}
    props.setdefault("apiVersion", {"type": "string", "description": "APIVersion of this object."})
    props.setdefault("kind", {"type": "string", "description": "Kind of this object."})
    schema["x-kubernetes-group-version-kind"] = [_gvk(rt)]
    return schema


def _closure(names: set[str]) -> dict[str, JSON]:
    defs = definitions()
    result: dict[str, JSON] = {}
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in result or name not in defs:
            continue
        result[name] = defs[name]
        text = json.dumps(defs[name])
        start = 0
        marker = '"#/components/schemas/'
        while (index := text.find(marker, start)) >= 0:
            end = text.find('"', index + len(marker))
            todo.append(text[index + len(marker):end])
            start = end
    return result


def _operations(rt: ResourceType) -> dict[str, JSON]:
    name = _schema_name(rt)
    base = f"/apis/{rt.group}/{rt.version}" if rt.group else f"/api/{rt.version}"
    collection = f"{base}/namespaces/{{namespace}}/{rt.plural}" if rt.namespaced else f"{base}/{rt.plural}"
    item = f"{collection}/{{name}}"
    body = {"content": {"application/json": {"schema": _ref(name)}}}
    ok = {"200": {"description": "OK", "content": {"application/json": {"schema": _ref(name)}}}}
    patch_types = ["application/json-patch+json", "application/merge-patch+json", "application/apply-patch+yaml"]
    if rt.builtin:
        patch_types.append("application/strategic-merge-patch+json")
    write_params = [_param("dryRun"), _param("fieldManager"), _param("fieldValidation")]

    def op(action: str, **extra: Any) -> JSON:
        return {"operationId": f"{action}{rt.kind}", "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": _gvk(rt), "responses": ok, **extra}

    paths: dict[str, JSON] = {
        collection: {"get": op("list"), "post": op("post", parameters=write_params, requestBody=body)},
        item: {
            "get": op("get"),
            "put": op("put", parameters=write_params, requestBody=body),
            "patch": op("patch", parameters=[*write_params, _param("force")],
                        requestBody={"content": {t: {"schema": {"type": "object"}} for t in patch_types}}),
            "delete": op("delete", parameters=[_param("dryRun"), _param("propagationPolicy")]),
        },
    }
    if rt.has_status:
        paths[f"{item}/status"] = {
            "get": op("get"),
            "put": op("put", parameters=write_params, requestBody=body),
            "patch": op("patch", parameters=[*write_params, _param("force")],
                        requestBody={"content": {t: {"schema": {"type": "object"}} for t in patch_types}}),
        }
    return paths


def group_version_doc(catalog: Catalog, group: str, version: str) -> JSON | None:
    types = [rt for rt in catalog.in_group_version(group, version) if "create" in rt.verbs or "get" in rt.verbs]
    if not types:
        return None
    schemas: dict[str, JSON] = {}
    paths: dict[str, JSON] = {}
    wanted = {META + "ObjectMeta", META + "Status", META + "DeleteOptions", META + "ListMeta"}
    for rt in types:
        if rt.builtin:
            wanted.add(rt.definition)
        else:
            schemas[_schema_name(rt)] = _custom_schema(rt)
        paths.update(_operations(rt))
    schemas.update(_closure(wanted))
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": KUBERNETES_VERSION},
        "paths": paths,
        "components": {"schemas": schemas},
    }


def _path_of(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def index(catalog: Catalog) -> JSON:
    """The ``/openapi/v3`` discovery document: one entry (with a content hash) per group version."""
    paths = {}
    for group, versions in sorted(catalog.group_versions().items()):
        for version in versions:
            doc = group_version_doc(catalog, group, version)
            if doc is None:
                continue
            digest = hashlib.sha512(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:64].upper()
            paths[_path_of(group, version)] = {"serverRelativeURL": f"/openapi/v3/{_path_of(group, version)}"
                                                                    f"?hash={digest}"}
    return {"paths": paths}


def v2_json() -> JSON:
    return {"swagger": "2.0", "info": {"title": "Kubernetes", "version": KUBERNETES_VERSION}, "paths": {},
            "definitions": {}}
