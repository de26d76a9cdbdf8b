"""A pipeline end to end on the emulated cluster: the operator plans, places, gates and re-plans a chain.

kubectl applies an EdgeModel with ``spec.split.stages`` (3 stages, auto cuts, a pool of three nodes);
the conversion Job (a local process run by the kubelet) plans, builds, verifies and signs the stages;
the operator gives stages 2 and 3 to the pool nodes in ``edgemodel.io/pipeline-order`` order and,
once both are Ready, stage 1 to the entry node. Requests enter at the entry and are answered there,
every stage counting them. Then the last stage's agent is stopped under load: the entry answers with
the whole model at once and the operator re-plans: the stage moves to the spare pool node and the chain
runs again. With the spare stopped too, one pool node is too few for 3 stages: the entry serves the
whole model, with an event and ``PipelinePlanCurrent`` False. 0 requests fail throughout.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from edgemodel.split.devpki import make_pki
from edgemodel_dev.demo.stack import SystemStack
from edgemodel_dev.examples_models import (
    DIGITS_INPUT_NAME,
    DigitsExample,
    load_digits_data,
    write_digits_example,
)
from tests.conftest import require_tool
from tests.serving import infer_digits, scraped_metric

NAME = "digits"
ENTRY = {"edgemodel.io/pipeline-entry": "true"}
POOL = {"edgemodel.io/stage-pool": "shelf"}


class PipelineStack(SystemStack):
    """API emulator + kubelet, store, the operator, one entry node and two pool nodes (agents with mTLS ports)."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.entry = ""
        self.pool: list[str] = []

    def start(self) -> None:
        self.start_control_plane()
        self.start_store()
        pki = make_pki(self.dir / "pki")
        assert pki.peer_cert is not None
        assert pki.peer_key is not None
        (self.entry,) = self.cluster.add_nodes(1, labels=ENTRY)
        self.pool = [self.cluster.add_nodes(1, prefix="shelf-", labels={**POOL, "edgemodel.io/pipeline-order": str(k)})[0]
                     for k in (1, 2, 3)]
        self.nodes = [self.entry, *self.pool]
        tls = f" --split-port 0 --split-tls-ca {pki.ca} --split-tls-cert {pki.peer_cert} --split-tls-key {pki.peer_key}"
        self.cluster.run_on_nodes(self.agent_command(tls), self.nodes)
        self.wait_for_agents(4, 90)
        self.run_operator("operator", free(), free(), [
            "--standalone", "--converter-backoff-limit", "1", "--heartbeat-timeout-seconds", "8",
            "--resync-seconds", "2"])

    def agent(self, node: str) -> dict[str, Any]:
        return next(a for a in self.agents() if a["metadata"]["name"] == node)

    def entries(self, node: str) -> list[tuple[str, int]]:
        return [(m.get("role", "full"), m["revision"]) for m in (self.agent(node).get("spec") or {}).get("models") or []
                if m["name"] == NAME]

    def entry_of(self, node: str) -> dict[str, Any]:
        return next(m for m in self.agent(node)["spec"]["models"] if m["name"] == NAME)

    def states(self, node: str) -> list[tuple[str, str]]:
        return [(m.get("role", "full"), m["state"]) for m in (self.agent(node).get("status") or {}).get("models") or []
                if m["name"] == NAME]

    def status(self) -> dict[str, Any]:
        return (self.edgemodel(NAME) or {}).get("status") or {}

    def condition(self, type_: str) -> dict[str, Any]:
        return next((c for c in self.status().get("conditions", []) if c["type"] == type_), {})

    def status_text(self) -> str:
        return "status: " + json.dumps(self.status(), indent=1)[-3000:]


def free() -> int:
    from edgemodel_dev.net import free_port

    return free_port()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PipelineStack]:
    require_tool("kubectl")
    with PipelineStack(tmp_path_factory.mktemp("pipeline-e2e")) as s:
        yield s


