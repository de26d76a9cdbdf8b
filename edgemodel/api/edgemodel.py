"""The EdgeModel custom resource: what a user applies to put a model on edge nodes."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any, Literal

from pydantic import Field, model_validator

from edgemodel.api.base import (
    ApiModel,
    Condition,
    LabelSelector,
    ObjectMeta,
    StatusModel,
)
from edgemodel.api.continual import Continual, ContinualStatus
from edgemodel.api.tensors import OutputSpec, TensorSpec

URI_PATTERN = r"^(file|https?|s3)://.+"


class SourceFormat(StrEnum):
    """How the source model is stored."""

    TORCHSCRIPT = "TorchScript"
    TORCH_EXPORT = "TorchExport"
    ONNX = "ONNX"


class HardwareClass(StrEnum):
    """Classes of edge hardware an artifact is built and chosen for."""

    CPU = "cpu"
    GPU = "gpu"


class Precision(StrEnum):
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"


class ModelSource(ApiModel):
    """Where the trained model is and in which format."""

    uri: str = Field(pattern=URI_PATTERN)
    """Location of the model file: file://, http(s):// or s3:// (S3-compatible), e.g. s3://models/digits.pt."""
    format: SourceFormat
    """TorchScript (.pt from torch.jit.save), TorchExport (.pt2 from torch.export.save) or ONNX."""
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    """Optional expected sha256 of the file; the conversion fails when it differs."""


class OptimizationMode(StrEnum):
    AUTO = "auto"
    EXPLICIT = "explicit"


class GraphOptimizationLevel(StrEnum):
    """ONNX Runtime offline graph optimisation level."""

    DISABLED = "disabled"
    BASIC = "basic"
    EXTENDED = "extended"
    ALL = "all"


class QuantMethod(StrEnum):
    DYNAMIC = "dynamic"
    STATIC = "static"


class QuantFormat(StrEnum):
    QDQ = "QDQ"
    QOPERATOR = "QOperator"


class ActivationType(StrEnum):
    """Activation type of static INT8: uint8 (U8S8) or int8 (S8S8); weights are int8."""

    UINT8 = "uint8"
    INT8 = "int8"


class CalibrationMethod(StrEnum):
    MIN_MAX = "MinMax"
    ENTROPY = "Entropy"
    PERCENTILE = "Percentile"


class Int8Options(ApiModel):
    """INT8 quantisation settings (explicit mode pins them; auto mode searches around them)."""

    enabled: bool = True
    """Whether INT8 candidates are built at all."""
    method: QuantMethod = QuantMethod.STATIC
    """dynamic (weights only, no calibration data) or static (needs calibrationDataUri)."""
    format: QuantFormat = QuantFormat.QDQ
    """Static quantisation graph format: QDQ or QOperator."""
    activation_type: ActivationType = ActivationType.UINT8
    """Static activation type: uint8 (U8S8) or int8 (S8S8)."""
    per_channel: bool = True
    """Per-channel weight scales (usually more accurate for convolutions)."""
    calibration_method: CalibrationMethod = CalibrationMethod.MIN_MAX
    """How activation ranges are calibrated."""
    calibration_data_uri: str | None = Field(default=None, pattern=URI_PATTERN)
    """An .npz file with representative inputs (one array per input name), e.g. file:///data/calib.npz."""
    calibration_samples: int = Field(default=128, ge=1, le=100000)
    """How many calibration samples to use at most."""


class TargetHardware(ApiModel):
    """Per-hardware-class choices: which precisions may be shipped to that class."""

    hardware_class: HardwareClass
    """The hardware class, e.g. cpu or gpu."""
    precisions: list[Precision] = Field(default_factory=lambda: [Precision.FP32, Precision.INT8, Precision.FP16], min_length=1)
    """Precisions allowed for this class; the simplest accurate candidate is chosen unless a more complex one is
    faster beyond the noise (optimization.measurement)."""


class Measurement(ApiModel):
    """How candidates and split cuts are timed and compared (robust on a busy shared machine)."""

    rounds: int = Field(default=10, ge=3, le=100)
    """Interleaved rounds: in each, every candidate (and split head/tail) runs one block of timed runs, in an order
    that changes every round, so load from other work hits all alike; more rounds, tighter confidence intervals."""
    min_speedup: float = Field(default=1.05, ge=1.0, le=10.0)
    """A more complex candidate replaces a simpler one only when it is faster by at least this factor at the lower
    bound of the 95% confidence interval, e.g. 1.05: at least 5% faster beyond the noise."""


class TrainingOptions(ApiModel):
    """Data and bounds for the compression methods that train (pruning fine-tuning, QAT, distillation)."""

    data_uri: str | None = Field(default=None, pattern=URI_PATTERN)
    """An .npz with inputs (one array per input name) and a "labels" array (integer class per sample); labels
    may be left out when only distillation trains (it then learns the teacher's soft targets alone), and a
    label of -1 marks an unlabelled sample: distillation learns its soft targets, fine-tuning skips it."""
    max_samples: int = Field(default=50000, ge=1, le=10_000_000)
    """How many training samples to use at most."""
    batch_size: int = Field(default=64, ge=1, le=4096)
    """Samples per optimiser step."""
    learning_rate: float = Field(default=1e-3, gt=0, le=1.0)
    """Adam learning rate of fine-tuning and distillation (QAT uses a tenth of it)."""
    max_seconds: int = Field(default=600, ge=1, le=86400)
    """Wall-time bound for all training of one conversion, in seconds; a method stops after the epoch that
    crosses its share and the report says so."""
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    """Seed of initialisation, shuffling and pruning, so a conversion is reproducible."""


