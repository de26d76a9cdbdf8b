"""Generated CRDs: up to date, structural, described, valid, and their CEL rules agree with Python."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import pytest
import yaml
from pydantic import ValidationError

from edgemodel.api import EdgeModelSpec
from edgemodel.crds import all_crds, missing_descriptions, render

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN_KEYS = {"$ref", "anyOf", "allOf", "oneOf", "title", "$defs", "const"}


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        out.append((path, node))
        for key, value in node.get("properties", {}).items():
            out += _walk(value, f"{path}.{key}")
        if isinstance(node.get("items"), dict):
            out += _walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            out += _walk(node["additionalProperties"], f"{path}{{}}")
    return out


def _schema(crd_name: str) -> dict[str, Any]:
    return all_crds()[crd_name]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_crds_folder_is_up_to_date() -> None:
    for name, crd in all_crds().items():
        path = ROOT / "crds" / name
        assert path.is_file(), f"{path} missing: run `edgemodel crds --write crds`"
        assert path.read_text() == render(crd), f"{path} is stale: run `edgemodel crds --write crds`"


@pytest.mark.parametrize("name", sorted(all_crds()))
def test_schema_is_structural_and_described(name: str) -> None:
    crd = all_crds()[name]
    assert missing_descriptions(crd) == []
    for path, node in _walk(_schema(name)):
        assert not FORBIDDEN_KEYS & node.keys(), f"{path} has {FORBIDDEN_KEYS & node.keys()}"
        assert node.get("type") or node.get("x-kubernetes-int-or-string") or node.get("x-kubernetes-preserve-unknown-fields"), f"{path} has no type"
        if "properties" in node:
            assert "additionalProperties" not in node, path


def test_crd_shape_for_kubectl() -> None:
    em = all_crds()["edgemodel.io_edgemodels.yaml"]
    ea = all_crds()["edgemodel.io_edgeagents.yaml"]
    assert em["spec"]["scope"] == "Namespaced"
    assert ea["spec"]["scope"] == "Cluster"
    assert em["spec"]["names"]["shortNames"] == ["em"]
    assert ea["spec"]["names"]["shortNames"] == ["ea"]
    version = em["spec"]["versions"][0]
    assert version["name"] == "v1alpha1"
    assert version["storage"] is True
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns[:1] == ["Phase"]
    assert {"Revision", "Ready", "Age"} <= set(columns)
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["properties"]["rollout"]["properties"]["maxUnavailable"]["x-kubernetes-int-or-string"] is True
    assert spec["properties"]["source"]["properties"]["format"]["enum"] == ["TorchScript", "TorchExport", "ONNX"]
    assert spec["x-kubernetes-validations"], "cross-field CEL rules expected"


def test_crds_validate_against_kubernetes_openapi(tmp_path: Path) -> None:
    import kubernetes_validate

    for name in all_crds():
        doc = yaml.safe_load((ROOT / "crds" / name).read_text())
        kubernetes_validate.validate(doc, "1.36.0", strict=True)


def _examples() -> list[Path]:
    found = sorted((ROOT / "examples").glob("*edgemodel*.yaml"))
    assert found, "examples/ must hold EdgeModel manifests"
    return found


@pytest.mark.parametrize("path", _examples(), ids=lambda p: p.name)
def test_examples_validate_against_generated_schema(path: Path) -> None:
    schema = _schema("edgemodel.io_edgemodels.yaml")
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc.get("kind") == "EdgeModel":
            jsonschema.Draft4Validator(schema).validate(doc)  # OpenAPI v3.0 number bounds are draft-4 style
            EdgeModelSpec.model_validate(doc["spec"])
            _assert_cel_rules_hold(doc["spec"], expect=True)


def _cel_rules() -> list[tuple[str, str]]:
    spec = _schema("edgemodel.io_edgemodels.yaml")["properties"]["spec"]
    return [(r["rule"], r["message"]) for r in spec["x-kubernetes-validations"]]


def _is_sorted(value: Any) -> Any:
    """Kubernetes' CEL list library ``isSorted()`` (not part of standard CEL, so not in celpy)."""
    return celpy.celtypes.BoolType(all(a <= b for a, b in zip(value, value[1:], strict=False)))


def _assert_cel_rules_hold(spec: dict[str, Any], expect: bool) -> None:
    env = celpy.Environment()
    results = []
    for rule, _message in _cel_rules():
        program = env.program(env.compile(rule), functions={"isSorted": _is_sorted})
        results.append(bool(program.evaluate({"self": celpy.json_to_cel(json.loads(json.dumps(spec)))})))
    assert all(results) is expect, results


