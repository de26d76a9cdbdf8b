"""Prometheus metrics of the agent, in a dedicated registry served on ``/metrics``.

The names and labels are a contract (docs/architecture.md): the operator's rollout analysis and
the dashboards query them. Every per-model series carries the EdgeModel's ``namespace`` (empty for
standalone ``--model`` files), so two same-named models of two teams never mix. Durations are histograms in seconds with buckets from 100 µs to 10 s.

The five per-request series (request, inference and queue-wait durations, batch size, request
count) are updated several times per request, so they are plain lists exported by a custom
collector instead of prometheus-client's locked metric objects (0.16 µs instead of 0.9 µs per
observation). They are only ever updated from the event loop thread, so they need no lock.
"""

from __future__ import annotations

import contextlib
from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.gc_collector import GCCollector
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.utils import floatToGoString

from edgemodel.split.metrics import SplitMetrics

#: Request, inference and queue-wait buckets: sub-millisecond to seconds.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
#: Model load (session creation + warm-up) buckets.
LOAD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
#: Requests per ONNX Runtime run (1 without dynamic batching).
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

MODEL_STATES = ("Pending", "Downloading", "Verifying", "Loading", "Ready", "Failed", "Unloading")

CONTENT_TYPE = CONTENT_TYPE_LATEST


class HistogramChild:
    """One label set of a FastHistogram."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


class CounterChild:
    """One label set of a FastCounter."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class FastHistogram:
    """A labelled histogram without locks, exported through ``collect()`` (event-loop thread only)."""

    def __init__(self, name: str, documentation: str, labelnames: list[str], buckets: tuple[float, ...]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self.bounds = tuple(float(b) for b in buckets)
        self._les = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
        self._children: dict[tuple[str, ...], HistogramChild] = {}

    def labels(self, *values: str) -> HistogramChild:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = HistogramChild(self.bounds)
        return child

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in list(self._children.items()):
            cumulative, running = [], 0
            for le, count in zip(self._les, child.counts, strict=True):
                running += count
                cumulative.append((le, float(running)))
            family.add_metric(list(values), cumulative, child.sum)
        yield family

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)


class FastCounter:
    """A labelled counter without locks, exported through ``collect()`` (event-loop thread only)."""

    def __init__(self, name: str, documentation: str, labelnames: list[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self._children: dict[tuple[str, ...], CounterChild] = {}

    def labels(self, *values: str) -> CounterChild:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = CounterChild()
        return child

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in list(self._children.items()):
            family.add_metric(list(values), child.value)
        yield family

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)


class AgentMetrics:
    """Every metric the agent exports; one instance per agent (tests create their own)."""

    def __init__(self, registry: CollectorRegistry | None = None, process_metrics: bool = True) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        if process_metrics:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)
        r = self.registry
        self._info_refs: dict[tuple[str, str, str, str, str], int] = {}
        self.request_duration = FastHistogram(
            "edgemodel_request_duration_seconds",
            "Inference request time from the body read to the response built, by model version and provider.",
            ["namespace", "model", "version", "provider"], LATENCY_BUCKETS,
        )  # fmt: skip
        self.inference_duration = FastHistogram(
            "edgemodel_inference_duration_seconds",
            "ONNX Runtime compute time per run (a batched run counts once).",
            ["namespace", "model", "version", "provider"], LATENCY_BUCKETS,
        )  # fmt: skip
        self.queue_wait = FastHistogram(
            "edgemodel_queue_wait_seconds",
            "Time a request waited for a worker (and for its batch to form) before its run started.",
            ["namespace", "model", "version"], LATENCY_BUCKETS,
        )  # fmt: skip
        self.batch_size = FastHistogram(
            "edgemodel_batch_size",
            "Requests combined into one ONNX Runtime run (1 without dynamic batching).",
            ["namespace", "model", "version"], BATCH_BUCKETS,
        )  # fmt: skip
        self.requests = FastCounter(
            "edgemodel_requests_total",
            "Inference requests by model version, provider and HTTP status code (errors have code >= 400).",
            ["namespace", "model", "version", "provider", "code"],
        )  # fmt: skip
        for fast in (self.request_duration, self.inference_duration, self.queue_wait, self.batch_size, self.requests):
            r.register(fast)
        self.model_load_duration = Histogram(
            "edgemodel_model_load_duration_seconds",
            "Time to create the ONNX Runtime session and warm it up.",
            ["namespace", "model", "version"], buckets=LOAD_BUCKETS, registry=r,
        )  # fmt: skip
        self.download_bytes = Counter(
            "edgemodel_artifact_download_bytes_total",
            "Bytes of artifacts downloaded from the artifact store.",
            registry=r,
        )
        self.download_failures = Counter(
            "edgemodel_artifact_download_failures_total",
            "Artifacts rejected or not downloaded, by CamelCase reason (DownloadFailed, DigestMismatch, SignatureInvalid...).",
            ["reason"], registry=r,
        )  # fmt: skip
        self.model_info = Gauge(
            "edgemodel_model_info",
            "1 for every model version being served, with its artifact sha256 and execution provider.",
            ["namespace", "model", "version", "sha256", "provider"], registry=r,
        )  # fmt: skip
        self.model_state = Gauge(
            "edgemodel_model_state",
            "1 for the current state of each assigned model version, 0 for the other states.",
            ["namespace", "model", "version", "state"], registry=r,
        )  # fmt: skip
        self.concurrent_runs = Gauge(
            "edgemodel_model_concurrent_runs",
            "ONNX Runtime runs of a model version allowed at once (2+ on a multi-CPU node when the load-time "
            "run plan chose one-thread runs for overlapping requests).",
            ["namespace", "model", "version"], registry=r,
        )  # fmt: skip
        self.batching = Gauge(
            "edgemodel_model_batching",
            "1 when dynamic batching is on for a model version (set by flag or chosen by the load-time run plan), else 0.",
            ["namespace", "model", "version"], registry=r,
        )  # fmt: skip
        self.split = SplitMetrics(r)
        """Per-stage metrics of split requests (heads); docs/split-inference.md."""

    def info_acquire(self, labels: tuple[str, str, str, str, str]) -> None:
        """Mark a (namespace, model, version, sha256, provider) as served; counted, since a reload may overlap."""
        self._info_refs[labels] = self._info_refs.get(labels, 0) + 1
        self.model_info.labels(*labels).set(1)

    def info_release(self, labels: tuple[str, str, str, str, str]) -> None:
        count = self._info_refs.get(labels, 0) - 1
        if count > 0:
            self._info_refs[labels] = count
            return
        self._info_refs.pop(labels, None)
        with contextlib.suppress(KeyError):
            self.model_info.remove(*labels)

    def info_served(self, labels: tuple[str, str, str, str, str]) -> bool:
        """Whether another copy of this version (a reload overlapping) still holds ``labels``."""
        return labels in self._info_refs

    def set_state(self, namespace: str, model: str, version: str, state: str) -> None:
        """Mark ``state`` as the current one of a model version (of the EdgeModel ``namespace/model``)."""
        for candidate in MODEL_STATES:
            self.model_state.labels(namespace, model, version, candidate).set(1.0 if candidate == state else 0.0)

    def forget_state(self, namespace: str, model: str, version: str) -> None:
        """Drop the state series of a version that is no longer assigned."""
        for candidate in MODEL_STATES:
            with contextlib.suppress(KeyError):
                self.model_state.remove(namespace, model, version, candidate)

    def exposition(self) -> bytes:
        """The text exposition format served on /metrics."""
        return generate_latest(self.registry)