class PruningOptions(ApiModel):
    """Structured (channel) pruning with fine-tuning: ONNX Runtime really runs fewer FLOPs."""

    enabled: bool = False
    """Build pruned candidates (pruned FP32, and pruned + INT8 when INT8 is on)."""
    target_speedup: float = Field(default=2.0, ge=1.05, le=50.0)
    """Channels are removed until the model's MACs fall by this factor, e.g. 2.0; the measured p50 speed-up
    is checked against it after selection (a miss is reported, the best accepted candidate still chosen)."""
    fine_tune_epochs: int = Field(default=5, ge=0, le=500)
    """Epochs of fine-tuning on training.dataUri after pruning."""


class QatOptions(ApiModel):
    """Quantisation-aware training: fine-tune with fake quantisation, export as QDQ U8S8 per-channel."""

    enabled: bool = False
    """Build a QAT INT8 candidate."""
    epochs: int = Field(default=3, ge=1, le=500)
    """Epochs of fine-tuning with fake quantisation."""


class DistillationOptions(ApiModel):
    """Knowledge distillation: a smaller student learns the original model's soft targets."""

    enabled: bool = False
    """Build distilled candidates (distilled FP32, and distilled + INT8 when INT8 is on)."""
    student: ModelSource | None = None
    """The student model (TorchScript or TorchExport) with the teacher's inputs and outputs; its weights are
    the starting point."""
    width_factor: float | None = Field(default=None, gt=0.0, lt=1.0)
    """Instead of a student source: the teacher with every hidden layer's channels times this factor (0.25 gives
    about 1/16 of the MACs), freshly initialised."""
    temperature: float = Field(default=4.0, gt=0.0, le=100.0)
    """Softmax temperature of the soft targets."""
    alpha: float = Field(default=0.7, ge=0.0, le=1.0)
    """Weight of the soft-target loss; 1 - alpha weighs the labels (alpha is 1 without labels)."""
    epochs: int = Field(default=30, ge=1, le=1000)
    """Training epochs of the student."""
    mixup: bool = True
    """Train the student on mixtures of pairs of training inputs, labelled by the teacher on the fly (function
    matching): soft targets on inputs no label describes. Needs floating-point inputs (ignored otherwise)."""


class Optimization(ApiModel):
    """What the conversion Job tries; in auto mode it measures every candidate and keeps the best."""

    mode: OptimizationMode = OptimizationMode.AUTO
    """auto: search graph levels, INT8 variants and FP16 and measure; explicit: build only what is pinned here."""
    graph_optimization_level: GraphOptimizationLevel = GraphOptimizationLevel.ALL
    """ONNX Runtime offline graph optimisation level applied to every candidate."""
    int8: Int8Options = Field(default_factory=Int8Options)
    """INT8 quantisation settings."""
    fp16: bool = True
    """Build an FP16 candidate for GPU targets."""
    opset: int | None = Field(default=None, ge=13, le=23)
    """ONNX opset to export with; empty chooses the exporter's recommended opset."""
    targets: list[TargetHardware] = Field(default_factory=lambda: [TargetHardware(hardware_class=HardwareClass.CPU)],
                                          min_length=1, max_length=8)
    """Hardware classes to build artifacts for, e.g. [{hardwareClass: cpu}, {hardwareClass: gpu}]."""
    measurement: Measurement = Field(default_factory=Measurement)
    """How latency is measured and how much faster a more complex candidate must be to be chosen."""
    training: TrainingOptions = Field(default_factory=TrainingOptions)
    """Training data and bounds for pruning, qat and distillation (run inside the conversion Job, on CPU)."""
    pruning: PruningOptions = Field(default_factory=PruningOptions)
    """Structured pruning with fine-tuning."""
    qat: QatOptions = Field(default_factory=QatOptions)
    """Quantisation-aware training."""
    distillation: DistillationOptions = Field(default_factory=DistillationOptions)
    """Knowledge distillation into a smaller student."""

    @property
    def trains(self) -> bool:
        """Whether any compression method that trains is on."""
        return self.pruning.enabled or self.qat.enabled or self.distillation.enabled


class ValidationMetric(StrEnum):
    TOP1 = "top1"
    COSINE = "cosine"
    AGREEMENT = "agreement"


