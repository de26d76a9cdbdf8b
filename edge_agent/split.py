"""Split inference in the agent: a head served as one ordinary v2 model version, tails served to heads.

Edge side (role ``head``): :class:`SplitModelVersion` is a :class:`ModelVersion` whose inference runs
the head here, sends the cut tensor to the cloud tail (:class:`RemoteTail`) and answers with the
tail's outputs; when the cloud fails, :func:`run_split` falls back per policy to the whole model
(loaded beside the head when the fallback is ``local``) or raises ``SplitUnavailable`` (HTTP 503).
Clients see the whole model's inputs and outputs in the metadata, and the usual request metrics
and status counts include these requests.

Cloud side (role ``tail``): :class:`TailPart` is the runner a ``TailRegistry`` calls from the tail
server (``edgemodel.split.remote.make_tail_app``), with request counts for status.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edge_agent.batching import RunResult
from edge_agent.datatypes import numpy_to_v2
from edge_agent.errors import InferenceFailed, SplitUnavailableError
from edge_agent.metrics import AgentMetrics
from edge_agent.model import OnnxModel, TensorMeta
from edge_agent.pool import InferencePool
from edge_agent.repository import ModelVersion
from edge_agent.stats import RecentLatencies
from edgemodel.api.tensors import TensorSpec
from edgemodel.split.metrics import SplitMetrics
from edgemodel.split.remote import FallbackPolicy, RemoteTail, SplitUnavailable, run_split

log = logging.getLogger(__name__)

PING_COUNT = 3
PING_TIMEOUT_S = 10.0


def _run_session(session: Any, names: list[str], feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return dict(zip(names, session.run(names, dict(feeds)), strict=True))


class SplitModelVersion(ModelVersion):
    """The head of a split model (plus the whole model for a local fallback) as one v2 model version.

    ``head`` must be loaded; its v2 outputs become ``outputs`` (the whole model's), while the head
    session itself still computes the cut tensor(s) it was built with.
    """

    def __init__(
        self,
        head: OnnxModel,
        full: OnnxModel | None,
        outputs: list[TensorMeta],
        remote: RemoteTail,
        policy: FallbackPolicy,
        pool: InferencePool,
        metrics: AgentMetrics,
        allow_non_finite: bool = False,
        stats_window_s: float = 60.0,
        namespace: str = "",
    ) -> None:
        self.cut_names = list(head.output_names)
        """What the head session computes (the cut tensor); the v2 view below shows the whole model's outputs."""
        head.outputs = list(outputs)
        head.output_names = [t.name for t in outputs]
        super().__init__(head, pool, metrics, batching=None, allow_non_finite=allow_non_finite,
                         stats_window_s=stats_window_s, inline_max_ms=0.0, namespace=namespace)  # fmt: skip
        self.full = full
        self.full_sha256 = full.sha256 if full is not None else ""
        self.remote = remote
        self.policy = policy
        self.split_metrics = metrics.split
        self.fallback_count = 0
        """Requests answered by the whole model here because the cloud failed."""
        self.cloud_rtt_ms: float | None = None
        """Median health round trip to the cloud tail (RemoteTail.ping), None until measured or when it failed."""
        self.head_latencies = RecentLatencies(stats_window_s)
        """Head compute per request (this node's side of the split) over the recent window."""
        self.closed = False

    def _run_head(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return _run_session(self.model.session, self.cut_names, feeds)

    def _run_full(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert self.full is not None
        return _run_session(self.full.session, self.full.output_names, feeds)

    async def run(self, feeds: dict[str, np.ndarray], output_names: list[str] | None) -> RunResult:
        """Head here, tail in the cloud (or the whole model here after a cloud failure); outputs follow ``output_names``."""
        full = self._run_full if self.full is not None else None
        try:
            outcome = await run_split(self._run_head, self.remote, full, self.policy, feeds, executor=self.pool.executor)
        except SplitUnavailable as exc:
            self.split_metrics.unavailable(self.namespace, self.name, self.version)
            raise SplitUnavailableError(f"model {self.name!r} version {self.version}: {exc}") from exc
        self.split_metrics.observe(self.namespace, self.name, self.version, outcome)
        if outcome.head_s > 0.0:  # the head ran (not skipped during a cloud cool-down)
            self.head_latencies.add(outcome.head_s)
        if outcome.path == "local":
            self.fallback_count += 1
        names = output_names if output_names is not None else self.model.output_names
        missing = [n for n in names if n not in outcome.outputs]
        if missing:
            source = "the cloud tail" if outcome.path == "split" else "the local whole model"
            raise InferenceFailed(
                f"model {self.name!r} version {self.version}: {source} answered without output(s) {missing} "
                f"(it gave {sorted(outcome.outputs)}); the head, tail and manifest of this revision do not match"
            )
        compute = outcome.head_s + outcome.local_s
        self._m_inference.observe(compute)
        self._m_queue.observe(0.0)
        self._m_batch.observe(1)
        return RunResult([outcome.outputs[n] for n in names], 0.0, compute, 1)

    async def measure_rtt(self, count: int = PING_COUNT, timeout_s: float = PING_TIMEOUT_S) -> float | None:
        """Measure the round trip to the cloud tail (ms); a failure leaves None and never fails the model."""
        if self.closed:
            return self.cloud_rtt_ms
        try:
            async with asyncio.timeout(timeout_s):
                seconds = await self.remote.ping(count)
        except Exception as exc:  # a failed ping only means "unknown"
            if self.cloud_rtt_ms is not None:
                log.warning("Cannot measure the RTT of %s:%s to %s: %s", self.name, self.version, self.remote.health_url, exc)
            self.cloud_rtt_ms = None
        else:
            self.cloud_rtt_ms = round(seconds * 1e3, 3)
        if self.closed:  # closed while pinging: do not leave a reopened connection pool behind
            await self.remote.close()
        return self.cloud_rtt_ms

    async def close(self) -> None:
        """Close the cloud connection, drop the head and the whole model's sessions."""
        self.closed = True
        await self.remote.close()
        if self.full is not None:
            self.full.unload()
        await super().close()


def declared_outputs(specs: Sequence[TensorSpec]) -> list[TensorMeta]:
    """The signed manifest's ``outputs`` (typed TensorSpecs) as v2 tensor metadata."""
    result = []
    for spec in specs:
        dtype = spec.dtype.value
        try:  # TensorSpec dtypes are numpy names
            datatype = numpy_to_v2(np.dtype(dtype))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"manifest output {spec.name!r} has dtype {dtype}, which the agent cannot serve") from exc
        result.append(TensorMeta(spec.name, datatype, tuple(int(d) if d >= 0 else -1 for d in spec.shape)))
    return result


class TailPart:
    """A loaded tail, called by the tail server from the inference threads; counts requests for status."""

    def __init__(self, model: OnnxModel, namespace: str, cut: str, stats_window_s: float = 60.0,
                 metrics: SplitMetrics | None = None) -> None:
        self.model = model
        self.metrics = metrics
        self.name = model.name
        self.version = model.version
        self.namespace = namespace
        self.cut = cut
        self.sha256 = model.sha256
        self.next_hop: tuple[str | None, str | None] = (None, None)
        """A pipeline's middle stage: (the next stage's URL, its input tensor) it forwards to."""
        self.provider = model.provider
        self._session = model.session  # kept here: in-flight requests finish after unload()
        self.input_names = [t.name for t in model.inputs]
        self.output_names = list(model.output_names)
        self.request_count = 0
        self.error_count = 0
        self._latencies = RecentLatencies(stats_window_s)
        self._lock = threading.Lock()

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the tail on the features; ``KeyError`` (HTTP 400) when they do not fit its inputs."""
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            self._count(None)
            raise KeyError(f"missing input(s) {missing} of the tail of {self.name}:{self.version}; got {sorted(feeds)}")
        start = time.perf_counter()
        try:
            outputs = _run_session(self._session, self.output_names, {n: feeds[n] for n in self.input_names})
        except Exception:
            self._count(None)
            raise
        self._count(time.perf_counter() - start)
        return outputs

    def _count(self, seconds: float | None) -> None:
        """Count one run for status and Prometheus (``seconds`` None: it failed)."""
        with self._lock:
            self.request_count += 1
            if seconds is None:
                self.error_count += 1
            else:
                self._latencies.add(seconds)
        if self.metrics is not None:
            self.metrics.tail_run(self.namespace, self.name, self.version, seconds)

    def percentiles_ms(self) -> tuple[float | None, float | None]:
        """(p50, p95) of the tail's compute time over the recent window."""
        with self._lock:
            return self._latencies.percentiles_ms()

    def unload(self) -> None:
        self.model.unload()
