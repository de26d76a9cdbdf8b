"""decide() for pipelines (spec.split.stages): stage nodes, the chain gate, entries, re-planning, PipelinePlanCurrent.

A scripted world as in test_decide: one entry (``e1``, selected by the EdgeModel) and three pool nodes
(``p1``..``p3``, labelled for spec.split.stages.pool, each reporting a split endpoint). ``step`` plays
observe (the Job, chain.json) and act (agent entries and stage tails written into the bodies).
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import json
from typing import Any

from edgemodel.api import EdgeModelStatus, RevisionOutcome
from edgemodel.api.edgemodel import STAGE_OVERHEAD_LABEL, STAGE_SLOWDOWN_LABEL
from edgemodel.split.chain_devices import ENV as DEVICES_ENV
from edgemodel.split.chain_devices import PlanDevices
from edgemodel_operator.decide import Decision, JobSeen, Wants, decide
from tests.operator.builders import agent_body, report
from tests.operator.test_decide import World as DecideWorld
from tests.operator.test_decide import (
    conditions,
    model_body,
    reasons,
    settings,
    snapshot,
    wire_spec,
)

POOL = {"edgemodel.io/stage-pool": "shelf"}
CUTS = ["c1", "c2"]


def chain_doc(plan: dict[str, Any] | None = None) -> dict[str, Any]:
    bounds: list[str | None] = [None, *CUTS, None]
    return {"kind": "edgemodel-chain/v1", "cuts": CUTS, "wire": "int8",
            "stages": [{"index": k + 1, "file": f"stage-{k + 1}.onnx", "sha256": str(k) * 64,
                        "cutIn": bounds[k], "cutOut": bounds[k + 1]} for k in range(3)],
            "plan": plan}


def pipeline_spec(**stages: Any) -> dict[str, Any]:
    return wire_spec(split={"wire": "int8", "link": {"bandwidthMbitS": 100, "rttMs": 2},
                            "stages": {"count": 3, "cuts": CUTS, "pool": {"matchLabels": POOL}, **stages}},
                     rollout={"strategy": "AllAtOnce", "analysis": {"windowSeconds": 10, "minRequests": 0}})


def pool_node(name: str) -> dict[str, Any]:
    body = agent_body(name, labels=dict(POOL))
    body["status"]["splitEndpoint"] = f"https://{name}:8443"
    return body


class World(DecideWorld):
    """test_decide's world with pipeline reports: stage nodes and the entry."""

    def entries(self, node: str) -> list[tuple[str, int]]:
        return [(m.get("role", "full"), m["revision"]) for m in self.agents[node]["spec"]["models"]]

    def entry(self, node: str, role: str) -> dict[str, Any]:
        return next(m for m in self.agents[node]["spec"]["models"] if m.get("role", "full") == role)

    def report_stages(self, *nodes: str, state: str = "Ready") -> None:
        for node in nodes:
            self.agents[node]["status"]["models"] = [{**report(m["revision"], state, reason="LoadFailed" if state ==
                                                              "Failed" else ""), "role": "tail"}
                                                     for m in self.agents[node]["spec"]["models"]]

    def report_entry(self, revision: int, role: str = "head", **kw: Any) -> None:
        self.agents["e1"]["status"]["models"] = [{**report(revision), "role": role, **kw}]


def world(plan: dict[str, Any] | None = None) -> World:
    agents = {"e1": agent_body("e1", labels={"edge": "true"}), **{n: pool_node(n) for n in ("p1", "p2", "p3")}}
    return World(model_body(pipeline_spec()), agents, settings(), chain=chain_doc(plan))


