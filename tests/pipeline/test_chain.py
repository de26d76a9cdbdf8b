"""Cutting a model into N stages: every stage valid, the chain reproduces the model (FP32 exact, INT8 top-1)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgemodel.errors import UserError
from edgemodel.split.chain import (
    CHAIN_MANIFEST,
    build_chain,
    chain_costs,
    plan_cuts,
    read_chain_manifest,
    run_chain,
    split_chain,
    verify_chain,
)
from edgemodel.split.chain_planner import ChainLinks, ChainObjective, Device
from edgemodel.split.codec import WireFormat
from edgemodel.split.graph import find_cut_candidates
from edgemodel.split.planner import Link
from edgemodel.split.runtime import OrtPart
from tests.split import models


@pytest.mark.parametrize("builder", [models.chain_model, models.residual_model, models.two_input_model])
def test_every_pair_of_cuts_makes_a_valid_exact_chain(builder: object) -> None:
    model = builder()  # type: ignore[operator]
    cuts = [c.tensor for c in find_cut_candidates(model)]
    samples = models.feeds(model, n=3)
    for i in range(len(cuts)):
        for j in range(i + 1, len(cuts)):
            chain = split_chain(model, [cuts[i], cuts[j]])
            assert len(chain.stages) == 3
            for k, stage in enumerate(chain.stages):
                onnx.checker.check_model(stage)
                meta = {p.key: p.value for p in stage.metadata_props}
                assert meta["edgemodel.split.stage"] == f"{k + 1}/3"
                assert meta["edgemodel.split.role"] == "stage"
            assert [i.name for i in chain.stages[1].graph.input] == [cuts[i]]
            assert [o.name for o in chain.stages[1].graph.output] == [cuts[j]]
            result = verify_chain(model, chain, samples, "fp32")
            # ORT may fuse differently across a cut: float rounding only, far below the 1e-4 gate
            assert result.passed
            assert result.max_abs_diff < 1e-6


def test_chain_through_the_int8_codec_agrees_on_top1() -> None:
    model = models.chain_model()
    cuts = [c.tensor for c in find_cut_candidates(model)]
    chain = split_chain(model, cuts)  # every cut: the longest chain
    assert len(chain.stages) == len(cuts) + 1
    result = verify_chain(model, chain, models.feeds(model, n=8), "int8")
    assert result.passed
    assert result.top1_agreement == 1.0
    assert result.max_abs_diff > 0.0  # INT8 features are not exact, only top-1 is the gate


def test_cuts_out_of_order_or_invalid_are_refused_naming_the_field() -> None:
    model = models.residual_model()
    with pytest.raises(UserError, match="spec.split.stages: .* ordered"):
        split_chain(model, ["block_relu", "stem_relu"])
    with pytest.raises(UserError, match="spec.split.cut: 'reluA' cannot be a cut"):
        split_chain(model, ["stem_relu", "reluA"])


def test_build_chain_writes_stages_and_digests(tmp_path: Path) -> None:
    model = models.residual_model()
    samples = models.feeds(model, n=4)
    steps: list[str] = []
    result = build_chain(
        model, samples, tmp_path, ["stem_relu", "block_relu"], wire="int8", on_step=steps.append
    )
    manifest = read_chain_manifest(tmp_path / CHAIN_MANIFEST)
    assert manifest == json.loads(json.dumps(result.manifest))
    assert [s["file"] for s in manifest["stages"]] == ["stage-1.onnx", "stage-2.onnx", "stage-3.onnx"]
    assert manifest["stages"][1]["cutIn"] == "stem_relu"
    assert manifest["stages"][1]["cutOut"] == "block_relu"
    assert manifest["verification"]["fp32"]["maxAbsDiff"] < 1e-6
    assert manifest["verification"]["wire"]["top1Agreement"] == 1.0
    assert len(steps) == 3
    parts = [OrtPart(p) for p in result.paths]
    full = OrtPart(model.SerializeToString())
    for feeds in samples:
        here = run_chain([p.run for p in parts], feeds)["logits"]
        # FP32 on the wire is lossless: through the codec the chain gives bit for bit what it gives in process
        np.testing.assert_array_equal(
            run_chain([p.run for p in parts], feeds, WireFormat.parse("fp32+zstd"))["logits"], here
        )
        np.testing.assert_allclose(here, full.run(feeds)["logits"], rtol=1e-5, atol=1e-6)
    with pytest.raises(UserError, match="at least one cut"):
        build_chain(model, samples, tmp_path / "none", [])


def test_auto_cuts_come_from_the_profile_and_the_planner(tmp_path: Path) -> None:
    model = models.shrinking_model()  # a cheap input-side conv, then heavy convs: worth spreading
    samples = models.feeds(model, n=2)
    devices = [Device("entry", 1.0), Device("b", 1.0), Device("c", 1.0)]
    plan, profile = plan_cuts(
        model, samples, devices, ChainLinks(Link(10_000, 0.0)), ChainObjective.THROUGHPUT, stages=3, runs=3
    )
    assert len(plan.stages) == 3
    assert plan.cuts == [c for c in (s.cut_out for s in plan.stages[:-1]) if c]
    costs = chain_costs(profile, "int8")
    assert len(costs.segment_ms) == len(profile.cuts) + 1
    assert list(costs.feature_bytes) == [c.feature_bytes["int8"] for c in profile.cuts]
    result = build_chain(model, samples, tmp_path, plan.cuts, wire="int8", plan=plan.to_dict())
    assert result.manifest["plan"]["devices"] == ["entry", "b", "c"]
    with pytest.raises(UserError, match="keeps the whole model on the entry"):
        plan_cuts(model, samples, devices, ChainLinks(Link(0.001, 1000.0)), ChainObjective.LATENCY, runs=2)


def test_chain_costs_sum_to_the_whole_model_even_from_a_noisy_profile() -> None:
    from edgemodel.split.profile import CutProfile, SplitProfile

    def cut(name: str, head: float, tail: float) -> CutProfile:
        return CutProfile(name, 0, [1], head, tail, {"int8": 100}, {"int8": 0.1}, {"int8": 0.05})

    # the second head was timed during a load spike: slower than the whole model
    profile = SplitProfile("cpu", 1, 5, 10.0, {"fp32": 10}, 40, [cut("a", 2.0, 8.5), cut("b", 14.0, 4.0)])
    costs = chain_costs(profile, "int8")
    assert sum(costs.segment_ms) == pytest.approx(10.0)
    assert all(v >= 0 for v in costs.segment_ms)
    assert list(costs.segment_ms)[:1] == [pytest.approx((2.0 + 1.5) / 2)]
    assert list(costs.codec_ms) == [pytest.approx(0.15), pytest.approx(0.15)]
    with pytest.raises(UserError, match="spec.split.wire"):
        chain_costs(profile, "fp16")
