"""The EdgeAgent custom resource: one per edge node, spec written by the operator, status by the agent."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import Field

from edgemodel.api.base import ApiModel, Condition, ObjectMeta, StatusModel
from edgemodel.api.continual import AgentContinualState
from edgemodel.api.edgemodel import Accelerator, Batching, HardwareClass, Precision, SplitFallback


class ModelRole(StrEnum):
    """What part of a model a node runs."""

    FULL = "full"
    HEAD = "head"
    """Split inference, edge side: runs the head and sends the features to the cloud tail."""
    TAIL = "tail"
    """Split inference, cloud side: serves the tail on the agent's split port."""


class SplitAssignment(ApiModel):
    """How a head or tail takes part in split inference."""

    cut: str = Field(min_length=1)
    """The cut tensor (the head's output, the tail's input)."""
    wire: str = Field(default="int8", pattern=r"^(fp32|fp16|int8)(\+zstd)?$")
    """Wire format of the features."""
    cloud_url: str = Field(default="", pattern=r"^(https?://.+)?$")
    """Head only: base URL of the cloud agents' split port."""
    fallback: SplitFallback = SplitFallback.LOCAL
    """Head only: what to do when the cloud cannot answer."""
    full_artifact_uri: str | None = Field(default=None, pattern=r"^(file|https?)://.+")
    """Head with fallback local: the whole model, run when the cloud is unreachable."""
    full_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    """sha256 of the whole model."""
    next_url: str | None = Field(default=None, pattern=r"^https?://.+$")
    """Tail only, pipelines (spec.split.stages): a middle stage forwards its output to the next stage's split port
    here and answers with what comes back; unset: the last stage (or a plain tail)."""
    next_cut: str | None = Field(default=None, min_length=1)
    """With nextUrl: the next stage's input tensor (this stage's output)."""


class ModelAssignment(ApiModel):
    """One model revision the operator assigns to this node."""

    name: str = Field(min_length=1, max_length=253)
    """Name the model is served under (the Open Inference Protocol model name)."""
    namespace: str = Field(min_length=1, max_length=63)
    """Namespace of the EdgeModel this assignment comes from."""
    revision: int = Field(ge=1)
    """Revision of the EdgeModel; served as the model version."""
    artifact_uri: str = Field(pattern=r"^(file|https?)://.+")
    """URL of the ONNX file in the artifact store."""
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    """Expected sha256 of the ONNX file."""
    manifest_uri: str = Field(pattern=r"^(file|https?)://.+")
    """URL of the signed manifest.json that lists the file's sha256."""
    signature: str = Field(min_length=1)
    """Base64 ed25519 signature of manifest.json; the agent verifies it with the fleet's public key."""
    precision: Precision = Precision.FP32
    """Precision of the artifact (informational)."""
    accelerator: Accelerator = Accelerator.AUTO
    """Execution provider preference: auto, gpu or cpu."""
    gpu_fallback_to_cpu: bool = True
    """With accelerator gpu: serve on CPU when no GPU provider loads."""
    batching: Batching = Field(default_factory=Batching)
    """Dynamic batching settings."""
    role: ModelRole = ModelRole.FULL
    """full, head (edge side of a split) or tail (cloud side; one entry per revision in use)."""
    split: SplitAssignment | None = None
    """Split settings for role head or tail."""


class EdgeAgentSpec(ApiModel):
    """Desired state of one node: the models it should serve."""

    node_name: str = Field(default="", max_length=253)
    """The Kubernetes node this agent runs on."""
    models: list[ModelAssignment] = Field(default_factory=list)
    """Assigned models; the agent downloads, verifies, loads and serves each."""


class GpuInfo(StatusModel):
    name: str
    """GPU model name."""
    memory_bytes: int | None = None
    """GPU memory."""


class Capabilities(StatusModel):
    """What the node can do, as probed by the agent."""

    arch: str = ""
    """CPU architecture: amd64, arm64 or arm."""
    cpu_count: float = 0
    """CPUs available to the agent (cgroup limit, not host cores)."""
    cpu_flags: list[str] = Field(default_factory=list)
    """Relevant CPU features, e.g. avx2, avx512_vnni, amx_int8, neon."""
    memory_bytes: int = 0
    """Memory available to the agent (cgroup limit or host memory)."""
    providers: list[str] = Field(default_factory=list)
    """ONNX Runtime execution providers that really load (verified by creating a session)."""
    gpus: list[GpuInfo] = Field(default_factory=list)
    """GPUs found on the node."""
    hardware_class: HardwareClass = HardwareClass.CPU
    """gpu when a GPU execution provider really loads, else cpu."""
    onnxruntime_version: str = ""
    """ONNX Runtime version of the agent."""
    agent_version: str = ""
    """edgemodel version of the agent."""


