"""The system as real processes on one machine, for the demo and the end-to-end tests.

:class:`SystemStack` starts the shared pieces: the Kubernetes API emulator with its kubelet
(conversion Jobs run as local processes) with token auth, the CRDs and the signing Secret, the
artifact store, edge agents on simulated nodes (each with a token that reaches only its own
EdgeAgent) and operator processes. :class:`DemoStack` is what ``make demo`` runs: three labelled
edge nodes, a cloud node whose agent serves split tails over mTLS, the operator as admin, and a
real Prometheus scraping the agents and the operator.
"""

from __future__ import annotations

import base64
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self, TypeVar

import yaml

from edgemodel.signing import generate_keypair
from edgemodel.split.devpki import make_pki
from edgemodel_dev.cluster import LocalCluster
from edgemodel_dev.demo.processes import Process, ProcessGroup, wait_http
from edgemodel_dev.demo.prometheus import Prometheus, find_prometheus
from edgemodel_dev.net import free_port
from edgemodel_dev.polling import log_tail, wait_until

T = TypeVar("T")

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
CLOUD_NODE: dict[str, Any] = {"sites": ["cloud"], "labels": {"edgemodel.io/tier": "cloud"}, "cpu": "16", "memory": "64Gi"}


class SystemStack:
    """The pieces every stack starts; a subclass's :meth:`start` picks and configures them.

    Child processes log to ``<workdir>/logs/<name>.log``, node agents to
    ``<workdir>/kube/nodes/<node>/process.log``. ``with Stack(dir) as s:`` starts and closes.
    """

    signing_secret = "edgemodel-signing"

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.procs = ProcessGroup(workdir / "logs")
        self.cluster = LocalCluster(workdir / "kube", auth=True)
        self.store_port = free_port()
        self.nodes: list[str] = []

    @property
    def store_url(self) -> str:
        return f"http://127.0.0.1:{self.store_port}"

    @property
    def public_key(self) -> Path:
        return self.dir / "signing" / "public.pem"

    # lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Stop every process (newest first), then the cluster with its node processes and pods; idempotent."""
        try:
            self.procs.stop_all()
        finally:
            self.cluster.close()

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # starting ------------------------------------------------------------------------------
    def apply_crds(self) -> None:
        """The project's CRDs (``crds/``)."""
        self.cluster.apply_crds()

    def start_control_plane(self) -> None:
        """API emulator + kubelet, CRDs, the signing key pair and its Secret."""
        cluster = self.cluster.start()
        self.apply_crds()
        generate_keypair(self.dir / "signing" / "private.pem", self.public_key)
        pem = (self.dir / "signing" / "private.pem").read_bytes()
        cluster.apply({"apiVersion": "v1", "kind": "Secret",
                       "metadata": {"name": self.signing_secret, "namespace": "default"},
                       "data": {"private.pem": base64.b64encode(pem).decode()}})

    def store_args(self) -> list[str]:
        """Arguments of ``edgemodel`` for the artifact store."""
        return ["store", "--root", str(self.dir / "store"), "--port", str(self.store_port)]

    def start_store(self) -> None:
        proc = self.procs.start("store", [EDGEMODEL, *self.store_args()])
        wait_http(f"{self.store_url}/healthz", 30, proc, proc.log)

    def agent_command(self, extra: str = "") -> list[str]:
        """The agent for ``run_on_nodes``: the node's own kubeconfig, any port, a 2 s heartbeat; ``extra`` flags appended."""
        return ["sh", "-c",
                f'exec {EDGEMODEL} agent --kubeconfig "$KUBECONFIG" --public-key {self.public_key} '
                '--cache-dir "$EDGEMODEL_NODE_DIR/cache" --port 0 --heartbeat-interval 2 --threads 1 --workers 1'
                + extra]

    def wait_for_agents(self, count: int, timeout: float) -> None:
        """Until ``count`` EdgeAgents report an endpoint."""
        log = self.cluster.state_dir / "nodes" / self.nodes[0] / "process.log"
        wait_until(f"{count} edge agents to register", lambda: len(self.endpoints()) >= count, timeout,
                   interval=0.3, explain=lambda: log_tail(log))

    def put_on_node(self, node: str, path: str, source: Path) -> Path:
        """Copy ``source`` to the absolute ``path`` on ``node``'s file system (what a hostPath volume there sees)."""
        dest = self.cluster.kubelet.hostpath_root(node) / path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(source.read_bytes())
        return dest

    def run_operator(self, name: str, metrics_port: int, liveness_port: int, args: list[str],
                     kubeconfig: Path | None = None, verbose: bool = False,
                     env: dict[str, str] | None = None) -> Process:
        """``edgemodel operator`` as ``name`` (admin unless ``kubeconfig``) with ``args`` added and ``env`` set; waits
        for its liveness probe."""
        argv = [
            EDGEMODEL, *(["-v"] if verbose else []), "operator",
            "--kubeconfig", str(kubeconfig or self.cluster.kubeconfig),
            "--store-url", self.store_url, "--converter-image", "edgemodel-convert:dev",
            "--signing-key-secret", self.signing_secret,
            "--metrics-port", str(metrics_port), "--liveness-port", str(liveness_port), *args,
        ]
        env = {"PYTHONUNBUFFERED": "1", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **(env or {})}
        proc = self.procs.start(name, argv, env=env)
        wait_http(f"http://127.0.0.1:{liveness_port}/healthz", 60, proc, proc.log)
        return proc

    def wait_for(self, what: str, check: Callable[[], T | None], timeout: float,
                 detail: Callable[[], str] | None = None) -> T:
        """Poll ``check`` until it returns something truthy; on timeout fail with ``detail()`` and every log's end."""
        def explain() -> str:
            logs = sorted((self.dir / "logs").glob("*.log")) + sorted((self.dir / "kube" / "nodes").glob("*/process.log"))
            return "\n".join([detail() if detail else "", *(log_tail(path) for path in logs)])

        return wait_until(what, check, timeout, interval=0.5, explain=explain)

    # reading -------------------------------------------------------------------------------
    def edgemodel(self, name: str) -> dict[str, Any] | None:
        return self.cluster.get(*EM, name, "default")

    def agents(self) -> list[dict[str, Any]]:
        return self.cluster.list_objects(*EA)

    def endpoints(self) -> list[str]:
        return sorted(a["status"]["endpoint"] for a in self.agents() if (a.get("status") or {}).get("endpoint"))

    def apply(self, doc: dict[str, Any], file_name: str) -> str:
        """``kubectl apply -f`` a manifest written into the stack's folder."""
        path = self.dir / file_name
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return self.cluster.kubectl("apply", "-f", str(path)).stdout.strip()


