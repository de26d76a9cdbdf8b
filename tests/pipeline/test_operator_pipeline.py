"""The operator's pipeline logic: spec.split.stages validation, stage candidates, plan, chain gate, plan check."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from edgemodel.api import EdgeModelSpec
from edgemodel.api.edgemodel import CROSS_FIELD_RULES, Split
from edgemodel.split.chain_planner import ChainCosts, ChainObjective
from edgemodel.split.planner import PlanError
from edgemodel_operator.pipeline import (
    NodeInfo,
    StageReport,
    chain_gate,
    chain_links,
    check_plan,
    plan_for,
    revisions_to_keep,
    stage_candidates,
)

BASE: dict[str, Any] = {
    "source": {"uri": "file:///m.onnx", "format": "ONNX"},
    "inputs": [{"name": "x", "dtype": "float32", "shape": [1, 3]}],
}


def spec(**split: Any) -> EdgeModelSpec:
    return EdgeModelSpec.model_validate({**BASE, "split": split})


def broken(s: EdgeModelSpec) -> list[str]:
    return [r.field for r in CROSS_FIELD_RULES if not r.check(s)]


def test_single_cut_form_is_unchanged_and_is_not_a_pipeline() -> None:
    s = spec(cut="auto", link={"bandwidthMbitS": 10})
    assert s.split.enabled
    assert not s.split.pipelined
    assert broken(s) == []


def test_pipeline_spec_round_trips_and_validates() -> None:
    s = spec(
        link={"bandwidthMbitS": 100, "rttMs": 2},
        stages={
            "count": 3,
            "pool": {"matchLabels": {"edgemodel.io/stage-pool": "a"}},
            "objective": "throughput",
            "links": [{"from": "e1", "to": "e2", "bandwidthMbitS": 50}],
        },
    )
    assert s.split.pipelined
    assert s.split.stages is not None
    assert s.split.stages.fixed_count() == 3
    assert broken(s) == []
    k8s = s.to_k8s()["split"]["stages"]
    assert k8s["links"][0]["from"] == "e1"
    assert k8s["count"] == 3
    auto = spec(link={"bandwidthMbitS": 1}, stages={"count": "auto", "pool": {}}).split.stages
    assert auto is not None
    assert auto.fixed_count() is None


@pytest.mark.parametrize(
    ("split", "field"),
    [
        ({"cut": "auto", "link": {"bandwidthMbitS": 1}, "stages": {"pool": {}}}, "spec.split.stages"),
        ({"link": {"bandwidthMbitS": 1}, "stages": {"count": 1, "pool": {}}}, "spec.split.stages.count"),
        ({"link": {"bandwidthMbitS": 1}, "stages": {"count": "many", "pool": {}}}, "spec.split.stages.count"),
        (
            {"link": {"bandwidthMbitS": 1}, "stages": {"count": 3, "cuts": ["a"], "pool": {}}},
            "spec.split.stages.count",
        ),
        ({"link": {"bandwidthMbitS": 1}, "stages": {}}, "spec.split.stages.pool"),
        ({"stages": {"pool": {}}}, "spec.split.link"),
    ],
)
def test_bad_pipelines_name_the_field(split: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError, match=field.replace(".", r"\.") + ": "):
        spec(**split)


def test_unknown_stage_fields_are_refused() -> None:
    with pytest.raises(ValidationError, match="stages"):
        spec(link={"bandwidthMbitS": 1}, stages={"pool": {}, "stagez": 3})


NODES = [
    NodeInfo("entry", {"role": "edge"}, 4.0),
    NodeInfo("b", {"edgemodel.io/pipeline-order": "2", "pool": "x"}, 2.0),
    NodeInfo("a", {"edgemodel.io/pipeline-order": "1", "pool": "x"}, 1.0),
    NodeInfo("c", {"pool": "x"}, 1.0),
    NodeInfo("other", {}, 1.0),
]


def test_pool_is_ordered_by_label_then_name_and_selectors_pick_one_per_stage() -> None:
    s = spec(link={"bandwidthMbitS": 100}, stages={"pool": {"matchLabels": {"pool": "x"}}})
    assert [n.name for n in stage_candidates(s.split, NODES, "entry")] == ["a", "b", "c"]
    s = spec(
        link={"bandwidthMbitS": 100},
        stages={"stageSelectors": [{"matchLabels": {"pool": "x"}}, {"matchLabels": {"pool": "x"}}]},
    )
    assert [n.name for n in stage_candidates(s.split, NODES, "entry")] == ["a", "b"]
    s = spec(link={"bandwidthMbitS": 100}, stages={"stageSelectors": [{"matchLabels": {"pool": "nope"}}]})
    with pytest.raises(PlanError, match=r"stageSelectors\[0\]: no node"):
        stage_candidates(s.split, NODES, "entry")


COSTS = ChainCosts(["c1", "c2", "c3"], [5, 10, 10, 5], [100_000, 50_000, 10_000], 40)


def test_plan_for_a_weak_entry_offloads_and_measured_rtts_fill_empty_links() -> None:
    s = spec(
        link={"bandwidthMbitS": 100},
        stages={"pool": {"matchLabels": {"pool": "x"}}, "objective": "throughput"},
    )
    candidates = stage_candidates(s.split, NODES, "entry")
    plan = plan_for(s.split, COSTS, NODES[0], candidates, {("entry", "a"): 3.0})
    assert plan.objective is ChainObjective.THROUGHPUT
    assert plan.devices[0] == "entry"
    assert len(plan.stages) >= 2
    assert plan.period_ms < 4.0 * 30  # better than the entry alone
    links = chain_links(s.split, {("entry", "a"): 3.0, ("a", "b"): 5.0})
    assert links.get("a", "entry").rtt_ms == 3.0
    assert links.get("b", "a").rtt_ms == 5.0
    assert links.get("entry", "c").rtt_ms == 4.0  # the median of the measured ones for pairs not measured


def test_the_chain_rolls_out_as_one_unit() -> None:
    reports = {
        "a": [StageReport(1, True), StageReport(2, True)],
        "b": [StageReport(1, True), StageReport(2, False)],
    }
    gate = chain_gate(2, ["a", "b"], reports)
    assert not gate.open
    assert "b" in gate.message
    assert "a," not in gate.message
    reports["b"][1] = StageReport(2, True)
    assert chain_gate(2, ["a", "b"], reports).open
    assert revisions_to_keep({"e1": 1, "e2": 2}, 3) == {1, 2, 3}


def test_plan_check_flags_a_stage_slower_than_predicted() -> None:
    s = spec(
        link={"bandwidthMbitS": 1000, "rttMs": 1},
        stages={"pool": {"matchLabels": {"pool": "x"}}, "objective": "throughput"},
    )
    nodes = [NodeInfo("entry", {}, 1.0), NodeInfo("a", {"pool": "x"}, 1.0), NodeInfo("b", {"pool": "x"}, 1.0)]
    serving = plan_for(s.split, COSTS, nodes[0], nodes[1:])
    assert check_plan(s.split, COSTS, serving, nodes, {}).reason == "NotMeasured"
    as_planned = {st.device: st.compute_ms for st in serving.stages}
    assert check_plan(s.split, COSTS, serving, nodes, as_planned).reason == "PlanHolds"
    slow = dict(as_planned)
    slow[serving.stages[1].device] *= 5  # that node turned out 5x slower than planned
    verdict = check_plan(s.split, COSTS, serving, nodes, slow)
    assert not verdict.current
    assert verdict.reason == "BetterPlanMeasured"
    assert verdict.better is not None
    assert verdict.better.period_ms < max(slow.values())


PIPELINE_RULES = [
    r for r in CROSS_FIELD_RULES if r.field.startswith("spec.split.stages") or "self.split.stages" in r.cel
]


@pytest.mark.parametrize(
    "split",
    [
        {"cut": "auto", "link": {"bandwidthMbitS": 1}, "stages": {"pool": {}}},
        {"link": {"bandwidthMbitS": 1}, "stages": {"count": 1, "pool": {}}},
        {"link": {"bandwidthMbitS": 1}, "stages": {"count": "17", "pool": {}}},
        {"link": {"bandwidthMbitS": 1}, "stages": {"count": "x3", "pool": {}}},
        {"link": {"bandwidthMbitS": 1}, "stages": {"count": 3, "cuts": ["a"], "pool": {}}},
        {"link": {"bandwidthMbitS": 1}, "stages": {"count": "3", "cuts": ["a", "b"], "pool": {}}},
        {"link": {"bandwidthMbitS": 1}, "stages": {"count": 3, "pool": {}}},
        {"link": {"bandwidthMbitS": 1}, "stages": {"count": "auto", "stageSelectors": [{}]}},
        {"link": {"bandwidthMbitS": 1}, "stages": {"pool": {}, "stageSelectors": [{}]}},
        {"link": {"bandwidthMbitS": 1}, "stages": {}},
        {"stages": {"pool": {}}},
        {"cut": "auto", "link": {"bandwidthMbitS": 1}},
    ],
)
def test_cel_rules_agree_with_the_python_rules(split: dict[str, Any]) -> None:
    """The API server (CEL in the CRD) and the webhook/CLI (Python) judge every pipeline spec alike."""
    from edgemodel_dev.cel import compile_rule, evaluate

    doc = {**BASE, "split": split}
    parsed = EdgeModelSpec.model_construct(split=Split.model_validate(split))  # type: ignore[call-arg]
    assert PIPELINE_RULES
    for rule in PIPELINE_RULES:
        assert bool(evaluate(compile_rule(rule.cel), {"self": doc})) == bool(rule.check(parsed)), (
            rule.field,
            split,
        )


def test_stage_assignments_refuse_a_chain_that_does_not_fit_the_nodes() -> None:
    from edgemodel.api import ArtifactRef
    from edgemodel_operator.pipeline import stage_assignments

    chain = {"wire": "int8", "stages": [
        {"file": "stage-1.onnx", "sha256": "a" * 64, "cutIn": None, "cutOut": "c1"},
        {"file": "stage-2.onnx", "sha256": "b" * 64, "cutIn": "c1", "cutOut": None}]}  # fmt: skip
    artifact = ArtifactRef.model_validate({
        "hardwareClass": "cpu", "uri": "https://store/ns/m/3/model-cpu.onnx", "sha256": "c" * 64, "sizeBytes": 1,
        "precision": "fp32", "manifestUri": "https://store/ns/m/3/manifest.json", "signature": "sig"})  # fmt: skip
    out = stage_assignments(chain, artifact, "ns", "m", 3, ["e", "s2"], {"s2": "https://s2:8443"})
    head, tail = out["e"], out["s2"]
    assert head.role.value == "head" and tail.role.value == "tail"  # noqa: PT018
    assert head.artifact_uri == "https://store/ns/m/3/stage-1.onnx"
    assert head.split is not None
    assert (head.split.cut, head.split.cloud_url, head.split.full_sha256) == (
        "c1",
        "https://s2:8443",
        "c" * 64,
    )
    assert tail.split is not None
    assert (tail.split.cut, tail.split.next_url) == ("c1", None)
    with pytest.raises(PlanError, match="2 stages for 3 nodes"):
        stage_assignments(chain, artifact, "ns", "m", 3, ["e", "s2", "s3"], {})
    with pytest.raises(PlanError, match="no split endpoint"):
        stage_assignments(chain, artifact, "ns", "m", 3, ["e", "s2"], {})


def test_a_pipeline_change_opens_a_revision_but_moving_stages_between_nodes_does_not() -> None:
    from edgemodel_operator.revisions import build_hash

    def with_stages(**stages: Any) -> EdgeModelSpec:
        return spec(link={"bandwidthMbitS": 100}, stages={"pool": {"matchLabels": {"p": "a"}}, **stages})

    base = build_hash(spec())
    assert build_hash(with_stages()) != base  # turning a pipeline on rebuilds
    assert build_hash(with_stages(count=3)) != build_hash(with_stages())
    assert build_hash(with_stages(objective="throughput")) != build_hash(with_stages())
    moved = spec(link={"bandwidthMbitS": 100}, stages={"pool": {"matchLabels": {"p": "b"}}})
    assert build_hash(moved) == build_hash(with_stages())