class ModelPhase(StrEnum):
    PENDING = "Pending"
    DOWNLOADING = "Downloading"
    VERIFYING = "Verifying"
    LOADING = "Loading"
    READY = "Ready"
    FAILED = "Failed"
    UNLOADING = "Unloading"


class ModelState(StatusModel):
    """State of one assigned model on this node."""

    name: str
    """Served model name."""
    namespace: str = ""
    """Namespace of the EdgeModel."""
    revision: int = 0
    """The revision this state is about (the one being loaded or served)."""
    serving_revision: int | None = None
    """The revision answering requests now (may be the previous one while a new one loads)."""
    state: ModelPhase = ModelPhase.PENDING
    """Pending, Downloading, Verifying, Loading, Ready, Failed or Unloading."""
    reason: str = ""
    """CamelCase reason, e.g. SignatureInvalid, DigestMismatch, LoadFailed."""
    message: str = ""
    """Human-readable details; says what to do on failure."""
    provider: str = ""
    """Execution provider in use, e.g. CPUExecutionProvider."""
    request_count: int = 0
    """Requests served by this revision since it was loaded."""
    error_count: int = 0
    """Failed requests of this revision."""
    p50_ms: float | None = None
    """Median request latency in ms over the recent window."""
    p95_ms: float | None = None
    """95th percentile request latency in ms over the recent window."""
    last_transition_time: str | None = None
    """When state last changed (RFC 3339)."""
    role: ModelRole = ModelRole.FULL
    """full, head or tail (tails are reported per revision)."""
    cloud_rtt_ms: float | None = None
    """Head only: measured round trip to the cloud tail in ms (plan the split with this)."""
    fallback_count: int = 0
    """Head only: requests answered by the whole model on the edge because the cloud failed."""
    head_ms: float | None = None
    """Head only: median head compute per request in ms over the recent window (the edge's side of the split)."""
    stage_ms: float | None = None
    """Tail only: median compute of this node's part per request in ms over the recent window (no later stages)."""


class GrpcEndpoint(StatusModel):
    """Where the agent serves the Open Inference Protocol over gRPC (docs/grpc.md)."""

    target: str = Field(min_length=1)
    """host:port, as gRPC clients take it (e.g. tritonclient.grpc's url)."""
    port: int = Field(ge=1, le=65535)
    """The gRPC port."""
    tls: bool = False
    """True: TLS only, with the agent's HTTPS certificate; false: plaintext."""


class EdgeAgentStatus(StatusModel):
    """Observed state of the node, written by its agent."""

    capabilities: Capabilities = Field(default_factory=Capabilities)
    heartbeat_time: str | None = None
    """Time of the agent's last status write (RFC 3339); written only on change: liveness is the node's Lease."""
    endpoint: str = ""
    """URL of the agent's Open Inference Protocol endpoint."""
    split_endpoint: str = ""
    """URL of the agent's split-tail server (cloud agents started with a split port)."""
    grpc: GrpcEndpoint | None = None
    """The agent's gRPC endpoint (agents started with a gRPC port); unset: REST only."""
    models: list[ModelState] = Field(default_factory=list)
    """State of every assigned model."""
    conditions: list[Condition] = Field(default_factory=list)
    """Ready and similar conditions (metav1.Condition shape)."""
    observed_generation: int | None = None
    """The .metadata.generation of the spec the agent last acted on."""
    continual: list[AgentContinualState] = Field(default_factory=list)
    """Drift, labelled feedback and capture of every served model (docs/continual.md)."""


class EdgeAgent(StatusModel):
    """An EdgeAgent object as stored in the API."""

    api_version: Literal["edgemodel.io/v1alpha1"] = "edgemodel.io/v1alpha1"
    kind: Literal["EdgeAgent"] = "EdgeAgent"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: EdgeAgentSpec = Field(default_factory=EdgeAgentSpec)
    status: EdgeAgentStatus | None = None
