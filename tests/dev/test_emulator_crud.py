"""CRUD conformance through the real `kubernetes` client: metadata, lists, selectors, errors,
optimistic concurrency, generation and the status subresource."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from emulator_helpers import configmap, http
from kubernetes import client
from kubernetes.client.rest import ApiException

from edgemodel_dev.cluster import LocalCluster

GROUP, VERSION = "edgemodel.io", "v1alpha1"


def edgemodel(name: str, **spec: Any) -> dict[str, Any]:
    body = {"source": {"uri": "file:///m.pt", "format": "TorchScript"}, "inputs": [{"name": "x", "shape": [-1, 4]}]}
    body.update(spec)
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "EdgeModel", "metadata": {"name": name}, "spec": body}


@pytest.fixture(scope="module")
def api(module_kube_cluster: LocalCluster) -> Iterator[client.ApiClient]:
    module_kube_cluster.apply_crds()
    api_client = module_kube_cluster.api_client()
    yield api_client
    api_client.close()


@pytest.fixture
def ns(api: client.ApiClient) -> str:
    name = f"t-{uuid.uuid4().hex[:8]}"
    client.CoreV1Api(api).create_namespace({"metadata": {"name": name}})
    return name


def status_of(exc: ApiException) -> dict[str, Any]:
    return dict(json.loads(exc.body))


def test_create_sets_system_metadata(api: client.ApiClient, ns: str) -> None:
    core = client.CoreV1Api(api)
    created = core.create_namespaced_config_map(ns, configmap("a"))
    meta = created.metadata
    assert meta.uid
    assert meta.resource_version
    assert meta.creation_timestamp is not None
    assert meta.generation is None, "a ConfigMap has no metadata.generation (as on a real API server)"
    assert meta.namespace == ns
    fetched = core.read_namespaced_config_map("a", ns)
    assert fetched.metadata.uid == meta.uid
    assert fetched.metadata.resource_version == meta.resource_version
    assert fetched.data == {"key": "value"}


def test_resource_version_is_one_global_increasing_counter(api: client.ApiClient, ns: str) -> None:
    core = client.CoreV1Api(api)
    custom = client.CustomObjectsApi(api)
    first = core.create_namespaced_config_map(ns, configmap("one")).metadata.resource_version
    second = custom.create_cluster_custom_object(GROUP, VERSION, "edgeagents", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "EdgeAgent", "metadata": {"name": f"{ns}-node"},
        "spec": {}})["metadata"]["resourceVersion"]
    third = core.patch_namespaced_config_map("one", ns, {"data": {"k": "v"}}).metadata.resource_version
    assert int(first) < int(second) < int(third)
    listed = core.list_namespaced_config_map(ns)
    assert int(listed.metadata.resource_version) >= int(third)


def test_lists_carry_kind_api_version_and_resource_version(module_kube_cluster: LocalCluster, ns: str) -> None:
    for path, kind, api_version in [(f"/api/v1/namespaces/{ns}/configmaps", "ConfigMapList", "v1"),
                                    ("/apis/batch/v1/jobs", "JobList", "batch/v1"),
                                    (f"/apis/{GROUP}/{VERSION}/edgeagents", "EdgeAgentList", f"{GROUP}/{VERSION}")]:
        body = http(module_kube_cluster, "GET", path).json()
        assert (body["kind"], body["apiVersion"]) == (kind, api_version)
        assert int(body["metadata"]["resourceVersion"]) > 0
        assert isinstance(body["items"], list)


def test_label_and_field_selectors(api: client.ApiClient, ns: str) -> None:
    core = client.CoreV1Api(api)
    for name, labels in [("a", {"app": "web", "tier": "front"}), ("b", {"app": "web", "tier": "back"}),
                         ("c", {"app": "db"}), ("d", {})]:
        core.create_namespaced_config_map(ns, configmap(name, labels))

    def names(**kw: str) -> list[str]:
        return sorted(i.metadata.name for i in core.list_namespaced_config_map(ns, **kw).items
                      if i.metadata.name != "kube-root-ca.crt")

    assert names(label_selector="app=web") == ["a", "b"]
    assert names(label_selector="app!=web") == ["c", "d"]
    assert names(label_selector="tier in (back,middle)") == ["b"]
    assert names(label_selector="tier notin (back)") == ["a", "c", "d"]
    assert names(label_selector="tier") == ["a", "b"]
    assert names(label_selector="!tier") == ["c", "d"]
    assert names(label_selector="app=web,tier=front") == ["a"]
    assert names(field_selector="metadata.name=c") == ["c"]
    assert names(field_selector="metadata.name!=c") == ["a", "b", "d"]
    everywhere = core.list_config_map_for_all_namespaces(field_selector=f"metadata.namespace={ns}")
    assert sorted(i.metadata.name for i in everywhere.items) == ["a", "b", "c", "d"]


def test_pagination_with_limit_and_continue(api: client.ApiClient, ns: str) -> None:
    core = client.CoreV1Api(api)
    for index in range(5):
        core.create_namespaced_config_map(ns, configmap(f"p{index}"))
    seen: list[str] = []
    token = None
    pages = 0
    while pages < 10:
        page = core.list_namespaced_config_map(ns, limit=2, _continue=token)
        pages += 1
        seen += [i.metadata.name for i in page.items]
        token = page.metadata._continue
        if not token:
            break
    assert seen == ["p0", "p1", "p2", "p3", "p4"]
    assert pages == 3


def test_stale_update_is_a_conflict(api: client.ApiClient, ns: str) -> None:
    core = client.CoreV1Api(api)
    old = core.create_namespaced_config_map(ns, configmap("c"))
    fresh = core.read_namespaced_config_map("c", ns)
    fresh.data = {"k": "new"}
    core.replace_namespaced_config_map("c", ns, fresh)
    old.data = {"k": "stale"}
    with pytest.raises(ApiException) as err:
        core.replace_namespaced_config_map("c", ns, old)
    status = status_of(err.value)
    assert (err.value.status, status["kind"], status["reason"], status["code"]) == (409, "Status", "Conflict", 409)
    assert "the object has been modified" in status["message"]
    assert core.read_namespaced_config_map("c", ns).data == {"k": "new"}


def test_already_exists_and_not_found(api: client.ApiClient, ns: str) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_config_map(ns, configmap("dup"))
    with pytest.raises(ApiException) as err:
        core.create_namespaced_config_map(ns, configmap("dup"))
    status = status_of(err.value)
    assert (err.value.status, status["reason"]) == (409, "AlreadyExists")
    assert status["details"] == {"name": "dup", "kind": "configmaps"}
    with pytest.raises(ApiException) as err:
        core.read_namespaced_config_map("missing", ns)
    status = status_of(err.value)
    assert (err.value.status, status["reason"], status["details"]["name"]) == (404, "NotFound", "missing")
    assert status["message"] == 'configmaps "missing" not found'
    with pytest.raises(ApiException) as err:
        client.CustomObjectsApi(api).get_cluster_custom_object(GROUP, VERSION, "edgeagents", "nope")
    assert status_of(err.value)["details"] == {"name": "nope", "group": GROUP, "kind": "edgeagents"}


def test_namespace_must_exist(api: client.ApiClient) -> None:
    with pytest.raises(ApiException) as err:
        client.CoreV1Api(api).create_namespaced_config_map("no-such-namespace", configmap("x"))
    assert err.value.status == 404
    assert status_of(err.value)["message"] == 'namespaces "no-such-namespace" not found'


def test_generate_name_and_default_service_account(api: client.ApiClient, ns: str) -> None:
    core = client.CoreV1Api(api)
    created = core.create_namespaced_config_map(ns, {"metadata": {"generateName": "gen-"}, "data": {}})
    assert created.metadata.name.startswith("gen-")
    assert len(created.metadata.name) == len("gen-") + 5
    assert core.read_namespaced_service_account("default", ns).metadata.name == "default"


def test_generation_and_status_subresource(api: client.ApiClient, ns: str) -> None:
    custom = client.CustomObjectsApi(api)
    body = edgemodel("m")
    body["status"] = {"phase": "Available"}
    created = custom.create_namespaced_custom_object(GROUP, VERSION, ns, "edgemodels", body)
    assert "status" not in created, "create must not set status when the status subresource exists"
    assert created["metadata"]["generation"] == 1

    labelled = custom.patch_namespaced_custom_object(GROUP, VERSION, ns, "edgemodels", "m",
                                                     {"metadata": {"labels": {"x": "y"}}})
    assert labelled["metadata"]["generation"] == 1, "metadata changes do not bump generation"
    changed = custom.patch_namespaced_custom_object(GROUP, VERSION, ns, "edgemodels", "m", {"spec": {"suspend": True}})
    assert changed["metadata"]["generation"] == 2

    status = custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, ns, "edgemodels", "m", {"status": {"phase": "Converting"}, "spec": {"suspend": False}})
    assert status["status"]["phase"] == "Converting"
    assert status["spec"]["suspend"] is True, "the /status subresource changes only status"
    assert status["metadata"]["generation"] == 2

    current = custom.get_namespaced_custom_object(GROUP, VERSION, ns, "edgemodels", "m")
    current["status"]["phase"] = "Failed"
    replaced = custom.replace_namespaced_custom_object(GROUP, VERSION, ns, "edgemodels", "m", current)
    assert replaced["status"]["phase"] == "Converting", "the main resource ignores status"
    assert replaced["metadata"]["generation"] == 2


def test_generation_without_status_subresource(module_kube_cluster: LocalCluster, api: client.ApiClient,
                                               ns: str) -> None:
    module_kube_cluster.apply({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "plains.test.edgemodel.io"},
        "spec": {"group": "test.edgemodel.io", "scope": "Namespaced",
                 "names": {"kind": "Plain", "plural": "plains", "singular": "plain"},
                 "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                     "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]},
    })
    custom = client.CustomObjectsApi(api)
    custom.create_namespaced_custom_object("test.edgemodel.io", "v1", ns, "plains", {
        "apiVersion": "test.edgemodel.io/v1", "kind": "Plain", "metadata": {"name": "p"}, "spec": {"a": 1},
        "status": {"s": 1}})
    patched = custom.patch_namespaced_custom_object("test.edgemodel.io", "v1", ns, "plains", "p",
                                                    {"status": {"s": 2}})
    assert patched["status"] == {"s": 2}
    assert patched["metadata"]["generation"] == 2, "without a status subresource every change counts"


def test_cluster_scoped_objects(api: client.ApiClient, ns: str) -> None:
    custom = client.CustomObjectsApi(api)
    name = f"{ns}-agent"
    custom.create_cluster_custom_object(GROUP, VERSION, "edgeagents", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "EdgeAgent", "metadata": {"name": name, "namespace": "ignored"},
        "spec": {"nodeName": name}})
    got = custom.get_cluster_custom_object(GROUP, VERSION, "edgeagents", name)
    assert "namespace" not in got["metadata"]
    names = [i["metadata"]["name"] for i in custom.list_cluster_custom_object(GROUP, VERSION, "edgeagents")["items"]]
    assert name in names
    custom.delete_cluster_custom_object(GROUP, VERSION, "edgeagents", name)
    with pytest.raises(ApiException):
        custom.get_cluster_custom_object(GROUP, VERSION, "edgeagents", name)


def test_core_events_are_visible_as_events_k8s_io(api: client.ApiClient, ns: str) -> None:
    client.CoreV1Api(api).create_namespaced_event(ns, {
        "metadata": {"name": "ev1"}, "involvedObject": {"kind": "EdgeModel", "name": "m", "namespace": ns},
        "reason": "Converted", "message": "done", "type": "Normal", "source": {"component": "op"}})
    event = client.EventsV1Api(api).read_namespaced_event("ev1", ns)
    assert (event.reason, event.note, event.regarding.name, event.type) == ("Converted", "done", "m", "Normal")


def test_leases_for_leader_election(api: client.ApiClient, ns: str) -> None:
    coordination = client.CoordinationV1Api(api)
    lease = coordination.create_namespaced_lease(ns, {"metadata": {"name": "op"}, "spec": {
        "holderIdentity": "a", "leaseDurationSeconds": 15}})
    lease.spec.holder_identity = "b"
    updated = coordination.replace_namespaced_lease("op", ns, lease)
    assert updated.spec.holder_identity == "b"
    assert int(updated.metadata.resource_version) > int(lease.metadata.resource_version)


def test_invalid_names_are_rejected(api: client.ApiClient, ns: str) -> None:
    with pytest.raises(ApiException) as err:
        client.CoreV1Api(api).create_namespaced_config_map(ns, configmap("Not_Valid"))
    status = status_of(err.value)
    assert (err.value.status, status["reason"]) == (422, "Invalid")
    assert status["details"]["causes"][0]["field"] == "metadata.name"
