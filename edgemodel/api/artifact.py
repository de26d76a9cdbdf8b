"""The artifact manifest the conversion Job writes, signs and the agents verify.

Layout in the artifact store, under ``{namespace}/{model}/{revision}/``:
``manifest.json`` (this model), ``manifest.json.sig`` (base64 ed25519 over the exact bytes of
manifest.json), ``model-{hardwareClass}.onnx`` (one per hardware class), ``report.md`` (and
``report.png`` when matplotlib is installed), with spec.split on also ``head.onnx``, ``tail.onnx`` and
``split.json``, and ``result.json`` (the ConversionResult, written last).

The manifest's sections are typed (:class:`ManifestSplit`, :class:`ManifestValidation`,
:class:`ManifestEnvironment`) with one rule for old and new readers alike:

* **known keys are strict**: a wrong type or an impossible value (a negative sample count, an empty cut)
  is refused with the field named (``split.featureBytes``), so a broken writer is caught where it writes;
* **unknown keys are kept** (``extra="allow"``): an agent of this version reading a manifest a newer
  converter wrote does not refuse a model for a key it does not know, and re-serialising keeps the key;
* **every key but the split's cut and wire is optional**, so manifests written before a key existed
  (or by the test helpers, with ``validation: {}``) still load.

Signatures cover the stored bytes of manifest.json, never a re-serialisation: verify those bytes first,
then parse them (``edge_agent.control.decide`` / ``check_manifest``).
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field, model_validator

from edgemodel.api.base import ApiModel, StatusModel
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


class ManifestSection(ApiModel):
    """Base of the typed manifest sections: camelCase keys, known keys validated, unknown keys kept."""

    model_config = ConfigDict(extra="allow")


class ManifestSplit(ManifestSection):
    """``split``: the split's essentials (head.onnx, tail.onnx and split.json hold the full plan and profile)."""

    cut: str = Field(min_length=1)
    """The tensor the model is cut at; an agent refuses a head or tail assignment with another split.cut."""
    wire: str = Field(min_length=1)
    """Wire format of the features, e.g. int8 or int8+zstd."""
    chosen_by: str = ""
    """auto (the planner) or manual (spec.split.cut); a plain string so a new way of choosing loads in old agents."""
    shape: list[int | str | None] = Field(default_factory=list)
    """Shape of the cut tensor (symbolic dimensions as names)."""
    reason: str = ""
    """Why this cut: the planner's numbers or "named in spec.split.cut"."""
    precision: str = "fp32"
    """Precision of the head and tail (fp32, or int8 with quantizeParts)."""
    predicted_ms: float | None = Field(default=None, ge=0)
    """The planner's predicted end-to-end latency at the cut (auto only)."""
    budget_met: bool | None = None
    """Whether the chosen cut meets spec.split.budgetMs (auto only)."""
    feature_bytes: int | None = Field(default=None, ge=0)
    """Encoded size of the features of one request of ``featureBatch`` samples."""
    feature_batch: int = Field(default=1, ge=1)
    """Samples per request ``featureBytes`` was measured with."""
    max_abs_diff: float | None = Field(default=None, ge=0)
    """Largest |head+tail - whole model| over the verification inputs."""
    verified_samples: int | None = Field(default=None, ge=0)
    """Inputs head+tail were verified on."""
    quantized_max_abs_diff: float | None = Field(default=None, ge=0)
    """With INT8 parts: their largest difference to the whole model (recorded, not a gate)."""
    candidates: int | None = Field(default=None, ge=0)
    """Cuts the planner profiled (auto only)."""
    head: str = "head.onnx"
    """File name of the head beside manifest.json."""
    tail: str = "tail.onnx"
    """File name of the tail beside manifest.json."""
    manifest: str = "split.json"
    """File name of the split manifest (plan, profiles) beside manifest.json."""


class ManifestValidation(ManifestSection):
    """``validation``: how the candidates' quality was measured."""

    metric: str = ""
    """The metric used (top1, agreement...); may differ from ``requestedMetric`` when data lacked labels."""
    requested_metric: str = ""
    """spec.validation.metric."""
    data: str = ""
    """Where the samples came from (the validation data URI, or generated inputs)."""
    samples: int | None = Field(default=None, ge=0)
    """How many samples each candidate was evaluated on."""
    original: float | None = None
    """The original model's metric on those samples."""
    max_accuracy_drop: float | None = Field(default=None, ge=0)
    """spec.validation.maxAccuracyDrop: the budget a candidate had to stay within."""
    selection_batch: int | None = Field(default=None, ge=1)
    """Batch size the latency comparison used."""
    note: str | None = None
    """Something the reader should know about the validation."""


