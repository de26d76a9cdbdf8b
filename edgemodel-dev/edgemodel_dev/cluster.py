"""``LocalCluster``: the emulated Kubernetes control plane and kubelet in a background thread.

    with LocalCluster(nodes=3) as cluster:
        cluster.apply_crds()
        cluster.kubectl("get", "nodes")
        core = kubernetes.client.CoreV1Api(cluster.api_client())
        cluster.stop()    # API outage: the port closes, watches drop, the state is kept
        cluster.start()   # back on the same port

See docs/testing.md for what the emulator implements.
"""

from __future__ import annotations

import asyncio
import copy
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from edgemodel.errors import UserError
from edgemodel_dev.auth import ADMIN, Identity, TokenAuth, agent_identity
from edgemodel_dev.controlplane import ControlPlane
from edgemodel_dev.errors import ApiError
from edgemodel_dev.kubeconfig import write_kubeconfig
from edgemodel_dev.kubelet import Kubelet
from edgemodel_dev.nodes import SITE_LABEL, CommandFor, NodeProcess, expand_command, node_lease, node_object
from edgemodel_dev.polling import wait_until
from edgemodel_dev.resources import ResourceType
from edgemodel_dev.tls import make_certificates

JSON = dict[str, Any]
T = TypeVar("T")
# The project's CRDs, shipped as package data (a byte-identical copy of the repository's crds/, kept in
# sync by `make crds` / helm/sync-chart-files.py and checked by tests/foundation/test_distributions.py).
DEFAULT_CRDS = Path(__file__).resolve().with_name("crds")