def available(w: World) -> None:
    """Drive revision 1 from conversion to Available (stages Ready, the entry Ready, the window passed)."""
    w.step()  # the Job
    d = w.step()  # converted: the stages go to the pool, the entry waits for them
    assert Wants(chains=(1,)) in w.observed
    assert w.entries("e1") == []
    assert w.entries("p1") == [("tail", 1)]
    assert w.entries("p2") == [("tail", 1)]
    assert w.entries("p3") == [], "a 3-stage chain needs 2 pool nodes: the first two in pool order"
    assert "waiting for the stages of revision 1 to be Ready on p1, p2" in w.body["status"]["rollout"]["message"]
    assert d.tail_revisions == (1,)
    w.report_stages("p1", "p2")
    w.step()  # the gate opens: the entry gets stage 1
    assert w.entries("e1") == [("head", 1)]
    w.report_entry(1)
    w.step()
    w.now += dt.timedelta(seconds=11)
    d = w.step()
    assert "RolloutComplete" in reasons(d)
    assert w.body["status"]["phase"] == "Available"


def test_a_pipeline_rolls_out_stages_first_then_the_entries() -> None:
    w = world()
    available(w)
    head = w.entry("e1", "head")
    assert head["artifactUri"].endswith("/1/stage-1.onnx")
    assert head["sha256"] == "0" * 64
    assert head["split"]["cut"] == "c1"
    assert head["split"]["cloudUrl"] == "https://p1:8443"
    assert head["split"]["fallback"] == "local"
    assert head["split"]["fullArtifactUri"].endswith("/1/model-cpu.onnx"), "the whole model is the fallback"
    middle, last = w.entry("p1", "tail"), w.entry("p2", "tail")
    assert (middle["artifactUri"].rsplit("/", 1)[1], middle["split"]["cut"]) == ("stage-2.onnx", "c1")
    assert (middle["split"]["nextUrl"], middle["split"]["nextCut"]) == ("https://p2:8443", "c2")
    assert (last["artifactUri"].rsplit("/", 1)[1], last["split"]["cut"]) == ("stage-3.onnx", "c2")
    assert "nextUrl" not in last["split"]
    assert conditions(w.body["status"])["PipelinePlanCurrent"] == ("True", "ManualCuts")
    steady = w.step()
    assert steady.agent_writes == []
    assert steady.tail_writes == []


def test_a_failed_stage_rolls_the_revision_back_before_any_entry_moves() -> None:
    w = world()
    w.step()
    w.step()
    w.report_stages("p1")
    w.report_stages("p2", state="Failed")
    d = w.step()
    assert "RolledBack" in reasons(d)
    assert "stage of revision 1 failed on node p2" in next(e.message for e in d.events if e.reason == "RolledBack")
    assert w.entries("e1") == []
    status = EdgeModelStatus.model_validate(w.body["status"])
    assert status.history[0].outcome == RevisionOutcome.ROLLED_BACK


def test_a_lost_stage_node_moves_its_stage_to_the_next_pool_node() -> None:
    w = world()
    available(w)
    w.stale.add("p1")
    w.now += dt.timedelta(minutes=5)
    w.step()
    assert w.entry("e1", "head")["split"]["cloudUrl"] == "https://p2:8443"
    assert w.entries("p1") == [], "the lost node's stage is taken off"
    assert w.entry("p2", "tail")["artifactUri"].endswith("/stage-2.onnx")
    assert w.entry("p2", "tail")["split"]["nextUrl"] == "https://p3:8443"
    assert w.entry("p3", "tail")["artifactUri"].endswith("/stage-3.onnx")


def test_too_few_stage_nodes_leave_the_whole_model_on_the_entry_until_they_return() -> None:
    w = world()
    available(w)
    w.stale |= {"p2", "p3"}
    w.now += dt.timedelta(minutes=5)
    d = w.step()
    assert w.entries("e1") == [("full", 1)], "fewer stages: the entry serves the whole model"
    assert w.entry("e1", "full")["artifactUri"].endswith("/1/model-cpu.onnx")
    assert "PipelineReplanned" in reasons(d)
    event = next(e for e in d.events if e.reason == "PipelineReplanned")
    assert event.type == "Warning"
    assert "only 1 fresh node(s)" in event.message
    assert conditions(w.body["status"])["PipelinePlanCurrent"] == ("False", "StageNodesLost")
    assert "PipelineReplanned" not in reasons(w.step()), "one event per change"
    w.stale.clear()
    d = w.step()
    assert w.entries("e1") == [("head", 1)]
    assert [(e.type, e.reason) for e in d.events if e.reason == "PipelineReplanned"] == [("Normal", "PipelineReplanned")]
    assert conditions(w.body["status"])["PipelinePlanCurrent"][1] != "StageNodesLost"


