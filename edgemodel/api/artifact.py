"""The artifact manifest the conversion Job writes, signs and the agents verify.

Layout in the artifact store, under ``{namespace}/{model}/{revision}/``:
``manifest.json`` (this model), ``manifest.json.sig`` (base64 ed25519 over the exact bytes of
manifest.json), ``model-{hardwareClass}.onnx`` (one per hardware class), ``report.md`` (and
``report.png`` when matplotlib is installed), with spec.split on also ``head.onnx``, ``tail.onnx`` and
``split.json``, and ``result.json`` (the ConversionResult, written last).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from edgemodel.api.base import StatusModel
from edgemodel.api.edgemodel import HardwareClass, Precision
from edgemodel.api.tensors import TensorSpec


class LatencyStats(StatusModel):
    batch_size: int
    p50_ms: float
    p95_ms: float
    runs: int
    provider: str = "CPUExecutionProvider"
    rounds_ms: list[float] = Field(default_factory=list)
    """Median ms of each interleaved measurement round (round r of every candidate ran seconds apart), the
    samples the choice compares in pairs (edgemodel.timing)."""


class CandidateResult(StatusModel):
    """A built and measured candidate."""

    name: str
    """e.g. fp32-opt, int8-dynamic, int8-static-qdq-u8s8-perchannel-minmax, fp16."""
    hardware_class: HardwareClass
    precision: Precision
    settings: dict[str, Any] = Field(default_factory=dict)
    complexity: int = 0
    """Simplicity rank (lower is simpler): a more complex candidate is chosen only when it is faster beyond
    the noise (edgemodel.convert.candidates.complexity; docs/architecture.md, "Choosing a candidate")."""
    metric: float | None = None
    metric_drop: float | None = None
    latency: list[LatencyStats] = Field(default_factory=list)
    size_bytes: int = 0
    sha256: str = ""
    accepted: bool = False
    reject_reason: str = ""
    error: str = ""


class ArtifactChoice(StatusModel):
    """The candidate chosen for one hardware class and why."""

    hardware_class: HardwareClass
    candidate: str
    file: str
    """File name beside manifest.json, e.g. model-cpu.onnx."""
    sha256: str
    size_bytes: int
    precision: Precision
    reason: str
    metric: float | None = None
    """Validation metric of the chosen candidate (see ArtifactManifest.validation.metric)."""
    p50_ms: float | None = None
    """p50 latency at the selection batch size, on the provider it was measured on."""
    speedup_vs_baseline: float | None = None
    """FP32 baseline p50 over this candidate's p50 (None when latency was not measured on the target)."""
    speedup_ci95: list[float] | None = None
    """95% confidence interval [low, high] of the paired speed-up over the FP32 baseline (None when not measured)."""


class ArtifactManifest(StatusModel):
    """manifest.json: everything about one converted revision."""

    schema_version: int = 1
    model: str
    namespace: str = "default"
    revision: int = 1
    created_at: str = ""
    source_uri: str = ""
    source_format: str = ""
    source_sha256: str = ""
    opset: int = 0
    export_tolerance: float | None = None
    """Largest absolute difference between the original model and the exported ONNX model."""
    inputs: list[TensorSpec] = Field(default_factory=list)
    outputs: list[TensorSpec] = Field(default_factory=list)
    validation: dict[str, Any] = Field(default_factory=dict)
    """Metric, data source (validation data, or agreement on generated inputs) and sample count."""
    measurement: dict[str, Any] = Field(default_factory=dict)
    """How latency was measured and compared: rounds, minSpeedup and the rule (edgemodel.timing)."""
    candidates: list[CandidateResult] = Field(default_factory=list)
    choices: list[ArtifactChoice] = Field(default_factory=list)
    files: dict[str, str] = Field(default_factory=dict)
    """sha256 of every file in the revision folder except the manifest, its signature and result.json."""
    sizes: dict[str, int] = Field(default_factory=dict)
    """Size in bytes of every file in ``files``: agents stop a download there (older manifests lack it)."""
    exporter: str = ""
    """How the ONNX model was produced, e.g. "torch.onnx dynamo, torch 2.13.0" or "none (ONNX source)"."""
    export_check: dict[str, Any] = Field(default_factory=dict)
    """The export comparison: samples, rtol, atol, maxAbsDiff, passed."""
    environment: dict[str, Any] = Field(default_factory=dict)
    """Where candidates were measured: library versions, provider, threads, CPU, load average."""
    notes: list[str] = Field(default_factory=list)
    """Things the reader should know, e.g. that GPU latency was not measured."""
    split: dict[str, Any] | None = None
    """With spec.split on: the split's essentials (cut, wire, chosenBy auto|manual, predictedMs, featureBytes,
    maxAbsDiff, file names); head.onnx, tail.onnx and split.json (the full plan and profile) are in ``files``."""
