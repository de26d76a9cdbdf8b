"""Split inference in the operator: heads on edge nodes, per-revision tails on cloud agents, the tail gate."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from edgemodel.api import ArtifactRef, SplitArtifacts
from edgemodel.api.edgemodel import Serving, Split
from edgemodel_dev.errors import ApiError as EmulatorError
from edgemodel_dev.patching import json_patch
from edgemodel_operator.assignments import (
    desired_assignment,
    patch_for,
    removal_patch,
    tail_assignment,
    tails_patch,
)
from edgemodel_operator.decide import cloud_url, split_gate, tail_revisions
from edgemodel_operator.fleet import woken_models
from edgemodel_operator.jobs import with_measured_rtt
from edgemodel_operator.revisions import build_hash
from edgemodel_operator.scheduling import AgentView, measured_rtt_ms, select, select_cloud
from tests.operator.builders import NOW, SHA, agent_body, artifacts, assignment, report, spec

STORE = "http://store:8080"
CLOUD = {"edgemodel.io/tier": "cloud"}
HEAD_SHA, TAIL_SHA = "b" * 64, "c" * 64


def split_artifacts(revision: int, classes: tuple[str, ...] = ("cpu",)) -> list[ArtifactRef]:
    base = f"{STORE}/default/digits/{revision}"
    split = SplitArtifacts(cut="relu_1", wire="int8+zstd", head_uri=f"{base}/head.onnx", head_sha256=HEAD_SHA,
                           tail_uri=f"{base}/tail.onnx", tail_sha256=TAIL_SHA, manifest_uri=f"{base}/split.json")
    return [a.model_copy(update={"split": split}) for a in artifacts(revision, classes)]


def split_spec(**split: Any) -> Any:
    return spec(split={"cut": "relu_1", **split})


def cloud_body(name: str = "cloud-1", *, endpoint: str = "https://cloud-1:8443",
               labels: dict[str, str] | None = None, **kw: Any) -> dict[str, Any]:
    body = agent_body(name, labels=dict(CLOUD) if labels is None else labels, **kw)
    body["status"]["splitEndpoint"] = endpoint
    return body


def tail_report(revision: int, state: str = "Ready", **kw: Any) -> dict[str, Any]:
    return {**report(revision, state, **kw), "role": "tail"}


def test_edge_nodes_get_the_head_and_the_whole_model_only_with_fallback_local() -> None:
    agent = AgentView.from_body(agent_body("edge-1"))
    local = desired_assignment("default", "digits", 2, agent, split_artifacts(2), Serving(), STORE, STORE,
                               Split(cut="relu_1"), "https://cloud:8443")
    assert local is not None
    assert local["role"] == "head"
    assert local["artifactUri"].endswith("/2/head.onnx")
    assert local["sha256"] == HEAD_SHA
    assert local["manifestUri"].endswith("/2/manifest.json")
    assert local["split"] == {"cut": "relu_1", "wire": "int8+zstd", "cloudUrl": "https://cloud:8443",
                              "fallback": "local", "fullArtifactUri": f"{STORE}/default/digits/2/model-cpu.onnx",
                              "fullSha256": SHA}
    fail = desired_assignment("default", "digits", 2, agent, split_artifacts(2), Serving(), STORE, STORE,
                              Split(cut="relu_1", fallback="fail"), "https://cloud:8443")
    assert fail is not None
    assert fail["split"]["fallback"] == "fail"
    assert "fullArtifactUri" not in fail["split"]
    assert "fullSha256" not in fail["split"]
    # The same split revision with spec.split turned off (or a revision without split artifacts) is the whole model.
    for arts, split in ((split_artifacts(2), Split()), (artifacts(2), Split(cut="relu_1"))):
        full = desired_assignment("default", "digits", 2, agent, arts, Serving(), STORE, STORE, split, "https://c")
        assert full is not None
        assert full["role"] == "full"
        assert "split" not in full
        assert full["artifactUri"].endswith("/model-cpu.onnx")


def test_tails_are_one_entry_per_revision_and_leave_other_entries_alone() -> None:
    other = assignment(5, name="speech")
    body = cloud_body(models=[other])
    agent = AgentView.from_body(body)
    tails = {r: tail_assignment("default", "digits", r, split_artifacts(r), STORE, STORE) for r in (1, 2)}
    assert all(t is not None for t in tails.values())
    entry = tails[2]
    assert entry is not None
    assert entry["role"] == "tail"
    assert entry["sha256"] == TAIL_SHA
    assert entry["artifactUri"].endswith("/2/tail.onnx")
    assert entry["split"] == {"cut": "relu_1", "wire": "int8+zstd", "cloudUrl": "", "fallback": "local"}
    desired = {r: t for r, t in tails.items() if t is not None}
    body = json_patch(body, tails_patch(agent, "default", "digits", desired) or [])
    assert [(m["name"], m.get("role", "full"), m["revision"]) for m in body["spec"]["models"]] == [
        ("speech", "full", 5), ("digits", "tail", 1), ("digits", "tail", 2)]
    body["metadata"]["generation"] += 1
    agent = AgentView.from_body(body)
    assert agent.tail_revisions("default", "digits") == {1, 2}
    assert agent.assignment_index("default", "digits") is None, "tails are not the node's own model entry"
    assert tails_patch(agent, "default", "digits", desired) is None, "nothing to write when it matches"
    body = json_patch(body, tails_patch(agent, "default", "digits", {2: desired[2]}) or [])
    body["metadata"]["generation"] += 1
    agent = AgentView.from_body(body)
    assert agent.tail_revisions("default", "digits") == {2}
    body = json_patch(body, tails_patch(agent, "default", "digits", {}) or [])
    assert body["spec"]["models"] == [other]
    assert tail_assignment("default", "digits", 3, artifacts(3), STORE, STORE) is None


def test_a_stale_cloud_view_is_refused() -> None:
    body = cloud_body(generation=3)
    stale = AgentView.from_body({**body, "metadata": {**body["metadata"], "generation": 2}})
    entry = tail_assignment("default", "digits", 1, split_artifacts(1), STORE, STORE)
    assert entry is not None
    with pytest.raises(EmulatorError):
        json_patch(body, tails_patch(stale, "default", "digits", {1: entry}) or [])


def test_cloud_agents_never_get_edge_models_and_are_chosen_by_the_cloud_selector() -> None:
    edge = AgentView.from_body(agent_body("edge-1"))
    cloud = AgentView.from_body(cloud_body("cloud-1", labels={**CLOUD, "edge": "true"}))
    other_cloud = AgentView.from_body(cloud_body("cloud-2", labels={**CLOUD, "pool": "b"}))
    old = AgentView.from_body(cloud_body("cloud-3", heartbeat=NOW - dt.timedelta(minutes=5)))
    everyone = [edge, cloud, other_cloud, old]
    s = split_spec()
    assert [a.name for a in select(s, "default", "digits", everyone, NOW, 30).fresh] == ["edge-1"]
    chosen = select_cloud(s, everyone, NOW, 30)
    assert [a.name for a in chosen.fresh] == ["cloud-1", "cloud-2"]
    assert [a.name for a in chosen.stale] == ["cloud-3"]
    narrow = split_spec(cloud={"selector": {"matchLabels": {"pool": "b"}}})
    assert [a.name for a in select_cloud(narrow, everyone, NOW, 30).fresh] == ["cloud-2"]
    assert select_cloud(spec(), everyone, NOW, 30).total == 0, "no split, no cloud agents"
    assert cloud_url(s, chosen) == "https://cloud-1:8443"
    assert cloud_url(split_spec(cloud={"serviceUrl": "https://svc:8443"}), chosen) == "https://svc:8443"


def test_the_tail_gate_waits_for_every_fresh_cloud_agent_and_fails_on_a_failed_tail() -> None:
    def gate(*bodies: dict[str, Any], url: str = "https://c:8443") -> tuple[str | None, str | None]:
        selection = select_cloud(split_spec(), [AgentView.from_body(b) for b in bodies], NOW, 30)
        return split_gate("default", "digits", 2, selection, url)

    wait, failed = gate()
    assert failed is None
    assert wait is not None
    assert "spec.split.cloud.selector" in wait
    wait, failed = gate(cloud_body(), url="")
    assert failed is None
    assert wait is not None
    assert "splitEndpoint" in wait
    wait, failed = gate(cloud_body("cloud-1", reported=[tail_report(2)]), cloud_body("cloud-2", reported=[]))
    assert failed is None
    assert wait is not None
    assert "cloud-2" in wait
    assert "cloud-1" not in wait
    # A Ready full model or a tail of another revision does not count.
    wait, _ = gate(cloud_body(reported=[report(2), tail_report(1)]))
    assert wait is not None
    assert gate(cloud_body("cloud-1", reported=[tail_report(2)]), cloud_body("cloud-2", reported=[tail_report(2)])) \
        == (None, None)
    wait, failed = gate(cloud_body(reported=[tail_report(2, "Failed", reason="LoadFailed", message="bad graph")]))
    assert wait is None
    assert failed is not None
    assert "cloud-1" in failed
    assert "LoadFailed" in failed
    assert "bad graph" in failed


def test_tails_serve_every_split_revision_an_edge_node_runs_or_switches_from() -> None:
    arts = {1: split_artifacts(1), 2: split_artifacts(2), 3: artifacts(3)}
    agents = [AgentView.from_body(agent_body("edge-1", models=[assignment(1)])),
              AgentView.from_body(agent_body("edge-2", models=[assignment(1)])),
              AgentView.from_body(agent_body("edge-3")),
              AgentView.from_body(cloud_body(models=[{**assignment(7), "role": "tail"}]))]
    assert tail_revisions("default", "digits", agents, {}, arts, True, None) == {1}
    # A canary moves edge-1 to 2: tails of 1 (edge-2, and edge-1 until 2 is ready) and 2.
    assert tail_revisions("default", "digits", agents, {"edge-1": 2, "edge-3": 2}, arts, True, None) == {1, 2}
    assert tail_revisions("default", "digits", agents, {"edge-1": None, "edge-2": None}, arts, True, 2) == {1, 2}
    assert tail_revisions("default", "digits", agents, {"edge-3": 3}, arts, True, None) == {1}, "3 has no split"
    assert tail_revisions("default", "digits", agents, {}, arts, False, None) == set()


def test_only_the_parts_of_spec_split_that_change_head_and_tail_open_a_revision() -> None:
    base = build_hash(spec())
    assert build_hash(spec(split={"cut": "none", "wire": "fp16"})) == base, "split none keeps the old hash"
    on = build_hash(split_spec())
    assert on != base
    assert build_hash(split_spec(fallback="fail", cloud={"serviceUrl": "https://svc:8443"})) == on
    assert build_hash(split_spec(wire="fp16")) != on
    assert build_hash(spec(split={"cut": "auto", "link": {"bandwidthMbitS": 10}})) not in (on, base)


def test_a_cloud_agent_reporting_its_split_endpoint_wakes_every_model() -> None:
    before = AgentView.from_body(cloud_body(endpoint=""))
    after = AgentView.from_body(cloud_body(endpoint="https://cloud-1:8443"))
    assert woken_models(before, after, NOW, 30) is None
    tail_ready = AgentView.from_body(cloud_body(reported=[tail_report(1, "Loading"), tail_report(2)]))
    tail_ready_2 = AgentView.from_body(cloud_body(reported=[tail_report(1), tail_report(2)]))
    assert woken_models(tail_ready, tail_ready_2, NOW, 30) == {("default", "digits")}


def test_split_spec_errors_name_the_field_and_the_fix() -> None:
    with pytest.raises(ValueError, match=r"spec\.split\.link: cut auto needs the link"):
        spec(split={"cut": "auto"})
    with pytest.raises(ValueError, match=r"spec\.split\.budgetMs: objective edgeCompute needs budgetMs"):
        spec(split={"cut": "relu", "objective": "edgeCompute"})
    with pytest.raises(ValueError, match=r"spec\.split\.quantizeParts: quantizeParts needs calibration data"):
        spec(split={"cut": "relu", "quantizeParts": True})
    with pytest.raises(ValueError, match="wire"):
        spec(split={"cut": "relu", "wire": "int4"})


def test_patch_for_ignores_tails_of_the_same_model() -> None:
    body = cloud_body(models=[{**assignment(1), "role": "tail"}])
    agent = AgentView.from_body(body)
    assert patch_for(agent, "default", "digits", None) is None


def head_report(revision: int, rtt: float | None) -> dict[str, Any]:
    return {**report(revision), "role": "head", "cloudRttMs": rtt}


def test_the_rtt_the_heads_measure_plans_the_next_cut_when_the_spec_leaves_it_empty() -> None:
    agents = [AgentView.from_body(agent_body(f"edge-{i}", reported=[head_report(1, rtt)]))
              for i, rtt in enumerate((30.0, 10.0, 24.0, None))]
    agents.append(AgentView.from_body(agent_body("edge-full", reported=[{**report(1), "cloudRttMs": 99.0}])))
    agents.append(AgentView.from_body(cloud_body(reported=[{**tail_report(1), "cloudRttMs": 99.0}])))
    measured = measured_rtt_ms("default", "digits", agents)
    assert measured == (24.0, 3), "the median of the heads that measured one; full models and tails do not count"
    assert measured_rtt_ms("default", "other", agents) is None

    empty = split_spec(cut="auto", link={"bandwidthMbitS": 10})
    filled = with_measured_rtt(empty, measured)
    assert filled.split.link is not None
    assert filled.split.link.rtt_ms == 24.0
    assert empty.split.link is not None
    assert empty.split.link.rtt_ms is None, "the user's spec is not changed"
    declared = split_spec(cut="auto", link={"bandwidthMbitS": 10, "rttMs": 5})
    assert with_measured_rtt(declared, measured) is declared, "a declared RTT wins"
    assert with_measured_rtt(empty, None) is empty, "nothing measured yet: the converter's default applies"
    assert with_measured_rtt(spec(), measured).split.link is None


def test_deleting_a_model_takes_its_entry_and_its_tails_off_in_one_guarded_write() -> None:
    other = assignment(5, name="speech")
    body = cloud_body(models=[other, assignment(3), {**assignment(1), "role": "tail"}, {**assignment(2), "role": "tail"}],
                      generation=7)
    agent = AgentView.from_body(body)
    ops = removal_patch(agent, namespace="default", name="digits")
    assert ops is not None
    assert json_patch(body, ops)["spec"]["models"] == [other]
    stale = AgentView.from_body({**body, "metadata": {**body["metadata"], "generation": 6}})
    with pytest.raises(EmulatorError):
        json_patch(body, removal_patch(stale, namespace="default", name="digits") or [])
    assert removal_patch(agent, namespace="other", name="digits") is None
