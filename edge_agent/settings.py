"""Agent settings: command-line flags override ``EDGEMODEL_AGENT_*`` environment variables."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from edgemodel.errors import UserError, describe_validation_error

_MODEL_SPEC = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*)(?::(?P<version>[A-Za-z0-9_.-]+))?=(?P<path>.+)$")
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


@dataclass(frozen=True)
class LocalModel:
    """A model file served standalone: ``--model NAME[:VERSION]=PATH``."""

    name: str
    version: str
    path: Path


def parse_model_spec(spec: str) -> LocalModel:
    """Parse ``NAME[:VERSION]=PATH.onnx``; the version defaults to 1."""
    match = _MODEL_SPEC.match(spec.strip())
    if not match:
        raise UserError(f"--model {spec!r}: expected NAME[:VERSION]=PATH.onnx, e.g. --model digits=./digits.onnx")
    path = Path(match["path"]).expanduser()
    if not path.is_file():
        raise UserError(f"--model {spec!r}: {path} is not a file; pass the path of an .onnx model")
    return LocalModel(name=match["name"], version=match["version"] or "1", path=path)


def parse_label(spec: str) -> tuple[str, str]:
    """Parse ``key=value`` with Kubernetes label syntax."""
    key, sep, value = spec.partition("=")
    if not sep or not _LABEL_KEY.match(key) or len(value) > 63 or not _LABEL_VALUE.match(value):
        raise UserError(f"--label {spec!r}: expected key=value with Kubernetes label syntax, e.g. --label edgemodel.io/site=store-12")
    return key, value


class AgentSettings(BaseSettings):
    """Everything the agent can be told; see ``edgemodel agent --help`` for the flags."""

    model_config = SettingsConfigDict(env_prefix="EDGEMODEL_AGENT_", extra="ignore", populate_by_name=True)

    # Serving
    host: str = "127.0.0.1"
    """Address to bind; a DaemonSet uses 0.0.0.0."""
    port: int = Field(default=8080, ge=0, le=65535)
    """HTTP port for the Open Inference Protocol and /metrics (0 picks a free port)."""
    grpc_port: int | None = Field(default=None, ge=0, le=65535)
    """gRPC port for the Open Inference Protocol (``inference.GRPCInferenceService``; 0 picks a free
    port); None: no gRPC server. Shares the token, TLS certificate and request limits of the HTTP port."""
    models: list[str] = Field(default_factory=list)
    """Standalone models as NAME[:VERSION]=PATH.onnx."""
    token_file: Path | None = None
    """File holding the bearer token required on inference and admin endpoints (e.g. a mounted Secret)."""
    metrics_require_token: bool = False
    """Also require the token on /metrics."""
    tls_cert: Path | None = None
    """PEM certificate chain; with tls_key the agent serves HTTPS."""
    tls_key: Path | None = None
    """PEM private key of tls_cert."""
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    """Largest request body as sent (compressed or not); larger ones get 413."""
    max_decompressed_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    """Largest request body after undoing gzip/deflate Content-Encoding; larger ones get 413."""
    max_json_bytes: int = Field(default=3 * 1024 * 1024, ge=1024)
    """Largest JSON part of an inference request (parsing costs up to ~24x its size at its peak); larger ones get 413."""
    max_elements: int = Field(default=4 << 20, ge=1)
    """Tensor elements per inference request, all inputs together (a BYTES element counts 64); more get 413."""
    body_read_timeout_s: float = Field(default=10.0, gt=0, le=3600)
    """Longest wait for the next bytes of a request body; a stalled upload gets 408."""
    accelerator: Literal["auto", "gpu", "cpu"] = "auto"
    """Provider preference for standalone models (assignments carry their own)."""
    gpu_fallback_to_cpu: bool = True
    """With accelerator gpu: serve on CPU when no GPU provider loads."""
    intra_op_threads: int = Field(default=0, ge=0)
    """ONNX Runtime threads per inference; 0 sizes it to the container's CPU limit."""
    inference_workers: int = Field(default=0, ge=0)
    """Inferences run at the same time (thread pool size); 0 sizes it to the container's CPU limit."""
    batching: bool | None = None
    """Dynamic batching for standalone models; None (default): on, without queue delay, for models whose
    load-time measurement shows batched runs clearly cheaper per row (``edge_agent.runplan``)."""
    max_batch_size: int = Field(default=8, ge=1, le=1024)
    """Rows per batched run."""
    max_queue_delay_ms: float = Field(default=2.0, ge=0.0, le=1000.0)
    """Longest a request waits for others to join its batch."""
    inline_max_ms: float = Field(default=0.1, ge=0.0, le=10.0)
    """Requests whose inference the warm-up predicts below this run on the event loop instead of
    the thread pool (the hand-off costs more); 0 always uses the pool."""
    warmup_runs: int = Field(default=3, ge=0, le=100)
    """Inferences run on zeros after loading, before the model takes traffic."""
    allow_non_finite: bool = False
    """Accept NaN/Inf in floating-point inputs (rejected with 400 by default)."""
    drain_timeout_s: float = Field(default=30.0, gt=0)
    """How long an old version may finish in-flight requests after a swap."""

    # Split inference (docs/split-inference.md)
    split_port: int | None = Field(default=None, ge=0, le=65535)
    """Serve split tails (cloud side) on this port (0 picks a free port); None: no tail server."""
    split_tls_ca: Path | None = None
    """PEM CA that verifies the peer on the split link (client certs on the tail server, the cloud's cert on a head)."""
    split_tls_cert: Path | None = None
    """PEM certificate of this agent on the split link: the tail server's identity, or a head's client identity."""
    split_tls_key: Path | None = None
    """PEM private key of split_tls_cert."""

    # Control plane
    node_name: str = Field(default="", validation_alias=AliasChoices("EDGEMODEL_AGENT_NODE_NAME", "NODE_NAME", "node_name"))
    """Node name (downward API); the EdgeAgent object is named after it."""
    kubeconfig: Path | None = None
    """kubeconfig file (bearer token or client certificate); without it and --in-cluster the agent is standalone."""
    in_cluster: bool = False
    """Use the pod's service account."""
    public_key: Path | None = None
    """Fleet ed25519 public key (PEM) that verifies manifest signatures; required with a cluster."""
    store_token_file: Path | None = None
    """Bearer token for artifact store downloads, when the store requires one."""
    cache_dir: Path = Path("/var/lib/edgemodel-agent")
    """Artifact cache and the last assignment (survives restarts)."""
    cache_max_bytes: int = Field(default=2 * 1024**3, ge=1)
    """Artifact cache bound; least recently used files not in use are evicted."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Labels of the EdgeAgent, for people (EdgeModels select on the Node's labels, not these)."""
    endpoint: str = ""
    """URL clients reach this agent at (reported in status); default http(s)://POD_IP or host:port."""
    heartbeat_interval_s: float = Field(default=10.0, ge=1.0)
    """Seconds between two renewals of the node's Lease (the heartbeat; docs/architecture.md#heartbeats)."""
    lease_namespace: str = Field(
        default="default", validation_alias=AliasChoices("EDGEMODEL_AGENT_LEASE_NAMESPACE", "POD_NAMESPACE", "lease_namespace"))
    """Namespace of the heartbeat Lease (named after the node): the product's namespace ($POD_NAMESPACE in a pod)."""
    lease_duration_s: int = Field(default=40, ge=1, le=3600)
    """leaseDurationSeconds written into the Lease (informational; the operator's stale timeout decides)."""
    status_min_interval_s: float = Field(default=1.0, ge=0.05)
    """Least time between two status writes (state changes are coalesced)."""
    stats_interval_s: float = Field(default=10.0, ge=1.0)
    """How often the request counts and p50/p95 in status are refreshed; written only when they changed."""
    stats_window_s: float = Field(default=60.0, gt=0)
    """Window of the p50/p95 reported in status."""
    download_attempts: int = Field(default=4, ge=1, le=100)
    """Attempts per artifact download (resuming where the last stopped) before DownloadFailed."""
    download_timeout_s: float = Field(default=600.0, gt=0)
    """Longest one download attempt may take."""
    retry_backoff_s: float = Field(default=2.0, gt=0)
    """First retry delay after a failure (doubles, capped at 60 s)."""
    resync_interval_s: float = Field(default=60.0, ge=1.0)
    """How often failed assignments are retried and the watch is re-established if idle."""

    @model_validator(mode="after")
    def _check_pairs(self) -> AgentSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key: give both (the certificate and its key) or neither")
        split_tls = (self.split_tls_ca, self.split_tls_cert, self.split_tls_key)
        if any(p is not None for p in split_tls) and not all(p is not None for p in split_tls):
            raise ValueError(
                "--split-tls-ca, --split-tls-cert and --split-tls-key (EDGEMODEL_AGENT_SPLIT_TLS_*): give all three "
                "(the CA, this agent's certificate and its key) for mTLS on the split link, or none"
            )
        return self

    @property
    def split_tls(self) -> bool:
        """Whether the split link uses mTLS."""
        return self.split_tls_cert is not None

    @property
    def cluster_mode(self) -> bool:
        """Whether the agent talks to a Kubernetes API."""
        return self.kubeconfig is not None or self.in_cluster


def load_settings(**overrides: object) -> AgentSettings:
    """Settings from the environment with non-None ``overrides`` on top; UserError on bad values."""
    try:
        return AgentSettings(**{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]
    except ValidationError as exc:
        raise UserError(f"agent settings: {describe_validation_error(exc)}") from exc
