"""Deletion conformance: finalizers and deletionTimestamp, garbage collection through
ownerReferences (background, foreground, orphan), namespaces, preconditions."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from emulator_helpers import configmap, http
from kubernetes import client
from kubernetes.client.rest import ApiException

from edgemodel_dev.cluster import LocalCluster


@pytest.fixture
def ns(module_kube_cluster: LocalCluster) -> str:
    name = f"d-{uuid.uuid4().hex[:8]}"
    module_kube_cluster.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name


def owned(name: str, owner: Any, block: bool = False) -> dict[str, Any]:
    body = configmap(name)
    body["metadata"]["ownerReferences"] = [{"apiVersion": "v1", "kind": "ConfigMap", "name": owner.metadata.name,
                                            "uid": owner.metadata.uid, "blockOwnerDeletion": block}]
    return body


def exists(core: client.CoreV1Api, ns: str, name: str) -> bool:
    try:
        core.read_namespaced_config_map(name, ns)
        return True
    except ApiException as exc:
        if exc.status != 404:
            raise
        return False


def test_finalizers_hold_an_object_until_removed(module_kube_cluster: LocalCluster, ns: str) -> None:
    core = client.CoreV1Api(module_kube_cluster.api_client())
    body = configmap("f")
    body["metadata"]["finalizers"] = ["test.edgemodel.io/hold"]
    core.create_namespaced_config_map(ns, body)
    core.delete_namespaced_config_map("f", ns)
    held = core.read_namespaced_config_map("f", ns)
    assert held.metadata.deletion_timestamp is not None
    with pytest.raises(ApiException) as err:
        core.patch_namespaced_config_map("f", ns, {"metadata": {"finalizers": ["test.edgemodel.io/hold", "new"]}})
    assert err.value.status == 422, "no new finalizers while deleting"
    core.patch_namespaced_config_map("f", ns, {"metadata": {"finalizers": None}})
    assert not exists(core, ns, "f")


def test_background_deletion_collects_dependents(module_kube_cluster: LocalCluster, ns: str) -> None:
    core = client.CoreV1Api(module_kube_cluster.api_client())
    owner = core.create_namespaced_config_map(ns, configmap("owner"))
    other = core.create_namespaced_config_map(ns, configmap("other-owner"))
    core.create_namespaced_config_map(ns, owned("child", owner))
    shared = owned("shared", owner)
    shared["metadata"]["ownerReferences"].append({"apiVersion": "v1", "kind": "ConfigMap",
                                                  "name": "other-owner", "uid": other.metadata.uid})
    core.create_namespaced_config_map(ns, shared)
    core.delete_namespaced_config_map("owner", ns, propagation_policy="Background")
    module_kube_cluster.wait_for(lambda: not exists(core, ns, "child"), what="the child to be collected")
    survivor = module_kube_cluster.wait_for(
        lambda: (c := core.read_namespaced_config_map("shared", ns)) and len(c.metadata.owner_references) == 1 and c,
        what="the dangling reference to be removed")
    assert survivor.metadata.owner_references[0].name == "other-owner"


def test_foreground_deletion_waits_for_blocking_dependents(module_kube_cluster: LocalCluster, ns: str) -> None:
    core = client.CoreV1Api(module_kube_cluster.api_client())
    owner = core.create_namespaced_config_map(ns, configmap("fg-owner"))
    child = owned("fg-child", owner, block=True)
    child["metadata"]["finalizers"] = ["test.edgemodel.io/slow"]
    core.create_namespaced_config_map(ns, child)
    core.delete_namespaced_config_map("fg-owner", ns, propagation_policy="Foreground")
    waiting = core.read_namespaced_config_map("fg-owner", ns)
    assert waiting.metadata.deletion_timestamp is not None
    assert "foregroundDeletion" in waiting.metadata.finalizers
    module_kube_cluster.wait_for(lambda: core.read_namespaced_config_map("fg-child", ns).metadata.deletion_timestamp,
                                 what="the child to be deleted first")
    assert exists(core, ns, "fg-owner"), "the owner waits for its blocking dependent"
    core.patch_namespaced_config_map("fg-child", ns, {"metadata": {"finalizers": None}})
    module_kube_cluster.wait_for(lambda: not exists(core, ns, "fg-owner"), what="the owner to go")


def test_orphan_deletion_keeps_dependents(module_kube_cluster: LocalCluster, ns: str) -> None:
    core = client.CoreV1Api(module_kube_cluster.api_client())
    owner = core.create_namespaced_config_map(ns, configmap("o-owner"))
    core.create_namespaced_config_map(ns, owned("o-child", owner))
    core.delete_namespaced_config_map("o-owner", ns, propagation_policy="Orphan")
    module_kube_cluster.wait_for(lambda: not exists(core, ns, "o-owner"), what="the owner to go")
    assert core.read_namespaced_config_map("o-child", ns).metadata.owner_references is None


def test_dependents_of_missing_owners_are_collected(module_kube_cluster: LocalCluster, ns: str) -> None:
    core = client.CoreV1Api(module_kube_cluster.api_client())
    body = configmap("dangling")
    body["metadata"]["ownerReferences"] = [{"apiVersion": "v1", "kind": "ConfigMap", "name": "ghost",
                                            "uid": str(uuid.uuid4())}]
    core.create_namespaced_config_map(ns, body)
    module_kube_cluster.wait_for(lambda: not exists(core, ns, "dangling"), what="the orphan to be collected")


def test_custom_resource_owning_a_job(module_kube_cluster: LocalCluster, ns: str) -> None:
    """kopf.adopt-style ownership across kinds: deleting the EdgeModel removes its Job and the Job's pods."""
    module_kube_cluster.apply_crds()
    api = module_kube_cluster.api_client()
    model = client.CustomObjectsApi(api).create_namespaced_custom_object("edgemodel.io", "v1alpha1", ns, "edgemodels", {
        "apiVersion": "edgemodel.io/v1alpha1", "kind": "EdgeModel", "metadata": {"name": "m"},
        "spec": {"source": {"uri": "s3://m/x.pt", "format": "ONNX"}, "inputs": [{"name": "i", "shape": [1]}]}})
    batch = client.BatchV1Api(api)
    batch.create_namespaced_job(ns, {
        "metadata": {"name": "m-r1-convert", "ownerReferences": [{
            "apiVersion": "edgemodel.io/v1alpha1", "kind": "EdgeModel", "name": "m", "uid": model["metadata"]["uid"],
            "controller": True, "blockOwnerDeletion": True}]},
        "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [
            {"name": "c", "image": "x", "command": ["python", "-c", "import time; time.sleep(30)"]}]}}}})
    core = client.CoreV1Api(api)
    module_kube_cluster.wait_for(lambda: core.list_namespaced_pod(ns).items, what="the job's pod")
    client.CustomObjectsApi(api).delete_namespaced_custom_object("edgemodel.io", "v1alpha1", ns, "edgemodels", "m")
    module_kube_cluster.wait_for(lambda: not batch.list_namespaced_job(ns).items, what="the job to be collected")
    module_kube_cluster.wait_for(lambda: not core.list_namespaced_pod(ns).items, timeout=30,
                                 what="the pod to be stopped and collected")


