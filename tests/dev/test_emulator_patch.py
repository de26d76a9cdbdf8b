"""PATCH conformance: JSON merge patch, JSON patch, strategic merge patch, and kubectl's patch/apply."""

from __future__ import annotations

import json
import uuid

import pytest
from emulator_helpers import configmap, http
from kubernetes import client

from edgemodel_dev.cluster import LocalCluster

POD = {
    "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"a": "1"}},
    "spec": {"nodeName": "nowhere", "containers": [
        {"name": "main", "image": "x", "command": ["true"], "env": [{"name": "A", "value": "1"}]},
        {"name": "side", "image": "y", "command": ["true"]}]},
}


@pytest.fixture
def ns(module_kube_cluster: LocalCluster) -> str:
    name = f"p-{uuid.uuid4().hex[:8]}"
    module_kube_cluster.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name


def test_merge_patch_on_a_custom_resource(module_kube_cluster: LocalCluster, ns: str) -> None:
    module_kube_cluster.apply_crds()
    base = f"/apis/edgemodel.io/v1alpha1/namespaces/{ns}/edgemodels"
    created = http(module_kube_cluster, "POST", base, {
        "apiVersion": "edgemodel.io/v1alpha1", "kind": "EdgeModel", "metadata": {"name": "m", "labels": {"a": "1"}},
        "spec": {"source": {"uri": "file:///m.pt", "format": "ONNX"}, "inputs": [{"name": "x", "shape": [1]}],
                 "rollout": {"steps": [50, 100]}}})
    assert created.status_code == 201, created.text
    patched = http(module_kube_cluster, "PATCH", f"{base}/m", {
        "metadata": {"labels": {"a": None, "b": "2"}}, "spec": {"rollout": {"steps": [100]}}},
        content_type="application/merge-patch+json")
    assert patched.status_code == 200, patched.text
    body = patched.json()
    assert body["metadata"]["labels"] == {"b": "2"}
    assert body["spec"]["rollout"]["steps"] == [100], "merge patch replaces lists"
    assert body["spec"]["rollout"]["strategy"] == "Canary"


def test_json_patch_with_resource_version_test(module_kube_cluster: LocalCluster, ns: str) -> None:
    path = f"/api/v1/namespaces/{ns}/configmaps"
    created = http(module_kube_cluster, "POST", path, configmap("c")).json()
    rv = created["metadata"]["resourceVersion"]
    ok = http(module_kube_cluster, "PATCH", f"{path}/c", [
        {"op": "test", "path": "/metadata/resourceVersion", "value": rv},
        {"op": "add", "path": "/metadata/finalizers", "value": ["x.io/f"]}], content_type="application/json-patch+json")
    assert ok.status_code == 200
    assert ok.json()["metadata"]["finalizers"] == ["x.io/f"]
    stale = http(module_kube_cluster, "PATCH", f"{path}/c", [
        {"op": "test", "path": "/metadata/resourceVersion", "value": rv},
        {"op": "remove", "path": "/metadata/finalizers"}], content_type="application/json-patch+json")
    assert stale.status_code == 422
    assert stale.json()["kind"] == "Status"
    http(module_kube_cluster, "PATCH", f"{path}/c", [{"op": "remove", "path": "/metadata/finalizers"}],
         content_type="application/json-patch+json")


def test_strategic_merge_patch_on_pods(module_kube_cluster: LocalCluster, ns: str) -> None:
    core = client.CoreV1Api(module_kube_cluster.api_client())
    core.create_namespaced_pod(ns, POD)
    path = f"/api/v1/namespaces/{ns}/pods/p"
    patched = http(module_kube_cluster, "PATCH", path, {
        "metadata": {"labels": {"b": "2"}},
        "spec": {"containers": [{"name": "main", "image": "x2"}]}},
        content_type="application/strategic-merge-patch+json")
    assert patched.status_code == 200, patched.text
    pod = patched.json()
    assert [c["name"] for c in pod["spec"]["containers"]] == ["main", "side"], "containers merge by name"
    assert pod["spec"]["containers"][0]["image"] == "x2"
    assert pod["spec"]["containers"][0]["env"] == [{"name": "A", "value": "1"}]
    assert pod["metadata"]["labels"] == {"a": "1", "b": "2"}


def test_strategic_merge_patch_is_rejected_for_custom_resources(module_kube_cluster: LocalCluster,
                                                                 ns: str) -> None:
    module_kube_cluster.apply_crds()
    response = http(module_kube_cluster, "PATCH", "/apis/edgemodel.io/v1alpha1/edgeagents/whatever", {"spec": {}},
                    content_type="application/strategic-merge-patch+json")
    assert response.status_code == 415
    assert response.json()["reason"] == "UnsupportedMediaType"


def test_kubectl_patch_types(module_kube_cluster: LocalCluster, ns: str) -> None:
    module_kube_cluster.create({**configmap("k", {"x": "1"}), "metadata": {"name": "k", "namespace": ns}})
    kubectl = module_kube_cluster.kubectl
    kubectl("-n", ns, "patch", "configmap", "k", "--type=strategic", "-p", '{"data":{"a":"1"}}')
    kubectl("-n", ns, "patch", "configmap", "k", "--type=merge", "-p", '{"data":{"key":null}}')
    kubectl("-n", ns, "patch", "configmap", "k", "--type=json", "-p", '[{"op":"add","path":"/data/b","value":"2"}]')
    data = json.loads(kubectl("-n", ns, "get", "configmap", "k", "-o", "json").stdout)["data"]
    assert data == {"a": "1", "b": "2"}


def test_kubectl_apply_three_way_merge(module_kube_cluster: LocalCluster, ns: str) -> None:
    kubectl = module_kube_cluster.kubectl
    service = """
apiVersion: v1
kind: Service
metadata: {name: svc, namespace: NS, labels: {keep: "yes"}}
spec:
  selector: {app: x}
  ports:
  - {name: http, port: 80}
  - {name: metrics, port: 9090}
""".replace("NS", ns)
    kubectl("apply", "-f", "-", stdin=service)
    kubectl("-n", ns, "label", "service", "svc", "added-by-hand=1")
    kubectl("apply", "-f", "-", stdin=service.replace("  - {name: metrics, port: 9090}\n", ""))
    svc = json.loads(kubectl("-n", ns, "get", "service", "svc", "-o", "json").stdout)
    assert [p["name"] for p in svc["spec"]["ports"]] == ["http"], "a port removed from the file is removed"
    assert svc["metadata"]["labels"] == {"keep": "yes", "added-by-hand": "1"}, "changes made by others are kept"
    assert "kubectl.kubernetes.io/last-applied-configuration" in svc["metadata"]["annotations"]


def test_kubectl_server_side_apply_creates_and_updates(module_kube_cluster: LocalCluster, ns: str) -> None:
    kubectl = module_kube_cluster.kubectl
    doc = f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: ssa, namespace: {ns}}}\ndata: {{a: '1'}}\n"
    assert "serverside-applied" in kubectl("apply", "--server-side", "-f", "-", stdin=doc).stdout
    kubectl("apply", "--server-side", "-f", "-", stdin=doc.replace("{a: '1'}", "{a: '2', b: '3'}"))
    data = json.loads(kubectl("-n", ns, "get", "configmap", "ssa", "-o", "json").stdout)["data"]
    assert data == {"a": "2", "b": "3"}
