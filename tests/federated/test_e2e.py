"""FederatedTraining end to end in the emulated cluster: the real operator (under exactly its RBAC) starts Flower's
server and one client per node as Pods of the local kubelet, over TLS; one client is killed mid-run and training
still completes; the EdgeModel's source becomes the trained model. Bad input fails with a condition naming the field
and leaves nothing running. A real Prometheus scrapes the operator throughout, and every query of the Federated
training dashboard must return data at the end."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgemodel_dev.demo.prometheus import Prometheus
from edgemodel_dev.demo.stack import SystemStack
from edgemodel_dev.federated_digits import DigitsFiles, write_digits
from edgemodel_dev.net import free_port
from tests.conftest import ROOT, require_tool
from tests.helm.dashboards import board_queries, concrete
from tests.operator.stack import operator_identity

pytestmark = pytest.mark.slow

NS = "default"
DATA_DIR = "/var/lib/edgemodel/federated"
FT = ("edgemodel.io/v1alpha1", "FederatedTraining")
EM = ("edgemodel.io/v1alpha1", "EdgeModel")
TARGET = 0.85
DASHBOARD = ROOT / "helm" / "dashboards" / "edgemodel-federated.json"


class FederatedStack(SystemStack):
    """API emulator + kubelet, the artifact store, 3 edge nodes holding digits shards, and the operator."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.metrics_port = free_port()
        self.files: DigitsFiles | None = None
        self.prometheus: Prometheus | None = None
        self.started = 0.0

    def start(self) -> None:
        self.start_control_plane()
        self.start_store()
        self.nodes = self.cluster.add_nodes(3)
        self.files = write_digits(self.dir / "digits", self.nodes, iid=True, arch="mlp")
        for node, shard in self.files.shards.items():
            self.put_on_node(node, f"{DATA_DIR}/train.npz", shard)
        self.cluster.run_on_nodes(self.agent_command(), self.nodes)  # edge agents: the trained model rolls out
        self.wait_for_agents(len(self.nodes), 90)
        token = self.cluster.add_token(operator_identity())
        kubeconfig = self.cluster.kubeconfig_for(token, "edgemodel-operator")
        self.run_operator(
            "operator", self.metrics_port, free_port(), ["--standalone"], kubeconfig=kubeconfig, verbose=True
        )
        self.prometheus = Prometheus(str(require_tool("prometheus")), self.dir / "prometheus", self.procs)
        self.prometheus.start({"edgemodel-operator": [f"127.0.0.1:{self.metrics_port}"]})
        # Ready is not scraping: a training whose rounds all end before the first scrape leaves the round
        # histogram with one value and nothing for rate() (a loaded CI run showed the first scrape 7 s in).
        prom = self.prometheus
        self.wait_for("Prometheus to scrape the operator", lambda: prom.query('up{job="edgemodel-operator"} == 1'), 60)
        self.started = time.time()

    def training(self, name: str) -> dict[str, Any]:
        return self.cluster.get(*FT, name, NS) or {}

    def children(self, name: str) -> list[str]:
        found = []
        for api, kind in (("batch/v1", "Job"), ("v1", "Service"), ("v1", "Secret")):
            for obj in self.cluster.list_objects(api, kind, NS):
                if (obj["metadata"].get("labels") or {}).get("edgemodel.io/federated-training") == name:
                    found.append(f"{kind}/{obj['metadata']['name']}")
        return found

    def manifest(self, name: str, **spec: Any) -> dict[str, Any]:
        assert self.files is not None
        body = {
            "model": {"uri": self.files.model.resolve().as_uri()},
            "data": {"path": f"{DATA_DIR}/train.npz"},
            "validation": {"dataUri": self.files.validation.resolve().as_uri(), "targetAccuracy": TARGET},
            "rounds": 20,
            "minClients": 2,
            "maxDropFraction": 0.5,
            "roundTimeoutSeconds": 30,
            "training": {"epochs": 3, "learningRate": 0.1},
            "port": free_port(),
            "deadlineSeconds": 300,
        }
        body.update(spec)
        return {"apiVersion": FT[0], "kind": FT[1], "metadata": {"name": name, "namespace": NS}, "spec": body}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FederatedStack]:
    saved = {
        k: os.environ.get(k)
        for k in (
            "EDGEMODEL_FEDERATED_SERVER_HOST",
            "EDGEMODEL_FEDERATED_POLL_SECONDS",
            "EDGEMODEL_FEDERATED_CLIENT_BACKOFF_LIMIT",
        )
    }
    os.environ.update(
        {
            "EDGEMODEL_FEDERATED_SERVER_HOST": "127.0.0.1",
            "EDGEMODEL_FEDERATED_POLL_SECONDS": "0.5",
            "EDGEMODEL_FEDERATED_CLIENT_BACKOFF_LIMIT": "0",
        }
    )
    try:
        with FederatedStack(tmp_path_factory.mktemp("federated")) as s:
            yield s
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def query_range(url: str, promql: str, start: float, step: str = "1") -> dict[str, Any]:
    params = {"query": promql, "start": f"{start:.3f}", "end": f"{time.time():.3f}", "step": step}
    with urllib.request.urlopen(f"{url}/api/v1/query_range?" + urllib.parse.urlencode(params), timeout=10) as r:
        body: dict[str, Any] = json.load(r)
    return body


