"""The cluster side of the Prometheus end-to-end test: the project's Kubernetes API emulator
(LocalCluster: API server, Job controller, kubelet running pods as local processes) with the
chart's own CRDs and its own RBAC: the real operator and a real cluster-mode agent each run under a
token holding exactly the rules of the chart's rendered ClusterRole."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from edgemodel.dev.auth import Identity, Rule
from edgemodel.dev.cluster import LocalCluster
from edgemodel.dev.net import free_port
from edgemodel.signing import generate_keypair
from tests.helm.chart import find, full, render

EDGEMODEL = [sys.executable, "-m", "edgemodel.cli"]


def chart_identity(name: str, cluster_role: str) -> Identity:
    """An emulator identity with exactly the rules of one of the chart's ClusterRoles."""
    role = find(render({}), "ClusterRole", full(cluster_role))[0]
    rules = tuple(Rule(tuple(r["verbs"]), tuple(r["apiGroups"]), tuple(r["resources"])) for r in role["rules"])
    return Identity(name, ("system:serviceaccounts",), rules)


@dataclass
class ClusterSide:
    dir: Path
    cluster: LocalCluster
    store_port: int = 0
    operator_metrics: int = 0
    operator_liveness: int = 0
    agent_port: int = 0
    node: str = ""
    procs: list[tuple[subprocess.Popen[bytes], Path]] = field(default_factory=list)

    @property
    def operator_log(self) -> Path:
        return self.dir / "operator.log"

    @property
    def agent_log(self) -> Path:
        return self.dir / "cluster-agent.log"

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = self.dir / f"{name}.log"
        proc = subprocess.Popen(argv, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=self.dir,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        self.procs.append((proc, log))
        return proc

    def close(self) -> None:
        for proc, _log in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
        self.cluster.close()


def start_cluster_side(workdir: Path) -> ClusterSide:
    """API emulator + chart CRDs + chart RBAC tokens; one cluster-mode agent; one operator replica."""
    cluster = LocalCluster(workdir / "kube", auth=True).start()
    side = ClusterSide(workdir, cluster)
    try:
        crds = [d for d in render({}) if d["kind"] == "CustomResourceDefinition"]
        (workdir / "chart-crds.yaml").write_text(yaml.safe_dump_all(crds))
        cluster.apply_crds([workdir / "chart-crds.yaml"])
        peering = find(render({}), "ClusterKopfPeering")[0]
        cluster.create({k: v for k, v in peering.items() if k != "metadata"} | {"metadata": {"name": peering["metadata"]["name"]}})
        generate_keypair(workdir / "signing" / "private.pem", workdir / "signing" / "public.pem")
        pem = (workdir / "signing" / "private.pem").read_bytes()
        cluster.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": full("signing"), "namespace": "default"},
                        "data": {"private.pem": base64.b64encode(pem).decode()}})
        token = "e2e-upload-token"
        cluster.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": full("store-token"), "namespace": "default"},
                        "data": {"token": base64.b64encode(token.encode()).decode()}})
        side.store_port = free_port()
        (workdir / "store-token").write_text(token)
        side.spawn("store", [*EDGEMODEL, *store_args(workdir, side.store_port)])
        (side.node,) = cluster.add_nodes(1, prefix="edge-c")
        agent_token = cluster.add_token(chart_identity("system:serviceaccount:edge-system:em-edgemodel-agent", "agent"))
        side.agent_port = free_port()
        side.spawn("cluster-agent", [*EDGEMODEL, "agent", "--kubeconfig", str(cluster.kubeconfig_for(agent_token, "agent")),
                                     "--node-name", side.node, "--public-key", str(workdir / "signing" / "public.pem"),
                                     "--cache-dir", str(workdir / "agent-cache"), "--host", "127.0.0.1",
                                     "--port", str(side.agent_port), "--heartbeat-interval", "1", "--threads", "1"])
        op_token = cluster.add_token(chart_identity("system:serviceaccount:edge-system:em-edgemodel-operator", "operator"))
        side.operator_metrics, side.operator_liveness = free_port(), free_port()
        venv_bin = str(Path(sys.executable).parent)
        side.spawn("operator", [*EDGEMODEL, "operator", "--kubeconfig", str(cluster.kubeconfig_for(op_token, "operator")),
                                "--peering", peering["metadata"]["name"],
                                "--store-url", f"http://127.0.0.1:{side.store_port}", "--store-token-secret", full("store-token"),
                                "--converter-image", "edgemodel-convert:dev", "--signing-key-secret", full("signing"),
                                "--converter-backoff-limit", "0", "--metrics-port", str(side.operator_metrics),
                                "--liveness-port", str(side.operator_liveness), "--resync-seconds", "2"],
                   env={"PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"})
    except BaseException:
        side.close()
        raise
    return side


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