BASE = {"source": {"uri": "file:///m.pt", "format": "TorchScript"}, "inputs": [{"name": "x", "shape": [-1, 4]}]}


@pytest.mark.parametrize(
    "spec",
    [
        {**BASE, "optimization": {"mode": "explicit", "int8": {"method": "static"}}},
        {**BASE, "hardware": {"requireGpu": True}, "serving": {"accelerator": "cpu"}},
        {**BASE, "hardware": {"requireGpu": True}},  # no gpu target
        {**BASE, "rollout": {"steps": [34, 67, 150]}},
        {**BASE, "rollout": {"steps": [0, 100]}},
        {**BASE, "rollout": {"steps": [50, 10, 100]}},
        {**BASE, "rollout": {"steps": [50, 50, 100]}},
        {**BASE, "rollout": {"steps": [10, 50]}},
        {**BASE, "rollout": {"maxUnavailable": 0}},
        {**BASE, "rollout": {"maxUnavailable": "5"}},
        {**BASE, "rollout": {"maxUnavailable": "101%"}},
        {**BASE, "rollout": {"maxUnavailable": "lots"}},
        {**BASE, "inputs": [{"name": "x", "shape": [-1, 4]}, {"name": "x", "shape": [-1, 2]}]},
        {**BASE, "inputs": [{"name": "x", "shape": [-1, 0]}]},
        {**BASE, "outputs": [{"name": "logits"}, {"name": "logits"}]},
        {**BASE, "optimization": {"targets": [{"hardwareClass": "cpu"}, {"hardwareClass": "cpu"}]}},
        {**BASE, "optimization": {"pruning": {"enabled": True}}},
        {**BASE, "optimization": {"qat": {"enabled": True}, "training": {"seed": 1}}},
        {**BASE, "optimization": {"training": {"dataUri": "file:///t.npz"}, "distillation": {"enabled": True}}},
        {**BASE, "optimization": {"training": {"dataUri": "file:///t.npz"}, "distillation": {
            "enabled": True, "widthFactor": 0.5, "student": {"uri": "file:///s.pt", "format": "TorchScript"}}}},
        {**BASE, "source": {"uri": "file:///m.onnx", "format": "ONNX"},
         "optimization": {"training": {"dataUri": "file:///t.npz"}, "qat": {"enabled": True}}},
    ],
)
def test_cel_rules_reject_what_python_rejects(spec: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        EdgeModelSpec.model_validate(spec)
    _assert_cel_rules_hold(spec, expect=False)


@pytest.mark.parametrize(
    "spec",
    [
        BASE,
        {**BASE, "optimization": {"mode": "explicit", "int8": {"method": "dynamic"}}},
        {**BASE, "optimization": {"mode": "explicit", "int8": {"enabled": False}}},
        {**BASE, "optimization": {"mode": "explicit", "int8": {"calibrationDataUri": "file:///c.npz"}}},
        {**BASE, "hardware": {"requireGpu": True}, "serving": {"accelerator": "gpu"},
         "optimization": {"targets": [{"hardwareClass": "gpu"}]}},
        {**BASE, "rollout": {"steps": [34, 67, 100], "maxUnavailable": 1}},
        {**BASE, "rollout": {"steps": [100], "maxUnavailable": "100%"}},
        {**BASE, "outputs": [{"name": "logits"}, {"name": "embedding"}], "validation": {"labelsArray": "y"}},
        {**BASE, "optimization": {"pruning": {"enabled": False}, "qat": {"epochs": 2}}},
        {**BASE, "optimization": {"training": {"dataUri": "file:///t.npz"}, "pruning": {"enabled": True},
                                  "qat": {"enabled": True}, "distillation": {"enabled": True, "widthFactor": 0.25}}},
        {**BASE, "optimization": {"training": {"dataUri": "file:///t.npz"}, "distillation": {
            "enabled": True, "student": {"uri": "file:///s.pt", "format": "TorchScript"}}}},
        {**BASE, "source": {"uri": "file:///m.onnx", "format": "ONNX"}, "optimization": {"qat": {"enabled": False}}},
    ],
)
def test_cel_rules_accept_what_python_accepts(spec: dict[str, Any]) -> None:
    EdgeModelSpec.model_validate(spec)
    _assert_cel_rules_hold(spec, expect=True)
