"""The chart itself, installed, upgraded and uninstalled by the real helm (v4) against the emulator.

What this asserts: helm's whole client path works against the emulated API (discovery, OpenAPI v3
for its validation, server-side apply, the release Secret, the post-install hook); every object
of the chart exists afterwards with the chart's values; the emulator's apps/v1 controllers create
the owned Pods (the operator and store Deployments' replicas, one agent Pod per edge node of the
DaemonSet) and replace or remove them on upgrade and uninstall. What it does not assert: that those
Pods become Ready. The local kubelet runs a container's ``command`` as a process and has no images,
and the chart's containers rely on their image's entrypoint, so they crash-loop here; the chart's
programs run for real in test_prometheus_e2e.py. The signing-key hook Job is off (keys given as
values) because a Pod of the local kubelet has no in-cluster service-account token to run it with.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgemodel_dev.cluster import LocalCluster
from edgemodel_dev.polling import wait_until
from tests.conftest import require_tool
from tests.helm.chart import CHART, NAMESPACE, RELEASE, SWITCHES

VALUES = SWITCHES["signing-keys-given"]


def helm(cluster: LocalCluster, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, KUBECONFIG=str(cluster.kubeconfig), HOME=str(cluster.state_dir),
               HELM_CACHE_HOME=str(cluster.state_dir / "helm-cache"))
    result = subprocess.run([str(require_tool("helm")), *args], capture_output=True, text=True, env=env,
                            timeout=300, check=False)
    if check:
        assert result.returncode == 0, f"helm {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


def get(cluster: LocalCluster, *args: str) -> Any:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def owned_pods(cluster: LocalCluster, kind: str, name: str) -> list[dict[str, Any]]:
    pods = get(cluster, "pods", "-n", NAMESPACE)["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp") and any(
        r["kind"] == kind and r["name"] == name and r.get("controller")
        for r in p["metadata"].get("ownerReferences") or [])]


@pytest.fixture
def cluster(kube_cluster: LocalCluster, tmp_path: Path) -> LocalCluster:
    require_tool("kubectl")
    kube_cluster.add_nodes(2)
    return kube_cluster


def test_helm_installs_upgrades_and_uninstalls_the_chart(cluster: LocalCluster, tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(VALUES))
    full = f"{RELEASE}-edgemodel"
    helm(cluster, "install", RELEASE, str(CHART), "-n", NAMESPACE, "--create-namespace", "-f", str(values))

    status = json.loads(helm(cluster, "status", RELEASE, "-n", NAMESPACE, "-o", "json").stdout)
    assert (status["info"]["status"], status["version"]) == ("deployed", 1)
    for crd in ("edgemodels.edgemodel.io", "edgeagents.edgemodel.io", "clusterkopfpeerings.kopf.dev"):
        conditions = {c["type"]: c["status"] for c in get(cluster, "crd", crd)["status"]["conditions"]}
        assert conditions["Established"] == "True"
    assert get(cluster, "clusterkopfpeering", "edgemodel")["metadata"]["name"] == "edgemodel", "post-install hook"
    for kind, name in (("clusterrole", f"{full}-operator"), ("clusterrolebinding", f"{full}-agent"),
                       ("validatingadmissionpolicy", f"{full}-agent-own-edgeagent"),
                       ("validatingadmissionpolicybinding", f"{full}-agent-own-edgeagent")):
        assert get(cluster, kind, name)["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
    namespaced = {f"{i['kind']}/{i['metadata']['name']}" for i in get(
        cluster, "deploy,ds,svc,sa,secret,cm,netpol,pdb,pvc", "-n", NAMESPACE)["items"]}
    assert {f"Deployment/{full}-operator", f"Deployment/{full}-store", f"DaemonSet/{full}-agent",
            f"NetworkPolicy/{full}-agent", f"PodDisruptionBudget/{full}-operator", f"Secret/{full}-signing",
            f"ConfigMap/{full}-signing-public", f"ServiceAccount/{full}-agent", f"Service/{full}-store",
            f"PersistentVolumeClaim/{full}-store", f"Secret/sh.helm.release.v1.{RELEASE}.v1"} <= namespaced
    # helm applied server-side: its field manager owns what it set
    deploy = json.loads(cluster.kubectl("get", "deploy", f"{full}-operator", "-n", NAMESPACE, "-o", "json",
                                        "--show-managed-fields").stdout)
    assert "helm" in {m["manager"] for m in deploy["metadata"]["managedFields"]}

    # the apps/v1 controllers: Deployment replicas and one agent Pod per edge node
    assert wait_until("2 operator pods", lambda: len(owned_pods(cluster, "Deployment", f"{full}-operator")) == 2, 30)
    assert wait_until("1 store pod", lambda: len(owned_pods(cluster, "Deployment", f"{full}-store")) == 1, 30)
    agents = wait_until("2 agent pods", lambda: (p := owned_pods(cluster, "DaemonSet", f"{full}-agent"))
                        and len(p) == 2 and p, 30)
    assert sorted(p["spec"]["nodeName"] for p in agents) == ["edge-0", "edge-1"]
    ds = get(cluster, "ds", f"{full}-agent", "-n", NAMESPACE)
    assert (ds["status"]["desiredNumberScheduled"], ds["status"]["currentNumberScheduled"]) == (2, 2)
    assert ds["status"]["observedGeneration"] == ds["metadata"]["generation"]
    deploy = get(cluster, "deploy", f"{full}-operator", "-n", NAMESPACE)
    assert (deploy["status"]["replicas"], deploy["status"]["observedGeneration"]) == (2, 1)

    # upgrade: three operator replicas, a new pod template for the agents
    old_agents = {p["metadata"]["uid"] for p in agents}
    helm(cluster, "upgrade", RELEASE, str(CHART), "-n", NAMESPACE, "-f", str(values),
         "--set", "operator.replicas=3", "--set", "agent.image.tag=v2")
    status = json.loads(helm(cluster, "status", RELEASE, "-n", NAMESPACE, "-o", "json").stdout)
    assert (status["info"]["status"], status["version"]) == ("deployed", 2)
    assert get(cluster, "deploy", f"{full}-operator", "-n", NAMESPACE)["spec"]["replicas"] == 3
    assert wait_until("3 operator pods", lambda: len(owned_pods(cluster, "Deployment", f"{full}-operator")) == 3, 30)
    renewed = wait_until("new agent pods", lambda: (p := owned_pods(cluster, "DaemonSet", f"{full}-agent"))
                         and len(p) == 2 and not {x["metadata"]["uid"] for x in p} & old_agents and p, 30)
    assert sorted(p["spec"]["nodeName"] for p in renewed) == ["edge-0", "edge-1"]

    # uninstall: helm's objects go, their pods are garbage-collected, the CRDs stay (crds.keep)
    helm(cluster, "uninstall", RELEASE, "-n", NAMESPACE, "--wait", "--timeout", "120s")
    left = get(cluster, "deploy,ds,secret,netpol,pdb", "-n", NAMESPACE)["items"]
    assert [f"{i['kind']}/{i['metadata']['name']}" for i in left] == [], left
    assert wait_until("pods collected", lambda: get(cluster, "pods", "-n", NAMESPACE)["items"] == [], 60) is True
    assert cluster.kubectl("get", "clusterrole", f"{full}-operator", check=False).returncode != 0
    assert get(cluster, "crd", "edgemodels.edgemodel.io")["metadata"]["name"] == "edgemodels.edgemodel.io"
    assert helm(cluster, "status", RELEASE, "-n", NAMESPACE, check=False).returncode != 0


def test_helm_validation_rejects_an_unknown_field(cluster: LocalCluster, tmp_path: Path) -> None:
    """The served OpenAPI v3 / strict field validation catch a typo in a chart."""
    chart = tmp_path / "typo"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: typo\nversion: 0.1.0\n")
    (chart / "templates" / "deploy.yaml").write_text(yaml.safe_dump({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "typo"},
        "spec": {"replicaz": 2, "selector": {"matchLabels": {"app": "typo"}},
                 "template": {"metadata": {"labels": {"app": "typo"}},
                              "spec": {"containers": [{"name": "c", "image": "x", "command": ["sleep", "60"]}]}}}}))
    result = helm(cluster, "install", "typo", str(chart), "-n", "default", check=False)
    assert result.returncode != 0
    assert "replicaz" in result.stderr, result.stderr
    assert get(cluster, "deploy", "-n", "default")["items"] == []
