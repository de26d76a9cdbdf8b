"""The whole system as real processes for the operator's end-to-end tests.

The Kubernetes API emulator with its Job controller and kubelet (conversion Jobs run as local
processes), the artifact store, three edge agents (one per emulated node, each with a token that
reaches only its own EdgeAgent) and two operator replicas with kopf peering, the operator
authenticated with exactly the permissions of ``edgemodel_operator.rbac``: the demo's
``SystemStack`` with these choices, plus background inference traffic.
"""

from __future__ import annotations

import contextlib
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from edgemodel_dev.auth import Identity, Rule
from edgemodel_dev.demo.processes import Process
from edgemodel_dev.demo.stack import SystemStack
from edgemodel_dev.examples_models import DigitsExample, load_digits_data, write_digits_example
from edgemodel_dev.net import free_port
from edgemodel_dev.polling import http_ok
from edgemodel_operator.rbac import PERMISSIONS

ROOT = Path(__file__).resolve().parents[2]
PEERING = "edgemodel"
PEERING_LIFETIME = 6


def operator_identity() -> Identity:
    rules = tuple(Rule(p.verbs, (p.api_group,), (p.resource,)) for p in PERMISSIONS)
    return Identity("system:serviceaccount:edgemodel:edgemodel-operator", ("system:serviceaccounts",), rules)


@dataclass
class OperatorReplica:
    name: str
    priority: int
    metrics_port: int
    liveness_port: int
    webhook_port: int
    proc: Process | None = None


