"""Custom objects are defaulted, pruned and validated against the CRD's openAPIV3Schema, with 422
Invalid causes naming the field; kubectl's strict field validation reaches the server."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from emulator_helpers import http

from edgemodel_dev.cluster import LocalCluster

BASE = "/apis/edgemodel.io/v1alpha1/namespaces/default/edgemodels"


def edgemodel(**spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"source": {"uri": "s3://models/m.pt", "format": "TorchScript"},
                            "inputs": [{"name": "input", "shape": [-1, 1, 8, 8]}]}
    body.update(spec)
    return {"apiVersion": "edgemodel.io/v1alpha1", "kind": "EdgeModel",
            "metadata": {"name": f"m-{uuid.uuid4().hex[:8]}"}, "spec": body}


@pytest.fixture(scope="module")
def cluster(module_kube_cluster: LocalCluster) -> LocalCluster:
    module_kube_cluster.apply_crds()
    return module_kube_cluster


def test_defaults_are_applied(cluster: LocalCluster) -> None:
    response = http(cluster, "POST", BASE, edgemodel())
    assert response.status_code == 201, response.text
    spec = response.json()["spec"]
    assert spec["inputs"][0]["dtype"] == "float32"
    assert spec["rollout"]["steps"] == [10, 50, 100]
    assert spec["rollout"]["maxUnavailable"] == "25%"
    assert spec["optimization"]["int8"]["method"] == "static"
    assert spec["serving"]["batching"] == {"enabled": False, "maxBatchSize": 8, "maxQueueDelayMs": 2.0}


def test_unknown_fields_are_pruned_with_a_warning_or_rejected_when_strict(cluster: LocalCluster) -> None:
    body = edgemodel(sourcee={"x": 1})
    body["spec"]["source"]["extra"] = 1
    warned = http(cluster, "POST", BASE, body)
    assert warned.status_code == 201
    assert "sourcee" not in warned.json()["spec"]
    assert "extra" not in warned.json()["spec"]["source"]
    assert 'unknown field \\"spec.sourcee\\"' in warned.headers["Warning"]
    body["metadata"]["name"] += "-strict"
    strict = http(cluster, "POST", BASE + "?fieldValidation=Strict", body)
    assert strict.status_code == 400
    assert strict.json()["message"] == ('strict decoding error: unknown field "spec.source.extra", '
                                        'unknown field "spec.sourcee"')


@pytest.mark.parametrize(
    ("spec", "field", "reason"),
    [
        ({"source": {"uri": "ftp://x", "format": "TorchScript"}}, "spec.source.uri", "FieldValueInvalid"),
        ({"source": {"uri": "s3://x", "format": "Keras"}}, "spec.source.format", "FieldValueNotSupported"),
        ({"inputs": []}, "spec.inputs", "FieldValueInvalid"),
        ({"inputs": [{"shape": [1]}]}, "spec.inputs[0].name", "FieldValueRequired"),
        ({"validation": {"maxAccuracyDrop": 2}}, "spec.validation.maxAccuracyDrop", "FieldValueInvalid"),
        ({"rollout": {"maxUnavailable": True}}, "spec.rollout.maxUnavailable", "FieldValueTypeInvalid"),
        ({"rollout": {"analysis": {"maxP95LatencyMs": 0}}}, "spec.rollout.analysis.maxP95LatencyMs",
         "FieldValueInvalid"),
        ({"rollout": {"steps": list(range(21))}}, "spec.rollout.steps", "FieldValueTooMany"),
        ({"suspend": "yes"}, "spec.suspend", "FieldValueTypeInvalid"),
    ],
)
def test_invalid_objects_get_422_with_the_field(cluster: LocalCluster, spec: dict[str, Any], field: str,
                                                reason: str) -> None:
    response = http(cluster, "POST", BASE, edgemodel(**spec))
    assert response.status_code == 422, response.text
    status = response.json()
    assert (status["kind"], status["reason"], status["code"]) == ("Status", "Invalid", 422)
    assert status["details"]["kind"] == "EdgeModel"
    assert status["details"]["group"] == "edgemodel.io"
    assert (field, reason) in [(c["field"], c["reason"]) for c in status["details"]["causes"]]
    assert field in status["message"]


def test_int_or_string_accepts_both(cluster: LocalCluster) -> None:
    for value in (1, "50%"):
        response = http(cluster, "POST", BASE, edgemodel(rollout={"maxUnavailable": value}))
        assert response.status_code == 201, response.text
        assert response.json()["spec"]["rollout"]["maxUnavailable"] == value


def test_preserve_unknown_fields_keeps_everything(cluster: LocalCluster) -> None:
    cluster.apply({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "bags.test.edgemodel.io"},
        "spec": {"group": "test.edgemodel.io", "scope": "Cluster",
                 "names": {"kind": "Bag", "plural": "bags"},
                 "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                     "type": "object", "properties": {"spec": {"type": "object",
                                                               "x-kubernetes-preserve-unknown-fields": True}}}}}]},
    })
    response = http(cluster, "POST", "/apis/test.edgemodel.io/v1/bags", {
        "apiVersion": "test.edgemodel.io/v1", "kind": "Bag", "metadata": {"name": "b"},
        "spec": {"anything": {"nested": [1, "two"]}}, "toplevel": "pruned"})
    assert response.status_code == 201, response.text
    assert response.json()["spec"] == {"anything": {"nested": [1, "two"]}}
    assert "toplevel" not in response.json()


def test_updates_and_status_are_validated_too(cluster: LocalCluster) -> None:
    body = edgemodel()
    name = body["metadata"]["name"]
    assert http(cluster, "POST", BASE, body).status_code == 201
    bad_spec = http(cluster, "PATCH", f"{BASE}/{name}", {"spec": {"source": {"format": "Nope"}}},
                    content_type="application/merge-patch+json")
    assert bad_spec.status_code == 422
    bad_status = http(cluster, "PATCH", f"{BASE}/{name}/status", {"status": {"phase": "Dancing"}},
                      content_type="application/merge-patch+json")
    assert bad_status.status_code == 422
    assert bad_status.json()["details"]["causes"][0]["field"] == "status.phase"
    good_status = http(cluster, "PATCH", f"{BASE}/{name}/status", {"status": {"phase": "Converting"}},
                       content_type="application/merge-patch+json")
    assert good_status.status_code == 200
    assert good_status.json()["status"]["ready"] == "0/0", "status defaults apply"


def test_kubectl_apply_reports_the_invalid_field(cluster: LocalCluster) -> None:
    doc = """apiVersion: edgemodel.io/v1alpha1
