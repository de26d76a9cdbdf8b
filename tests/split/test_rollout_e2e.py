"""A split rollout end to end on the emulated cluster, every component a real process.

kubectl applies an EdgeModel with ``spec.split.cut: auto``; the conversion Job (a local process
run by the kubelet) builds head and tail; the operator gives the tail to the cloud agent (a node
labelled edgemodel.io/tier=cloud, serving tails on an mTLS port) and, once it is Ready there, the
head to the three edge agents. Clients then get ordinary v2 answers from the edge agents that match
the whole model. A second revision, its RTT left empty, is planned for the RTT the heads measured
and canaried with both revisions' tails in the cloud. With the cloud agent gone the edge answers
with the whole model (fallback local).
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import onnxruntime as ort
import pytest

from edgemodel_dev.demo.stack import DemoStack
from edgemodel_dev.examples_models import (
    DIGITS_INPUT_NAME,
    DigitsExample,
    load_digits_data,
    write_digits_example,
)
from tests.conftest import require_tool
from tests.serving import infer_digits, scraped_metric

T = TypeVar("T")
NAME = "digits"


class SplitStack(DemoStack):
    """The demo's processes (three edge nodes, one cloud node, the agents talking mTLS), without Prometheus."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir, with_prometheus=False, with_cloud=True)

    def phase_status(self, phase: str, revision: int) -> dict[str, Any] | None:
        """The EdgeModel's status once it is in ``phase`` with ``revision`` serving, else None."""
        status: dict[str, Any] = (self.edgemodel(NAME) or {}).get("status") or {}
        return status if status.get("phase") == phase and status.get("revision") == revision else None

    def status_text(self) -> str:
        return "status: " + json.dumps((self.edgemodel(NAME) or {}).get("status"), indent=1)[-3000:]

    def agent(self, node: str) -> dict[str, Any]:
        return next(a for a in self.agents() if a["metadata"]["name"] == node)

    def entries(self, node: str) -> list[dict[str, Any]]:
        return [m for m in (self.agent(node).get("spec") or {}).get("models") or [] if m["name"] == NAME]

    def states(self, node: str) -> list[dict[str, Any]]:
        return [m for m in (self.agent(node).get("status") or {}).get("models") or [] if m["name"] == NAME]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SplitStack]:
    require_tool("kubectl")
    s = SplitStack(tmp_path_factory.mktemp("split-e2e"))
    try:
        s.start_control_plane()
        s.start_store()
        s.start_agents()
        s.start_operator()
        yield s
    finally:
        s.close()


@pytest.fixture(scope="module")
def example(stack: SplitStack) -> DigitsExample:
    return write_digits_example(stack.dir / "models" / NAME, epochs=15, val_samples=128)