def costs_plan() -> dict[str, Any]:
    """An auto plan over 6 equal segments (5 ms each on the reference), two per stage, with its costs."""
    return {"objective": "latency", "devices": ["stage-1", "stage-2", "stage-3"], "cuts": CUTS,
            "stages": [{"device": f"stage-{k + 1}", "segments": [2 * k, 2 * k + 1]} for k in range(3)],
            "costs": {"cuts": ["a", "c1", "b", "c2", "d"], "segmentMs": [5.0] * 6, "featureBytes": [1000] * 5,
                      "outputBytes": 40, "segmentBytes": [], "codecMs": [0.1] * 5}}


def test_the_plan_check_uses_the_entries_measured_stage_1_compute() -> None:
    w = world(costs_plan())
    available(w)
    assert conditions(w.body["status"])["PipelinePlanCurrent"] == ("True", "NotMeasured")
    predicted = 4.0 * (5.0 + 5.0)  # spec.split.edgeSlowdown (4) x stage 1's segments (headMs excludes the encode)
    w.report_entry(1, headMs=predicted)
    w.step()
    assert conditions(w.body["status"])["PipelinePlanCurrent"] == ("True", "PlanHolds")
    w.report_entry(1, headMs=8 * predicted)  # the entry is 8x slower than planned: stage 1 should shrink
    d = w.step()
    assert conditions(w.body["status"])["PipelinePlanCurrent"] == ("False", "BetterPlanMeasured")
    assert "PipelinePlanStale" in reasons(d)
    # stage 1 shrinks to the first segment (where stage 2 ends is a tie between equal pool nodes)
    assert "cut at ['a', " in next(e.message for e in d.events if e.reason == "PipelinePlanStale")
    w.report_entry(1, headMs=predicted * 1.02)
    w.step()
    assert conditions(w.body["status"])["PipelinePlanCurrent"] == ("True", "PlanHolds")


def test_a_revision_without_chain_json_is_served_whole_and_pipeline_decisions_are_pure() -> None:
    w = world()
    w.chain = None
    w.step()
    w.step()
    assert w.entries("e1") == [("full", 1)]
    assert all(w.entries(p) == [] for p in ("p1", "p2", "p3"))
    assert "PipelinePlanCurrent" not in conditions(w.body["status"])
    w2 = world()
    available(w2)
    snap = snapshot(w2.body, list(w2.agents.values()), chains={1: chain_doc()})
    before = copy.deepcopy(snap.body)
    assert decide(snap, settings()) == decide(snap, settings())
    assert snap.body == before


def test_a_chain_with_too_few_pool_nodes_waits_with_one_warning_and_rolls_out_when_one_joins() -> None:
    w = world()
    spare = w.agents.pop("p2"), w.agents.pop("p3")
    w.step()
    d = w.step()
    assert w.entries("e1") == [], "no entry moves to a chain that cannot run"
    assert [(e.type, e.reason) for e in d.events if e.reason == "PipelineUnplaceable"] == [
        ("Warning", "PipelineUnplaceable")]
    message = w.body["status"]["rollout"]["message"]
    assert "revision 1: the chain has 3 stages but only 1 fresh node(s)" in message
    assert "start more stage agents with --split-port" in message
    assert conditions(w.body["status"])["Progressing"][0] == "True"
    assert "PipelineUnplaceable" not in reasons(w.step()), "one warning, not one per reconcile"
    w.agents["p2"] = spare[0]
    w.step()
    assert w.entries("p1") == [("tail", 1)]
    assert w.entries("p2") == [("tail", 1)]
    w.report_stages("p1", "p2")
    w.step()
    assert w.entries("e1") == [("head", 1)]