class ManifestDriftReference(ManifestSection):
    """``driftReference``: per-feature summary statistics of the validation inputs, the agents' PSI reference.

    Each input row is flattened and reduced to at most 64 features (block means, ``edge_agent.drift.summarise``);
    per feature: the inner quantile bin edges and the share of the validation rows in each bin. Signed with
    the manifest, so an agent detects input drift against what the revision was validated on from its first
    request (docs/continual.md)."""

    input: str = Field(min_length=1)
    """The input tensor summarised (spec.inputs[0])."""
    data: str = ""
    """Where the rows came from (spec.validation.dataUri)."""
    samples: int = Field(ge=1)
    """Validation rows summarised."""
    bins: int = Field(ge=2)
    edges: list[list[float]]
    """Inner bin edges of each feature (empty for a constant feature, which is skipped)."""
    expected: list[list[float]]
    """Share of the validation rows in each bin of each feature (len(edges[i]) + 1 values)."""

    @model_validator(mode="after")
    def _shapes(self) -> ManifestDriftReference:
        if len(self.edges) != len(self.expected):
            raise ValueError(f"edges has {len(self.edges)} features but expected has {len(self.expected)}")
        for i, (e, p) in enumerate(zip(self.edges, self.expected, strict=True)):
            if len(p) != len(e) + 1:
                raise ValueError(f"expected[{i}] needs len(edges[{i}]) + 1 = {len(e) + 1} values, got {len(p)}")
        return self


class ManifestEnvironment(ManifestSection):
    """``environment``: where the candidates were measured."""

    onnxruntime: str = ""
    onnx: str = ""
    numpy: str = ""
    python: str = ""
    torch: str | None = None
    """torch version when the source was a torch model."""
    machine: str = ""
    """platform.machine(), e.g. x86_64."""
    cpu: str = ""
    """CPU model name."""
    cpu_flags: list[str] = Field(default_factory=list)
    """The CPU flags that matter for INT8/FP16 kernels."""
    threads: int | None = Field(default=None, ge=1)
    """ONNX Runtime intra-op threads."""
    provider: str = ""
    """Provider per hardware class, e.g. "cpu: CPUExecutionProvider"."""
    available_providers: list[str] = Field(default_factory=list)
    load_average: list[float] = Field(default_factory=list)
    """1, 5 and 15 minute load averages when measuring began (benchmarks under load are noisy)."""


class SplitPlanLink(ManifestSection):
    """The link a plan was costed on."""

    bandwidth_mbit_s: float = Field(gt=0)
    rtt_ms: float = Field(ge=0)


class SplitPlanOption(ManifestSection):
    """One costed option of a plan: edge-only, a cut, or cloud-only (``edgemodel.split.planner.Option``)."""

    kind: str = Field(min_length=1)
    """edge-only, split or cloud-only (a plain string: a new kind is skipped by readers, not refused)."""
    option: str = ""
    cut: str | None = None
    cut_index: int | None = Field(default=None, ge=0)
    edge_ms: float = Field(ge=0)
    codec_ms: float = Field(ge=0)
    transfer_ms: float = Field(ge=0)
    cloud_ms: float = Field(ge=0)
    total_ms: float | None = Field(default=None, ge=0)
    bytes_up: int = Field(ge=0)
    bytes_down: int = Field(ge=0)


class SplitPlanRecord(ManifestSection):
    """``plan`` of split.json (beside manifest.json, its sha256 in the signed ``files``): every cut costed."""

    link: SplitPlanLink
    options: list[SplitPlanOption]
    chosen: SplitPlanOption | None = None
    objective: str = ""
    budget_ms: float | None = None
    budget_met: bool | None = None


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
    validation: ManifestValidation = Field(default_factory=ManifestValidation)
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
    environment: ManifestEnvironment = Field(default_factory=ManifestEnvironment)
    """Where candidates were measured: library versions, provider, threads, CPU, load average."""
    notes: list[str] = Field(default_factory=list)
    """Things the reader should know, e.g. that GPU latency was not measured."""
    drift_reference: ManifestDriftReference | None = None
    """Summary statistics of the validation inputs (the agents' PSI drift reference); None without validation data."""
    split: ManifestSplit | None = None
    """With spec.split on: the split's essentials (cut, wire, chosenBy auto|manual, predictedMs, featureBytes,
    maxAbsDiff, file names); head.onnx, tail.onnx and split.json (the full plan and profile) are in ``files``."""