def test_a_split_revision_rolls_out_head_to_the_edge_and_tail_to_the_cloud(stack: SplitStack,
                                                                           example: DigitsExample) -> None:
    doc = example.manifest(NAME)
    doc["spec"]["validation"]["samples"] = 128
    doc["spec"]["rollout"] = {"strategy": "AllAtOnce", "analysis": {"windowSeconds": 2}}
    doc["spec"]["split"] = {"cut": "auto", "wire": "int8", "link": {"bandwidthMbitS": 100, "rttMs": 1},
                            "fallback": "local"}
    assert "created" in stack.apply(doc, "digits-split.yaml")

    status = stack.wait_for("revision 1 Available", lambda: stack.phase_status("Available", 1), 420,
                            detail=stack.status_text)
    assert status["ready"] == "3/3"
    split = status["artifacts"][0]["split"]
    assert split["chosenBy"] == "auto"
    assert split["wire"] == "int8"
    assert split["headUri"].endswith("/1/head.onnx")
    assert split["tailUri"].endswith("/1/tail.onnx")

    # The tail went to the cloud node only, the heads to the edge nodes, pointing at the cloud's mTLS port.
    cloud = stack.cloud_nodes[0]
    split_endpoint = stack.agent(cloud)["status"]["splitEndpoint"]
    assert split_endpoint.startswith("https://127.0.0.1:")
    assert [(m["role"], m["revision"], m["sha256"]) for m in stack.entries(cloud)] == [
        ("tail", 1, split["tailSha256"])]
    assert [(m["role"], m["state"]) for m in stack.states(cloud)] == [("tail", "Ready")]
    for node in stack.edge_nodes:
        (entry,) = stack.entries(node)
        assert entry["role"] == "head"
        assert entry["sha256"] == split["headSha256"]
        assert entry["split"]["cloudUrl"] == split_endpoint
        assert entry["split"]["cut"] == split["cut"]
        assert entry["split"]["fullSha256"] == status["artifacts"][0]["sha256"]
    assert NAME not in json.dumps(stack.entries(cloud)[0].get("split", {}).get("cloudUrl", ""))

    # Clients see one ordinary v2 endpoint per edge node whose answers match the whole model.
    data = load_digits_data()
    images = data.x_test[:32].astype(np.float32)
    model_path = stack.dir / "model-cpu.onnx"
    model_path.write_bytes(urllib.request.urlopen(status["artifacts"][0]["uri"], timeout=10).read())
    whole = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    expected = whole.run(None, {DIGITS_INPUT_NAME: images})[0]
    edges = [stack.agent(n)["status"]["endpoint"] for n in stack.edge_nodes]
    for endpoint in edges:
        got = infer_digits(endpoint, images)
        assert got.shape == expected.shape
        assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.97, "INT8 features keep the predictions"
        assert np.abs(got - expected).max() < 0.05 * np.abs(expected).max()
        assert scraped_metric(endpoint, "edgemodel_split_requests_total", path="split") >= 1
        assert scraped_metric(endpoint, "edgemodel_split_transfer_bytes_total", direction="up") > 0
        assert scraped_metric(endpoint, "edgemodel_split_stage_duration_seconds_count", stage="tail") >= 1
    cloud_endpoint = stack.agent(cloud)["status"]["endpoint"]
    assert scraped_metric(cloud_endpoint, "edgemodel_split_tail_requests_total", result="ok") >= len(edges)
    assert scraped_metric(cloud_endpoint, "edgemodel_split_tail_duration_seconds_count") >= len(edges)
    stack.wait_for("the heads' measured cloud RTT in status",
                   lambda: all(s.get("cloudRttMs") is not None for n in stack.edge_nodes for s in stack.states(n)),
                   30, detail=stack.status_text)
    # The operator checks the auto cut against what the heads measure (RTT and head compute).
    check = stack.wait_for("SplitCutCurrent from the heads' RTT and compute", lambda: next(
        (c for c in ((stack.edgemodel(NAME) or {}).get("status") or {}).get("conditions", [])
         if c["type"] == "SplitCutCurrent" and ("cloud RTT and head compute" in c["message"]
                                                or c["reason"] == "BetterCutMeasured")), None),
        30, detail=stack.status_text)
    assert check["reason"] in ("CutHolds", "BetterCutMeasured"), check
    assert "3 edge head(s) measure" in check["message"]

    # Revision 2 leaves rttMs empty: the operator plans its cut for the RTT the heads measured, and the
    # canary runs with both tails in the cloud until every edge node moved.
    doc["spec"]["split"]["link"] = {"bandwidthMbitS": 50}
    doc["spec"]["rollout"] = {"strategy": "Canary", "steps": [50, 100], "maxUnavailable": 1,
                              "analysis": {"windowSeconds": 3}}
    assert "configured" in stack.apply(doc, "digits-split-2.yaml")
    stack.wait_for("both tails on the cloud agent during the canary",
                   lambda: [m["revision"] for m in stack.entries(cloud)] == [1, 2], 240, detail=stack.status_text)
    status = stack.wait_for("revision 2 Available", lambda: stack.phase_status("Available", 2), 300,
                            detail=stack.status_text)
    stack.wait_for("only the tail of revision 2 left", lambda: [m["revision"] for m in stack.entries(cloud)] == [2],
                   30, detail=stack.status_text)
    for node in stack.edge_nodes:
        assert [(m["role"], m["revision"]) for m in stack.entries(node)] == [("head", 2)]
    split = status["artifacts"][0]["split"]
    plan = json.loads(urllib.request.urlopen(split["manifestUri"], timeout=10).read())["plan"]
    events = json.loads(stack.cluster.kubectl("get", "events", "-o", "json").stdout)["items"]
    measured = [e["message"] for e in events if e.get("reason") == "SplitLinkMeasured"]
    assert measured, "the operator said which RTT it planned for"
    assert f"a {plan['link']['rttMs']:.1f} ms RTT measured by 3 edge node(s)" in measured[-1]
    assert plan["link"]["bandwidthMbitS"] == 50.0
    # Revision 2 may have chosen another candidate: compare the fallback with its own whole model.
    model_path.write_bytes(urllib.request.urlopen(status["artifacts"][0]["uri"], timeout=10).read())
    whole = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    expected = whole.run(None, {DIGITS_INPUT_NAME: images})[0]
    for endpoint in edges:
        assert (infer_digits(endpoint, images).argmax(1) == expected.argmax(1)).mean() >= 0.97

    # The cloud goes away: the edge keeps answering with the whole model (fallback local).
    stack.cluster.node_processes[cloud].stop()
    for endpoint in edges:
        got = infer_digits(endpoint, images, timeout=30)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
        assert scraped_metric(endpoint, "edgemodel_split_requests_total", path="local") >= 1
    stack.wait_for("fallbackCount in the edge agents' status",
                   lambda: all(s.get("fallbackCount", 0) >= 1 for n in stack.edge_nodes for s in stack.states(n)),
                   30, detail=stack.status_text)

    # Deleting the EdgeModel takes heads and tails off every agent, the stopped cloud agent's included.
    stack.cluster.kubectl("delete", "edgemodel", NAME, "--wait=true", "--timeout=60s")
    for node in stack.nodes:
        assert stack.entries(node) == [], f"{node} still holds {stack.entries(node)}"
