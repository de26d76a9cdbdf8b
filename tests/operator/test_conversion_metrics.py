"""Conversion metrics behind the conversion dashboard: duration, candidate latency and speedup."""

from __future__ import annotations

from prometheus_client import generate_latest

from edgemodel.api import CandidateSummary
from edgemodel_operator.jobs import job_duration_seconds
from edgemodel_operator.metrics import OperatorMetrics


def _cand(name: str, cls: str, precision: str, p50: float, chosen: bool = False) -> CandidateSummary:
    return CandidateSummary.model_validate(
        {"name": name, "hardwareClass": cls, "precision": precision, "p50Ms": p50, "accepted": True, "chosen": chosen})


def test_candidates_of_the_latest_revision_replace_the_previous_ones() -> None:
    metrics = OperatorMetrics()
    metrics.record_conversion("default", "digits", 1, 42.0, [
        _cand("fp32-opt", "cpu", "fp32", 10.0), _cand("int8-static", "cpu", "int8", 4.0, chosen=True),
        _cand("fp16", "gpu", "fp16", 8.0, chosen=True),
    ])
    text = generate_latest(metrics.registry).decode()
    assert 'edgemodel_operator_conversion_duration_seconds_count{model="digits",namespace="default"} 1.0' in text
    assert ('edgemodel_operator_candidate_latency_seconds{candidate="int8-static",chosen="true",hardware_class="cpu",'
            'model="digits",namespace="default",precision="int8",revision="1"} 0.004') in text
    assert ('edgemodel_operator_candidate_speedup{candidate="int8-static",chosen="true",hardware_class="cpu",'
            'model="digits",namespace="default"} 2.5') in text
    assert 'candidate="fp16"' in text.split("edgemodel_operator_candidate_latency_seconds")[-1]
    assert "candidate_speedup{candidate=\"fp16\"" not in text, "no FP32 baseline on gpu: no speedup"

    metrics.record_conversion("default", "digits", 2, None, [_cand("fp32-opt", "cpu", "fp32", 9.0, chosen=True)])
    text = generate_latest(metrics.registry).decode()
    assert 'revision="1"' not in text
    assert 'revision="2"' in text
    metrics.forget_model("default", "digits")
    assert "candidate_latency_seconds{" not in generate_latest(metrics.registry).decode()


def test_job_duration_from_creation_to_completion() -> None:
    job = {"metadata": {"creationTimestamp": "2026-01-01T00:00:00Z"}, "status": {"completionTime": "2026-01-01T00:01:05Z"}}
    assert job_duration_seconds(job) == 65.0
    assert job_duration_seconds({"metadata": {"creationTimestamp": "2026-01-01T00:00:00Z"}, "status": {}}) is None
    assert job_duration_seconds({"metadata": {"creationTimestamp": "bad"}, "status": {"completionTime": "x"}}) is None
