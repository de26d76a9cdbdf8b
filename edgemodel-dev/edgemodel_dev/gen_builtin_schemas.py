"""Regenerate ``builtin-schemas.json`` from the upstream Kubernetes v1.36 schemas.

The emulator serves these definitions in ``/openapi/v3`` (so ``kubectl explain pods.spec`` works),
takes strategic-merge-patch metadata from them and finds unknown fields of built-in kinds with
them. Source: the ``kubernetes-validate`` wheel (a test dependency), which ships the upstream
OpenAPI definitions converted to JSON schema; this script converts them back to OpenAPI v3 and
keeps only the kinds the emulator serves. Run: ``python -m edgemodel_dev.gen_builtin_schemas``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

KUBERNETES_VERSION = "v1.36.0"
ROOTS = (
    "io.k8s.api.core.v1.Namespace",
    "io.k8s.api.core.v1.Pod",
    "io.k8s.api.core.v1.ConfigMap",
    "io.k8s.api.core.v1.Secret",
    "io.k8s.api.core.v1.Service",
    "io.k8s.api.core.v1.Event",
    "io.k8s.api.core.v1.Node",
    "io.k8s.api.core.v1.ServiceAccount",
    "io.k8s.api.core.v1.PersistentVolumeClaim",
    "io.k8s.api.batch.v1.Job",
    "io.k8s.api.coordination.v1.Lease",
    "io.k8s.api.events.v1.Event",
    "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.CustomResourceDefinition",
    "io.k8s.api.authorization.v1.SelfSubjectAccessReview",
    "io.k8s.api.apps.v1.Deployment",
    "io.k8s.api.apps.v1.DaemonSet",
    "io.k8s.api.rbac.v1.Role",
    "io.k8s.api.rbac.v1.RoleBinding",
    "io.k8s.api.rbac.v1.ClusterRole",
    "io.k8s.api.rbac.v1.ClusterRoleBinding",
    "io.k8s.api.networking.v1.NetworkPolicy",
    "io.k8s.api.policy.v1.PodDisruptionBudget",
    "io.k8s.api.admissionregistration.v1.ValidatingAdmissionPolicy",
    "io.k8s.api.admissionregistration.v1.ValidatingAdmissionPolicyBinding",
    "io.k8s.apimachinery.pkg.apis.meta.v1.Status",
    "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions",
    "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta",
)
OUT = Path(__file__).parent / "builtin-schemas.json"


def _convert(node: Any) -> Any:
    if isinstance(node, list):
        return [_convert(x) for x in node]
    if not isinstance(node, dict):
        return node
    if isinstance(node.get("$ref"), str):
        ref = "#/components/schemas/" + node["$ref"].rsplit("/", 1)[-1]
        rest = {k: _convert(v) for k, v in node.items() if k != "$ref"}
        return {"allOf": [{"$ref": ref}], **rest} if rest else {"$ref": ref}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "type" and isinstance(value, list):
            types = [t for t in value if t != "null"]
            out["type"] = types[0] if len(types) == 1 else types
        elif key == "oneOf" and all(isinstance(x, dict) and set(x) == {"type"} for x in value):
            kinds = {t for x in value for t in (x["type"] if isinstance(x["type"], list) else [x["type"]])}
            out["type"] = "string"
            if "integer" in kinds:
                out["format"] = "int-or-string"
                out["x-kubernetes-int-or-string"] = True
        else:
            out[key] = _convert(value)
    return out


def _refs(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            found.add(node["$ref"].rsplit("/", 1)[-1])
        for value in node.values():
            found |= _refs(value)
    elif isinstance(node, list):
        for value in node:
            found |= _refs(value)
    return found


def main() -> int:
    import kubernetes_validate

    source = (
        Path(kubernetes_validate.__file__).parent
        / "kubernetes-json-schema"
        / f"{KUBERNETES_VERSION}-local"
        / "_definitions.json"
    )
    defs = json.loads(source.read_text())["$defs"]
    wanted: dict[str, Any] = {}
    todo = list(ROOTS)
    while todo:
        name = todo.pop()
        if name in wanted:
            continue
        wanted[name] = defs[name]
        todo.extend(_refs(defs[name]) - set(wanted))
    schemas = {}
    for name in sorted(wanted):
        schema = _convert(wanted[name])
        props = schema.get("properties") or {}
        for field in ("apiVersion", "kind"):
            if isinstance(props.get(field), dict):
                props[field].pop("enum", None)
        schemas[name] = schema
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"kubernetesVersion": KUBERNETES_VERSION, "schemas": schemas},
                              separators=(",", ":"), sort_keys=True))
    print(f"wrote {len(schemas)} definitions to {OUT} ({OUT.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
