"""Operator settings: flags of ``edgemodel operator`` or ``EDGEMODEL_OPERATOR_*`` environment variables."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?$"


class OperatorSettings(BaseSettings):
    """Everything the operator can be told; each field is a flag and an environment variable."""

    model_config = SettingsConfigDict(
        env_prefix="EDGEMODEL_OPERATOR_", extra="forbid", validate_assignment=True, use_attribute_docstrings=True
    )

    kubeconfig: Path | None = None
    """kubeconfig file; empty: in-cluster service account, else $KUBECONFIG or ~/.kube/config."""
    namespaces: list[str] = Field(default_factory=list)
    """Namespaces whose EdgeModels are handled; empty: all namespaces."""

    store_url: str = Field(pattern=r"^https?://.+")
    """Artifact store URL the conversion Job uploads to, e.g. http://edgemodel-store.edgemodel:8080."""
    artifact_base_url: str | None = Field(default=None, pattern=r"^https?://.+")
    """URL the agents download from when it differs from store_url (replaces that prefix in artifact URIs)."""
    store_token_secret: str | None = None
    """Secret (key "token") holding the store's upload token, passed to the Job as EDGEMODEL_STORE_TOKEN."""
    store_token_file: Path | None = None
    """File with the store's token, sent with the operator's own DELETE requests (artifact_retention: delete)."""
    artifact_retention: Literal["keep", "delete"] = "keep"
    """keep: artifacts stay in the store; delete: a revision's folder is deleted when it leaves status.history
    and every revision's when the EdgeModel is deleted."""
    signing_key_secret: str = Field(min_length=1)
    """Secret (key "private.pem") holding the ed25519 signing key; must exist in each EdgeModel namespace."""

    converter_image: str = Field(min_length=1)
    """Image of the conversion Job (installs edgemodel[convert])."""
    converter_image_pull_policy: str = Field(default="IfNotPresent", pattern=r"^(Always|IfNotPresent|Never)$")
    """imagePullPolicy of the conversion Job."""
    converter_run_as_user: int = Field(default=10001, ge=1)
    """UID of the conversion container (the converter image's user); never root."""
    converter_run_as_group: int = Field(default=10001, ge=0)
    """GID of the conversion container."""
    converter_fs_group: int = Field(default=10001, ge=0)
    """fsGroup of the conversion Pod: the signing key's group, so the non-root converter can read it."""
    converter_service_account: str | None = None
    """serviceAccountName of the conversion Job (it needs no API access)."""
    converter_cpu_request: str = Field(default="1", pattern=QUANTITY_PATTERN)
    """CPU request of the conversion container."""
    converter_cpu_limit: str = Field(default="2", pattern=QUANTITY_PATTERN)
    """CPU limit of the conversion container."""
    converter_memory_request: str = Field(default="2Gi", pattern=QUANTITY_PATTERN)
    """Memory request of the conversion container."""
    converter_memory_limit: str = Field(default="4Gi", pattern=QUANTITY_PATTERN)
    """Memory limit of the conversion container."""
    converter_backoff_limit: int = Field(default=2, ge=0, le=6)
    """Retries of a conversion that failed for a retryable reason (exit 1); exit 2 fails at once."""
    converter_deadline_seconds: int = Field(default=3600, ge=60, le=86400)
    """activeDeadlineSeconds of the conversion Job."""

    prometheus_url: str | None = Field(default=None, pattern=r"^https?://.+")
    """Prometheus for the rollout analysis; empty: use the p95/error counts the agents report."""
    heartbeat_timeout_seconds: float = Field(default=40.0, gt=0)
    """Stale timeout: an agent whose Lease was not renewed for this long is stale (reported, keeps its models,
    never counted as ready); give it 3-4 renew intervals of the agents (their --heartbeat-interval)."""
    lease_namespace: str = Field(default="default", validation_alias=AliasChoices(
        "EDGEMODEL_OPERATOR_LEASE_NAMESPACE", "POD_NAMESPACE", "lease_namespace"), min_length=1)
    """Namespace of the agents' heartbeat Leases (the product's namespace; $POD_NAMESPACE in a pod)."""
    resync_seconds: float = Field(default=10.0, gt=0, le=3600)
    """Longest time between two reconciles of one EdgeModel (events wake it earlier)."""
    continual_tick_seconds: float = Field(default=15.0, gt=0, le=3600)
    """How often the continual-learning timer looks at each EdgeModel with spec.continual.enabled (triggers, its Job)."""
    history_limit: int = Field(default=10, ge=1, le=100)
    """Revisions kept in status.history."""
    max_parallel_writes: int = Field(default=32, ge=1, le=1024)
    """Concurrent EdgeAgent patches at most."""

    metrics_port: int = Field(default=8080, ge=0, le=65535)
    """Port of the operator's /metrics (0: off)."""
    liveness_port: int = Field(default=8081, ge=0, le=65535)
    """Port of the liveness probe /healthz (0: off)."""
    webhook_port: int = Field(default=0, ge=0, le=65535)
    """Port of the validating admission webhook (0: off)."""
    webhook_cert: Path | None = None
    """TLS certificate (PEM) of the webhook; empty with a port: plain HTTP (behind a TLS proxy or for tests)."""
    webhook_key: Path | None = None
    """TLS private key (PEM) of the webhook."""
    bind_address: str = "127.0.0.1"
    """Address the metrics, liveness and webhook servers listen on (0.0.0.0 in a Pod)."""

    peering: str = "edgemodel"
    """kopf peering object: of two replicas the one with the higher priority works, the other waits."""
    standalone: bool = False
    """Run without peering (one replica only)."""
    priority: int = Field(default_factory=lambda: random.randint(1, 2**31 - 1))
    """Peering priority; replicas need distinct ones (random by default)."""
    peering_lifetime_seconds: int = Field(default=60, ge=5, le=3600)
    """How long a silent replica is still considered alive by its peer (the failover time)."""

    @field_validator("namespaces")
    @classmethod
    def _namespace_names(cls, value: list[str]) -> list[str]:
        for ns in value:
            if not ns or len(ns) > 63 or not ns.replace("-", "a").isalnum() or ns != ns.lower():
                raise ValueError(f"namespace {ns!r} is not a valid namespace name (lowercase letters, digits, '-')")
        return value

    @model_validator(mode="after")
    def _webhook_tls_pair(self) -> OperatorSettings:
        if (self.webhook_cert is None) != (self.webhook_key is None):
            raise ValueError("webhook_cert and webhook_key go together: set both or neither")
        return self

    @property
    def agent_base_url(self) -> str:
        """Base URL the agents download artifacts from."""
        return self.artifact_base_url or self.store_url