def test_jobs_orphan_their_pods_by_default_over_the_api(module_kube_cluster: LocalCluster, ns: str) -> None:
    """batch/v1 keeps the legacy default (orphan) when DELETE names no propagationPolicy; kubectl
    sends Background."""
    api = module_kube_cluster.api_client()
    batch = client.BatchV1Api(api)
    core = client.CoreV1Api(api)
    job = {"metadata": {"name": "j"}, "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [
        {"name": "c", "image": "x", "command": ["python", "-c", "pass"]}]}}}}
    batch.create_namespaced_job(ns, job)
    module_kube_cluster.wait_for(lambda: core.list_namespaced_pod(ns).items, what="the job's pod")
    batch.delete_namespaced_job("j", ns)
    module_kube_cluster.wait_for(lambda: not batch.list_namespaced_job(ns).items, what="the job to go")
    pods = core.list_namespaced_pod(ns).items
    assert len(pods) == 1
    assert pods[0].metadata.owner_references is None
    batch.create_namespaced_job(ns, {**job, "metadata": {"name": "k"}})
    module_kube_cluster.wait_for(lambda: core.list_namespaced_pod(ns, label_selector="job-name=k").items,
                                 what="the second job's pod")
    module_kube_cluster.kubectl("-n", ns, "delete", "job", "k")
    module_kube_cluster.wait_for(lambda: not core.list_namespaced_pod(ns, label_selector="job-name=k").items,
                                 what="kubectl's background deletion to remove the pod")


def test_namespace_deletion_removes_its_contents(module_kube_cluster: LocalCluster, ns: str) -> None:
    core = client.CoreV1Api(module_kube_cluster.api_client())
    core.create_namespaced_config_map(ns, configmap("inside"))
    held = configmap("held")
    held["metadata"]["finalizers"] = ["test.edgemodel.io/hold"]
    core.create_namespaced_config_map(ns, held)
    core.delete_namespace(ns)
    assert core.read_namespace(ns).status.phase == "Terminating"
    with pytest.raises(ApiException) as err:
        core.create_namespaced_config_map(ns, configmap("late"))
    assert err.value.status == 403
    module_kube_cluster.wait_for(lambda: not exists(core, ns, "inside"), what="the contents to go")
    assert exists(core, ns, "held")
    core.patch_namespaced_config_map("held", ns, {"metadata": {"finalizers": None}})

    def gone() -> bool:
        try:
            core.read_namespace(ns)
            return False
        except ApiException as exc:
            return exc.status == 404

    module_kube_cluster.wait_for(gone, what="the namespace to go")


def test_delete_preconditions_and_returned_bodies(module_kube_cluster: LocalCluster, ns: str) -> None:
    created = http(module_kube_cluster, "POST", f"/api/v1/namespaces/{ns}/configmaps", configmap("pre")).json()
    wrong = http(module_kube_cluster, "DELETE", f"/api/v1/namespaces/{ns}/configmaps/pre",
                 {"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"uid": "not-the-uid"}})
    assert (wrong.status_code, wrong.json()["reason"]) == (409, "Conflict")
    right = http(module_kube_cluster, "DELETE", f"/api/v1/namespaces/{ns}/configmaps/pre",
                 {"preconditions": {"uid": created["metadata"]["uid"]}})
    assert right.status_code == 200
    assert (right.json()["kind"], right.json()["status"]) == ("Status", "Success")