@pytest.fixture(scope="module")
def example(stack: PipelineStack) -> DigitsExample:
    return write_digits_example(stack.dir / "models" / NAME, epochs=15, val_samples=128)


@dataclass
class Load:
    """Requests to one endpoint from ``workers`` threads until stopped; every outcome counted."""

    endpoint: str
    images: np.ndarray
    expected: np.ndarray
    workers: int = 3
    stop: threading.Event = field(default_factory=threading.Event)
    ok: int = 0
    wrong: int = 0
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    threads: list[threading.Thread] = field(default_factory=list)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                got = infer_digits(self.endpoint, self.images, timeout=30)
                same = bool((got.argmax(1) == self.expected.argmax(1)).mean() >= 0.97)
                with self.lock:
                    self.ok += 1
                    self.wrong += not same
            except Exception as exc:  # every failure is counted and shown
                with self.lock:
                    self.failures.append(repr(exc))

    def __enter__(self) -> Load:
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(self.workers)]
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)


def test_the_operator_places_gates_serves_and_replans_a_pipeline(stack: PipelineStack, example: DigitsExample) -> None:
    doc = example.manifest(NAME)
    spec = doc["spec"]
    spec["selector"] = {"matchLabels": ENTRY}
    spec["optimization"]["targets"] = [{"hardwareClass": "cpu", "precisions": ["fp32"]}]
    spec["validation"]["samples"] = 128
    spec["rollout"] = {"strategy": "AllAtOnce", "analysis": {"windowSeconds": 2}}
    spec["split"] = {"wire": "int8", "link": {"bandwidthMbitS": 100, "rttMs": 2},
                     "stages": {"count": 3, "pool": {"matchLabels": POOL}, "objective": "throughput"}}
    assert "created" in stack.apply(doc, "digits-pipeline.yaml")

    status = stack.wait_for("revision 1 Available", lambda: stack.status() if stack.status().get("phase") ==
                            "Available" and stack.status().get("revision") == 1 else None, 420,
                            detail=stack.status_text)
    assert status["ready"] == "1/1", "the entry is the only node the EdgeModel selects"
    first, second, spare = stack.pool
    assert stack.entries(stack.entry) == [("head", 1)]
    assert stack.entries(first) == [("tail", 1)]
    assert stack.entries(second) == [("tail", 1)]
    assert stack.entries(spare) == [], "3 stages: the entry and the first two pool nodes in pipeline order"
    head, middle, last = stack.entry_of(stack.entry), stack.entry_of(first), stack.entry_of(second)
    assert head["artifactUri"].endswith("/1/stage-1.onnx")
    assert head["split"]["cloudUrl"] == stack.agent(first)["status"]["splitEndpoint"]
    assert head["split"]["fullArtifactUri"].endswith("/1/model-cpu.onnx")
    assert middle["artifactUri"].endswith("/1/stage-2.onnx")
    assert middle["split"]["nextUrl"] == stack.agent(second)["status"]["splitEndpoint"]
    assert last["artifactUri"].endswith("/1/stage-3.onnx")
    chain = json.loads(urllib.request.urlopen(head["artifactUri"].rsplit("/", 1)[0] + "/chain.json",
                                              timeout=10).read())
    assert [head["split"]["cut"], middle["split"]["nextCut"]] == chain["cuts"]
    assert chain["plan"]["costs"]["segmentMs"], "the Job's profile travels with the plan"
    # no node is labelled with its speed and none has served a chain yet: identical devices, and the Job says why
    assert chain["plan"]["devicesFrom"].startswith("identical devices (spec.split.edgeSlowdown 4): no speed known")
    assert stack.condition("PipelinePlanCurrent")["status"] == "True"

    # Requests enter at stage 1 on the entry and are answered there; every stage counts them.
    data = load_digits_data()
    images = data.x_test[:16].astype(np.float32)
    model_path = stack.dir / "model-cpu.onnx"
    model_path.write_bytes(urllib.request.urlopen(status["artifacts"][0]["uri"], timeout=10).read())
    expected = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"]).run(
        None, {DIGITS_INPUT_NAME: images})[0]
    endpoint = stack.agent(stack.entry)["status"]["endpoint"]
    for _ in range(5):
        got = infer_digits(endpoint, images)
        assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.97, "INT8 features keep the predictions"
    assert scraped_metric(endpoint, "edgemodel_split_requests_total", path="split") >= 5
    # The operator checks the plan against the entry's measured stage-1 compute (headMs in its status).
    check = stack.wait_for("PipelinePlanCurrent from the entry's measured compute", lambda: (
        c := stack.condition("PipelinePlanCurrent")) and c["reason"] in ("PlanHolds", "BetterPlanMeasured") and c,
        60, detail=stack.status_text)
    assert "ms" in check["message"]
    # every stage node reports its own stage's compute (stageMs) in its EdgeAgent status for that check
    for node in (first, second):
        stack.wait_for(f"stageMs in the status of {node}", lambda n=node: any(
            m.get("role") == "tail" and (m.get("stageMs") or 0) > 0
            for m in stack.agent(n)["status"].get("models") or []), 60, detail=stack.status_text)
    for node in (first, second):
        tail_endpoint = stack.agent(node)["status"]["endpoint"]
        assert scraped_metric(tail_endpoint, "edgemodel_split_tail_requests_total", result="ok") >= 5

    # The last stage's node is lost under load: the entry answers at once, the operator re-plans: the
    # stage moves to the spare pool node and the chain runs again.
    spare_endpoint = stack.agent(spare)["status"]["endpoint"]
    with Load(endpoint, images, expected) as load:
        stack.wait_for("requests under way", lambda: load.ok >= 10, 60)
        stack.cluster.node_processes[second].stop()
        stack.wait_for("the stage moved to the spare node", lambda: stack.entries(spare) == [("tail", 1)]
                       and ("tail", "Ready") in stack.states(spare)
                       and stack.entry_of(first)["split"].get("nextUrl") == stack.agent(spare)["status"]["splitEndpoint"],
                       90, detail=stack.status_text)
        stack.wait_for("the chain answering through the spare node",
                       lambda: scraped_metric(
                           spare_endpoint, "edgemodel_split_tail_requests_total", result="ok") >= 5, 60,
                       detail=stack.status_text)
        moved = load.ok
        stack.wait_for("answers after the move", lambda: load.ok >= moved + 10, 60)
    assert load.failures == [], load.failures[:5]
    assert load.wrong == 0
    assert stack.entries(stack.entry) == [("head", 1)]
    assert stack.entries(second) == [], "the lost node's stage is taken off"
    assert scraped_metric(endpoint, "edgemodel_split_requests_total", path="local") >= 1, (
        "the fallback answered meanwhile")

    # The spare goes too: one pool node is too few for 3 stages, the entry serves the whole model.
    with Load(endpoint, images, expected) as load:
        stack.wait_for("requests under way", lambda: load.ok >= 10, 60)
        stack.cluster.node_processes[spare].stop()
        stack.wait_for("the re-planned chain: the whole model on the entry",
                       lambda: stack.entries(stack.entry) == [("full", 1)]
                       and ("full", "Ready") in stack.states(stack.entry), 90, detail=stack.status_text)
        settled = load.ok
        stack.wait_for("answers after the re-plan", lambda: load.ok >= settled + 20, 60)
    assert load.failures == [], load.failures[:5]
    assert load.wrong == 0
    condition = stack.condition("PipelinePlanCurrent")
    assert (condition["status"], condition["reason"]) == ("False", "StageNodesLost")
    assert stack.entries(first) == [], "the remaining pool node's stage is taken off: no chain runs without its end"
    events = json.loads(stack.cluster.kubectl("get", "events", "-o", "json").stdout)["items"]
    replanned = [e for e in events if e.get("reason") == "PipelineReplanned"]
    assert replanned
    assert replanned[-1]["type"] == "Warning"
    assert "only 1 fresh node(s)" in replanned[-1]["message"]
