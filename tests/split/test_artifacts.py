"""build_split: the converter's entry point writes verified head/tail and a split.json the agent can read."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgemodel.errors import UserError
from edgemodel.split.artifacts import SplitSettings, build_split, read_manifest, scaled_profile
from edgemodel.split.planner import Link
from edgemodel.split.profile import profile_split
from edgemodel.split.runtime import OrtPart
from tests.split import models


def test_manual_cut_writes_verified_parts_and_manifest(residual: onnx.ModelProto, tmp_path: Path) -> None:
    samples = models.feeds(residual, n=2)
    result = build_split(residual, samples, tmp_path, SplitSettings(cut="block_relu", wire="int8+zstd"))
    manifest = read_manifest(result.manifest_path)
    assert manifest["cut"]["tensor"] == "block_relu"
    assert manifest["wire"] == "int8+zstd"
    assert manifest["verification"]["passed"] is True
    assert manifest["plan"] is None
    assert manifest["head"]["sha256"] == hashlib.sha256(result.head_path.read_bytes()).hexdigest()
    assert manifest["tail"]["outputs"] == ["logits"]
    x = samples[0]
    np.testing.assert_allclose(OrtPart(result.tail_path).run(OrtPart(result.head_path).run(x))["logits"],
                               OrtPart(residual.SerializeToString()).run(x)["logits"], rtol=1e-5, atol=1e-6)
    with pytest.raises(UserError, match="'reluA' cannot be a cut"):
        build_split(residual, samples, tmp_path / "bad", SplitSettings(cut="reluA"))


def test_auto_cut_depends_on_the_declared_link(tmp_path: Path) -> None:
    model = models.shrinking_model()
    samples = models.feeds(model, n=1)
    slow = build_split(model, samples, tmp_path / "slow",
                       SplitSettings(cut="auto", link=Link(0.1, 20), edge_slowdown=20, profile_runs=1, profile_rounds=3, threads=1))
    fast = build_split(model, samples, tmp_path / "fast",
                       SplitSettings(cut="auto", link=Link(1e6, 0), edge_slowdown=20, profile_runs=1, profile_rounds=3, threads=1))
    slow_cut = slow.manifest["cut"]["tensor"]
    fast_cut = fast.manifest["cut"]["tensor"]
    # On a slow link the tiny pooled features win; on a free link the cut nearest the input (least edge work).
    assert slow_cut in ("gap", "flat")
    assert fast_cut in ("s", "sr")
    plan = json.loads(slow.manifest_path.read_text())["plan"]
    assert plan["chosen"]["option"] == f"cut:{slow_cut}"
    assert all(o["kind"] == "split" for o in plan["options"])  # a split rollout always has a cut
    assert slow.manifest["profile"]["kind"] == "edgemodel-split-profile/v1"
    with pytest.raises(UserError, match="spec.split.link: cut 'auto' needs the link"):
        build_split(model, samples, tmp_path / "x", SplitSettings(cut="auto", profile_runs=1))


def test_quantised_parts_are_recorded(residual: onnx.ModelProto, tmp_path: Path) -> None:
    samples = models.feeds(residual, n=2)
    with pytest.raises(UserError, match="quantizeParts: needs calibration samples"):
        build_split(residual, samples, tmp_path, SplitSettings(cut="block_relu", quantize_parts=True))
    result = build_split(residual, samples, tmp_path, SplitSettings(cut="block_relu", quantize_parts=True),
                         calibration=models.feeds(residual, n=8, seed=50))
    assert result.manifest["precision"] == "int8"
    assert result.manifest["quantizedVerification"]["maxAbsDiff"] > 0
    assert "passed" not in result.manifest["quantizedVerification"]
    assert "QuantizeLinear" in {n.op_type for n in onnx.load(str(result.head_path)).graph.node}


def test_scaled_profile_scales_every_latency() -> None:
    model = models.chain_model()
    profile = profile_split(model, models.feeds(model, n=1), threads=1, runs=2, warmup=0, wire_formats=("int8",))
    slower = scaled_profile(profile, 3.0)
    assert slower.full_ms == pytest.approx(3 * profile.full_ms)
    assert [c.head_ms for c in slower.cuts] == pytest.approx([3 * c.head_ms for c in profile.cuts])
    assert profile.cuts[0].feature_bytes == slower.cuts[0].feature_bytes
    with pytest.raises(UserError, match="edgeSlowdown: 0"):
        scaled_profile(profile, 0)
