"""Prometheus metrics of split requests, by stage (prometheus-client only; the agent registers them).

- ``edgemodel_split_stage_duration_seconds{namespace,model,version,stage}``: ``head`` (edge compute),
  ``encode``, ``transfer`` (network round trip minus the server's time), ``tail`` (cloud compute),
  ``local`` (the whole model run locally after a fallback)
- ``edgemodel_split_transfer_bytes_total{namespace,model,version,direction}``: ``up`` (features) / ``down`` (outputs)
- ``edgemodel_split_requests_total{namespace,model,version,path}``: ``split``, ``local`` (fell back) or ``unavailable`` (503)
- ``edgemodel_split_tail_duration_seconds{namespace,model,version}``: cloud side, compute time of one tail run
- ``edgemodel_split_tail_requests_total{namespace,model,version,result}``: cloud side, tail runs by ``ok`` / ``error``
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from edgemodel.split.remote import SplitOutcome

STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class SplitMetrics:
    """The split metrics in ``registry`` (the agent's dedicated registry)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.stage_seconds = Histogram(
            "edgemodel_split_stage_duration_seconds", "Time of one stage of a split request.",
            ["namespace", "model", "version", "stage"], buckets=STAGE_BUCKETS, registry=registry)
        self.transfer_bytes = Counter(
            "edgemodel_split_transfer_bytes_total", "Feature (up) and output (down) bytes sent over the split link.",
            ["namespace", "model", "version", "direction"], registry=registry)
        self.requests = Counter(
            "edgemodel_split_requests_total", "Split requests by the path that answered them.",
            ["namespace", "model", "version", "path"], registry=registry)
        self.tail_seconds = Histogram(
            "edgemodel_split_tail_duration_seconds", "Compute time of one tail run on the cloud agent.",
            ["namespace", "model", "version"], buckets=STAGE_BUCKETS, registry=registry)
        self.tail_requests = Counter(
            "edgemodel_split_tail_requests_total", "Tail runs on the cloud agent by result (ok, error).",
            ["namespace", "model", "version", "result"], registry=registry)

    def observe(self, namespace: str, model: str, version: str, outcome: SplitOutcome) -> None:
        """Record one answered request of the EdgeModel ``namespace/model``."""
        self.requests.labels(namespace, model, version, outcome.path).inc()
        stages = {"head": outcome.head_s, "encode": outcome.encode_s}
        if outcome.path == "split":
            stages.update(transfer=outcome.transfer_s, tail=outcome.tail_s)
            self.transfer_bytes.labels(namespace, model, version, "up").inc(outcome.bytes_up)
            self.transfer_bytes.labels(namespace, model, version, "down").inc(outcome.bytes_down)
        else:
            stages["local"] = outcome.local_s
        for stage, seconds in stages.items():
            if stage in ("head", "encode") and seconds == 0.0 and outcome.path != "split":
                continue  # the head never ran (cool-down): no sample rather than a fake zero
            self.stage_seconds.labels(namespace, model, version, stage).observe(seconds)

    def unavailable(self, namespace: str, model: str, version: str) -> None:
        """Record a request answered with 503 (``SplitUnavailable``)."""
        self.requests.labels(namespace, model, version, "unavailable").inc()

    def tail_run(self, namespace: str, model: str, version: str, seconds: float | None) -> None:
        """Record one tail run on the cloud side (``seconds`` None: it failed)."""
        self.tail_requests.labels(namespace, model, version, "ok" if seconds is not None else "error").inc()
        if seconds is not None:
            self.tail_seconds.labels(namespace, model, version).observe(seconds)