def raw_samples(stack: FederatedStack) -> str:
    """The scraped samples behind the round panels (for a failure message): the round-time count and
    round gauge of digits-fl, and the operator target's ``up``, as (seconds since start, value)."""
    assert stack.prometheus is not None
    out = []
    for promql in (
        'edgemodel_federated_round_seconds_count{training="digits-fl"}',
        'edgemodel_federated_round{training="digits-fl"}',
        "up",
    ):
        body = query_range(stack.prometheus.url, promql, stack.started - 5, "2")
        series = [
            [(round(float(t) - stack.started), v) for t, v in s["values"]] for s in body["data"]["result"]
        ]
        out.append(f"{promql}: {series}")
    return "; ".join(out)


def failed_condition(training: dict[str, Any]) -> dict[str, Any]:
    return next(
        (c for c in (training.get("status") or {}).get("conditions") or [] if c["type"] == "Failed"), {}
    )


def test_training_survives_a_killed_client_and_feeds_the_edgemodel(stack: FederatedStack) -> None:
    assert stack.files is not None
    stack.apply(
        {
            "apiVersion": EM[0],
            "kind": EM[1],
            "metadata": {"name": "digits", "namespace": NS},
            "spec": {
                "source": {"uri": stack.files.model.resolve().as_uri(), "format": "TorchScript"},
                "inputs": [{"name": "input", "dtype": "float32", "shape": [-1, 1, 8, 8]}],
                "validation": {"dataUri": stack.files.validation.resolve().as_uri()},
                "rollout": {"strategy": "AllAtOnce"},
                "suspend": True,  # nothing to serve before training: resumed once the trained model is its source
            },
        },
        "edgemodel.yaml",
    )
    # Fixed rounds (no accuracy target) so that rounds after the kill always happen.
    stack.apply(
        stack.manifest(
            "digits-fl",
            edgeModel="digits",
            rounds=6,
            training={"epochs": 2, "learningRate": 0.1},
            validation={"dataUri": stack.files.validation.resolve().as_uri()},
        ),
        "training.yaml",
    )

    def status() -> dict[str, Any]:
        return stack.training("digits-fl").get("status") or {}

    stack.wait_for("round 1 to finish", lambda: status().get("round", 0) >= 1, 120, lambda: str(status()))
    assert status()["phase"] == "Training"
    assert sorted(status()["nodes"]) == sorted(stack.nodes)
    victim = "edge-1"
    pod = next(
        p
        for p in stack.cluster.list_objects("v1", "Pod", NS)
        if (p["metadata"].get("labels") or {}).get("edgemodel.io/node") == victim
    )
    pid = stack.cluster.kubelet.pid_of(NS, pod["metadata"]["name"])
    assert pid is not None, "the client of edge-1 is not running"
    killed_after = status()["round"]
    os.kill(pid, signal.SIGKILL)

    final = stack.wait_for(
        "the training to succeed",
        lambda: status() if status().get("phase") in ("Succeeded", "Failed") else None,
        150,
        lambda: str(status()),
    )
    assert final["phase"] == "Succeeded", final
    rounds = final["rounds"]
    assert final["model"]["round"] == 6 == final["round"]
    assert final["model"]["accuracy"] >= TARGET
    assert rounds[-1]["accuracy"] >= TARGET
    later = [r for r in rounds if r["round"] > killed_after + 1]
    assert later, f"no round after the kill: {rounds}"
    assert all(victim not in r["participating"] and len(r["participating"]) == 2 for r in later), rounds
    assert all(r["bytesExchanged"] > 0 and r["seconds"] > 0 and r["loss"] is not None for r in rounds)
    conditions = {c["type"]: c for c in final["conditions"]}
    assert conditions["Completed"]["status"] == "True"
    assert conditions["ModelPublished"]["status"] == "True"

    edgemodel = stack.cluster.get(*EM, "digits", NS)
    assert edgemodel is not None
    source = edgemodel["spec"]["source"]
    assert source["uri"] == final["model"]["uri"]
    assert source["uri"].startswith(stack.store_url)
    assert source["sha256"] == final["model"]["sha256"]
    provenance = edgemodel["metadata"]["annotations"]["edgemodel.io/trained-by"]
    assert '"federatedTraining": "default/digits-fl"' in provenance
    assert f'"round": {final["model"]["round"]}' in provenance

    import urllib.request

    with urllib.request.urlopen(source["uri"], timeout=10) as resp:
        assert resp.read(4) == b"PK\x03\x04", "the stored model is a TorchScript zip"
    stack.wait_for(
        "the children to be deleted",
        lambda: not stack.children("digits-fl"),
        30,
        lambda: str(stack.children("digits-fl")),
    )
    events = [
        e
        for e in stack.cluster.list_objects("v1", "Event", NS)
        if (e.get("involvedObject") or {}).get("name") == "digits-fl"
    ]
    assert {"Started", "Completed", "ModelPublished"} <= {e.get("reason") for e in events}

    # The trained model becomes a revision: converted, accuracy-gated and rolled out to the agents like any other.
    stack.cluster.kubectl("patch", "em", "digits", "--type=merge", "-p", '{"spec": {"suspend": false}}')

    def em_status() -> dict[str, Any]:
        return (stack.cluster.get(*EM, "digits", NS) or {}).get("status") or {}

    served = stack.wait_for(
        "the trained model's revision to be Available on the agents",
        lambda: em_status() if em_status().get("phase") in ("Available", "Failed", "Degraded") else None,
        300,
        lambda: str(em_status()),
    )
    assert served["phase"] == "Available", served
    assert served["ready"] == f"{len(stack.nodes)}/{len(stack.nodes)}"
    (record,) = served["history"]
    assert record["outcome"] == "Available"
    assert record["origin"] == {
        "kind": "FederatedTraining",
        "name": "default/digits-fl",
        "reason": "completed 6 round(s)",
        "metrics": {"round": 6.0, "validationAccuracy": round(final["model"]["accuracy"], 6)},
    }
    assert served["artifacts"]
    assert all(a["uri"].startswith(stack.store_url) for a in served["artifacts"])
    created = [
        e.get("message")
        for e in stack.cluster.list_objects("v1", "Event", NS)
        if (e.get("involvedObject") or {}).get("name") == "digits" and e.get("reason") == "RevisionCreated"
    ]
    # generation 2 set the source while suspended; 3 resumed it, which opened the revision.
    assert created == ["generation 3 opened revision 1 (from FederatedTraining default/digits-fl)"], created


