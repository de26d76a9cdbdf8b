"""Generate apiextensions.k8s.io/v1 CRDs from the pydantic API models (the single source of truth).

The pydantic JSON Schema is rewritten into a Kubernetes structural schema: references inlined,
``anyOf`` with null collapsed to the optional type, int-or-string marked, OpenAPI v3.0 number
bounds, free-form maps marked ``x-kubernetes-preserve-unknown-fields`` and the cross-field
rules of the spec added as CEL ``x-kubernetes-validations``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import PydanticUndefined, core_schema

from edgemodel.api import GROUP, VERSION
from edgemodel.api.edgeagent import EdgeAgentSpec, EdgeAgentStatus
from edgemodel.api.edgemodel import CROSS_FIELD_RULES, EdgeModelSpec, EdgeModelStatus
from edgemodel.api.federated import FederatedTrainingSpec, FederatedTrainingStatus

CRD_DIR_NAME = "crds"


class _WithFactoryDefaults(GenerateJsonSchema):
    """Also emit defaults that come from ``default_factory`` so the API server applies them."""

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        factory = schema.get("default_factory")
        if factory is None:
            return super().default_schema(schema)
        value = factory()  # type: ignore[call-arg]
        if value is PydanticUndefined:
            return super().default_schema(schema)
        patched = dict(schema)
        patched.pop("default_factory", None)
        patched["default"] = _dump(value)
        return super().default_schema(patched)  # type: ignore[arg-type]


def _dump(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True, exclude_none=True)
    if isinstance(value, list):
        return [_dump(v) for v in value]
    if isinstance(value, dict):
        return {k: _dump(v) for k, v in value.items()}
    if hasattr(value, "value"):
        return value.value
    return value


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    """Rewrite one JSON Schema node (recursively) into a structural OpenAPI v3 schema."""
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:
        target = copy.deepcopy(defs[node.pop("$ref").split("/")[-1]])
        target.update({k: v for k, v in node.items() if k in ("description", "default")})
        node = target
    if "allOf" in node and len(node["allOf"]) == 1:
        inner = node.pop("allOf")[0]
        merged = _structural(inner, defs)
        merged.update({k: v for k, v in node.items() if k in ("description", "default")})
        node = merged
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        nullable = len(options) != len(node["anyOf"])
        if node.get("x-kubernetes-int-or-string"):
            node.pop("anyOf")
        elif len(options) == 1:
            node.pop("anyOf")
            base = _structural(options[0], defs)
            base.update({k: v for k, v in node.items() if k in ("description", "default")})
            node = base
            if nullable and node.get("default") is None:
                node.pop("default", None)
        else:
            raise ValueError(f"cannot express anyOf {node['anyOf']} in a structural schema")
    node.pop("title", None)
    if "const" in node:
        node["enum"] = [node.pop("const")]
    for bound in ("exclusiveMinimum", "exclusiveMaximum"):
        if bound in node and not isinstance(node[bound], bool):
            node[bound.replace("exclusiveM", "m")] = node[bound]
            node[bound] = True
    if node.get("additionalProperties") is False:
        node.pop("additionalProperties")
    if node.get("additionalProperties") is True or (node.get("type") == "object" and "properties" not in node and "additionalProperties" not in node):
        node.pop("additionalProperties", None)
        node["type"] = "object"
        node["x-kubernetes-preserve-unknown-fields"] = True
    if not node.get("type") and not node.get("x-kubernetes-int-or-string") and "enum" not in node and "properties" not in node:
        node["x-kubernetes-preserve-unknown-fields"] = True
    if "enum" in node and "type" not in node:
        node["type"] = "string"
    if "properties" in node:
        node["type"] = "object"
        node["properties"] = {k: _structural(v, defs) for k, v in node["properties"].items()}
    if "items" in node:
        node["items"] = _structural(node["items"], defs)
    if isinstance(node.get("additionalProperties"), dict):
        node["additionalProperties"] = _structural(node["additionalProperties"], defs)
    node.pop("$defs", None)
    return node


def structural_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of a pydantic model, camelCase, with descriptions."""
    raw = model.model_json_schema(by_alias=True, schema_generator=_WithFactoryDefaults)
    defs = raw.pop("$defs", {})
    return dict(_structural(raw, defs))


def _missing_descriptions(node: dict[str, Any], path: str) -> list[str]:
    missing: list[str] = []
    for name, prop in node.get("properties", {}).items():
        sub = f"{path}.{name}"
        if not prop.get("description"):
            missing.append(sub)
        missing += _missing_descriptions(prop, sub)
        if isinstance(prop.get("items"), dict):
            missing += _missing_descriptions(prop["items"], sub + "[]")
    return missing


def _crd(kind: str, plural: str, short: str, scope: str, spec: dict[str, Any], status: dict[str, Any],
         description: str, columns: list[dict[str, Any]]) -> dict[str, Any]:
    schema = {
        "type": "object",
        "description": description,
        "properties": {
            "apiVersion": {"type": "string", "description": "Versioned schema of this representation of an object."},
            "kind": {"type": "string", "description": "REST resource this object represents."},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
        "required": ["spec"] if scope == "Namespaced" else [],
    }
    if not schema["required"]:
        schema.pop("required")
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "edgemodel", "app.kubernetes.io/part-of": "edgemodel"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [short],
                "categories": ["edge", "all"] if scope == "Namespaced" else ["edge"],
            },
            "scope": scope,
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": schema},
                }
            ],
        },
    }