class DemoStack(SystemStack):
    """The demo: the edge :data:`NODES` (or ``nodes``), with ``with_cloud`` a cloud node (:data:`CLOUD_NODE`) serving split tails
    over mTLS, the operator as admin, Prometheus when installed. :meth:`close` stops everything."""

    def __init__(self, workdir: Path, with_prometheus: bool = True, with_cloud: bool = True,
                 nodes: list[dict[str, Any]] | None = None, operator_env: dict[str, str] | None = None) -> None:
        super().__init__(workdir)
        self.node_specs = NODES if nodes is None else nodes
        self.operator_env = operator_env or {}
        self.metrics_port = free_port()
        self.liveness_port = free_port()
        self.with_prometheus = with_prometheus
        self.with_cloud = with_cloud
        self.prometheus: Prometheus | None = None
        self.prometheus_note = ""
        self.edge_nodes: list[str] = []
        self.cloud_nodes: list[str] = []

    def start_agents(self) -> None:
        """One Node per entry of the node specs (and the cloud node) and an agent process on each."""
        for node in self.node_specs:
            self.edge_nodes += self.cluster.add_nodes(1, sites=node["sites"], labels=node["labels"],
                                                      cpu=node["cpu"], memory=node["memory"])
        edge_flags = ""
        if self.with_cloud:
            pki = make_pki(self.dir / "pki")

            def tls(cert: Path, key: Path) -> str:
                return f" --split-tls-ca {pki.ca} --split-tls-cert {cert} --split-tls-key {key}"

            edge_flags = tls(pki.client_cert, pki.client_key)
            self.cloud_nodes = self.cluster.add_nodes(1, prefix="cloud-", sites=CLOUD_NODE["sites"],
                                                      labels=CLOUD_NODE["labels"], cpu=CLOUD_NODE["cpu"],
                                                      memory=CLOUD_NODE["memory"])
            self.cluster.run_on_nodes(self.agent_command(" --split-port 0" + tls(pki.server_cert, pki.server_key)),
                                      self.cloud_nodes)
        self.nodes = self.edge_nodes + self.cloud_nodes
        self.cluster.run_on_nodes(self.agent_command(edge_flags), self.edge_nodes)
        self.wait_for_agents(len(self.nodes), 90)

    def start_prometheus(self) -> None:
        """A real Prometheus scraping the agents and the operator, when it is installed."""
        if not self.with_prometheus:
            self.prometheus_note = "Prometheus disabled (--no-prometheus)"
            return
        binary = find_prometheus()
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
        args = ["--standalone", "--converter-backoff-limit", "1", "--heartbeat-timeout-seconds", "20",
                "--resync-seconds", "3"]
        if self.prometheus is not None:
            args += ["--prometheus-url", self.prometheus.url]
        self.run_operator("operator", self.metrics_port, self.liveness_port, args, env=self.operator_env)

    def start(self) -> None:
        self.start_control_plane()
        self.start_store()
        self.start_agents()
        self.start_prometheus()
        self.start_operator()