def test_secure_aggregation_trains_through_the_operator(stack: FederatedStack) -> None:
    # The same Pods, ports, arguments and TLS Secrets: only the object's spec.secureAggregation differs.
    assert stack.files is not None
    stack.apply(
        stack.manifest(
            "digits-secure",
            rounds=3,
            minClients=len(stack.nodes),
            secureAggregation=True,
            validation={"dataUri": stack.files.validation.resolve().as_uri()},
        ),
        "secure.yaml",
    )

    def status() -> dict[str, Any]:
        return stack.training("digits-secure").get("status") or {}

    final = stack.wait_for(
        "the secure training to succeed",
        lambda: status() if status().get("phase") in ("Succeeded", "Failed") else None,
        180,
        lambda: str(status()),
    )
    assert final["phase"] == "Succeeded", final
    assert [r["round"] for r in final["rounds"]] == [1, 2, 3]
    for record in final["rounds"]:
        assert record["aggregated"], final["rounds"]
        assert record["participating"] == sorted(stack.nodes)
    assert final["rounds"][-1]["accuracy"] > final["rounds"][0]["accuracy"] - 0.05
    stack.wait_for("the children to be deleted", lambda: stack.children("digits-secure") == [], 60)


def test_a_selector_matching_no_node_starts_nothing(stack: FederatedStack) -> None:
    stack.apply(
        stack.manifest("nowhere", selector={"matchLabels": {"edgemodel.io/site": "mars"}}), "nowhere.yaml"
    )
    training = stack.wait_for(
        "the training to fail",
        lambda: stack.training("nowhere") if failed_condition(stack.training("nowhere")) else None,
        30,
    )
    condition = failed_condition(training)
    assert condition["reason"] == "InvalidSpec"
    assert condition["message"].startswith("spec.selector: matches no edge node")
    assert training["status"]["phase"] == "Failed"
    assert stack.children("nowhere") == []