def test_an_auto_stage_count_is_planned_over_the_pool_nodes_there_are() -> None:
    def job_object(w: World) -> tuple[dict[str, Any], Decision]:
        d = w.step()  # opens revision 1 and creates its Job
        assert d.job_create is not None
        container = d.job_create.manifest["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in container["env"]}
        return dict(json.loads(str(env["EDGEMODEL_OBJECT"]))), d

    auto = {"count": "auto", "maxStages": 4, "cuts": []}
    w = world()
    w.body = model_body(pipeline_spec(**auto))
    w.stale.add("p3")
    w.now += dt.timedelta(minutes=5)  # p3 is stale: only p1 and p2 can host stages 2..N
    obj, d = job_object(w)
    assert obj["spec"]["split"]["stages"]["maxStages"] == 3
    assert w.body["spec"]["split"]["stages"]["maxStages"] == 4, "the user's spec is not changed"
    event = next(e for e in d.events if e.reason == "PipelineStagesCapped")
    assert "plans at most 3 stages: 2 fresh pool node(s) can host stages 2..N (p1, p2" in event.message
    w = world()
    w.body = model_body(pipeline_spec(**auto))
    obj, d = job_object(w)
    assert obj["spec"]["split"]["stages"]["maxStages"] == 4, "3 pool nodes: maxStages as written"
    assert "PipelineStagesCapped" not in reasons(d)
    obj, _ = job_object(world())
    assert obj["spec"]["split"]["stages"]["count"] == 3, "a fixed count is the user's"


def job_devices(w: World) -> tuple[PlanDevices | None, Decision]:
    """The devices the Job of the next revision is told to plan for (None: no EDGEMODEL_PIPELINE_DEVICES)."""
    snap = snapshot(w.body, list(w.agents.values()), now=w.now, seen_now=w.now)
    d = decide(snap, settings())
    while d.wants and d.job_create is None:
        if d.wants.job is not None:
            snap = dataclasses.replace(snap, job=JobSeen(d.wants.job[0], None, None))
        if d.wants.chains:
            snap = dataclasses.replace(snap, chains={**snap.chains, **{r: w.chain for r in d.wants.chains}})
        d = decide(snap, settings())
    assert d.job_create is not None
    container = d.job_create.manifest["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    raw = env.get(DEVICES_ENV)
    return (PlanDevices.from_json(str(raw)) if raw is not None else None), d


def speeds(devices: PlanDevices) -> list[tuple[str, float, str]]:
    return [(dev.name, round(dev.slowdown, 3), src) for dev, src in zip(devices.devices, devices.sources, strict=True)]


def test_the_job_plans_auto_cuts_for_the_labelled_node_speeds_or_says_why_it_cannot() -> None:
    w = world()
    w.body = model_body(pipeline_spec(cuts=[]))
    for node, slowdown in (("e1", "8"), ("p1", "2"), ("p2", "4"), ("p3", "1.5")):
        w.agents[node]["metadata"]["labels"][STAGE_SLOWDOWN_LABEL] = slowdown
    w.agents["p1"]["metadata"]["labels"][STAGE_OVERHEAD_LABEL] = "2.5"
    w.agents["p2"]["status"]["capabilities"]["memoryBytes"] = 1 << 20
    devices, d = job_devices(w)
    assert devices is not None
    assert devices.known
    # the entry first, then every stage host in pool order: the planner may skip one
    assert speeds(devices) == [("e1", 8.0, "label"), ("p1", 2.0, "label"), ("p2", 4.0, "label"),
                               ("p3", 1.5, "label")]
    assert [dev.overhead_ms for dev in devices.devices] == [0.0, 2.5, 0.0, 0.0]
    assert devices.devices[2].memory_bytes == 1 << 20
    assert not devices.pinned
    assert any("plans its pipeline for the nodes e1 x8.00 (label)" in m for _, m in d.logs)

    del w.agents["p3"]["metadata"]["labels"][STAGE_SLOWDOWN_LABEL]
    devices, d = job_devices(w)
    assert devices is not None
    assert not devices.known, "one unknown speed: identical devices, as before"
    assert devices.reason.startswith(f"no speed known for node(s) p3: label them {STAGE_SLOWDOWN_LABEL}=")
    assert any("plans its pipeline for identical devices: no speed known for node(s) p3" in m for _, m in d.logs)
    event = next(e for e in d.events if e.reason == "PipelineDevices")
    assert event.type == "Normal"
    assert event.message.startswith("revision 1 plans its pipeline for identical devices: no speed known for node(s) p3")

    w.body = model_body(pipeline_spec())  # manual cuts: nothing to plan, no device list
    devices, _ = job_devices(w)
    assert devices is None


def test_a_new_revision_plans_with_the_speeds_every_stage_of_the_serving_chain_measured() -> None:
    w = World(model_body(pipeline_spec(cuts=[])), world().agents, settings(), chain=chain_doc(costs_plan()))
    available(w)
    w.agents["p3"]["metadata"]["labels"][STAGE_SLOWDOWN_LABEL] = "1.5"  # p3 serves nothing: its label counts
    w.agents["p1"]["metadata"]["labels"][STAGE_SLOWDOWN_LABEL] = "9"  # a measurement beats the label
    w.report_entry(1, headMs=80.0)  # stage 1 = 10 reference ms: 8x
    report_stage_ms(w, p1=20.0, p2=40.0)  # stages 2 and 3 = 10 reference ms each: 2x and 4x
    w.body["spec"]["split"]["stages"]["objective"] = "throughput"  # opens revision 2
    w.body["metadata"]["generation"] = 2
    devices, d = job_devices(w)
    assert devices is not None
    assert devices.known
    assert speeds(devices) == [("e1", 8.0, "measured"), ("p1", 2.0, "measured"), ("p2", 4.0, "measured"),
                               ("p3", 1.5, "label")]
    assert "(measured by revision 1)" in devices.reason


def report_stage_ms(w: World, **stage_ms: float) -> None:
    """Stage nodes report their stage of revision 1 Ready with its median compute (status stageMs)."""
    for node, ms in stage_ms.items():
        w.agents[node]["status"]["models"] = [{**report(1), "role": "tail", "stageMs": ms}]


def test_the_plan_check_uses_every_stage_s_measured_compute() -> None:
    w = world(costs_plan())
    available(w)
    w.report_entry(1, headMs=40.0)  # 4x (spec.split.edgeSlowdown) x 10 reference ms: as planned
    report_stage_ms(w, p1=40.0, p2=40.0)
    w.step()
    assert conditions(w.body["status"])["PipelinePlanCurrent"] == ("True", "PlanHolds")
    report_stage_ms(w, p1=40.0, p2=320.0)  # the last stage's node is 8x slower than planned: it should shrink
    d = w.step()
    assert conditions(w.body["status"])["PipelinePlanCurrent"] == ("False", "BetterPlanMeasured")
    message = next(e.message for e in d.events if e.reason == "PipelinePlanStale")
    assert "cut at ['c1', 'd']" in message or "cut at ['b', 'd']" in message, message
    report_stage_ms(w, p1=40.0, p2=41.0)
    w.step()
    assert conditions(w.body["status"])["PipelinePlanCurrent"] == ("True", "PlanHolds")


def test_stages_go_to_the_nodes_their_plan_was_made_for_and_a_lost_one_to_the_next_free_pool_node() -> None:
    plan = {**costs_plan(), "devices": ["e1", "p2", "p3"]}  # planned for p2 and p3 (p1 skipped, e.g. slow)
    w = world(plan)
    w.step()
    w.step()
    assert w.entries("p1") == []
    assert w.entries("p2") == [("tail", 1)]
    assert w.entry("p2", "tail")["artifactUri"].endswith("/stage-2.onnx")
    assert w.entry("p3", "tail")["artifactUri"].endswith("/stage-3.onnx")
    w.report_stages("p2", "p3")
    w.step()
    assert w.entry("e1", "head")["split"]["cloudUrl"] == "https://p2:8443"
    w.report_entry(1)
    w.stale.add("p2")
    w.now += dt.timedelta(minutes=5)
    w.step()
    assert w.entry("p1", "tail")["artifactUri"].endswith("/stage-2.onnx"), "the free pool node takes p2's stage"
    assert w.entry("p1", "tail")["split"]["nextUrl"] == "https://p3:8443", "p3 keeps its stage"
    assert w.entry("p3", "tail")["artifactUri"].endswith("/stage-3.onnx")
