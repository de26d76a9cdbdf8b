"""The operator's own Prometheus metrics, in a dedicated registry (served on --metrics-port)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from edgemodel.api import CandidateSummary, Precision

NODE_STATES = ("ready", "updating", "failed", "stale", "unassigned")


@dataclass
class OperatorMetrics:
    """Every metric of the operator; one instance per process (tests make their own)."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.reconcile_duration = Histogram(
            "edgemodel_operator_reconcile_duration_seconds", "Duration of one EdgeModel reconcile.",
            ["result"], registry=r, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.conversions = Counter(
            "edgemodel_operator_conversions_total", "Conversion Jobs by outcome (started, succeeded, failed).",
            ["outcome"], registry=r,
        )
        self.rollouts = Counter(
            "edgemodel_operator_rollouts_total",
            "Finished rollouts by outcome (completed, rolled_back, halted, superseded).", ["outcome"], registry=r,
        )
        self.analyses = Counter(
            "edgemodel_operator_analysis_total", "Analysis verdicts by result (Pass, Fail, Wait) and source.",
            ["result", "source"], registry=r,
        )
        self.nodes = Gauge(
            "edgemodel_operator_nodes", "Selected nodes of an EdgeModel per state (ready, updating, failed, stale, "
            "unassigned).", ["namespace", "model", "state"], registry=r,
        )
        self.api_requests = Counter(
            "edgemodel_operator_api_requests_total",
            "Kubernetes API requests the operator's client made, by verb, resource and HTTP status code.",
            ["verb", "resource", "code"], registry=r,
        )
        self.agents = Gauge(
            "edgemodel_operator_agents", "EdgeAgents with a heartbeat Lease, by liveness (fresh, stale): a node is "
            "stale when its Lease was not renewed within the stale timeout.", ["liveness"], registry=r,
        )
        self.lease_lag = Histogram(
            "edgemodel_operator_lease_lag_seconds", "Time from an agent renewing its Lease (renewTime) to the "
            "operator seeing the renewal: grows when the API server cannot keep up.", registry=r,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.agent_writes = Counter(
            "edgemodel_operator_agent_writes_total", "EdgeAgent.spec.models patches by result (ok, conflict, error).",
            ["result"], registry=r,
        )

        self.conversion_duration = Histogram(
            "edgemodel_operator_conversion_duration_seconds",
            "Time from a conversion Job's creation to its successful completion.", ["namespace", "model"],
            registry=r, buckets=(5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1200, 1800),
        )
        self.candidate_latency = Gauge(
            "edgemodel_operator_candidate_latency_seconds",
            "Batch-1 median latency of every candidate of the latest converted revision.",
            ["namespace", "model", "revision", "hardware_class", "candidate", "precision", "chosen"], registry=r,
        )
        self.candidate_speedup = Gauge(
            "edgemodel_operator_candidate_speedup",
            "FP32 baseline p50 over the candidate's p50, per hardware class, of the latest converted revision.",
            ["namespace", "model", "hardware_class", "candidate", "chosen"], registry=r,
        )
        self._candidate_series: dict[tuple[str, str], list[tuple[Gauge, tuple[str, ...]]]] = {}

    def record_conversion(self, namespace: str, model: str, revision: int, duration_s: float | None,
                          candidates: list[CandidateSummary]) -> None:
        """Conversion duration and the latest revision's candidates (older revisions' series are dropped)."""
        if duration_s is not None:
            self.conversion_duration.labels(namespace=namespace, model=model).observe(duration_s)
        self._forget_candidates(namespace, model)
        series: list[tuple[Gauge, tuple[str, ...]]] = []
        baseline: dict[str, float] = {}
        for cand in candidates:
            if cand.precision == Precision.FP32 and cand.p50_ms:
                cls = cand.hardware_class.value
                baseline[cls] = min(baseline.get(cls, cand.p50_ms), cand.p50_ms)
        for cand in candidates:
            if cand.p50_ms is None:
                continue
            chosen = "true" if cand.chosen else "false"
            cls = cand.hardware_class.value
            labels = (namespace, model, str(revision), cls, cand.name, cand.precision.value, chosen)
            self.candidate_latency.labels(*labels).set(cand.p50_ms / 1000.0)
            series.append((self.candidate_latency, labels))
            if cls in baseline and cand.p50_ms > 0:
                speed_labels = (namespace, model, cls, cand.name, chosen)
                self.candidate_speedup.labels(*speed_labels).set(baseline[cls] / cand.p50_ms)
                series.append((self.candidate_speedup, speed_labels))
        self._candidate_series[(namespace, model)] = series

    def _forget_candidates(self, namespace: str, model: str) -> None:
        for gauge, labels in self._candidate_series.pop((namespace, model), []):
            with contextlib.suppress(KeyError):
                gauge.remove(*labels)

    def set_nodes(self, namespace: str, model: str, counts: dict[str, int]) -> None:
        for state in NODE_STATES:
            self.nodes.labels(namespace=namespace, model=model, state=state).set(counts.get(state, 0))

    def forget_model(self, namespace: str, model: str) -> None:
        self._forget_candidates(namespace, model)
        for state in NODE_STATES:
            with contextlib.suppress(KeyError):
                self.nodes.remove(namespace, model, state)