def test_a_node_without_data_fails_naming_the_field_and_cleans_up(stack: FederatedStack) -> None:
    stack.apply(
        stack.manifest("nodata", data={"path": "/var/lib/edgemodel/missing/train.npz"}), "nodata.yaml"
    )
    training = stack.wait_for(
        "the training to fail",
        lambda: stack.training("nodata") if failed_condition(stack.training("nodata")) else None,
        90,
    )
    condition = failed_condition(training)
    assert condition["reason"] == "DataMissing", condition
    assert "spec.data.path" in condition["message"]
    assert "node edge-" in condition["message"]
    stack.wait_for(
        "the children to be deleted",
        lambda: not stack.children("nodata"),
        30,
        lambda: str(stack.children("nodata")),
    )


def test_every_federated_dashboard_query_has_data(stack: FederatedStack) -> None:
    """Runs last: the scrapes cover one successful training (with a killed client) and two failed ones."""
    prom = stack.prometheus
    assert prom is not None
    stack.wait_for(
        "Prometheus to scrape both failures",
        lambda: prom.query('edgemodel_federated_trainings_total{outcome="failed"} >= 2'),
        30,
    )
    time.sleep(3)  # one more scrape after the last change
    queries = board_queries(DASHBOARD)
    assert len(queries) >= 11
    # The board's time range as a person would set it to look at this run: since the stack started (the
    # rounds happen in the first test; under a loaded CI a 2m window could miss every scrape around them).
    time_range = f"{int(time.time() - stack.started) + 30}s"
    for _board, title, expr in queries:
        if expr.startswith("label_values("):
            metric, label = expr.removeprefix("label_values(").removesuffix(")").split(", ")
            url = f"{prom.url}/api/v1/label/{label}/values?" + urllib.parse.urlencode({"match[]": metric})
            with urllib.request.urlopen(url, timeout=10) as resp:
                values = json.load(resp)["data"]
            assert {"namespace": NS, "training": "digits-fl"}[label] in values, f"{title}: {values}"
            continue
        promql = concrete(expr, time_range)
        body = query_range(prom.url, promql, stack.started)
        assert body["status"] == "success", f"{title}: {body}"
        values = [float(v) for series in body["data"]["result"] for _t, v in series["values"]]
        finite = [v for v in values if v == v and abs(v) != float("inf")]
        assert finite, f"{title}: no data for {promql}; what Prometheus holds: {raw_samples(stack)}"
        if title in ("Round", "Validation accuracy", "Trainings succeeded", "Trainings failed"):
            assert max(finite) > 0, f"{title}: {promql} never rose above 0"
