"""The demo's system as real processes on one machine.

The Kubernetes API emulator with its kubelet (conversion Jobs run as local processes), the
artifact store, one edge agent per simulated k3s edge node (each with a token that reaches only
its own EdgeAgent), the operator, and a real Prometheus scraping the agents and the operator.
"""

from __future__ import annotations

import base64
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from edgemodel.demo.processes import ProcessGroup, wait_http
from edgemodel.demo.prometheus import Prometheus, find_prometheus
from edgemodel.dev.cluster import LocalCluster
from edgemodel.dev.net import free_port
from edgemodel.signing import generate_keypair

EM = ("edgemodel.io/v1alpha1", "EdgeModel")
EA = ("edgemodel.io/v1alpha1", "EdgeAgent")
BIN = Path(sys.executable).parent
EDGEMODEL = str(BIN / "edgemodel")

# Three edge nodes with different labels: two shops and a warehouse with a bigger box.
NODES: list[dict[str, Any]] = [
    {"sites": ["shop-north"], "labels": {"edgemodel.io/tier": "standard"}, "cpu": "2", "memory": "4Gi"},
    {"sites": ["shop-south"], "labels": {"edgemodel.io/tier": "standard"}, "cpu": "2", "memory": "4Gi"},
    {"sites": ["warehouse"], "labels": {"edgemodel.io/tier": "large"}, "cpu": "8", "memory": "16Gi"},
]


class DemoStack:
    """Start with :meth:`start`; :meth:`close` stops everything it started."""

    def __init__(self, workdir: Path, with_prometheus: bool = True) -> None:
        self.dir = workdir
        self.procs = ProcessGroup(workdir / "logs")
        self.cluster = LocalCluster(workdir / "kube", auth=True)
        self.store_port = free_port()
        self.metrics_port = free_port()
        self.liveness_port = free_port()
        self.with_prometheus = with_prometheus
        self.prometheus: Prometheus | None = None
        self.prometheus_note = ""
        self.nodes: list[str] = []

    @property
    def store_url(self) -> str:
        return f"http://127.0.0.1:{self.store_port}"

    def start_control_plane(self) -> None:
        """API emulator + kubelet, CRDs, the signing key pair and its Secret."""
        cluster = self.cluster.start()
        cluster.apply_crds()
        generate_keypair(self.dir / "signing" / "private.pem", self.dir / "signing" / "public.pem")
        pem = (self.dir / "signing" / "private.pem").read_bytes()
        cluster.apply({"apiVersion": "v1", "kind": "Secret",
                       "metadata": {"name": "edgemodel-signing", "namespace": "default"},
                       "data": {"private.pem": base64.b64encode(pem).decode()}})

    def start_store(self) -> None:
        proc = self.procs.start("store", [EDGEMODEL, "store", "--root", str(self.dir / "store"),
                                          "--port", str(self.store_port)])
        wait_http(f"{self.store_url}/healthz", 30, proc, self.procs.log_path("store"))

    def start_agents(self) -> None:
        """One Node per entry of NODES and an agent process on each."""
        for node in NODES:
            self.nodes += self.cluster.add_nodes(1, sites=node["sites"], labels=node["labels"],
                                                 cpu=node["cpu"], memory=node["memory"])
        self.cluster.run_on_nodes([
            "sh", "-c",
            f'exec {EDGEMODEL} agent --kubeconfig "$KUBECONFIG" --public-key {self.dir / "signing" / "public.pem"} '
            '--cache-dir "$EDGEMODEL_NODE_DIR/cache" --port 0 --heartbeat-interval 2 --threads 1 --workers 1',
        ])
        deadline = time.monotonic() + 90
        while len(self.endpoints()) < len(NODES):
            if time.monotonic() > deadline:
                log = self.cluster.state_dir / "nodes" / self.nodes[0] / "process.log"
                raise TimeoutError(f"the edge agents did not register within 90 s; see {log}")
            time.sleep(0.3)

    def start_prometheus(self) -> None:
        """A real Prometheus scraping the agents and the operator, when it is installed."""
        if not self.with_prometheus:
            self.prometheus_note = "Prometheus disabled (--no-prometheus)"
            return
        binary = find_prometheus(Path(__file__).resolve().parents[2] / ".tools" / "bin")
        if binary is None:
            self.prometheus_note = ("Prometheus is not installed (run `make tools` as root to install it from "
                                    "Debian); continuing without it: the operator analyses agent status instead")
            return
        prom = Prometheus(binary, self.dir / "prometheus", self.procs)
        prom.start({
            "edgemodel-agents": [e.removeprefix("http://") for e in self.endpoints()],
            "edgemodel-operator": [f"127.0.0.1:{self.metrics_port}"],
        })
        self.prometheus = prom

    def start_operator(self) -> None:
        argv = [
            EDGEMODEL, "operator", "--kubeconfig", str(self.cluster.kubeconfig), "--standalone",
            "--store-url", self.store_url, "--converter-image", "edgemodel-convert:dev",
            "--signing-key-secret", "edgemodel-signing", "--converter-backoff-limit", "1",
            "--metrics-port", str(self.metrics_port), "--liveness-port", str(self.liveness_port),
            "--heartbeat-timeout-seconds", "20", "--resync-seconds", "3",
        ]
        if self.prometheus is not None:
            argv += ["--prometheus-url", self.prometheus.url]
        env = {"PYTHONUNBUFFERED": "1", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        proc = self.procs.start("operator", argv, env=env)
        wait_http(f"http://127.0.0.1:{self.liveness_port}/healthz", 60, proc, self.procs.log_path("operator"))

    def start(self) -> None:
        self.start_control_plane()
        self.start_store()
        self.start_agents()
        self.start_prometheus()
        self.start_operator()

    def close(self) -> None:
        self.procs.stop_all()
        self.cluster.close()

    # reading -------------------------------------------------------------------------------
    def edgemodel(self, name: str) -> dict[str, Any] | None:
        return self.cluster.get(*EM, name, "default")

    def agents(self) -> list[dict[str, Any]]:
        return self.cluster.list_objects(*EA)

    def endpoints(self) -> list[str]:
        return sorted(a["status"]["endpoint"] for a in self.agents() if (a.get("status") or {}).get("endpoint"))

    def apply(self, doc: dict[str, Any], file_name: str) -> str:
        """``kubectl apply -f`` a manifest written into the demo folder."""
        path = self.dir / file_name
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return self.cluster.kubectl("apply", "-f", str(path)).stdout.strip()
