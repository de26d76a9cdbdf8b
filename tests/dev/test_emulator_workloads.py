"""apps/v1 Deployments and DaemonSets: the emulator's controllers create the owned Pods the kubelet runs."""

from __future__ import annotations

from typing import Any

from edgemodel_dev.cluster import LocalCluster

JSON = dict[str, Any]


def template(app: str, **spec: Any) -> JSON:
    return {"metadata": {"labels": {"app": app}},
            "spec": {"containers": [{"name": "c", "image": "local", "command": ["sleep", "300"]}], **spec}}


def owned(cluster: LocalCluster, kind: str, name: str) -> list[JSON]:
    return [p for p in cluster.list_objects("v1", "pods", "default")
            if not p["metadata"].get("deletionTimestamp")
            and any(r["kind"] == kind and r["name"] == name for r in p["metadata"].get("ownerReferences") or [])]


def test_deployment_keeps_its_replicas_of_the_current_template(kube_cluster: LocalCluster) -> None:
    kube_cluster.create({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "default"},
                         "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}}, "template": template("web")}})
    pods = kube_cluster.wait_for(lambda: (p := owned(kube_cluster, "Deployment", "web")) and len(p) == 3 and p,
                                 what="3 pods")
    assert len({p["metadata"]["labels"]["pod-template-hash"] for p in pods}) == 1
    running = kube_cluster.wait_for(
        lambda: (d := kube_cluster.get("apps/v1", "Deployment", "web", "default"))
        and d["status"].get("readyReplicas") == 3 and d, what="3 ready replicas", timeout=60)
    assert running["status"]["observedGeneration"] == 1
    assert {c["type"]: c["status"] for c in running["status"]["conditions"]} == {"Available": "True",
                                                                                "Progressing": "True"}
    # scale down, then a new template replaces every pod
    deploy = kube_cluster.get("apps/v1", "Deployment", "web", "default")
    assert deploy is not None
    deploy["spec"]["replicas"] = 1
    kube_cluster.apply(deploy)
    kube_cluster.wait_for(lambda: len(owned(kube_cluster, "Deployment", "web")) == 1, what="1 pod")
    old = {p["metadata"]["uid"] for p in owned(kube_cluster, "Deployment", "web")}
    deploy = kube_cluster.get("apps/v1", "Deployment", "web", "default")
    assert deploy is not None
    deploy["spec"]["template"]["metadata"]["annotations"] = {"restartedAt": "now"}
    kube_cluster.apply(deploy)
    new = kube_cluster.wait_for(lambda: (p := owned(kube_cluster, "Deployment", "web")) and len(p) == 1
                                and p[0]["metadata"]["uid"] not in old and p, what="a pod of the new template")
    assert new[0]["metadata"]["annotations"] == {"restartedAt": "now"}
    # deleting the Deployment garbage-collects its pods
    kube_cluster.delete("apps/v1", "Deployment", "web", "default")
    kube_cluster.wait_for(lambda: owned(kube_cluster, "Deployment", "web") == [], what="pods collected")


def test_daemonset_runs_one_pod_per_matching_tolerated_node(kube_cluster: LocalCluster) -> None:
    kube_cluster.add_nodes(2)
    tainted = kube_cluster.add_nodes(1, prefix="tainted-")[0]
    node = kube_cluster.get("v1", "Node", tainted)
    assert node is not None
    node["spec"]["taints"] = [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]
    kube_cluster.apply(node)
    kube_cluster.create({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent", "namespace": "default"},
                         "spec": {"selector": {"matchLabels": {"app": "agent"}},
                                  "template": template("agent", nodeSelector={"node-role.kubernetes.io/edge": "true"})}})
    pods = kube_cluster.wait_for(lambda: (p := owned(kube_cluster, "DaemonSet", "agent")) and len(p) == 2 and p,
                                 what="2 pods")
    assert sorted(p["spec"]["nodeName"] for p in pods) == ["edge-0", "edge-1"], "not the control plane or the tainted node"
    # a toleration lets it onto the tainted node; a new node gets its pod
    ds = kube_cluster.get("apps/v1", "DaemonSet", "agent", "default")
    assert ds is not None
    ds["spec"]["template"]["spec"]["tolerations"] = [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}]
    kube_cluster.apply(ds)
    kube_cluster.add_nodes(1, prefix="late-")
    pods = kube_cluster.wait_for(lambda: (p := owned(kube_cluster, "DaemonSet", "agent")) and len(p) == 4 and p,
                                 what="4 pods")
    assert sorted(p["spec"]["nodeName"] for p in pods) == ["edge-0", "edge-1", "late-0", tainted]
    status = kube_cluster.wait_for(
        lambda: (d := kube_cluster.get("apps/v1", "DaemonSet", "agent", "default"))
        and d["status"].get("numberReady") == 4 and d["status"], what="4 ready", timeout=60)
    assert (status["desiredNumberScheduled"], status["currentNumberScheduled"], status["observedGeneration"]) == (4, 4, 2)
