"""The devices a pipeline's auto cuts are planned for: node speeds measured by a serving chain or labelled,
the slowest entry first, handed to the conversion Job as JSON and kept in chain.json."""

from __future__ import annotations

from typing import Any

import pytest

from edgemodel.api import EdgeModelSpec
from edgemodel.api.edgemodel import STAGE_OVERHEAD_LABEL, STAGE_SLOWDOWN_LABEL
from edgemodel.split.chain_devices import (
    LABELLED,
    MEASURED,
    PlanDevices,
    device_from_dict,
    parse_overhead_ms,
    parse_slowdown,
)
from edgemodel.split.chain_planner import ChainCosts, ChainLinks, ChainObjective, Device, plan_chain
from edgemodel.split.planner import Link, PlanError
from edgemodel_operator.pipeline_rollout import job_devices, measured_slowdowns, planned_nodes
from edgemodel_operator.scheduling import AgentView, ReportedModel

BASE: dict[str, Any] = {
    "source": {"uri": "file:///m.onnx", "format": "ONNX"},
    "inputs": [{"name": "x", "dtype": "float32", "shape": [1, 3]}],
}
COSTS = {"cuts": ["a", "c1", "b", "c2", "d"], "segmentMs": [5.0, 5.0, 4.0, 6.0, 0.05, 0.05],
         "featureBytes": [1000] * 5, "outputBytes": 40, "segmentBytes": [], "codecMs": [0.1] * 5}
CHAIN = {"cuts": ["c1", "c2"], "plan": {"devices": ["stage-1", "stage-2", "stage-3"], "costs": COSTS},
         "stages": [{"cutIn": None, "cutOut": "c1"}, {"cutIn": "c1", "cutOut": "c2"}, {"cutIn": "c2", "cutOut": None}]}


def split(**stages: Any) -> Any:
    return EdgeModelSpec.model_validate({**BASE, "split": {"link": {"bandwidthMbitS": 100, "rttMs": 2}, "stages": {
        "pool": {"matchLabels": {"pool": "x"}}, **stages}}}).split


def agent(name: str, slowdown: str | None = None, memory: int = 0, overhead: str | None = None,
          reported: tuple[ReportedModel, ...] = (), tail_cut: str | None = None) -> AgentView:
    labels = {"pool": "x"}
    if slowdown is not None:
        labels[STAGE_SLOWDOWN_LABEL] = slowdown
    if overhead is not None:
        labels[STAGE_OVERHEAD_LABEL] = overhead
    models = ({"name": "m", "namespace": "ns", "revision": 1, "role": "tail", "split": {"cut": tail_cut}},) \
        if tail_cut else ()
    return AgentView(name, labels=labels, memory_bytes=memory, split_endpoint=f"https://{name}",
                     reported=reported, spec_models=models)


def head(ms: float | None, revision: int = 1) -> ReportedModel:
    return ReportedModel("m", "ns", revision, "Ready", serving_revision=revision, role="head", head_ms=ms)


def tail(ms: float | None) -> ReportedModel:
    return ReportedModel("m", "ns", 1, "Ready", serving_revision=1, role="tail", stage_ms=ms)


def test_the_slowest_entry_and_every_host_in_pool_order_with_their_labelled_speeds() -> None:
    entries = [agent("e1", "3", memory=4 << 20), agent("e2", "6", memory=2 << 20)]
    hosts = [agent("p1", "2", overhead="1.5"), agent("p2", "0.5", memory=1 << 20)]
    got = job_devices(split(), entries, hosts, {})
    assert got.devices == (Device("e2", 6.0, 2 << 20), Device("p1", 2.0, None, 1.5), Device("p2", 0.5, 1 << 20))
    assert got.sources == (LABELLED, LABELLED, LABELLED)
    assert "the entry is the slowest of 2 entry node(s)" in got.reason
    assert not got.pinned
    assert got.allowed() is None


def test_a_measured_speed_beats_the_label_and_an_unknown_one_falls_back_with_the_reason() -> None:
    hosts = [agent("p1", "9"), agent("p2")]
    got = job_devices(split(), [agent("e1", "4")], hosts, {"p1": 2.0, "p2": 3.0}, revision=7)
    assert [(d.name, d.slowdown) for d in got.devices] == [("e1", 4.0), ("p1", 2.0), ("p2", 3.0)]
    assert got.sources == (LABELLED, MEASURED, MEASURED)
    assert "(measured by revision 7)" in got.reason
    unknown = job_devices(split(), [agent("e1", "4")], hosts, {"p1": 2.0})
    assert not unknown.known
    assert unknown.devices == ()
    assert unknown.reason.startswith(f"no speed known for node(s) p2: label them {STAGE_SLOWDOWN_LABEL}=")
    assert not job_devices(split(), [], hosts, {"p1": 1.0, "p2": 1.0}).known
    bad = job_devices(split(), [agent("e1", "fast")], [agent("p1", "-2")], {})
    assert "e1, p1" in bad.reason, "labels that are not positive numbers count as unknown"


