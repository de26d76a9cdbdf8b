"""Bearer-token authentication and RBAC-like rules: an agent may only touch its own EdgeAgent."""

from __future__ import annotations

from pathlib import Path

import pytest
from emulator_helpers import http, watch_lines
from kubernetes import client
from kubernetes.client.rest import ApiException

from edgemodel_dev.cluster import LocalCluster

AGENTS = "/apis/edgemodel.io/v1alpha1/edgeagents"


def agent_body(name: str) -> dict:
    return {"apiVersion": "edgemodel.io/v1alpha1", "kind": "EdgeAgent", "metadata": {"name": name}, "spec": {}}


@pytest.fixture
def cluster(kube_cluster_auth: LocalCluster) -> LocalCluster:
    kube_cluster_auth.apply_crds()
    kube_cluster_auth.add_nodes(2)
    return kube_cluster_auth


def test_requests_without_a_valid_token_are_401(cluster: LocalCluster) -> None:
    assert http(cluster, "GET", "/api/v1/namespaces", token="wrong").status_code == 401
    response = http(cluster, "GET", "/api/v1/namespaces", headers={"Authorization": ""})
    assert (response.status_code, response.json()["reason"]) == (401, "Unauthorized")
    assert http(cluster, "GET", "/version", token="wrong").status_code == 200


def test_agent_token_reaches_only_its_own_edgeagent(cluster: LocalCluster) -> None:
    token = cluster.agent_token("edge-0")
    assert http(cluster, "POST", AGENTS, agent_body("edge-0"), token=token).status_code == 201
    assert http(cluster, "POST", AGENTS, agent_body("edge-1")).status_code == 201  # by the admin
    assert http(cluster, "GET", f"{AGENTS}/edge-0", token=token).status_code == 200
    patched = http(cluster, "PATCH", f"{AGENTS}/edge-0/status", {"status": {"endpoint": "http://a"}}, token=token,
                   content_type="application/merge-patch+json")
    assert patched.status_code == 200
    assert patched.json()["status"]["endpoint"] == "http://a"

    forbidden = http(cluster, "PATCH", f"{AGENTS}/edge-1/status", {"status": {"endpoint": "http://evil"}},
                     token=token, content_type="application/merge-patch+json")
    status = forbidden.json()
    assert (forbidden.status_code, status["kind"], status["reason"]) == (403, "Status", "Forbidden")
    assert status["message"] == ('edgeagents.edgemodel.io "edge-1" is forbidden: User "system:edgeagent:edge-0" '
                                 'cannot patch resource "edgeagents" with subresource "status" in API group '
                                 '"edgemodel.io" at the cluster scope')
    assert http(cluster, "POST", AGENTS, agent_body("edge-9"), token=token).status_code == 403
    assert http(cluster, "GET", AGENTS, token=token).status_code == 403, "listing all agents is not allowed"
    assert http(cluster, "DELETE", f"{AGENTS}/edge-0", token=token).status_code == 403
    assert http(cluster, "GET", "/api/v1/namespaces/default/secrets", token=token).status_code == 403
    assert http(cluster, "GET", "/api/v1/nodes/edge-0", token=token).status_code == 403, "it needs no Node"
    assert http(cluster, "GET", "/api/v1/nodes/edge-1", token=token).status_code == 403


MODEL = {"name": "digits", "namespace": "team-a", "revision": 1, "artifactUri": "http://s/m.onnx", "sha256": "0" * 64,
         "manifestUri": "http://s/manifest.json", "signature": "c2ln"}


def test_agent_writes_are_admitted_as_the_chart_policy_admits_them(cluster: LocalCluster) -> None:
    """As the chart's ValidatingAdmissionPolicy: no spec.models of its own making, on create or update."""
    token = cluster.agent_token("edge-0")
    forged = {**agent_body("edge-0"), "spec": {"models": [MODEL]}}
    created = http(cluster, "POST", AGENTS, forged, token=token)
    assert created.status_code == 403, created.text
    assert "an edge agent creates its EdgeAgent without model assignments" in created.json()["message"]
    assert http(cluster, "POST", AGENTS, agent_body("edge-0"), token=token).status_code == 201
    for content_type, patch in (("application/merge-patch+json", {"spec": {"models": [MODEL]}}),
                                ("application/json-patch+json", [{"op": "add", "path": "/spec/models", "value": [MODEL]}])):
        denied = http(cluster, "PATCH", f"{AGENTS}/edge-0", patch, token=token, content_type=content_type)
        assert denied.status_code == 403, denied.text
        assert "spec.models of an EdgeAgent is written only by the operator" in denied.json()["message"]
    assert http(cluster, "PATCH", f"{AGENTS}/edge-0", {"spec": {"models": [MODEL]}},
                content_type="application/merge-patch+json").status_code == 200, "the operator (admin) may"
    relabelled = http(cluster, "PATCH", f"{AGENTS}/edge-0", {"metadata": {"labels": {"edgemodel.io/tier": "cloud"}}},
                      token=token, content_type="application/merge-patch+json")
    assert relabelled.status_code == 200, "its own labels are its own: the operator selects on the Node's"
    assert [m["name"] for m in relabelled.json()["spec"]["models"]] == ["digits"]
    status = http(cluster, "PATCH", f"{AGENTS}/edge-0/status", {"status": {"endpoint": "http://a"}}, token=token,
                  content_type="application/merge-patch+json")
    assert status.status_code == 200
    assert http(cluster, "GET", "/api/v1/nodes/edge-0").json()["metadata"]["labels"].get("edgemodel.io/tier") is None


def test_agent_may_watch_itself_by_name(cluster: LocalCluster) -> None:
    http(cluster, "POST", AGENTS, agent_body("edge-0"))
    token = cluster.agent_token("edge-0")
    events = list(watch_lines(cluster, f"{AGENTS}?watch=1&fieldSelector=metadata.name%3Dedge-0&timeoutSeconds=1",
                              token=token))
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "edge-0")]
    assert http(cluster, "GET", f"{AGENTS}?watch=1&fieldSelector=metadata.name%3Dedge-1",
                token=token).status_code == 403


def test_kubernetes_client_and_kubectl_with_an_agent_kubeconfig(cluster: LocalCluster, tmp_path: Path) -> None:
    import kubernetes

    kubeconfig = cluster.agent_kubeconfig("edge-1")
    api = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
    custom = client.CustomObjectsApi(api)
    custom.create_cluster_custom_object("edgemodel.io", "v1alpha1", "edgeagents", agent_body("edge-1"))
    with pytest.raises(ApiException) as err:
        custom.create_cluster_custom_object("edgemodel.io", "v1alpha1", "edgeagents", agent_body("edge-0"))
    assert err.value.status == 403
    allowed = cluster.kubectl("auth", "can-i", "patch", "edgeagents.edgemodel.io/edge-1", kubeconfig=kubeconfig,
                              check=False)
    assert allowed.stdout.strip() == "yes"
    denied = cluster.kubectl("auth", "can-i", "delete", "pods", kubeconfig=kubeconfig, check=False)
    assert denied.stdout.strip() == "no"
    result = cluster.kubectl("get", "edgeagents", kubeconfig=kubeconfig, check=False)
    assert result.returncode != 0
    assert "forbidden" in result.stderr
    assert "edge-1" in cluster.kubectl("get", "edgeagent", "edge-1", kubeconfig=kubeconfig).stdout
