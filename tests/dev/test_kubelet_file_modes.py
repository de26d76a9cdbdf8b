"""The local kubelet models who a container runs as and the owner/mode of its Secret and ConfigMap
files (defaultMode, items[].mode, fsGroup, runAsUser/runAsGroup, runAsNonRoot + the image's USER):
a file a real node would not let the container read is unreadable for the local process too."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes import client

from edgemodel_dev.cluster import LocalCluster
from edgemodel_dev.fileaccess import Identity, container_identity, file_mode
from edgemodel_dev.podenv import ContainerConfigError
from tests.dev.pods import fresh_namespace, wait_phase

READ = r"""
import json, os, pathlib, sys
out = []
for p in sys.argv[1:]:  # the container paths, rewritten by the kubelet to the volume's local folder
    try:
        out.append(pathlib.Path(p).read_text())
    except PermissionError as exc:
        out.append(f"denied: {exc.strerror}")
pathlib.Path(os.environ["EDGEMODEL_TERMINATION_LOG"]).write_text(json.dumps(out))
"""


@pytest.fixture(scope="module")
def cluster(module_kube_cluster: LocalCluster) -> LocalCluster:
    return module_kube_cluster


@pytest.fixture
def ns(cluster: LocalCluster) -> str:
    name = fresh_namespace(cluster, "fm")
    core = client.CoreV1Api(cluster.api_client())
    core.create_namespaced_secret(ns_body := name, {"metadata": {"name": "key"},
                                                    "stringData": {"private.pem": "KEY", "other": "O"}})
    core.create_namespaced_config_map(ns_body, {"metadata": {"name": "cfg"}, "data": {"a": "A"}})
    return name


def run_reader(cluster: LocalCluster, ns: str, name: str, *, pod_sc: dict[str, Any],
               volume: dict[str, Any], files: list[str], container_sc: dict[str, Any] | None = None) -> Any:
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns}, "spec": {
        "restartPolicy": "Never", "securityContext": pod_sc,
        "volumes": [{"name": "v", **volume}],
        "containers": [{"name": "main", "image": "edgemodel:dev", "command": ["python", "-c", READ], "args": files,
                        "securityContext": container_sc or {},
                        "volumeMounts": [{"name": "v", "mountPath": "/mnt/v", "readOnly": True}]}]}}
    cluster.create(body)
    pod = wait_phase(cluster, ns, name)
    state = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    if not state.get("message", "").startswith("["):
        return state
    return dict(zip(files, json.loads(state["message"]), strict=True))


SECRET_0400 = {"secret": {"secretName": "key", "defaultMode": 0o400}}


def test_a_0400_secret_without_fsgroup_is_unreadable_for_a_non_root_user(cluster: LocalCluster, ns: str) -> None:
    out = run_reader(cluster, ns, "no-fsgroup", pod_sc={"runAsUser": 10001, "runAsGroup": 10001},
                     volume=SECRET_0400, files=["/mnt/v/private.pem"])
    assert out["/mnt/v/private.pem"] == "denied: Permission denied"


def test_fsgroup_makes_the_secret_group_readable(cluster: LocalCluster, ns: str) -> None:
    out = run_reader(cluster, ns, "fsgroup", pod_sc={"runAsUser": 10001, "fsGroup": 2000},
                     volume=SECRET_0400, files=["/mnt/v/private.pem", "/mnt/v/other"])
    assert out == {"/mnt/v/private.pem": "KEY", "/mnt/v/other": "O"}


def test_run_as_non_root_without_a_user_runs_as_the_images_user(cluster: LocalCluster, ns: str) -> None:
    """The operator's conversion Job before the fix: runAsNonRoot, no runAsUser, 0400, no fsGroup."""
    out = run_reader(cluster, ns, "image-user", pod_sc={"runAsNonRoot": True}, volume=SECRET_0400,
                     files=["/mnt/v/private.pem"])
    assert out["/mnt/v/private.pem"] == "denied: Permission denied"


def test_items_mode_and_configmaps(cluster: LocalCluster, ns: str) -> None:
    volume = {"secret": {"secretName": "key", "defaultMode": 0o400,
                         "items": [{"key": "private.pem", "path": "k"}, {"key": "other", "path": "o", "mode": 0o444}]}}
    out = run_reader(cluster, ns, "items", pod_sc={"runAsUser": 10001}, volume=volume,
                     files=["/mnt/v/k", "/mnt/v/o"])
    assert out == {"/mnt/v/k": "denied: Permission denied", "/mnt/v/o": "O"}
    cm = run_reader(cluster, ns, "cm", pod_sc={"runAsUser": 10001},
                    volume={"configMap": {"name": "cfg", "defaultMode": 0o600}}, files=["/mnt/v/a"])
    assert cm == {"/mnt/v/a": "denied: Permission denied"}
    default = run_reader(cluster, ns, "cm-default", pod_sc={"runAsUser": 10001},
                         volume={"configMap": {"name": "cfg"}}, files=["/mnt/v/a"])
    assert default == {"/mnt/v/a": "A"}


def test_root_reads_everything_and_non_root_policy_refuses_uid_0(cluster: LocalCluster, ns: str) -> None:
    out = run_reader(cluster, ns, "root", pod_sc={}, volume=SECRET_0400, files=["/mnt/v/private.pem"])
    assert out == {"/mnt/v/private.pem": "KEY"}
    refused = run_reader(cluster, ns, "refused", pod_sc={"runAsNonRoot": True}, container_sc={"runAsUser": 0},
                         volume=SECRET_0400, files=["/mnt/v/private.pem"])
    assert refused["reason"] == "CreateContainerConfigError"
    assert "runAsUser breaks non-root policy" in refused["message"]


def test_identity_and_mode_rules() -> None:
    """The rules themselves (kubelet: roMask 0440 with fsGroup; primary group from runAsGroup or the image)."""
    root = Identity(0, 0)
    pod: dict[str, Any] = {"metadata": {"name": "p"}, "spec": {"securityContext": {
        "runAsUser": 10001, "fsGroup": 3000, "supplementalGroups": [4000]}}}
    ident = container_identity(pod, {"name": "c", "securityContext": {"runAsGroup": 5000}}, root)
    assert ident == Identity(10001, 5000, (3000, 4000))
    assert container_identity({"metadata": {}, "spec": {}}, {"name": "c"}, root) == root
    volume = {"name": "v", "secret": {"secretName": "s", "defaultMode": 0o400, "items": [{"key": "a", "path": "a",
                                                                                        "mode": 0o600}]}}
    assert file_mode(pod, volume, "a") == 0o640
    assert file_mode(pod, volume, "b") == 0o440
    assert file_mode({"spec": {}}, volume, "b") == 0o400
    assert ident.can_read(0, 3000, 0o440)
    assert not ident.can_read(0, 0, 0o440)
    assert ident.can_read(0, 0, 0o444)
    with pytest.raises(ContainerConfigError, match="non-root"):
        container_identity({"metadata": {"name": "p"}, "spec": {"securityContext": {"runAsNonRoot": True}}},
                           {"name": "c", "securityContext": {"runAsUser": 0}}, root)