def edgemodel_crd() -> dict[str, Any]:
    """The EdgeModel CRD."""
    spec = structural_schema(EdgeModelSpec)
    spec["x-kubernetes-validations"] = [
        {"rule": r.cel, "message": f"{r.field}: {r.message}", "fieldPath": "." + r.field.removeprefix("spec.")}
        for r in CROSS_FIELD_RULES
    ]
    status = structural_schema(EdgeModelStatus)
    columns: list[dict[str, Any]] = [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Lifecycle phase."},
        {"name": "Revision", "type": "integer", "jsonPath": ".status.revision", "description": "Revision serving on the nodes."},
        {"name": "Target", "type": "integer", "jsonPath": ".status.targetRevision", "description": "Revision being converted or rolled out."},
        {"name": "Step", "type": "integer", "jsonPath": ".status.rollout.step", "description": "Current canary step."},
        {"name": "Ready", "type": "string", "jsonPath": ".status.ready", "description": "Nodes ready over nodes selected."},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
    return _crd(
        "EdgeModel", "edgemodels", "em", "Namespaced", spec, status,
        "EdgeModel puts a trained PyTorch or ONNX model on a fleet of edge nodes: it is converted, "
        "optimised and measured by a conversion Job, signed, and rolled out to the selected nodes' agents.",
        columns,
    )


def edgeagent_crd() -> dict[str, Any]:
    """The EdgeAgent CRD."""
    columns: list[dict[str, Any]] = [
        {"name": "Class", "type": "string", "jsonPath": ".status.capabilities.hardwareClass", "description": "Hardware class."},
        {"name": "Arch", "type": "string", "jsonPath": ".status.capabilities.arch"},
        {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint", "priority": 1},
        {"name": "Reported", "type": "date", "jsonPath": ".status.heartbeatTime",
         "description": "Last status write of the agent (only on change; liveness is its Lease)."},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
    return _crd(
        "EdgeAgent", "edgeagents", "ea", "Cluster", structural_schema(EdgeAgentSpec), structural_schema(EdgeAgentStatus),
        "EdgeAgent is one edge node's serving agent: the operator writes the models assigned to the node "
        "in spec; the agent reports capabilities and per-model state in status (written on change) and renews a "
        "Lease named after its node as its heartbeat.",
        columns,
    )


def federatedtraining_crd() -> dict[str, Any]:
    """The FederatedTraining CRD."""
    spec = structural_schema(FederatedTrainingSpec)
    spec["x-kubernetes-validations"] = [
        {"rule": "!has(self.secureAggregation) || !self.secureAggregation || !has(self.minClients) "
                 "|| self.minClients >= 2",
         "message": "spec.minClients: secure aggregation (SecAgg+) needs at least 2 clients per round; "
                    "set minClients >= 2 or secureAggregation false",
         "fieldPath": ".minClients"},
        {"rule": "has(self.data.path) != has(self.data.uri)",
         "message": "spec.data: set exactly one of path (a file on each node) or uri (fetched by each node)",
         "fieldPath": ".data"},
    ]
    columns: list[dict[str, Any]] = [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Lifecycle phase."},
        {"name": "Round", "type": "integer", "jsonPath": ".status.round", "description": "Last finished round."},
        {"name": "Accuracy", "type": "number", "jsonPath": ".status.accuracy",
         "description": "Validation accuracy of the global model."},
        {"name": "Clients", "type": "string", "jsonPath": ".status.clients",
         "description": "Clients aggregated in the last round over nodes selected."},
        {"name": "EdgeModel", "type": "string", "jsonPath": ".spec.edgeModel", "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
    return _crd(
        "FederatedTraining", "federatedtrainings", "fedt", "Namespaced", spec, structural_schema(FederatedTrainingStatus),
        "FederatedTraining trains one model on the local data of many edge nodes with Flower, exchanging model "
        "updates only; on success the trained model becomes a new revision of the named EdgeModel.",
        columns,
    )


def all_crds() -> dict[str, dict[str, Any]]:
    """File name -> CRD object, for every CRD of the API."""
    return {
        f"{GROUP}_edgemodels.yaml": edgemodel_crd(),
        f"{GROUP}_edgeagents.yaml": edgeagent_crd(),
        f"{GROUP}_federatedtrainings.yaml": federatedtraining_crd(),
    }


def missing_descriptions(crd: dict[str, Any]) -> list[str]:
    """Schema paths (below spec and status) that have no description."""
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return _missing_descriptions({"properties": {k: schema["properties"][k] for k in ("spec", "status")}}, "")


def render(crd: dict[str, Any]) -> str:
    """YAML text of one CRD with a generated-file header."""
    header = "# Generated by `edgemodel crds --write` from edgemodel/api; do not edit by hand.\n"
    return header + yaml.safe_dump(crd, sort_keys=False, width=120)


def write_all(directory: Path) -> list[Path]:
    """Write every CRD into ``directory``; return the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, crd in all_crds().items():
        path = directory / name
        path.write_text(render(crd))
        written.append(path)
    return written
