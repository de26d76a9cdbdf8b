"""Selecting agents by labels, hardware and heartbeat; the artifact variant per hardware class."""

from __future__ import annotations

import datetime as dt

from edgemodel_operator.scheduling import AgentView, choose_artifact, select, variant_class
from tests.operator.builders import NOW, agent_body, artifacts, assignment, report, spec


def view(name: str, **kw: object) -> AgentView:
    return AgentView.from_body(agent_body(name, **kw))  # type: ignore[arg-type]


def test_agent_view_reads_spec_and_status() -> None:
    agent = view("edge-1", models=[assignment(3)], reported=[report(3, requests=7, errors=1, p95=4.5)])
    assert agent.assigned_revision("default", "digits") == 3
    assert agent.assigned_revision("other", "digits") is None
    rep = agent.report("default", "digits")
    assert rep is not None
    assert (rep.revision, rep.state, rep.request_count, rep.error_count, rep.p95_ms) == (
        3, "Ready", 7, 1, 4.5)
    assert agent.is_fresh(NOW + dt.timedelta(seconds=30), 60)
    assert not agent.is_fresh(NOW + dt.timedelta(seconds=61), 60)
    bare = AgentView.from_body({"metadata": {"name": "new"}})
    assert bare.heartbeat is None
    assert not bare.has_spec
    assert not bare.is_fresh(NOW, 60)


def test_selection_by_labels_hardware_and_heartbeat() -> None:
    agents = [
        view("a-fresh"),
        view("b-stale", heartbeat=NOW - dt.timedelta(minutes=5)),
        view("c-never", heartbeat=None),
        view("d-other-site", labels={"edge": "false"}),
        view("e-arm", arch="arm64"),
        view("f-small", memory_bytes=256 << 20),
        view("g-gpu", hardware_class="gpu"),
    ]
    s = spec(hardware={"architectures": ["amd64"], "minMemoryMiB": 512})
    sel = select(s, "default", "digits", agents, NOW, 60)
    assert [a.name for a in sel.fresh] == ["a-fresh", "g-gpu"]
    assert [a.name for a in sel.stale] == ["b-stale", "c-never"]
    assert "hardware.architectures" in sel.excluded["e-arm"]
    assert "hardware.minMemoryMiB" in sel.excluded["f-small"]
    assert "d-other-site" not in sel.excluded
    gpu_only = select(spec(hardware={"requireGpu": True}, optimization={"targets": [{"hardwareClass": "gpu"}]}),
                      "default", "digits", agents, NOW, 60)
    assert [a.name for a in gpu_only.fresh] == ["g-gpu"]


def test_a_node_serving_a_same_named_model_of_another_namespace_is_excluded() -> None:
    agent = view("edge-1", models=[assignment(1, namespace="team-b")])
    sel = select(spec(), "default", "digits", [agent], NOW, 60)
    assert sel.fresh == []
    assert "team-b" in sel.excluded["edge-1"]


def test_variant_per_hardware_class() -> None:
    assert variant_class("cpu", {"cpu", "gpu"}) == "cpu"
    assert variant_class("gpu", {"cpu", "gpu"}) == "gpu"
    assert variant_class("gpu", {"cpu"}) == "cpu", "a GPU node can run the CPU artifact"
    assert variant_class("cpu", {"gpu"}) is None, "an FP16 GPU artifact is never sent to a CPU node"
    both = artifacts(1, ("cpu", "gpu"))
    assert choose_artifact("gpu", both).precision.value == "fp16"  # type: ignore[union-attr]
    assert choose_artifact("cpu", both).precision.value == "int8"  # type: ignore[union-attr]
    excluded = select(spec(optimization={"targets": [{"hardwareClass": "gpu"}]}), "default", "digits",
                      [view("cpu-node")], NOW, 60).excluded
    assert "no artifact is built for hardware class cpu" in excluded["cpu-node"]
