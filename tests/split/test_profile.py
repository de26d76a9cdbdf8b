"""Per-cut profiles: every candidate measured, feature bytes as really encoded, JSON round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgemodel.errors import UserError
from edgemodel.split import codec
from edgemodel.split.graph import find_cut_candidates
from edgemodel.split.profile import SplitProfile, planner_costs, profile_split
from tests.split import models


def test_profile_measures_every_cut_with_exact_wire_sizes(tmp_path: Path) -> None:
    model = models.residual_model()
    samples = models.feeds(model, n=2)
    profile = profile_split(model, samples, threads=1, runs=3, warmup=1)
    assert [c.tensor for c in profile.cuts] == [c.tensor for c in find_cut_candidates(model)]
    assert profile.provider == "CPUExecutionProvider"
    assert profile.full_ms > 0
    for cut in profile.cuts:
        assert cut.head_ms > 0
        assert cut.tail_ms > 0
        elements = 1
        for d in cut.shape:
            elements *= d
        overhead = codec.message_overhead({cut.tensor: len(cut.shape)})
        assert cut.feature_bytes["fp32"] == 4 * elements + overhead
        assert cut.feature_bytes["fp16"] == 2 * elements + overhead
        assert cut.feature_bytes["int8"] == elements + overhead + 5
        assert set(cut.feature_bytes) == {"fp32", "fp16", "int8", "fp16+zstd", "int8+zstd"}
        assert set(cut.encode_ms) == set(cut.feature_bytes)
    assert profile.input_bytes["fp32"] == 4 * 3 * 8 * 8 + codec.message_overhead({"x": 4})
    assert profile.output_bytes == 4 * 5 + codec.message_overhead({"logits": 2})
    assert len(profile.host["loadAverage"]) == 3
    again = SplitProfile.load(profile.save(tmp_path / "profile.json"))
    assert again == profile


def test_planner_costs_pair_edge_and_cloud_profiles() -> None:
    model = models.chain_model()
    samples = models.feeds(model, n=1)
    edge = profile_split(model, samples, threads=1, runs=3, warmup=0, wire_formats=("fp32", "int8+zstd"))
    cloud = profile_split(model, samples, threads=1, runs=3, warmup=0, wire_formats=("fp32", "int8+zstd"))
    costs = planner_costs(edge, cloud, wire="int8+zstd", cuts=["r1", "r2"])
    assert costs.cuts == ("r1", "r2")
    assert costs.head_ms() == pytest.approx([edge.cuts[1].head_ms, edge.cuts[3].head_ms])
    assert costs.tail_ms() == pytest.approx([cloud.cuts[1].tail_ms, cloud.cuts[3].tail_ms])
    assert sum(costs.edge_segment_ms) == pytest.approx(edge.full_ms)
    assert sum(costs.cloud_segment_ms) == pytest.approx(cloud.full_ms)
    assert costs.feature_bytes == (edge.cuts[1].feature_bytes["int8+zstd"], edge.cuts[3].feature_bytes["int8+zstd"])
    with pytest.raises(UserError, match="wire: 'fp16' was not profiled"):
        planner_costs(edge, cloud, wire="fp16")
    cloud.cuts = cloud.cuts[:2]
    with pytest.raises(UserError, match="not the cloud profile"):
        planner_costs(edge, cloud)


def test_profile_input_mistakes_are_user_errors() -> None:
    model = models.chain_model()
    with pytest.raises(UserError, match="runs: 0 must be >= 1"):
        profile_split(model, models.feeds(model, n=1), runs=0)
    with pytest.raises(UserError, match="samples: pass at least one input dict"):
        profile_split(model, [])
    with pytest.raises(UserError, match="kind 'other' is not edgemodel-split-profile/v1"):
        SplitProfile.from_dict({"kind": "other"})


def test_interleaved_and_sequential_profiles_cover_the_same_cuts() -> None:
    model = models.chain_model()
    samples = models.feeds(model, n=1)
    interleaved = profile_split(model, samples, threads=1, runs=3, warmup=1, wire_formats=("fp32",), interleave=True)
    sequential = profile_split(model, samples, threads=1, runs=3, warmup=1, wire_formats=("fp32",), interleave=False)
    assert [c.tensor for c in interleaved.cuts] == [c.tensor for c in sequential.cuts]
    for a, b in zip(interleaved.cuts, sequential.cuts, strict=True):
        assert a.head_ms > 0
        assert a.tail_ms > 0
        assert b.head_ms > 0
        assert a.feature_bytes == b.feature_bytes
    assert interleaved.full_ms > 0
    assert interleaved.to_dict()["fullMs"] == interleaved.full_ms  # camelCase JSON