kind: EdgeModel
metadata: {name: bad, namespace: default}
spec:
  source: {uri: "s3://m/x.pt", format: Pickle}
  inputs: [{name: input, shape: [1]}]
"""
    result = cluster.kubectl("apply", "-f", "-", stdin=doc, check=False)
    assert result.returncode != 0
    assert 'spec.source.format: Unsupported value: "Pickle"' in result.stderr


def test_kubectl_strict_validation_rejects_unknown_fields(cluster: LocalCluster) -> None:
    doc = """apiVersion: v1
kind: ConfigMap
metadata: {name: typo, namespace: default}
dta: {a: b}
"""
    result = cluster.kubectl("create", "-f", "-", stdin=doc, check=False)
    assert result.returncode != 0
    assert 'unknown field "dta"' in result.stderr
    relaxed = cluster.kubectl("create", "--validate=false", "-f", "-", stdin=doc, check=False)
    assert relaxed.returncode == 0, relaxed.stderr


def test_cel_rules_of_the_crd_are_enforced(cluster: LocalCluster) -> None:
    """The x-kubernetes-validations of the EdgeModel CRD, and the API models' twin of each rule."""
    from pydantic import ValidationError

    from edgemodel.api.edgemodel import EdgeModelSpec

    contradiction = {"hardware": {"requireGpu": True}, "serving": {"accelerator": "cpu"},
                     "optimization": {"targets": [{"hardwareClass": "gpu"}]}}
    response = http(cluster, "POST", BASE, edgemodel(**contradiction))
    assert response.status_code == 422, response.text
    causes = response.json()["details"]["causes"]
    assert [c["field"] for c in causes] == ["spec.hardware.requireGpu"]
    assert "requireGpu contradicts serving.accelerator: cpu" in causes[0]["message"]
    with pytest.raises(ValidationError, match="requireGpu"):
        EdgeModelSpec.model_validate(edgemodel(**contradiction)["spec"])

    explicit = {"optimization": {"mode": "explicit", "int8": {"method": "static"}}}
    response = http(cluster, "POST", BASE, edgemodel(**explicit))
    assert response.status_code == 422
    assert response.json()["details"]["causes"][0]["field"] == "spec.optimization.int8.calibrationDataUri"
    explicit["optimization"]["int8"]["calibrationDataUri"] = "file:///data/calib.npz"  # type: ignore[index]
    assert http(cluster, "POST", BASE, edgemodel(**explicit)).status_code == 201


def test_cel_transition_rules_see_the_old_object(cluster: LocalCluster) -> None:
    cluster.apply({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "locks.test.edgemodel.io"},
        "spec": {"group": "test.edgemodel.io", "scope": "Cluster", "names": {"kind": "Lock", "plural": "locks"},
                 "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                     "type": "object", "properties": {"spec": {
                         "type": "object",
                         "properties": {"owner": {"type": "string"}, "tags": {"type": "array",
                                                                              "items": {"type": "string"}}},
                         "x-kubernetes-validations": [
                             {"rule": "self.owner == oldSelf.owner", "message": "owner is immutable"},
                             {"rule": "!has(self.tags) || self.tags.all(t, t.startsWith('x-'))",
                              "message": "tags start with x-", "fieldPath": ".tags"},
                             {"rule": "size(self.owner) <= 5 && self.owner.matches('^[a-z]+$')"}]}}}}}]},
    })
    base = "/apis/test.edgemodel.io/v1/locks"
    body = {"apiVersion": "test.edgemodel.io/v1", "kind": "Lock", "metadata": {"name": "l"},
            "spec": {"owner": "ann", "tags": ["x-a"]}}
    assert http(cluster, "POST", base, body).status_code == 201
    changed = http(cluster, "PATCH", f"{base}/l", {"spec": {"owner": "bob"}},
                   content_type="application/merge-patch+json")
    assert changed.status_code == 422
    assert changed.json()["details"]["causes"][0]["message"] == 'Invalid value: "object": owner is immutable'
    tagged = http(cluster, "PATCH", f"{base}/l", {"spec": {"tags": ["y"]}}, content_type="application/merge-patch+json")
    assert tagged.json()["details"]["causes"][0]["field"] == "spec.tags"
    long_name = dict(body, metadata={"name": "m"}, spec={"owner": "toolongname"})
    failed = http(cluster, "POST", base, long_name).json()["details"]["causes"][0]
    assert failed["message"].endswith("failed rule: size(self.owner) <= 5 && self.owner.matches('^[a-z]+$')")