def find_kubectl() -> Path:
    """The real kubectl: ``$EDGEMODEL_KUBECTL``, then ``$PATH``."""
    candidates = [os.environ.get("EDGEMODEL_KUBECTL"), shutil.which("kubectl")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    raise UserError("kubectl not found: put kubectl on PATH (in a checkout, `make tools` installs kubectl v1.36 "
                    "into .tools/bin) or set EDGEMODEL_KUBECTL to a kubectl binary")


class LocalCluster:
    """A local Kubernetes API (with kubelet and simulated nodes) for tests and the demo.

    Everything is in memory on one asyncio loop in a daemon thread; pods run as local processes
    whose files live under ``state_dir``; with ``container_runtime="podman"`` the pods of Jobs run as
    real containers from their (locally built) images instead (edgemodel_dev.podman).
    """

    def __init__(
        self,
        state_dir: Path | str | None = None,
        *,
        port: int = 0,
        nodes: int = 0,
        auth: bool = False,
        kubelet: bool = True,
        bookmark_interval: float = 5.0,
        job_backoff: float = 0.2,
        history_size: int = 10_000,
        persist: bool = False,
        kubeconfig: Path | str | None = None,
        container_runtime: str = "process",
    ) -> None:
        self._own_state = state_dir is None
        self.state_dir = Path(state_dir) if state_dir else Path(tempfile.mkdtemp(prefix="edgemodel-dev-"))
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.kubeconfig = Path(kubeconfig) if kubeconfig else self.state_dir / "kubeconfig"
        self._auth = TokenAuth()
        self.admin_token = self._auth.add(ADMIN) if auth else "edgemodel-dev-admin"
        #: with auth on the server speaks HTTPS (kubectl sends tokens only over TLS); the CA is here
        self.tls = make_certificates(self.state_dir / "tls") if auth else None
        self._initial_nodes = nodes
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.plane = ControlPlane(
            self.state_dir,
            auth=self._auth,
            run_kubelet=kubelet,
            bookmark_interval=bookmark_interval,
            job_backoff=job_backoff,
            history_size=history_size,
            snapshot=self.state_dir / "store.json" if persist else None,
            pod_kubeconfig=self.state_dir / "kubeconfigs" / "pods",
            ssl_context=self.tls.context() if self.tls else None,
            container_runtime=container_runtime,
        )
        self.node_processes: dict[str, NodeProcess] = {}
        self._agent_tokens: dict[str, str] = {}
        self._closed = False

    # lifecycle ---------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def ca_path(self) -> Path | None:
        """The CA certificate of the HTTPS endpoint (None when serving plain HTTP)."""
        return self.tls.ca_path if self.tls else None

    @property
    def auth_enabled(self) -> bool:
        return self._auth.enabled

    @property
    def api_running(self) -> bool:
        return self.plane.server.running

    @property
    def kubelet(self) -> Kubelet:
        if self.plane.kubelet is None:
            raise RuntimeError("this LocalCluster was started with kubelet=False")
        return self.plane.kubelet

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        assert self._loop is not None, "the cluster is not started"
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def call(self, fn: Callable[[], T], timeout: float = 30.0) -> T:
        """Run ``fn`` on the control plane's loop (for direct access to the store and registry)."""

        async def wrapper() -> T:
            return fn()

        return self._run(wrapper(), timeout)

    def start(self) -> LocalCluster:
        """Start the control plane, or (after :meth:`stop`) bring the API back on the same port."""
        if self._closed:
            raise RuntimeError("this LocalCluster is closed; create a new one")
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, name="edgemodel-dev-cluster",
                                            daemon=True)
            self._thread.start()
            self.port = self._run(self.plane.start(self.port))
            self._write_kubeconfigs()
            if self._initial_nodes:
                self.add_nodes(self._initial_nodes)
        elif not self.api_running:
            self._run(self.plane.server.start(self.port))
        return self

    def stop(self) -> None:
        """Simulate an API outage: stop listening and drop all connections; the state is kept."""
        if self._loop is not None and self.api_running:
            self._run(self.plane.server.stop())

    def close(self) -> None:
        """Stop node processes, pods and the server; remove a temporary state directory."""
        if self._closed:
            return
        self._closed = True
        for process in self.node_processes.values():
            process.stop(timeout=5)
        if self._loop is not None:
            try:
                self._run(self.plane.close(), timeout=60)
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                if self._thread is not None:
                    self._thread.join(10)
                self._loop.close()
        if self._own_state:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # credentials -------------------------------------------------------------------------
    def _write_kubeconfigs(self) -> None:
        write_kubeconfig(self.kubeconfig, self.url, self.admin_token, ca_path=self.ca_path)
        write_kubeconfig(self.state_dir / "kubeconfigs" / "pods", self.url, self.admin_token, "pods",
                         ca_path=self.ca_path)

    def add_token(self, identity: Identity, token: str | None = None) -> str:
        """Register a bearer token for ``identity`` (turns authentication on if it was off)."""
        def add() -> str:
            if not self._auth.enabled:
                self._auth.add(ADMIN, self.admin_token)
            return self._auth.add(identity, token)

        return self.call(add)

    def kubeconfig_for(self, token: str, name: str) -> Path:
        """A kubeconfig file that authenticates with ``token``."""
        return write_kubeconfig(self.state_dir / "kubeconfigs" / name, self.url, token, name, ca_path=self.ca_path)

    def agent_token(self, node: str) -> str:
        """The token of the edge agent of ``node``: it may only touch its own EdgeAgent."""
        if node not in self._agent_tokens:
            self._agent_tokens[node] = self.add_token(agent_identity(node)) if self.auth_enabled else self.admin_token
        return self._agent_tokens[node]

    def agent_kubeconfig(self, node: str) -> Path:
        return self.kubeconfig_for(self.agent_token(node), f"agent-{node}")

    # clients -----------------------------------------------------------------------------
    def api_client(self, token: str | None = None) -> Any:
        """A ``kubernetes.client.ApiClient`` for this cluster (admin unless ``token`` is given)."""
        import kubernetes

        config = kubernetes.client.Configuration()
        config.host = self.url
        config.api_key = {"authorization": f"Bearer {token or self.admin_token}"}
        if self.ca_path is not None:
            config.ssl_ca_cert = str(self.ca_path)
        return kubernetes.client.ApiClient(config)

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 60.0,
                kubeconfig: Path | None = None) -> subprocess.CompletedProcess[str]:
        """Run the real kubectl against this cluster; raises with its output when it fails and ``check``."""
        binary = find_kubectl()
        home = self.state_dir / "kubectl-home"
        home.mkdir(exist_ok=True)
        env = {"PATH": os.environ.get("PATH", os.defpath), "HOME": str(home),
               "KUBECONFIG": str(kubeconfig or self.kubeconfig), "KUBECTL_COMMAND_HEADERS": "false"}
        argv = [str(binary), f"--cache-dir={self.state_dir / 'kubectl-cache'}", *args]
        result = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout, env=env,
                                check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}"
                                 f"{result.stdout}")
        return result

    # objects (in-process, admin) ---------------------------------------------------------
    def resource(self, api_version: str, kind_or_plural: str) -> ResourceType:
        def find() -> ResourceType:
            group, _, version = api_version.rpartition("/")
            rt = self.plane.catalog.find(group, version, kind_or_plural) or self.plane.catalog.by_kind(
                api_version, kind_or_plural)
            if rt is None:
                raise KeyError(f"no resource {kind_or_plural!r} in {api_version!r}")
            return rt

        return self.call(find)

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> JSON | None:
        """An object by kind (or plural) and name, or None."""
        rt = self.resource(api_version, kind)

        def read() -> JSON | None:
            try:
                return self.plane.registry.get(rt, namespace, name)
            except ApiError as exc:
                if exc.code == 404:
                    return None
                raise

        return self.call(read)

    def list_objects(self, api_version: str, kind: str, namespace: str | None = None) -> list[JSON]:
        rt = self.resource(api_version, kind)
        return self.call(lambda: self.plane.registry.list_objects(rt, namespace))

    def create(self, obj: JSON) -> JSON:
        """Create an object as the admin (no HTTP)."""
        rt = self.resource(obj["apiVersion"], obj["kind"])
        namespace = (obj.get("metadata") or {}).get("namespace")
        return self.call(lambda: self.plane.registry.create(rt, namespace, copy.deepcopy(obj)).obj)

    def apply(self, obj: JSON) -> JSON:
        """Create the object, or replace its spec/data/labels if it exists (as the admin, no HTTP)."""
        rt = self.resource(obj["apiVersion"], obj["kind"])
        meta = obj.get("metadata") or {}

        def upsert() -> JSON:
            try:
                current = self.plane.registry.get(rt, meta.get("namespace"), meta["name"])
            except ApiError:
                return self.plane.registry.create(rt, meta.get("namespace"), copy.deepcopy(obj)).obj
            merged = copy.deepcopy(obj)
            merged["metadata"] = {**current["metadata"], **meta,
                                  "resourceVersion": current["metadata"]["resourceVersion"]}
            return self.plane.registry.update(rt, meta.get("namespace"), meta["name"], merged).obj

        return self.call(upsert)

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None,
               propagation: str | None = None) -> None:
        from edgemodel_dev.registry import DeleteOptions

        rt = self.resource(api_version, kind)
        self.call(lambda: self.plane.registry.delete(rt, namespace, name, DeleteOptions(propagation=propagation)))

    def wait_for(self, predicate: Callable[[], T], timeout: float = 30.0, interval: float = 0.05,
                 what: str = "the condition") -> T:
        """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
        return wait_until(what, predicate, timeout, interval=interval)

    # CRDs --------------------------------------------------------------------------------
    def apply_crds(self, paths: Iterable[Path | str] | None = None) -> list[str]:
        """Create or update CRDs from YAML files or folders (default: the project's ``crds/``)."""
        files: list[Path] = []
        for path in [Path(p) for p in (paths or [DEFAULT_CRDS])]:
            files += sorted(path.glob("*.yaml")) + sorted(path.glob("*.yml")) if path.is_dir() else [path]
        names = []
        for file in files:
            for doc in yaml.safe_load_all(file.read_text()):
                if doc and doc.get("kind") == "CustomResourceDefinition":
                    self.apply(doc)
                    names.append(doc["metadata"]["name"])
        return names

    # nodes -------------------------------------------------------------------------------
    def add_nodes(
        self,
        count: int = 1,
        *,
        prefix: str = "edge-",
        labels: Mapping[str, str] | None = None,
        sites: Sequence[str] | None = None,
        arch: str = "amd64",
        cpu: str = "4",
        memory: str = "8Gi",
        start_index: int | None = None,
    ) -> list[str]:
        """Create ``count`` Ready Node objects labelled ``node-role.kubernetes.io/edge=true``,
        ``kubernetes.io/arch=<arch>`` and ``edgemodel.io/site=<site>`` (round-robin over ``sites``)."""
        existing = {n["metadata"]["name"] for n in self.list_objects("v1", "nodes")}
        index = start_index if start_index is not None else sum(1 for n in existing if n.startswith(prefix))
        names: list[str] = []
        sites = list(sites or ["site-a"])
        while len(names) < count:
            name = f"{prefix}{index}"
            index += 1
            if name in existing:
                continue
            node_labels = {SITE_LABEL: sites[len(names) % len(sites)], **(labels or {})}
            self.create(node_object(name, node_labels, arch=arch, cpu=cpu, memory=memory))
            self.create(node_lease(name))
            names.append(name)
        return names

    def set_node_ready(self, name: str, ready: bool) -> None:
        rt = self.resource("v1", "nodes")

        def flip(node: JSON) -> None:
            for cond in node["status"].get("conditions") or []:
                if cond.get("type") == "Ready":
                    cond["status"] = "True" if ready else "Unknown"
                    cond["reason"] = "KubeletReady" if ready else "NodeStatusUnknown"

        self.call(lambda: self.plane.registry.mutate(rt, "", name, flip, subresource="status"))

    def run_on_nodes(
        self,
        command: CommandFor,
        nodes: Iterable[str] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        start: bool = True,
    ) -> dict[str, NodeProcess]:
        """Run ``command`` once per node (``{node}`` in it is replaced) as a managed process with
        ``NODE_NAME``, ``KUBECONFIG`` (the agent's, restricted when auth is on) and
        ``EDGEMODEL_NODE_DIR`` (the node's folder) set. Output goes to ``<state>/nodes/<node>/process.log``."""
        targets = list(nodes) if nodes is not None else [
            n["metadata"]["name"] for n in self.list_objects("v1", "nodes")
            if "node-role.kubernetes.io/edge" in (n["metadata"].get("labels") or {})]
        started = {}
        for node in targets:
            node_dir = self.state_dir / "nodes" / node
            node_dir.mkdir(parents=True, exist_ok=True)
            process_env = dict(os.environ)
            process_env.update({"NODE_NAME": node, "KUBECONFIG": str(self.agent_kubeconfig(node)),
                                "EDGEMODEL_NODE_DIR": str(node_dir), "PYTHONUNBUFFERED": "1"})
            process_env.update(env or {})
            old = self.node_processes.get(node)
            if old is not None and old.running:
                old.stop()
            process = NodeProcess(node, expand_command(command, node), process_env, node_dir / "process.log",
                                  cwd=node_dir)
            self.node_processes[node] = process
            if start:
                process.start()
            started[node] = process
        return started
