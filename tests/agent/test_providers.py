"""Execution provider selection with fake provider lists and session factories."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest

from edge_agent import providers
from edge_agent.errors import LoadError
from edge_agent.metrics import AgentMetrics
from edge_agent.model import ModelOptions, OnnxModel
from edge_agent.pool import InferencePool
from edge_agent.providers import CPU, CUDA, OPENVINO, TENSORRT
from edge_agent.repository import ModelVersion

ALL = [TENSORRT, CUDA, OPENVINO, CPU]


class FakeSession:
    def __init__(self, running_on: str) -> None:
        self.running_on = running_on

    def get_providers(self) -> list[str]:
        return [self.running_on] if self.running_on == CPU else [self.running_on, CPU]


def factory(working: set[str], silent: set[str] = frozenset(), calls: list[list[str]] | None = None):  # type: ignore[no-untyped-def]
    """Providers in ``working`` load; ones in ``silent`` quietly fall back to CPU; others raise
    the way onnxruntime-gpu does without libcudart."""

    def create(requested: list[str]) -> FakeSession:
        if calls is not None:
            calls.append(list(requested))
        first = requested[0]
        if first in working:
            return FakeSession(first)
        if first in silent:
            return FakeSession(CPU)
        raise RuntimeError(f"Failed to load library libonnxruntime_providers_{first.lower()}.so: libcudart.so.12: cannot open shared object file")

    return create


def test_candidates_follow_the_preference_among_compiled_in_providers() -> None:
    assert providers.candidates("auto", ["CPUExecutionProvider"]) == [CPU]
    assert providers.candidates("auto", [CPU, CUDA, "AzureExecutionProvider", OPENVINO, TENSORRT]) == ALL
    assert providers.candidates("gpu", ALL) == [TENSORRT, CUDA, CPU]
    assert providers.candidates("gpu", ALL, gpu_fallback_to_cpu=False) == [TENSORRT, CUDA]
    assert providers.candidates("cpu", ALL) == [CPU]
    with pytest.raises(ValueError, match="use one of auto, gpu, cpu"):
        providers.candidates("tpu", ALL)


def test_auto_prefers_tensorrt_when_it_loads() -> None:
    calls: list[list[str]] = []
    sel = providers.select("auto", ALL, factory({TENSORRT, CUDA, OPENVINO, CPU}, calls=calls))
    assert sel.provider == TENSORRT
    assert sel.tried == []
    assert calls == [[TENSORRT, CPU]]


def test_auto_skips_providers_whose_libraries_are_missing() -> None:
    sel = providers.select("auto", ALL, factory({OPENVINO, CPU}))
    assert sel.provider == OPENVINO
    assert len(sel.tried) == 2
    assert "libcudart" in sel.tried[0]


def test_a_silent_fallback_to_cpu_is_detected_with_get_providers() -> None:
    # get_available_providers() lists CUDA, the session is created, but it runs on CPU.
    sel = providers.select("auto", [CUDA, CPU], factory({CPU}, silent={CUDA}))
    assert sel.provider == CPU
    assert sel.tried == [f"{CUDA}: session fell back to {CPU} (library missing?)"]


def test_gpu_falls_back_to_cpu_by_policy_and_says_so() -> None:
    sel = providers.select("gpu", [CUDA, CPU], factory({CPU}), gpu_fallback_to_cpu=True)
    assert sel.provider == CPU
    assert sel.fell_back_to_cpu


def test_gpu_without_fallback_fails_clearly() -> None:
    with pytest.raises(LoadError) as info:
        providers.select("gpu", [CUDA, CPU], factory({CPU}), gpu_fallback_to_cpu=False)
    assert info.value.reason == "GpuUnavailable"
    assert "libcudart" in info.value.message
    assert "gpuFallbackToCpu: true" in info.value.message
    with pytest.raises(LoadError, match="none of TensorrtExecutionProvider, CUDAExecutionProvider is in this onnxruntime build"):
        providers.select("gpu", [CPU], factory({CPU}), gpu_fallback_to_cpu=False)


def test_cpu_failure_is_a_load_failure_with_the_cause() -> None:
    def broken(requested: list[str]) -> FakeSession:
        raise RuntimeError("[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Load model failed: Protobuf parsing failed.")

    with pytest.raises(LoadError) as info:
        providers.select("auto", [CPU], broken)
    assert info.value.reason == "LoadFailed"
    assert "Protobuf parsing failed" in info.value.message


def test_a_model_reports_the_provider_it_really_runs_on(tmp_path: Path, model_files: dict[str, Path]) -> None:
    """A real ORT session behind a factory that behaves like onnxruntime-gpu without CUDA libraries."""
    requested: list[list[str]] = []

    def cuda_missing(providers_list: list[str]) -> ort.InferenceSession:
        requested.append(providers_list)
        return ort.InferenceSession(str(model_files["affine1"]), providers=[CPU])  # CUDA silently dropped

    model = OnnxModel("affine", "1", model_files["affine1"], ModelOptions(accelerator="gpu"),
                      session_factory=cuda_missing, available_providers=[CUDA, CPU])  # fmt: skip
    model.load()
    assert requested == [[CUDA, CPU], [CPU]]
    assert model.provider == CPU
    assert "fell back" in model.provider_notes[0]
    metrics = AgentMetrics(process_metrics=False)
    pool = InferencePool(1)
    try:
        mv = ModelVersion(model, pool, metrics)
        assert mv.provider == CPU
        text = metrics.exposition().decode()
        assert 'edgemodel_model_info{model="affine",namespace="",provider="CPUExecutionProvider",sha256="",version="1"} 1.0' in text
    finally:
        pool.shutdown()

    strict = OnnxModel("affine", "1", model_files["affine1"], ModelOptions(accelerator="gpu", gpu_fallback_to_cpu=False),
                       session_factory=cuda_missing, available_providers=[CUDA, CPU])  # fmt: skip
    with pytest.raises(LoadError, match="GPU execution provider"):
        strict.load()
