"""Pure parts of the converter: selection rules, data checks, planning, export comparison, result size."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from edgemodel.api import (
    CandidateResult,
    ConversionResult,
    EdgeModelSpec,
    HardwareClass,
    LatencyStats,
    Precision,
)
from edgemodel.api.edgemodel import GraphOptimizationLevel, TargetHardware
from edgemodel.api.tensors import TensorSpec
from edgemodel.convert.candidates import offline_level, plan_candidates
from edgemodel.convert.data import Dataset, generate, load_npz
from edgemodel.convert.errors import ConversionError, Reason
from edgemodel.convert.export import compare
from edgemodel.convert.pipeline import termination_message
from edgemodel.convert.select import choose
from edgemodel.convert.source import sniff
from edgemodel_dev.examples_models import DigitsExample

CPU = HardwareClass.CPU
GPU = HardwareClass.GPU


def cand(name: str, p50: float, drop: float, precision: Precision = Precision.INT8, hw: HardwareClass = CPU,
         metric: float | None = None, error: str = "") -> CandidateResult:
    return CandidateResult(name=name, hardware_class=hw, precision=precision, metric=1.0 - drop if metric is None else metric,
                           metric_drop=drop, size_bytes=1000, error=error,
                           latency=[LatencyStats(batch_size=1, p50_ms=p50, p95_ms=p50 * 1.2, runs=10)])


def test_fastest_accurate_candidate_wins_and_over_budget_or_slower_ones_are_rejected() -> None:
    pool = [cand("fp32-opt", 10.0, 0.0, Precision.FP32), cand("int8-a", 4.0, 0.002), cand("int8-b", 3.0, 0.02),
            cand("int8-c", 12.0, 0.0), cand("int8-d", 2.0, 0.0, error="cannot run")]
    choices = choose(pool, [TargetHardware(hardware_class=CPU)], 0.01, "top1", {CPU: True}, 1)
    assert choices[CPU].candidate.name == "int8-a"
    assert choices[CPU].speedup == pytest.approx(2.5)
    verdict = {c.name: (c.accepted, c.reject_reason.split(" (")[0]) for c in pool}
    assert verdict == {
        "fp32-opt": (True, ""),
        "int8-a": (True, ""),
        "int8-b": (False, "metric drop 0.0200 is above the budget 0.0100"),
        "int8-c": (False, "slower than the FP32 baseline beyond the noise"),
        "int8-d": (False, "failed: cannot run"),
    }


def test_timing_ties_go_to_the_more_accurate_candidate() -> None:
    pool = [cand("fp32-opt", 1.00, 0.0, Precision.FP32, metric=0.98), cand("int8-a", 0.98, 0.004, metric=0.976)]
    choices = choose(pool, [TargetHardware(hardware_class=CPU)], 0.01, "top1", {CPU: True}, 1)
    assert choices[CPU].candidate.name == "fp32-opt"


def test_precisions_not_allowed_for_a_class_are_never_shipped() -> None:
    pool = [cand("fp32-opt", 10.0, 0.0, Precision.FP32), cand("int8-a", 4.0, 0.0)]
    target = TargetHardware(hardware_class=CPU, precisions=[Precision.FP32])
    assert choose(pool, [target], 0.01, "top1", {CPU: True}, 1)[CPU].candidate.name == "fp32-opt"
    assert pool[1].reject_reason.startswith("precision int8 is not allowed")


def test_unmeasured_gpu_prefers_fp16_among_accurate_candidates() -> None:
    pool = [cand("fp32-opt", 5.0, 0.0, Precision.FP32, GPU), cand("fp16", 9.0, 0.0001, Precision.FP16, GPU)]
    choice = choose(pool, [TargetHardware(hardware_class=GPU)], 0.01, "top1", {GPU: False}, 1)[GPU]
    assert choice.candidate.name == "fp16"
    assert choice.speedup is None
    assert "GPU latency not measured" in choice.reason
    over = [cand("fp32-opt", 5.0, 0.0, Precision.FP32, GPU), cand("fp16", 9.0, 0.5, Precision.FP16, GPU)]
    assert choose(over, [TargetHardware(hardware_class=GPU)], 0.01, "top1", {GPU: False}, 1)[GPU].candidate.name == "fp32-opt"


def test_no_candidate_within_budget_raises_accuracy_budget_not_met() -> None:
    pool = [cand("fp32-opt", 10.0, 0.0, Precision.FP32), cand("int8-a", 4.0, 0.2)]
    target = TargetHardware(hardware_class=CPU, precisions=[Precision.INT8])
    with pytest.raises(ConversionError) as info:
        choose(pool, [target], 0.01, "top1", {CPU: True}, 1)
    assert info.value.reason == Reason.ACCURACY_BUDGET_NOT_MET
    assert info.value.exit_code == 2
    assert "int8-a, drops top1 by 0.2000" in str(info.value)


def test_accurate_but_slower_only_candidates_raise_no_acceptable_candidate() -> None:
    pool = [cand("fp32-opt", 10.0, 0.0, Precision.FP32), cand("int8-a", 40.0, 0.0)]
    with pytest.raises(ConversionError) as info:
        choose(pool, [TargetHardware(hardware_class=CPU, precisions=[Precision.INT8])], 0.01, "top1", {CPU: True}, 1)
    assert info.value.reason == Reason.NO_ACCEPTABLE_CANDIDATE


def test_termination_message_fits_4_kib_by_dropping_candidates_then_trimming() -> None:
    from edgemodel.api import CandidateSummary

    many = [CandidateSummary(name=f"int8-static-variant-{i}", hardware_class=CPU, precision=Precision.INT8,
                             reason="rejected: " + "x" * 80) for i in range(100)]
    result = ConversionResult(ok=True, revision=3, reason="Converted", message="m" * 9000, candidates=many)
    text = termination_message(result)
    assert len(text.encode()) <= 4096
    parsed = ConversionResult.model_validate_json(text)
    assert parsed.candidates == []
    assert parsed.reason == "Converted"
    small = ConversionResult(ok=False, reason="InputMismatch", message="short")
    assert ConversionResult.model_validate_json(termination_message(small)) == small


SPEC = [TensorSpec(name="input", shape=[-1, 1, 8, 8])]


def test_npz_checks(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, input=np.zeros((5, 1, 8, 8), np.float64), labels=np.arange(5))
    data = load_npz(path, "file:///d.npz", SPEC, "validation", limit=3, need_labels=True)
    assert data.inputs["input"].dtype == np.float32
    assert len(data) == 3
    assert data.labels is not None
    np.savez(path, input=np.zeros((5, 1, 8, 8), np.float32), labels=np.zeros((5, 2), np.int64))
    with pytest.raises(ConversionError, match="1-D integer array") as info:
        load_npz(path, "file:///d.npz", SPEC, "validation", limit=10)
    assert info.value.reason == Reason.INVALID_DATA
    (tmp_path / "bad.npz").write_bytes(os.urandom(100))
    with pytest.raises(ConversionError, match="not a readable .npz") as info:
        load_npz(tmp_path / "bad.npz", "file:///bad.npz", SPEC, "calibration", limit=10)
    assert info.value.reason == Reason.INVALID_DATA


def test_generated_inputs_follow_the_spec() -> None:
    specs = [TensorSpec(name="input_ids", dtype="int64", shape=[-1, -1]),
             TensorSpec(name="attention_mask", dtype="int64", shape=[-1, -1]),
             TensorSpec(name="pixels", shape=[-1, 3, 4, 4])]
    data = generate(specs, 6)
    assert data.inputs["input_ids"].shape == (6, 16)
    assert set(np.unique(data.inputs["input_ids"])) <= {0, 1}
    assert (data.inputs["attention_mask"] == 1).all()
    assert data.inputs["pixels"].dtype == np.float32
    assert "generated" in data.origin
    assert Dataset(data.inputs, None, "x").repeat_to(20)["pixels"].shape == (20, 3, 4, 4)


def test_compare_uses_relative_and_scaled_absolute_tolerance() -> None:
    ref = [np.array([[100.0, -50.0]], np.float32)]
    assert compare(ref, [ref[0] + 0.005])[1]  # within atol 1e-4 x max|ref| = 0.01
    worst, ok = compare(ref, [ref[0] + 0.5])
    assert not ok
    assert worst == pytest.approx(0.5)
    assert not compare(ref, [np.zeros((2, 2), np.float32)])[1]


def test_sniff_tells_formats_apart(tmp_path: Path, digits: DigitsExample, digits_onnx: Path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "random").write_bytes(os.urandom(1000))
    assert sniff(tmp_path / "empty") == "an empty file"
    assert "not a TorchScript" in str(sniff(tmp_path / "random"))
    assert sniff(digits.model_pt).value == "TorchScript"  # type: ignore[union-attr]
    assert digits.model_pt2 is not None
    assert sniff(digits.model_pt2).value == "TorchExport"  # type: ignore[union-attr]
    assert sniff(digits_onnx).value == "ONNX"  # type: ignore[union-attr]


def _spec(**optimization: object) -> EdgeModelSpec:
    return EdgeModelSpec.model_validate({"source": {"uri": "file:///m.pt", "format": "TorchScript"},
                                         "inputs": [{"name": "input", "shape": [-1, 1, 8, 8]}],
                                         "optimization": optimization})


def test_planning_in_auto_and_explicit_mode() -> None:
    calib = generate(SPEC, 4)
    plans, extras, notes = plan_candidates(_spec(), calib)
    names = [p.name for p in plans]
    assert names[:2] == ["fp32-opt", "int8-dynamic-perchannel"]
    assert {"int8-static-qdq-u8s8-perchannel-minmax", "int8-static-qdq-s8s8-perchannel-minmax",
            "int8-static-qop-u8s8-perchannel-minmax"} <= set(names)
    assert {"int8-dynamic-pertensor", "int8-static-qdq-u8s8-perchannel-entropy"} <= {p.name for p in extras}
    assert not notes
    plans, extras, notes = plan_candidates(_spec(), None)
    assert [p.name for p in plans] == ["fp32-opt", "int8-dynamic-perchannel"]
    assert [p.name for p in extras] == ["int8-dynamic-pertensor"]
    assert "calibrationDataUri is empty" in notes[0]
    plans, extras, _ = plan_candidates(_spec(mode="explicit", int8={"method": "dynamic", "perChannel": False}), None)
    assert [p.name for p in plans] == ["fp32-opt", "int8-dynamic-pertensor"]
    assert extras == []
    plans, _, _ = plan_candidates(_spec(mode="explicit", int8={"calibrationDataUri": "file:///c.npz", "format": "QOperator",
                                                              "activationType": "int8", "calibrationMethod": "Entropy"},
                                        targets=[{"hardwareClass": "cpu"}, {"hardwareClass": "gpu"}]), calib)
    assert [(p.name, p.hardware_class.value) for p in plans] == [
        ("fp32-opt", "cpu"), ("fp32-opt", "gpu"), ("int8-static-qop-s8s8-perchannel-entropy", "cpu"), ("fp16", "gpu")]


def test_offline_level_never_bakes_in_hardware_specific_layouts() -> None:
    assert offline_level(GraphOptimizationLevel.ALL, CPU) == "extended"
    assert offline_level(GraphOptimizationLevel.ALL, GPU) == "basic"
    assert offline_level(GraphOptimizationLevel.DISABLED, CPU) == "disabled"


def test_digits_example_is_a_real_classifier(digits: DigitsExample) -> None:
    assert digits.test_accuracy > 0.9
    with np.load(digits.val_npz) as val:
        assert val["input"].shape == (200, 1, 8, 8)
        assert val["labels"].dtype == np.int64
    with np.load(digits.calib_npz) as calib:
        assert calib["input"].shape == (64, 1, 8, 8)
    manifest = digits.manifest()
    assert manifest["spec"]["inputs"][0]["shape"] == [-1, 1, 8, 8]


def test_cgroup_cpu_limit_caps_measurement_threads(tmp_path: Path) -> None:
    from edgemodel.convert.runners import cgroup_cpu_limit

    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path) is None
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(tmp_path) == 2.0
    assert cgroup_cpu_limit(tmp_path / "missing") is None


class CountingSession:
    """Stands in for an ORT session where only the number of runs matters."""

    def __init__(self) -> None:
        self.calls = 0

    def run(self, _outputs: object, _feed: object) -> list[np.ndarray]:
        self.calls += 1
        return [np.zeros(1)]


def test_latency_runs_are_bounded_and_each_round_starts_with_warm_up_runs() -> None:
    from edgemodel.convert.measure import measure_latency

    sessions = {"a": CountingSession(), "b": CountingSession()}
    stats = measure_latency(sessions, {1: {"x": np.zeros(1)}, 8: {"x": np.zeros(8)}}, {"a": "cpu", "b": "cpu"},
                            runs=6, budget_s=60.0, warmup=2, rounds=3, min_block_s=0.0)
    for name, session in sessions.items():
        assert [s.batch_size for s in stats[name]] == [1, 8]
        assert [s.runs for s in stats[name]] == [6, 6]
        assert [len(s.rounds_ms) for s in stats[name]] == [3, 3]
        # per batch size and round: 2 untimed warm-up runs, then 2 timed runs
        assert session.calls == 2 * 3 * (2 + 2)
