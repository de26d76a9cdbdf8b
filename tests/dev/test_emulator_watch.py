"""Watch conformance: event types and order, resourceVersion resume, BOOKMARKs, 410 Gone,
server-side timeouts, selector transitions and initial events (WatchList)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from emulator_helpers import configmap, watch_lines
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from edgemodel_dev.cluster import LocalCluster


@pytest.fixture
def ns(module_kube_cluster: LocalCluster) -> str:
    name = f"w-{uuid.uuid4().hex[:8]}"
    module_kube_cluster.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name


def test_watch_from_a_list_sees_added_modified_deleted(module_kube_cluster: LocalCluster, ns: str) -> None:
    core = client.CoreV1Api(module_kube_cluster.api_client())
    core.create_namespaced_config_map(ns, configmap("before"))
    listed = core.list_namespaced_config_map(ns)
    core.create_namespaced_config_map(ns, configmap("w"))
    core.patch_namespaced_config_map("w", ns, {"data": {"k": "2"}})
    core.delete_namespaced_config_map("w", ns)
    events = []
    for event in watch.Watch().stream(core.list_namespaced_config_map, ns,
                                      resource_version=listed.metadata.resource_version, timeout_seconds=2):
        events.append((event["type"], event["object"].metadata.name))
        if len(events) == 3:
            break
    assert events == [("ADDED", "w"), ("MODIFIED", "w"), ("DELETED", "w")]


def test_watch_without_resource_version_starts_with_the_current_state(module_kube_cluster: LocalCluster,
                                                                       ns: str) -> None:
    core = client.CoreV1Api(module_kube_cluster.api_client())
    core.create_namespaced_config_map(ns, configmap("existing"))
    first = next(iter(watch_lines(module_kube_cluster, f"/api/v1/namespaces/{ns}/configmaps?watch=1"
                                                        "&timeoutSeconds=2")))
    assert (first["type"], first["object"]["metadata"]["name"]) == ("ADDED", "existing")


def test_bookmarks_and_server_side_timeout(module_kube_cluster: LocalCluster, ns: str) -> None:
    rv = module_kube_cluster.call(lambda: module_kube_cluster.plane.store.rv)
    events = list(watch_lines(module_kube_cluster, f"/api/v1/namespaces/{ns}/configmaps?watch=1&"
                                                   f"resourceVersion={rv}&allowWatchBookmarks=true&timeoutSeconds=3"))
    bookmarks = [e for e in events if e["type"] == "BOOKMARK"]
    assert bookmarks, "the fixture's cluster sends a BOOKMARK every second"
    assert bookmarks[0]["object"]["kind"] == "ConfigMap"
    assert int(bookmarks[0]["object"]["metadata"]["resourceVersion"]) >= rv
    # the stream ended by itself (timeoutSeconds), otherwise list() would not have returned


def test_too_old_resource_version_is_410_gone(tmp_path: Path) -> None:
    with LocalCluster(tmp_path / "kube", history_size=5, kubelet=False) as cluster:
        core = client.CoreV1Api(cluster.api_client())
        first = core.create_namespaced_config_map("default", configmap("c0")).metadata.resource_version
        for index in range(1, 8):
            core.create_namespaced_config_map("default", configmap(f"c{index}"))
        events = list(watch_lines(cluster, f"/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={first}"))
        assert len(events) == 1
        assert events[0]["type"] == "ERROR"
        assert (events[0]["object"]["code"], events[0]["object"]["reason"]) == (410, "Expired")
        with pytest.raises(ApiException) as err:
            for _ in watch.Watch().stream(core.list_namespaced_config_map, "default", resource_version=first,
                                          timeout_seconds=2):
                pass
        assert err.value.status == 410


def test_selector_transitions_become_added_and_deleted(module_kube_cluster: LocalCluster, ns: str) -> None:
    core = client.CoreV1Api(module_kube_cluster.api_client())
    rv = core.create_namespaced_config_map(ns, configmap("s", {"app": "x"})).metadata.resource_version
    core.patch_namespaced_config_map("s", ns, {"metadata": {"labels": {"app": "y"}}})
    core.patch_namespaced_config_map("s", ns, {"metadata": {"labels": {"app": "x"}}})
    core.patch_namespaced_config_map("s", ns, {"data": {"k": "v"}})
    kinds = []
    for event in watch_lines(module_kube_cluster, f"/api/v1/namespaces/{ns}/configmaps?watch=1&resourceVersion={rv}"
                                                  "&labelSelector=app%3Dx&timeoutSeconds=2"):
        kinds.append(event["type"])
        if len(kinds) == 3:
            break
    assert kinds == ["DELETED", "ADDED", "MODIFIED"]


def test_send_initial_events_ends_with_an_annotated_bookmark(module_kube_cluster: LocalCluster, ns: str) -> None:
    core = client.CoreV1Api(module_kube_cluster.api_client())
    core.create_namespaced_config_map(ns, configmap("i1"))
    core.create_namespaced_config_map(ns, configmap("i2"))
    events = []
    for event in watch_lines(module_kube_cluster, f"/api/v1/namespaces/{ns}/configmaps?watch=1&sendInitialEvents=true"
                                                  "&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true"
                                                  "&timeoutSeconds=2"):
        events.append(event)
        if event["type"] == "BOOKMARK":
            break
    assert [e["type"] for e in events] == ["ADDED", "ADDED", "BOOKMARK"]
    assert events[-1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


def test_watch_of_a_custom_resource_by_name(module_kube_cluster: LocalCluster) -> None:
    module_kube_cluster.apply_crds()
    custom = client.CustomObjectsApi(module_kube_cluster.api_client())
    name = f"n-{uuid.uuid4().hex[:6]}"
    rv = custom.list_cluster_custom_object("edgemodel.io", "v1alpha1", "edgeagents")["metadata"]["resourceVersion"]
    custom.create_cluster_custom_object("edgemodel.io", "v1alpha1", "edgeagents", {
        "apiVersion": "edgemodel.io/v1alpha1", "kind": "EdgeAgent", "metadata": {"name": name}, "spec": {}})
    custom.create_cluster_custom_object("edgemodel.io", "v1alpha1", "edgeagents", {
        "apiVersion": "edgemodel.io/v1alpha1", "kind": "EdgeAgent", "metadata": {"name": name + "-other"}, "spec": {}})
    custom.patch_cluster_custom_object_status("edgemodel.io", "v1alpha1", "edgeagents", name,
                                              {"status": {"endpoint": "http://x"}})
    seen = []
    for event in watch.Watch().stream(custom.list_cluster_custom_object, "edgemodel.io", "v1alpha1", "edgeagents",
                                      resource_version=rv, field_selector=f"metadata.name={name}",
                                      timeout_seconds=2):
        seen.append((event["type"], event["object"]["metadata"]["name"]))
        if len(seen) == 2:
            break
    assert seen == [("ADDED", name), ("MODIFIED", name)]
