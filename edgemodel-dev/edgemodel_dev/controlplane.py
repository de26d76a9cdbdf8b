"""The whole emulated control plane on one asyncio loop: store, API server, controllers, kubelet."""

from __future__ import annotations

import json
import logging
import ssl
from pathlib import Path
from typing import Any

from edgemodel_dev.apiserver import ApiServer
from edgemodel_dev.auth import ADMIN, TokenAuth
from edgemodel_dev.controllers import GarbageCollector, NamespaceController
from edgemodel_dev.jobs import JobController
from edgemodel_dev.kubelet import Kubelet
from edgemodel_dev.nodes import node_lease, node_object
from edgemodel_dev.podman import runtime_for
from edgemodel_dev.registry import Registry
from edgemodel_dev.resources import Catalog
from edgemodel_dev.store import Store
from edgemodel_dev.workloads import WorkloadController

JSON = dict[str, Any]
log = logging.getLogger(__name__)

SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
CONTROL_PLANE_NODE = "edgemodel-dev"


class ControlPlane:
    """Everything runs on the loop that calls :meth:`start`."""

    def __init__(
        self,
        state_dir: Path,
        *,
        auth: TokenAuth | None = None,
        run_kubelet: bool = True,
        bookmark_interval: float = 15.0,
        job_backoff: float = 0.2,
        history_size: int = 10_000,
        snapshot: Path | None = None,
        pod_kubeconfig: Path | None = None,
        ssl_context: ssl.SSLContext | None = None,
        container_runtime: str = "process",
    ) -> None:
        self.state_dir = state_dir
        self.store = Store(history_size)
        self.catalog = Catalog()
        self.registry = Registry(self.store, self.catalog)
        self.auth = auth or TokenAuth()
        self.snapshot = snapshot
        self.kubelet: Kubelet | None = None
        if run_kubelet:
            self.kubelet = Kubelet(self.registry, state_dir, CONTROL_PLANE_NODE, pod_kubeconfig=pod_kubeconfig,
                                   runtime=runtime_for(container_runtime))
        self.server = ApiServer(self.registry, self.auth, self.kubelet, bookmark_interval=bookmark_interval,
                                ssl_context=ssl_context)
        self.gc = GarbageCollector(self.registry)
        self.namespaces = NamespaceController(self.registry)
        self.jobs = JobController(self.registry, backoff_base=job_backoff)
        self.workloads = WorkloadController(self.registry)

    def _bootstrap(self) -> None:
        if self.snapshot is not None and self.snapshot.exists():
            self.store.restore(json.loads(self.snapshot.read_text()))
            for crd in self.store.items(("apiextensions.k8s.io", "customresourcedefinitions")):
                self.catalog.replace_crd(crd)
            log.info("Restored %d objects from %s", len(self.store.all_items()), self.snapshot)
        ns_rt = self.catalog.get("", "v1", "namespaces")
        for name in SYSTEM_NAMESPACES:
            if self.store.get(ns_rt.storage, "", name) is None:
                self.registry.create(ns_rt, None, {"metadata": {"name": name}})
        svc_rt = self.catalog.get("", "v1", "services")
        if self.store.get(svc_rt.storage, "default", "kubernetes") is None:
            self.registry.create(svc_rt, "default", {
                "metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
                "spec": {"clusterIP": "10.96.0.1", "ports": [{"name": "https", "port": 443, "targetPort": 6443}]},
            })
        if self.kubelet is not None:
            node_rt = self.catalog.get("", "v1", "nodes")
            if self.store.get(node_rt.storage, "", CONTROL_PLANE_NODE) is None:
                self.registry.create(node_rt, None, node_object(CONTROL_PLANE_NODE, role="control-plane"))
                lease_rt = self.catalog.get("coordination.k8s.io", "v1", "leases")
                self.registry.create(lease_rt, "kube-node-lease", node_lease(CONTROL_PLANE_NODE))

    async def start(self, port: int = 0) -> int:
        self._bootstrap()
        self.gc.start()
        self.namespaces.start()
        self.jobs.start()
        self.workloads.start()
        port = await self.server.start(port)
        if self.kubelet is not None:
            scheme = "https" if self.server.ssl_context else "http"
            self.kubelet.api_url = f"{scheme}://127.0.0.1:{port}"
            self.kubelet.start()
        return port

    async def close(self) -> None:
        await self.server.stop()
        if self.kubelet is not None:
            await self.kubelet.stop()
        await self.jobs.stop()
        await self.workloads.stop()
        await self.gc.stop()
        await self.namespaces.stop()
        if self.snapshot is not None:
            self.snapshot.parent.mkdir(parents=True, exist_ok=True)
            self.snapshot.write_text(json.dumps(self.store.snapshot()))
            log.info("Saved %d objects to %s", len(self.store.all_items()), self.snapshot)

    @property
    def admin(self) -> Any:
        return ADMIN
