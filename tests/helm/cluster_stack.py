"""The cluster side of the Prometheus end-to-end test: the project's Kubernetes API emulator
(LocalCluster: API server, Job controller, kubelet running pods as local processes) with the
chart's own CRDs and its own RBAC: the real operator and a real cluster-mode agent each run under a
token holding exactly the rules of the chart's rendered ClusterRole. Built on the shared
``edgemodel_dev.demo.stack.SystemStack``; only the chart-specific parts live here."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import yaml

from edgemodel_dev.auth import Identity, Rule
from edgemodel_dev.demo.stack import EDGEMODEL, SystemStack
from edgemodel_dev.net import free_port
from tests.helm.chart import find, full, render

STORE_TOKEN = "e2e-upload-token"


RELEASE_NAMESPACE = "edge-system"
"""Where the chart is rendered (tests/helm/chart.py): the Roles for the heartbeat Leases live there."""


def chart_identity(name: str, cluster_role: str, lease_role: str) -> Identity:
    """An emulator identity with exactly the rules of one of the chart's ClusterRoles and of its Lease Role
    (limited to the Role's namespace, as a RoleBinding is)."""
    docs = render({})
    role = find(docs, "ClusterRole", full(cluster_role))[0]
    rules = [Rule(tuple(r["verbs"]), tuple(r["apiGroups"]), tuple(r["resources"])) for r in role["rules"]]
    [namespaced] = find(docs, "Role", full(lease_role))
    assert namespaced["metadata"]["namespace"] == RELEASE_NAMESPACE
    rules += [Rule(tuple(r["verbs"]), tuple(r["apiGroups"]), tuple(r["resources"]), namespaces=(RELEASE_NAMESPACE,))
              for r in namespaced["rules"]]
    return Identity(name, ("system:serviceaccounts",), tuple(rules))


class ClusterSide(SystemStack):
    """The shared ``SystemStack`` with the chart's CRDs, Secrets, store args and RBAC tokens."""

    signing_secret = full("signing")

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.operator_metrics = free_port()
        self.operator_liveness = free_port()
        self.agent_port = free_port()
        self.node = ""
        self.peering = find(render({}), "ClusterKopfPeering")[0]

    @property
    def operator_log(self) -> Path:
        return self.procs.log_path("operator")

    @property
    def agent_log(self) -> Path:
        return self.procs.log_path("cluster-agent")

    def apply_crds(self) -> None:
        """The chart's CRDs and its ClusterKopfPeering."""
        crds = [d for d in render({}) if d["kind"] == "CustomResourceDefinition"]
        (self.dir / "chart-crds.yaml").write_text(yaml.safe_dump_all(crds))
        self.cluster.apply_crds([self.dir / "chart-crds.yaml"])
        peering = self.peering
        self.cluster.create({k: v for k, v in peering.items() if k != "metadata"}
                            | {"metadata": {"name": peering["metadata"]["name"]}})

    def start_control_plane(self) -> None:
        """The shared control plane plus the store's upload token (Secret and file)."""
        super().start_control_plane()
        self.cluster.create({"apiVersion": "v1", "kind": "Secret",
                             "metadata": {"name": full("store-token"), "namespace": "default"},
                             "data": {"token": base64.b64encode(STORE_TOKEN.encode()).decode()}})
        (self.dir / "store-token").write_text(STORE_TOKEN)

    def store_args(self) -> list[str]:
        return store_args(self.dir, self.store_port)

    def start(self) -> None:
        """API emulator + chart CRDs + chart RBAC tokens; one cluster-mode agent; one operator replica."""
        self.start_control_plane()
        self.start_store()
        self.nodes = self.cluster.add_nodes(1, prefix="edge-c")
        self.node = self.nodes[0]
        self.cluster.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": RELEASE_NAMESPACE}})
        agent_token = self.cluster.add_token(
            chart_identity("system:serviceaccount:edge-system:em-edgemodel-agent", "agent", "agent-lease"))
        self.procs.start("cluster-agent", [
            EDGEMODEL, "agent", "--kubeconfig", str(self.cluster.kubeconfig_for(agent_token, "agent")),
            "--node-name", self.node, "--public-key", str(self.public_key),
            "--cache-dir", str(self.dir / "agent-cache"), "--host", "127.0.0.1",
            "--port", str(self.agent_port), "--heartbeat-interval", "1", "--threads", "1",
            "--lease-namespace", RELEASE_NAMESPACE,
        ], env={"PYTHONUNBUFFERED": "1"})
        op_token = self.cluster.add_token(
            chart_identity("system:serviceaccount:edge-system:em-edgemodel-operator", "operator", "operator-leases"))
        self.run_operator("operator", self.operator_metrics, self.operator_liveness, [
            "--peering", self.peering["metadata"]["name"], "--store-token-secret", full("store-token"),
            "--lease-namespace", RELEASE_NAMESPACE,
            "--converter-backoff-limit", "0", "--resync-seconds", "2",
        ], kubeconfig=self.cluster.kubeconfig_for(op_token, "operator"))


def store_args(workdir: Path, port: int) -> list[str]:
    """The chart's store container args, with local paths and 127.0.0.1 in place of the pod's."""
    dep = find(render({}), "Deployment", full("store"))[0]
    args = list(dep["spec"]["template"]["spec"]["containers"][0]["args"])
    swap = {"/data": str(workdir / "store"), "0.0.0.0": "127.0.0.1", "8081": str(port),
            "/var/run/edgemodel/store-token/token": str(workdir / "store-token")}
    assert set(swap) <= set(args), args
    return [swap.get(a, a) for a in args]


def broken_edgemodel() -> dict[str, Any]:
    """An EdgeModel whose source file does not exist: its conversion Job fails (SourceUnreadable)."""
    return {
        "apiVersion": "edgemodel.io/v1alpha1", "kind": "EdgeModel",
        "metadata": {"name": "missing", "namespace": "default"},
        "spec": {"source": {"uri": "file:///nonexistent/edgemodel-e2e/model.pt", "format": "TorchScript"},
                 "inputs": [{"name": "input", "dtype": "float32", "shape": [-1, 16]}],
                 "rollout": {"strategy": "AllAtOnce"}},
    }