class Validation(ApiModel):
    """How candidates are checked against the original model."""

    data_uri: str | None = Field(default=None, pattern=URI_PATTERN)
    """An .npz with inputs (one array per input name) and, for top1, a labels array (named by labelsArray). Empty: agreement with the original model on calibration or generated inputs."""
    labels_array: str = Field(default="labels", min_length=1, max_length=253, pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*$")
    """Name of the 1-D integer array of class labels in dataUri (top1), e.g. "y"; default "labels"."""
    metric: ValidationMetric = ValidationMetric.TOP1
    """top1 accuracy (needs labels), cosine similarity of outputs (embeddings), or agreement of top-1 with the original model."""
    max_accuracy_drop: float = Field(default=0.01, ge=0.0, le=1.0)
    """Largest allowed drop of the metric versus the original model, as a fraction (0.005 = 0.5 percentage points)."""
    samples: int = Field(default=512, ge=1, le=1000000)
    """How many validation samples to use at most."""


class HardwareRequirements(ApiModel):
    """Hardware an edge node must have to be selected."""

    require_gpu: bool = False
    """Select only nodes whose agent reports a GPU execution provider that really loads."""
    architectures: list[Literal["amd64", "arm64", "arm"]] = Field(default_factory=list)
    """Allowed CPU architectures; empty allows all."""
    min_memory_mi_b: int | None = Field(default=None, ge=1, alias="minMemoryMiB")
    """Smallest node memory in MiB."""


class Accelerator(StrEnum):
    AUTO = "auto"
    GPU = "gpu"
    CPU = "cpu"


class Batching(ApiModel):
    """Server-side dynamic batching on the agent."""

    enabled: bool = False
    """Whether concurrent requests are batched together."""
    max_batch_size: int = Field(default=8, ge=1, le=1024)
    """Largest batch formed."""
    max_queue_delay_ms: float = Field(default=2.0, ge=0.0, le=1000.0)
    """Longest a request waits for others to join its batch, in milliseconds."""


class Serving(ApiModel):
    """How agents serve the model."""

    accelerator: Accelerator = Accelerator.AUTO
    """auto prefers TensorRT, CUDA, OpenVINO, then CPU; gpu requires a GPU provider; cpu forces CPU."""
    gpu_fallback_to_cpu: bool = True
    """With accelerator gpu: serve on CPU when no GPU provider loads (true) or fail the node (false)."""
    batching: Batching = Field(default_factory=Batching)
    """Dynamic batching settings."""


class RolloutStrategy(StrEnum):
    ALL_AT_ONCE = "AllAtOnce"
    CANARY = "Canary"


class Analysis(ApiModel):
    """Checks run after each rollout step on the nodes that got the new revision."""

    max_p95_latency_ms: float | None = Field(default=None, gt=0)
    """Largest acceptable p95 inference latency in milliseconds; empty disables the check."""
    max_error_rate: float = Field(default=0.05, ge=0.0, le=1.0)
    """Largest acceptable fraction of failed requests."""
    min_requests: int = Field(default=0, ge=0)
    """Requests needed on the new revision before the window can pass (0: pass without traffic)."""
    window_seconds: int = Field(default=30, ge=1, le=86400)
    """How long each step is observed before it is judged."""


class Rollout(ApiModel):
    """How a new revision reaches the selected nodes."""

    strategy: RolloutStrategy = RolloutStrategy.CANARY
    """AllAtOnce or Canary (by steps)."""
    steps: list[int] = Field(default_factory=lambda: [10, 50, 100], min_length=1, max_length=20)
    """Canary steps as percentages of the selected nodes (at least one node per step); must rise and end at 100."""
    max_unavailable: int | str = Field(default="25%", json_schema_extra={"x-kubernetes-int-or-string": True})
    """Nodes that may be switching at once, as a number or a percentage, e.g. 1 or "25%"."""
    analysis: Analysis = Field(default_factory=Analysis)
    """Checks after each step."""
    auto_rollback: bool = True
    """Roll the nodes back to the previous good revision when a check fails."""

    # steps and maxUnavailable are checked by CROSS_FIELD_RULES (also CEL in the CRD), so that
    # `edgemodel validate` and the API server apply the same rules.


SPLIT_NONE = "none"
SPLIT_AUTO = "auto"
DEFAULT_SPLIT_RTT_MS = 20.0
"""The RTT a cut is planned for when spec.split.link.rttMs is empty and no edge agent measured one yet."""
CLOUD_TIER_LABEL = "edgemodel.io/tier"
"""Node label of the nodes whose agents run in the cloud (value ``cloud``): they serve split tails, never edge models."""


class SplitObjective(StrEnum):
    LATENCY = "latency"
    EDGE_COMPUTE = "edgeCompute"


class SplitFallback(StrEnum):
    """What an edge node does when the cloud tail cannot answer."""

    LOCAL = "local"
    FAIL = "fail"


class SplitLink(ApiModel):
    """The edge-cloud link the automatic cut is planned for."""

    bandwidth_mbit_s: float = Field(gt=0, le=1_000_000)
    """Usable bandwidth between an edge node and the cloud in Mbit/s, e.g. 10."""
    rtt_ms: float | None = Field(default=None, ge=0, le=60_000)
    """Round-trip time in ms over HTTPS, e.g. 20. Empty: the median RTT the edge agents measured to the cloud
    tail (status.models[].cloudRttMs of the heads), or 20 ms before any was measured."""


def _cloud_selector() -> LabelSelector:
    return LabelSelector(match_labels={CLOUD_TIER_LABEL: "cloud"})


class SplitCloud(ApiModel):
    """Where the tail runs: cloud agents (on Nodes labelled edgemodel.io/tier=cloud) behind a Service."""

    selector: LabelSelector = Field(default_factory=_cloud_selector)
    """Which cloud agents load the tail, by their Node labels; default {matchLabels: {edgemodel.io/tier: cloud}}."""
    service_url: str | None = Field(default=None, pattern=r"^https?://[^/]+$")
    """Base URL of the Service in front of the cloud agents' split port, e.g. https://edgemodel-cloud-agent:8443.
    Empty: the split endpoint a cloud agent reports (a single cloud agent, or tests)."""


class PipelineObjective(StrEnum):
    LATENCY = "latency"
    """Lowest end-to-end latency of one request (the sum of stage computes and hops)."""
    THROUGHPUT = "throughput"
    """Most requests per second: the slowest stage or link (the pipeline's period) as short as possible."""


PIPELINE_ORDER_LABEL = "edgemodel.io/pipeline-order"
"""Node label ordering the stage pool (numbers, ascending; then node name): stages run on the pool in that order."""
STAGE_SLOWDOWN_LABEL = "edgemodel.io/edge-slowdown"
"""Node label declaring the node's speed for pipeline planning: ms there / ms on the conversion Job's CPU
(e.g. "4"); a speed measured by a chain serving on the node takes precedence (docs/split-inference.md)."""
STAGE_OVERHEAD_LABEL = "edgemodel.io/serving-overhead-ms"
"""Node label: what serving one request costs the node beyond the model, in ms (mTLS, HTTP, decoding), e.g. "8"."""
MAX_PIPELINE_STAGES = 16


class StageLink(ApiModel):
    """A declared link between two stage nodes (either direction)."""

    from_node: str = Field(min_length=1, max_length=253, alias="from")
    """Node name at one end, e.g. edge-1."""
    to_node: str = Field(min_length=1, max_length=253, alias="to")
    """Node name at the other end, e.g. edge-2."""
    bandwidth_mbit_s: float = Field(gt=0, le=1_000_000)
    """Usable bandwidth in Mbit/s, e.g. 100."""
    rtt_ms: float | None = Field(default=None, ge=0, le=60_000)
    """Round-trip time in ms over HTTPS; empty: measured by the agents (the stage's health round trips)."""


class SplitStages(ApiModel):
    """Pipeline inference: the model as a chain of contiguous stages on several nodes (EdgeShard-style).

    Every node the EdgeModel selects is an entry: it runs stage 1 and holds the whole model (its fallback);
    stages 2..N run on nodes of the pool (or of stageSelectors), and features travel stage to stage
    over mTLS. spec.split.link is the default link of every hop; links declares (or leaves to measurement)
    the RTT of particular pairs.
    """

    count: int | str = Field(default="auto", json_schema_extra={"x-kubernetes-int-or-string": True})
    """Number of stages including the entry's, 2 to 16, or auto (the planner's choice up to maxStages)."""
    max_stages: int = Field(default=4, ge=2, le=MAX_PIPELINE_STAGES)
    """The most stages auto may choose."""
    cuts: list[str] = Field(default_factory=list, max_length=MAX_PIPELINE_STAGES - 1)
    """Manual cuts (tensor or layer names, input side first); empty: the planner chooses them."""
    pool: LabelSelector | None = None
    """Nodes that may host stages 2..N, by their Node labels, ordered by the edgemodel.io/pipeline-order label."""
    stage_selectors: list[LabelSelector] = Field(default_factory=list, max_length=MAX_PIPELINE_STAGES - 1)
    """Instead of a pool: the nodes for stage 2, 3, ... in order (one selector per stage after the entry)."""
    objective: PipelineObjective = PipelineObjective.LATENCY
    """latency or throughput."""
    links: list[StageLink] = Field(default_factory=list, max_length=256)
    """Declared links between particular nodes; other hops use spec.split.link."""

    def fixed_count(self) -> int | None:
        """The number of stages, or None for auto."""
        if isinstance(self.count, int):
            return self.count
        return None if self.count == SPLIT_AUTO else int(self.count)


def _stage_count_ok(stages: SplitStages | None) -> bool:
    if stages is None:
        return True
    count = stages.count
    if isinstance(count, str):
        if count == SPLIT_AUTO:
            return True
        if not count.isdigit():
            return False
        count = int(count)
    if not 2 <= count <= MAX_PIPELINE_STAGES:
        return False
    return not stages.cuts or len(stages.cuts) == count - 1


class Split(ApiModel):
    """Edge-cloud split inference: the edge runs the first layers, the cloud the rest."""

    cut: str = Field(default=SPLIT_NONE, min_length=1, max_length=512)
    """none (the whole model runs on the edge), auto (chosen from measured latencies, the feature size at
    every cut and the link), or a tensor or layer (node) name of the exported ONNX graph."""
    wire: str = Field(default="int8", pattern=r"^(fp32|fp16|int8)(\+zstd)?$")
    """How features travel: fp32, fp16 or int8 (with a scale per tensor), optionally +zstd, e.g. int8+zstd."""
    link: SplitLink | None = None
    """The link to plan for; required with cut: auto."""
    objective: SplitObjective = SplitObjective.LATENCY
    """latency: lowest end-to-end latency; edgeCompute: least edge compute within budgetMs."""
    budget_ms: float | None = Field(default=None, gt=0)
    """End-to-end latency budget in ms for objective edgeCompute."""
    edge_slowdown: float = Field(default=4.0, gt=0, le=1000)
    """How much slower the edge is than the conversion Job's CPU (auto only), e.g. 4."""
    quantize_parts: bool = False
    """Quantise head and tail independently to static INT8 (needs optimization.int8.calibrationDataUri)."""
    fallback: SplitFallback = SplitFallback.LOCAL
    """When the cloud is unreachable: local runs the whole model on the edge (it is assigned there too);
    fail answers 503."""
    cloud: SplitCloud = Field(default_factory=SplitCloud)
    """Which cloud agents run the tail and the URL edge nodes reach them at."""
    stages: SplitStages | None = None
    """A pipeline of several stages over edge nodes instead of one edge-cloud cut (leave cut at none)."""

    @property
    def enabled(self) -> bool:
        return self.cut != SPLIT_NONE

    @property
    def pipelined(self) -> bool:
        return self.stages is not None


class EdgeModelSpec(ApiModel):
    """Desired state: which model, optimised how, served where, rolled out how."""

    source: ModelSource
    """The trained model."""
    inputs: list[TensorSpec] = Field(min_length=1, max_length=32)
    """Model inputs with names, element types and shapes (-1 for dynamic dimensions)."""
    outputs: list[OutputSpec] = Field(default_factory=list, max_length=32)
    """Names of the model's outputs in the order it returns them, e.g. [{name: logits}]; empty keeps the names of
    an ONNX source, or output / output_0, output_1, ... (dict keys for a dict) for a PyTorch source."""
    optimization: Optimization = Field(default_factory=Optimization)
    """Conversion and quantisation choices."""
    validation: Validation = Field(default_factory=Validation)
    """Accuracy check against the original model."""
    selector: LabelSelector = Field(default_factory=LabelSelector)
    """Which edge nodes (by their Node labels, which an admin sets and no agent can change) get the model; empty selects all."""
    hardware: HardwareRequirements = Field(default_factory=HardwareRequirements)
    """Hardware a node must have."""
    serving: Serving = Field(default_factory=Serving)
    """Serving settings on the agents."""
    rollout: Rollout = Field(default_factory=Rollout)
    """Rollout strategy and analysis."""
    split: Split = Field(default_factory=Split)
    """Edge-cloud split inference; the default cut none serves the whole model on the edge."""
    suspend: bool = False
    """Pause conversion and rollout; nodes keep what they serve."""
    continual: Continual = Field(default_factory=Continual)
    """Continual learning: retrain on what the edge captures when drift or feedback says so (docs/continual.md)."""

    @model_validator(mode="after")
    def _cross_field_rules(self) -> EdgeModelSpec:
        failed = [f"{rule.field}: {rule.message}" for rule in CROSS_FIELD_RULES if not rule.check(self)]
        if failed:  # every broken rule, as the API server lists every failing x-kubernetes-validation
            raise ValueError("; ".join(failed))
        return self


class CrossFieldRule:
    """A rule checked in Python and, as CEL, by the API server (x-kubernetes-validations)."""

    def __init__(self, field: str, message: str, cel: str, check: Any) -> None:
        self.field = field
        self.message = message
        self.cel = cel
        self.check = check


def _rising(steps: list[int]) -> bool:
    return all(b > a for a, b in zip(steps, steps[1:], strict=False))


def _max_unavailable_ok(value: int | str) -> bool:
    if isinstance(value, int):
        return value >= 1
    return re.fullmatch(PERCENT, value) is not None


PERCENT = r"([1-9][0-9]?|100)%"
_STEPS = "!has(self.rollout) || !has(self.rollout.steps) || "
_UNIQUE_INPUTS = "self.inputs.all(a, self.inputs.exists_one(b, b.name == a.name))"
_NO_TRAINING_CEL = "!has(self.optimization) || (" + " && ".join(
    f"(!has(self.optimization.{m}) || !has(self.optimization.{m}.enabled) || !self.optimization.{m}.enabled)"
    for m in ("pruning", "qat", "distillation")) + ")"
"""CEL: none of the compression methods that train is on."""

CROSS_FIELD_RULES: list[CrossFieldRule] = [
    CrossFieldRule(
        field="spec.rollout.steps",
        message="every step must be a percentage between 1 and 100, e.g. [10, 50, 100]",
        cel=_STEPS + "self.rollout.steps.all(s, s >= 1 && s <= 100)",
        check=lambda s: all(1 <= x <= 100 for x in s.rollout.steps),
    ),
    CrossFieldRule(
        field="spec.rollout.steps",
        message="steps must rise strictly, e.g. [10, 50, 100]",
        cel=_STEPS + "(self.rollout.steps.isSorted() "
        "&& self.rollout.steps.all(s, self.rollout.steps.exists_one(t, t == s)))",
        check=lambda s: _rising(s.rollout.steps),
    ),
    CrossFieldRule(
        field="spec.rollout.steps",
        message="the last step must be 100 so every selected node gets the revision, e.g. [34, 67, 100]",
        cel=_STEPS + "size(self.rollout.steps) == 0 || self.rollout.steps[size(self.rollout.steps) - 1] == 100",
        check=lambda s: not s.rollout.steps or s.rollout.steps[-1] == 100,
    ),
    CrossFieldRule(
        field="spec.rollout.maxUnavailable",
        message='must be a number of at least 1 or a percentage from 1% to 100%, e.g. 1 or "25%"',
        cel="!has(self.rollout) || !has(self.rollout.maxUnavailable) || (type(self.rollout.maxUnavailable) == int "
        f"? self.rollout.maxUnavailable >= 1 : self.rollout.maxUnavailable.matches('^{PERCENT}$'))",
        check=lambda s: _max_unavailable_ok(s.rollout.max_unavailable),
    ),
    CrossFieldRule(
        field="spec.inputs",
        message="every input needs its own name (the ONNX input name); rename or remove the duplicate",
        cel=_UNIQUE_INPUTS,
        check=lambda s: len({t.name for t in s.inputs}) == len(s.inputs),
    ),
    CrossFieldRule(
        field="spec.inputs",
        message="a dimension of a shape is a positive size or -1 for a dynamic one, e.g. [-1, 1, 8, 8]",
        cel="self.inputs.all(t, t.shape.all(d, d == -1 || d > 0))",
        check=lambda s: all(d == -1 or d > 0 for t in s.inputs for d in t.shape),
    ),
    CrossFieldRule(
        field="spec.outputs",
        message="every output needs its own name; rename or remove the duplicate",
        cel="!has(self.outputs) || self.outputs.all(a, self.outputs.exists_one(b, b.name == a.name))",
        check=lambda s: len({o.name for o in s.outputs}) == len(s.outputs),
    ),
    CrossFieldRule(
        field="spec.optimization.targets",
        message="list each hardwareClass once, e.g. [{hardwareClass: cpu}, {hardwareClass: gpu}]",
        cel="!has(self.optimization) || !has(self.optimization.targets) "
        "|| self.optimization.targets.all(a, self.optimization.targets.exists_one(b, b.hardwareClass == a.hardwareClass))",
        check=lambda s: len({t.hardware_class for t in s.optimization.targets}) == len(s.optimization.targets),
    ),
    CrossFieldRule(
        field="spec.optimization.targets",
        message="hardware.requireGpu selects only GPU nodes but no gpu artifact is built; add {hardwareClass: gpu}",
        cel="!has(self.hardware) || !has(self.hardware.requireGpu) || !self.hardware.requireGpu "
        "|| (has(self.optimization) && has(self.optimization.targets) "
        "&& self.optimization.targets.exists(t, t.hardwareClass == 'gpu'))",
        check=lambda s: not s.hardware.require_gpu or any(
            t.hardware_class == HardwareClass.GPU for t in s.optimization.targets),
    ),
    CrossFieldRule(
        field="spec.optimization.int8.calibrationDataUri",
        message="explicit static INT8 needs calibrationDataUri (an .npz of representative inputs); "
        "set it or use method: dynamic",
        cel="!has(self.optimization) || !has(self.optimization.mode) || self.optimization.mode != 'explicit' "
        "|| !has(self.optimization.int8) || (has(self.optimization.int8.enabled) && !self.optimization.int8.enabled) "
        "|| (has(self.optimization.int8.method) && self.optimization.int8.method == 'dynamic') "
        "|| has(self.optimization.int8.calibrationDataUri)",
        check=lambda s: not (
            s.optimization.mode == OptimizationMode.EXPLICIT
            and s.optimization.int8.enabled
            and s.optimization.int8.method == QuantMethod.STATIC
            and not s.optimization.int8.calibration_data_uri
        ),
    ),
    CrossFieldRule(
        field="spec.hardware.requireGpu",
        message="requireGpu contradicts serving.accelerator: cpu; drop one of them",
        cel="!has(self.hardware) || !has(self.hardware.requireGpu) || !self.hardware.requireGpu "
        "|| !has(self.serving) || !has(self.serving.accelerator) || self.serving.accelerator != 'cpu'",
        check=lambda s: not (s.hardware.require_gpu and s.serving.accelerator == Accelerator.CPU),
    ),
    CrossFieldRule(
        field="spec.split.link",
        message="cut auto needs the link to plan for, e.g. link: {bandwidthMbitS: 10, rttMs: 20}; set it or name a cut",
        cel="!has(self.split) || !has(self.split.cut) || self.split.cut != 'auto' || has(self.split.link)",
        check=lambda s: s.split.cut != SPLIT_AUTO or s.split.link is not None,
    ),
    CrossFieldRule(
        field="spec.split.budgetMs",
        message="objective edgeCompute needs budgetMs (the end-to-end latency budget); set it or use objective latency",
        cel="!has(self.split) || !has(self.split.objective) || self.split.objective != 'edgeCompute' "
        "|| has(self.split.budgetMs)",
        check=lambda s: s.split.objective != SplitObjective.EDGE_COMPUTE or s.split.budget_ms is not None,
    ),
    CrossFieldRule(
        field="spec.split.stages",
        message="a pipeline replaces the single edge-cloud cut: leave cut at none (stages.cuts names the cuts)",
        cel="!has(self.split) || !has(self.split.stages) || !has(self.split.cut) || self.split.cut == 'none'",
        check=lambda s: s.split.stages is None or s.split.cut == SPLIT_NONE,
    ),
    CrossFieldRule(
        field="spec.split.stages.count",
        message=f"must be auto or a number of stages from 2 to {MAX_PIPELINE_STAGES}, one more than the cuts "
        "listed in stages.cuts; e.g. count: 3 with two cuts, or count: auto",
        cel="!has(self.split) || !has(self.split.stages) || !has(self.split.stages.count) "
        "|| (type(self.split.stages.count) == int ? (self.split.stages.count >= 2 && self.split.stages.count <= "
        f"{MAX_PIPELINE_STAGES} && (!has(self.split.stages.cuts) || size(self.split.stages.cuts) == 0 "
        "|| size(self.split.stages.cuts) == self.split.stages.count - 1)) "
        ": (self.split.stages.count == 'auto' || (self.split.stages.count.matches('^[0-9]+$') "
        f"&& int(self.split.stages.count) >= 2 && int(self.split.stages.count) <= {MAX_PIPELINE_STAGES} "
        "&& (!has(self.split.stages.cuts) || size(self.split.stages.cuts) == 0 "
        "|| size(self.split.stages.cuts) == int(self.split.stages.count) - 1))))",
        check=lambda s: _stage_count_ok(s.split.stages),
    ),
    CrossFieldRule(
        field="spec.split.stages.pool",
        message="name the nodes for stages 2..N: a pool selector or stageSelectors (one per stage), not both",
        cel="!has(self.split) || !has(self.split.stages) || (has(self.split.stages.pool) != "
        "(has(self.split.stages.stageSelectors) && size(self.split.stages.stageSelectors) > 0))",
        check=lambda s: s.split.stages is None
        or ((s.split.stages.pool is not None) != bool(s.split.stages.stage_selectors)),
    ),
    CrossFieldRule(
        field="spec.split.link",
        message="a pipeline needs the default link between stages, e.g. link: {bandwidthMbitS: 100, rttMs: 2} "
        "(rttMs may stay empty to use the measured one)",
        cel="!has(self.split) || !has(self.split.stages) || has(self.split.link)",
        check=lambda s: s.split.stages is None or s.split.link is not None,
    ),
    CrossFieldRule(
        field="spec.split.quantizeParts",
        message="quantizeParts needs calibration data; set optimization.int8.calibrationDataUri or quantizeParts: false",
        cel="!has(self.split) || !has(self.split.quantizeParts) || !self.split.quantizeParts "
        "|| (has(self.optimization) && has(self.optimization.int8) "
        "&& has(self.optimization.int8.calibrationDataUri))",
        check=lambda s: not s.split.quantize_parts or bool(s.optimization.int8.calibration_data_uri),
    ),
    CrossFieldRule(
        field="spec.optimization.training.dataUri",
        message="pruning, qat and distillation train inside the conversion Job and need training data; set "
        "training.dataUri (an .npz of inputs and labels) or turn them off",
        cel=f"{_NO_TRAINING_CEL} || (has(self.optimization.training) && has(self.optimization.training.dataUri))",
        check=lambda s: not s.optimization.trains or bool(s.optimization.training.data_uri),
    ),
    CrossFieldRule(
        field="spec.optimization.distillation.student",
        message="distillation needs exactly one student: a model source (student) or a widthFactor of the teacher",
        cel="!has(self.optimization) || !has(self.optimization.distillation) "
        "|| !has(self.optimization.distillation.enabled) || !self.optimization.distillation.enabled "
        "|| (has(self.optimization.distillation.student) != has(self.optimization.distillation.widthFactor))",
        check=lambda s: not s.optimization.distillation.enabled
        or (s.optimization.distillation.student is None) != (s.optimization.distillation.width_factor is None),
    ),
    CrossFieldRule(
        field="spec.source.format",
        message="pruning, qat and distillation train the PyTorch model; they need a TorchScript or TorchExport "
        "source, not ONNX",
        cel=f"self.source.format != 'ONNX' || {_NO_TRAINING_CEL}",
        check=lambda s: s.source.format != SourceFormat.ONNX or not s.optimization.trains,
    ),
]


class EdgeModelPhase(StrEnum):
    PENDING = "Pending"
    CONVERTING = "Converting"
    ROLLING_OUT = "RollingOut"
    AVAILABLE = "Available"
    DEGRADED = "Degraded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


class SplitArtifacts(StatusModel):
    """The head and tail of a split revision, built once from the exported FP32 model (agents optimise on load)."""

    cut: str
    """The tensor the model is cut at (the feature tensor sent to the cloud)."""
    wire: str
    """Wire format of the features, e.g. int8 or int8+zstd."""
    head_uri: str
    """Where head.onnx (inputs -> cut) is."""
    head_sha256: str
    """sha256 of head.onnx."""
    tail_uri: str
    """Where tail.onnx (cut -> outputs) is."""
    tail_sha256: str
    """sha256 of tail.onnx."""
    manifest_uri: str = ""
    """Where split.json (cut, verification, plan, profiles) is."""
    chosen_by: str = ""
    """auto (the planner) or manual (spec.split.cut)."""
    predicted_ms: float | None = None
    """The planner's predicted end-to-end latency at the chosen cut (auto only)."""
    feature_bytes: int | None = None
    """Encoded size of one sample's features in the wire format."""


class ArtifactRef(StatusModel):
    """A signed artifact built for one hardware class."""

    hardware_class: HardwareClass
    """The class of node this artifact is served on."""
    uri: str
    """Where the ONNX file is (artifact store URL)."""
    sha256: str
    """sha256 of the ONNX file."""
    size_bytes: int
    """Size of the ONNX file."""
    precision: Precision
    """Numeric precision of the chosen candidate."""
    candidate: str = ""
    """Name of the chosen candidate, e.g. int8-static-qdq-u8s8."""
    manifest_uri: str = ""
    """Where manifest.json is."""
    signature: str = ""
    """Base64 ed25519 signature of manifest.json."""
    split: SplitArtifacts | None = None
    """Head and tail when spec.split is on (the same pair for every hardware class)."""


class CandidateSummary(StatusModel):
    """One measured candidate, as summarised in status."""

    name: str
    """Candidate name, e.g. int8-static-qdq-u8s8."""
    hardware_class: HardwareClass
    """Hardware class it was measured for."""
    precision: Precision
    """Numeric precision."""
    p50_ms: float | None = None
    """Batch-1 median latency in ms."""
    metric: float | None = None
    """Validation metric (top1 accuracy, cosine or agreement)."""
    size_bytes: int | None = None
    """Size of the ONNX file."""
    method: str = ""
    """How it was made beyond conversion, e.g. pruning, pruning+int8, qat, distillation (empty: post-training only)."""
    macs: int | None = None
    """Multiply-accumulates of one sample (batch 1), counted on the PyTorch model it came from."""
    accepted: bool = False
    """Whether it met the accuracy budget and was not slower than the FP32 baseline."""
    chosen: bool = False
    """Whether it was chosen for its hardware class."""
    reason: str = ""
    """Why it was rejected or chosen."""


class RolloutStatus(StatusModel):
    """Progress of the current rollout."""

    revision: int = 0
    """Revision being rolled out."""
    step: int = 0
    """Index of the current canary step (1-based; 0 before the first)."""
    total_steps: int = 0
    """Number of steps of the strategy."""
    desired_nodes: int = 0
    """Selected nodes."""
    updated_nodes: int = 0
    """Nodes assigned the new revision."""
    ready_nodes: int = 0
    """Nodes serving the new revision."""
    failed_nodes: int = 0
    """Nodes where the new revision failed to load or failed a check."""
    stale_nodes: int = 0
    """Selected nodes whose heartbeat is stale."""
    step_started_at: str | None = None
    """When the current step started (RFC 3339)."""
    analysis_started_at: str | None = None
    """When the analysis window of the current step started: all of the step's nodes were ready (RFC 3339)."""
    message: str = ""
    """What the rollout is doing or waiting for."""


class RevisionOutcome(StrEnum):
    CONVERTING = "Converting"
    ROLLING_OUT = "RollingOut"
    AVAILABLE = "Available"
    SUPERSEDED = "Superseded"
    ROLLED_BACK = "RolledBack"
    FAILED = "Failed"


class RevisionOrigin(StatusModel):
    """Where a revision's source came from when a controller, not a person, produced it."""

    kind: str
    """What produced it, e.g. FederatedTraining or ContinualLearning."""
    name: str
    """Which one (namespace/name for a namespaced object, or a round id)."""
    reason: str = ""
    """Why, in one line (e.g. the training's stop condition or the continual trigger)."""
    metrics: dict[str, float] = Field(default_factory=dict)
    """Numbers worth keeping, e.g. round and validationAccuracy."""


class RevisionRecord(StatusModel):
    """One revision in the history."""

    revision: int
    """Revision number (increases with each new spec generation)."""
    generation: int
    """The .metadata.generation the revision was built from."""
    outcome: RevisionOutcome
    """Converting, RollingOut, Available, Superseded, RolledBack or Failed."""
    created_at: str
    """When the revision was created (RFC 3339)."""
    message: str = ""
    """Details, e.g. why it was rolled back."""
    artifacts: list[ArtifactRef] = Field(default_factory=list)
    """Artifacts of the revision."""
    spec_hash: str = ""
    """sha256 of the spec parts the revision was built from (source, inputs, optimization, validation)."""
    origin: RevisionOrigin | None = None
    """Set when the source was produced by a controller (from the ``edgemodel.io/revision-origin`` annotation)."""


class EdgeModelStatus(StatusModel):
    """Observed state, written by the operator."""

    observed_generation: int | None = None
    """The .metadata.generation the operator last acted on."""
    conditions: list[Condition] = Field(default_factory=list)
    """Converted, Progressing, Available, Degraded, InvalidSpec (metav1.Condition shape)."""
    phase: EdgeModelPhase = EdgeModelPhase.PENDING
    """Pending, Converting, RollingOut, Available, Degraded, Failed or Suspended."""
    revision: int | None = None
    """Revision currently considered good (serving on the nodes)."""
    previous_revision: int | None = None
    """The good revision before the current one (the rollback target)."""
    target_revision: int | None = None
    """Revision being converted or rolled out."""
    ready: str = "0/0"
    """Nodes serving the current revision over selected nodes, e.g. 3/3."""
    artifacts: list[ArtifactRef] = Field(default_factory=list)
    """Artifacts of the target revision, one per hardware class."""
    candidates: list[CandidateSummary] = Field(default_factory=list)
    """Every candidate the conversion measured, with the chosen one marked."""
    rollout: RolloutStatus = Field(default_factory=RolloutStatus)
    history: list[RevisionRecord] = Field(default_factory=list)
    """Revisions with their outcome, newest last (bounded)."""
    continual: ContinualStatus | None = None
    """Continual-learning rounds: triggers, gate numbers, outcome."""


class EdgeModel(StatusModel):
    """An EdgeModel object as stored in the API."""

    api_version: Literal["edgemodel.io/v1alpha1"] = "edgemodel.io/v1alpha1"
    kind: Literal["EdgeModel"] = "EdgeModel"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: EdgeModelSpec
    status: EdgeModelStatus | None = None