def test_stage_selectors_pin_each_stage_to_its_node() -> None:
    s = split(pool=None, stageSelectors=[{"matchLabels": {"pool": "x"}}, {"matchLabels": {"pool": "x"}}])
    got = job_devices(s, [agent("e1", "4")], [agent("p1", "1"), agent("p2", "1")], {})
    assert got.pinned
    assert got.allowed() == [None, frozenset({"p1"}), frozenset({"p2"})]


def test_the_device_list_round_trips_through_the_job_env_and_chain_json() -> None:
    got = job_devices(split(), [agent("e1", "4", memory=1 << 30)], [agent("p1", "2", overhead="3")], {"e1": 5.5})
    back = PlanDevices.from_json(got.to_json())
    assert back == got
    assert [device_from_dict(d) for d in got.specs()] == list(got.devices)
    with pytest.raises(PlanError, match="EDGEMODEL_PIPELINE_DEVICES"):
        PlanDevices.from_json("[1, 2]")
    with pytest.raises(PlanError, match="needs name and slowdown"):
        PlanDevices.from_json('{"devices": [{"name": "x"}]}')
    assert parse_slowdown("2.5") == 2.5
    assert [parse_slowdown(v) for v in ("", None, "0", "-1", "inf", "nan", "x")] == [None] * 7
    assert [parse_overhead_ms(v) for v in ("1.5", "0")] == [1.5, 0.0]
    assert [parse_overhead_ms(v) for v in ("", None, "-1", "inf", "nan", "x")] == [0.0] * 6


def test_speeds_measured_by_a_serving_chain_are_its_stages_compute_over_their_reference_ms() -> None:
    agents = [
        agent("e1", reported=(head(40.0),)),  # stage 1 = segments a, c1: 10 reference ms
        agent("p1", reported=(tail(30.0),), tail_cut="c1"),  # stage 2 = b, c2: 10 ms
        agent("p2", reported=(tail(1.0),), tail_cut="c2"),  # stage 3 = 0.1 ms: too small to tell a speed
        agent("p3", reported=(tail(None),), tail_cut="c1"),  # nothing measured yet
        agent("e2", reported=(head(80.0, revision=2),)),  # serves another revision
    ]
    assert measured_slowdowns("ns", "m", 1, CHAIN, agents) == {"e1": 4.0, "p1": 3.0}
    assert measured_slowdowns("ns", "m", 1, {**CHAIN, "plan": None}, agents) == {}, "manual cuts: no costs"
    assert measured_slowdowns("ns", "m", 1, None, agents) == {}


def test_a_plan_from_measured_devices_is_reproducible_from_its_device_list() -> None:
    costs = ChainCosts.from_dict(COSTS)
    got = job_devices(split(), [agent("e1", "8")], [agent("p1", "1"), agent("p2", "2")], {})
    links = ChainLinks(Link(100, 2))
    first = plan_chain(costs, got.devices, links, ChainObjective.THROUGHPUT, max_stages=3)
    again = plan_chain(costs, [device_from_dict(d) for d in PlanDevices.from_json(got.to_json()).specs()], links,
                       ChainObjective.THROUGHPUT, max_stages=3)
    assert first == again
    assert first.devices[0] == "e1"
    assert len(first.stages) >= 2
    assert first.stages[0].last < 2, "the slow entry keeps less than its identical-device share"


def test_planned_nodes_follow_the_plan_and_replace_a_lost_node_with_the_next_free_one() -> None:
    hosts = [agent(n) for n in ("p1", "p2", "p3")]
    chain = {"plan": {"devices": ["e1", "p2", "p3"]}}
    assert [a.name for a in planned_nodes(chain, hosts, 2)] == ["p2", "p3"]
    assert [a.name for a in planned_nodes(chain, [hosts[0], hosts[2]], 2)] == ["p1", "p3"]
    assert planned_nodes(chain, [hosts[0]], 2) == ()
    assert planned_nodes({"plan": {"devices": ["stage-1", "stage-2", "stage-3"]}}, hosts, 2) == ()
    assert planned_nodes({"plan": None}, hosts, 2) == ()