@dataclass
class Traffic:
    """Inference requests to every agent, in a background thread, bounded by ``stop``."""

    stack: Stack
    stop: threading.Event = field(default_factory=threading.Event)
    served: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(agent endpoint, model version) -> successful requests."""
    failures: int = 0
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="traffic", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        import tritonclient.http as httpclient

        images = self.stack.images[:1]
        clients: dict[str, Any] = {}
        deadline = time.monotonic() + 900
        next_refresh = 0.0
        endpoints: list[str] = []
        while not self.stop.is_set() and time.monotonic() < deadline:
            if time.monotonic() > next_refresh:
                with contextlib.suppress(Exception):  # the API may be down on purpose: keep the last list
                    endpoints = self.stack.endpoints()
                next_refresh = time.monotonic() + 2
            for endpoint in endpoints:
                client = clients.setdefault(endpoint, httpclient.InferenceServerClient(
                    url=endpoint.removeprefix("http://"), connection_timeout=2, network_timeout=5))
                try:
                    inp = httpclient.InferInput("input", list(images.shape), "FP32")
                    inp.set_data_from_numpy(images)
                    result = client.infer("digits", [inp])
                    self.served[(endpoint, str(result.get_response().get("model_version")))] += 1
                except Exception:
                    self.failures += 1
            self.stop.wait(0.03)
        for client in clients.values():
            client.close()

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=15)


class Stack(SystemStack):
    """``with Stack(tmp) as stack:`` starts everything and stops every process it started."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.replicas = [
            OperatorReplica("operator-a", 200, free_port(), free_port(), free_port()),
            OperatorReplica("operator-b", 100, free_port(), free_port(), free_port()),
        ]
        self.example: DigitsExample | None = None
        self.published: dict[str, str] = {}
        """File name -> the http:// URI `edgemodel store put` printed (what the EdgeModel points at)."""
        data = load_digits_data()
        self.images = data.x_test[:64].astype(np.float32)
        self.labels = data.y_test[:64]
        self.traffic: Traffic | None = None

    # lifecycle ---------------------------------------------------------------------------------
    def apply_crds(self) -> None:
        """The project's CRDs and kopf's peering CRD with the replicas' ClusterKopfPeering."""
        self.cluster.apply_crds()
        self.cluster.apply_crds([Path(__file__).parent / "data" / "kopf-peering.yaml"])
        self.cluster.create({"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": PEERING}})

    def start(self) -> None:
        self.start_control_plane()
        token = self.cluster.add_token(operator_identity())
        self.operator_kubeconfig = self.cluster.kubeconfig_for(token, "edgemodel-operator")
        self.start_store()
        self.example = write_digits_example(self.dir / "models" / "digits", epochs=15)
        self.publish(self.example.model_pt, self.example.calib_npz, self.example.val_npz)
        self.nodes = self.cluster.add_nodes(3)
        self.cluster.run_on_nodes(self.agent_command())
        self.wait_for_agents(3, 60)
        for replica in self.replicas:
            self.start_operator(replica)
        self.traffic = Traffic(self)
        self.traffic.start()

    def publish(self, *files: Path) -> None:
        """``edgemodel store put`` into the artifact store, as docs/install.md tells users to publish a model."""
        import subprocess

        from edgemodel_dev.demo.stack import EDGEMODEL

        put = subprocess.run([EDGEMODEL, "store", "put", "--url", self.store_url, "--prefix", "sources/default/digits",
                              *map(str, files)], capture_output=True, text=True, timeout=60, check=False)
        assert put.returncode == 0, put.stderr
        uris = put.stdout.split()
        assert uris == [f"{self.store_url}/sources/default/digits/{f.name}" for f in files], put.stdout
        self.published = {f.name: uri for f, uri in zip(files, uris, strict=True)}

    def start_operator(self, replica: OperatorReplica) -> None:
        """Start (or restart) a replica under the RBAC-restricted token, with kopf peering."""
        replica.proc = self.run_operator(replica.name, replica.metrics_port, replica.liveness_port, [
            "--peering", PEERING, "--priority", str(replica.priority),
            "--peering-lifetime-seconds", str(PEERING_LIFETIME), "--webhook-port", str(replica.webhook_port),
            "--converter-backoff-limit", "1", "--heartbeat-timeout-seconds", "20", "--resync-seconds", "5",
            "--history-limit", "2", "--artifact-retention", "delete",
        ], kubeconfig=self.operator_kubeconfig, verbose=True)

    def close(self) -> None:
        if self.traffic is not None:
            self.traffic.close()
        super().close()

    # reading -----------------------------------------------------------------------------------
    def status(self, name: str) -> dict[str, Any]:
        return (self.edgemodel(name) or {}).get("status") or {}

    def condition(self, name: str, type_: str) -> dict[str, Any]:
        return next((c for c in self.status(name).get("conditions", []) if c["type"] == type_), {})

    def assigned(self, model: str = "digits") -> dict[str, list[int]]:
        """Agent -> revisions of ``model`` in its spec.models (a list, so duplicates would show)."""
        return {a["metadata"]["name"]: [m["revision"] for m in (a.get("spec") or {}).get("models") or []
                                        if m["name"] == model] for a in self.agents()}

    def reported(self, model: str = "digits") -> dict[str, tuple[int, str] | None]:
        out: dict[str, tuple[int, str] | None] = {}
        for agent in self.agents():
            states = [(m["revision"], m["state"]) for m in (agent.get("status") or {}).get("models") or []
                      if m["name"] == model]
            out[agent["metadata"]["name"]] = states[0] if states else None
        return out

    def jobs(self, model: str) -> list[str]:
        return sorted(j["metadata"]["name"] for j in self.cluster.list_objects("batch/v1", "Job", "default")
                      if (j["metadata"].get("labels") or {}).get("edgemodel.io/model") == model)

    def events(self, name: str) -> list[tuple[str, str, str]]:
        return [(e.get("type", ""), e.get("reason", ""), e.get("message", ""))
                for e in self.cluster.list_objects("v1", "Event", "default")
                if (e.get("involvedObject") or {}).get("name") == name
                and (e.get("involvedObject") or {}).get("kind") == "EdgeModel"]

    def stored(self, key: str) -> bool:
        """Whether the artifact store has ``key`` (e.g. default/digits/1/manifest.json)."""
        return http_ok(f"{self.store_url}/{key}")

    def metrics(self, replica: OperatorReplica) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{replica.metrics_port}/metrics", timeout=5) as resp:
            return resp.read().decode()

    # writing -----------------------------------------------------------------------------------
    def manifest(self, name: str = "digits", **rollout: Any) -> dict[str, Any]:
        """examples/digits-edgemodel.yaml pointed at this test's trained files, rollout windows short."""
        assert self.example is not None
        doc = yaml.safe_load((ROOT / "examples" / "digits-edgemodel.yaml").read_text())
        doc["metadata"]["name"] = name
        spec = doc["spec"]
        # Published with `edgemodel store put`: the conversion Job reads them over HTTP, as on a real cluster.
        spec["source"]["uri"] = self.published["model.pt"]
        spec["optimization"]["int8"]["calibrationDataUri"] = self.published["calib.npz"]
        spec["validation"]["dataUri"] = self.published["val.npz"]
        spec["rollout"]["analysis"]["windowSeconds"] = 3
        spec["rollout"]["analysis"].update(rollout)
        return doc

    def predict(self, endpoint: str) -> tuple[np.ndarray, str]:
        """Predicted classes of the test images and the model version that answered (a v2 client)."""
        import tritonclient.http as httpclient

        client = httpclient.InferenceServerClient(url=endpoint.removeprefix("http://"), network_timeout=10)
        try:
            output = client.get_model_metadata("digits")["outputs"][0]["name"]
            inp = httpclient.InferInput("input", list(self.images.shape), "FP32")
            inp.set_data_from_numpy(self.images)
            result = client.infer("digits", [inp])
            return result.as_numpy(output).argmax(axis=1), str(result.get_response().get("model_version"))
        finally:
            client.close()
