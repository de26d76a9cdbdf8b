"""Loaded model versions, how requests find them, and hot swap with drain.

A swap loads and warms the new version beside the old one (the caller does that), then
``swap()`` switches unversioned requests to it in one assignment on the event loop. The old
version stops being addressable, finishes the requests it already holds (in-flight counter), and
is unloaded afterwards. No request fails because of a swap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import orjson

from edge_agent.batching import DynamicBatcher, RunResult
from edge_agent.datatypes import FLOAT_DATATYPES
from edge_agent.drift import Reference
from edge_agent.errors import ModelNotFound, ModelNotReady
from edge_agent.metrics import AgentMetrics, CounterChild
from edge_agent.model import PLATFORM, OnnxModel
from edge_agent.pool import InferencePool
from edge_agent.stats import RecentLatencies

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchingConfig:
    enabled: bool | None = False
    """None: as the model's load-time run plan recommends, without queue delay (``edge_agent.runplan``)."""
    max_batch_size: int = 8
    max_queue_delay_ms: float = 2.0


class ModelVersion:
    """A loaded model version taking traffic: runs, counts, in-flight tracking, metrics children."""

    def __init__(
        self,
        model: OnnxModel,
        pool: InferencePool,
        metrics: AgentMetrics,
        batching: BatchingConfig | None = None,
        allow_non_finite: bool = False,
        stats_window_s: float = 60.0,
        revision_meta: dict[str, str] | None = None,
        inline_max_ms: float = 0.1,
        namespace: str = "",
    ) -> None:
        self.model = model
        self.namespace = namespace
        """The EdgeModel's namespace (a label of every metric; empty for a standalone ``--model``)."""
        self.name = model.name
        self.version = model.version
        self.provider = model.provider
        self.sha256 = model.sha256
        self.pool = pool
        self.metrics = metrics
        self.allow_non_finite = allow_non_finite
        self.float_inputs = frozenset(t.name for t in model.inputs if t.datatype in FLOAT_DATATYPES)
        self.output_index = {name: i for i, name in enumerate(model.output_names)}
        self.revision_meta = revision_meta or {}
        self.drift_reference: Reference | None = None
        """The signed manifest's driftReference (the validation inputs' summary): the PSI reference of this version."""
        self.inflight = 0
        self.retired = False
        self.loaded_at = time.time()
        self._drained: asyncio.Event | None = None
        self.request_count = 0
        self.error_count = 0
        self.latencies = RecentLatencies(stats_window_s)
        self.metadata_json = b""
        self.batcher: DynamicBatcher | None = None
        self.inline_max_elements = 0
        """Requests up to this many input elements run on the event loop (see ``run``)."""
        if model.warmup_seconds is not None and model.warmup_elements and model.warmup_seconds * 1e3 < inline_max_ms:
            self.inline_max_elements = int(model.warmup_elements * (inline_max_ms / 1e3) / model.warmup_seconds)
        self.max_concurrent_runs = max(1, pool.workers // max(1, model.run_threads))
        """Runs of this version at once: runs x intra-op threads never exceed the CPUs (no oversubscription;
        with a narrow session a lone run uses the wide one, the overlapping ones one thread each)."""
        self._run_slots = asyncio.Semaphore(self.max_concurrent_runs)
        self.batching_chosen = batching is not None and batching.enabled is None
        """Whether batching was left to the run plan (then on without queue delay when it recommends it)."""
        if batching is not None and batching.enabled is None:
            batching = BatchingConfig(model.plan.batching, batching.max_batch_size, 0.0)
        if batching is not None and batching.enabled:
            if model.batchable:
                self.batcher = DynamicBatcher(
                    model.predict, pool, batching.max_batch_size, batching.max_queue_delay_ms / 1e3,
                    concurrency=self.max_concurrent_runs,
                )
            else:
                log.warning(
                    "Dynamic batching disabled for %s:%s: not every input and output has a dynamic first dimension",
                    self.name,
                    self.version,
                )
        labels = (namespace, self.name, self.version, self.provider)
        self._m_request = metrics.request_duration.labels(*labels)
        self._m_inference = metrics.inference_duration.labels(*labels)
        self._m_queue = metrics.queue_wait.labels(namespace, self.name, self.version)
        self._m_batch = metrics.batch_size.labels(namespace, self.name, self.version)
        self._m_codes: dict[int, CounterChild] = {}
        self._info_labels = (namespace, self.name, self.version, self.sha256, self.provider)
        metrics.info_acquire(self._info_labels)
        metrics.concurrent_runs.labels(namespace, self.name, self.version).set(self.max_concurrent_runs)
        metrics.batching.labels(namespace, self.name, self.version).set(1 if self.batcher is not None else 0)

    # -- running -----------------------------------------------------------------------------
    def _timed_predict(
        self, feeds: dict[str, np.ndarray], output_names: list[str] | None, enqueued: float
    ) -> tuple[list[np.ndarray], float, float]:
        start = time.perf_counter()
        outputs = self.model.predict(feeds, output_names)
        return outputs, start - enqueued, time.perf_counter() - start

    async def run(self, feeds: dict[str, np.ndarray], output_names: list[str] | None) -> RunResult:
        """Run one request (batched with others when enabled); outputs follow ``output_names``.

        Inference runs in the thread pool, except for tiny models: when the warm-up showed that
        this request computes in less than ``inline_max_ms`` (0.1 ms by default), it runs on
        the event loop, because handing it to a thread and back costs more (60-120 µs measured
        here) than the inference and would stall the loop for no gain.
        """
        if self.batcher is None and self.inline_max_elements:
            elements = 0
            for arr in feeds.values():
                elements += arr.size
            if elements <= self.inline_max_elements:
                start = time.perf_counter()
                outputs = self.model.predict(feeds, output_names)
                result = RunResult(outputs, 0.0, time.perf_counter() - start, 1)
                self._m_inference.observe(result.compute)
                self._m_queue.observe(0.0)
                self._m_batch.observe(1)
                return result
        if self.batcher is not None:
            result = await self.batcher.submit(feeds)
            if output_names is not None:
                result.outputs = [result.outputs[self.output_index[n]] for n in output_names]
        else:
            enqueued = time.perf_counter()
            async with self._run_slots:
                outputs, waited, compute = await self.pool.run(self._timed_predict, feeds, output_names, enqueued)
            result = RunResult(outputs, waited, compute, 1)
        self._m_inference.observe(result.compute)
        self._m_queue.observe(result.queue_wait)
        self._m_batch.observe(result.batch_requests)
        return result

    def record(self, code: int, seconds: float) -> None:
        """Count a finished request (any status) and its latency."""
        child = self._m_codes.get(code)
        if child is None:
            child = self._m_codes[code] = self.metrics.requests.labels(self.namespace, self.name, self.version, self.provider, str(code))
        child.inc()
        self.request_count += 1
        if code >= 400:
            self.error_count += 1
        else:
            self._m_request.observe(seconds)
            self.latencies.add(seconds)

    # -- lifecycle ---------------------------------------------------------------------------
    def acquire(self) -> None:
        self.inflight += 1

    def release(self) -> None:
        self.inflight -= 1
        if self.inflight == 0 and self._drained is not None:
            self._drained.set()

    async def drain(self, timeout: float) -> bool:
        """Wait until no request holds this version; False when ``timeout`` passed first."""
        self.retired = True
        if self.inflight == 0:
            return True
        self._drained = asyncio.Event()
        try:
            async with asyncio.timeout(timeout):
                await self._drained.wait()
        except TimeoutError:
            log.warning("Model %s:%s still had %d requests after %.0f s of draining; unloading", self.name, self.version, self.inflight, timeout)
            return False
        return True

    async def close(self) -> None:
        """Stop batching, drop the session and this version's info series."""
        if self.batcher is not None:
            await self.batcher.close()
        self.model.unload()
        self.metrics.info_release(self._info_labels)
        if not self.metrics.info_served(self._info_labels):  # no overlapping reload of this version holds them
            for gauge in (self.metrics.concurrent_runs, self.metrics.batching):
                with contextlib.suppress(KeyError):
                    gauge.remove(self.namespace, self.name, self.version)


@dataclass
class _Entry:
    versions: dict[str, ModelVersion] = field(default_factory=dict)
    default: ModelVersion | None = None


def version_key(version: str) -> tuple[int, int, str]:
    return (1, int(version), "") if version.isdigit() else (0, 0, version)


class ModelRepository:
    """Name -> loaded versions, the default version of each name, and the models still expected."""

    def __init__(self, drain_timeout_s: float = 30.0) -> None:
        self.drain_timeout_s = drain_timeout_s
        self._entries: dict[str, _Entry] = {}
        self._waiting: dict[str, str] = {}
        """Assigned models without a version loaded yet -> why (e.g. "Downloading revision 3")."""
        self._retiring: set[asyncio.Task[None]] = set()

    # -- lookup (hot path) -------------------------------------------------------------------
    def resolve(self, name: str, version: str | None = None) -> ModelVersion:
        """The version a request goes to; ModelNotFound / ModelNotReady with a message otherwise."""
        entry = self._entries.get(name)
        if entry is None or entry.default is None:
            if name in self._waiting:
                raise ModelNotReady(f"model {name!r} is assigned but not ready yet ({self._waiting[name]}); retry later")
            loaded = ", ".join(sorted(self._entries)[:20]) or "none"
            raise ModelNotFound(f"model {name!r} is not loaded on this agent; loaded models: {loaded}")
        if version is None:
            return entry.default
        found = entry.versions.get(version)
        if found is None:
            known = ", ".join(sorted(entry.versions, key=version_key))
            raise ModelNotFound(f"model {name!r} has no version {version!r} loaded; loaded versions: {known}")
        return found

    # -- changes -----------------------------------------------------------------------------
    def add(self, mv: ModelVersion, make_default: bool = True) -> None:
        """Make a loaded version addressable; the default of its name when ``make_default``."""
        entry = self._entries.setdefault(mv.name, _Entry())
        entry.versions[mv.version] = mv
        if make_default or entry.default is None:
            entry.default = mv
        self._waiting.pop(mv.name, None)
        self._refresh_metadata(mv.name)

    def swap(self, mv: ModelVersion) -> list[ModelVersion]:
        """Switch the name to ``mv`` atomically; older versions drain and unload in the background."""
        entry = self._entries.get(mv.name)
        old = [v for v in entry.versions.values() if v is not mv] if entry else []
        new_entry = _Entry(versions={mv.version: mv}, default=mv)
        self._entries[mv.name] = new_entry  # the switch: one assignment, between two requests
        self._waiting.pop(mv.name, None)
        self._refresh_metadata(mv.name)
        for version in old:
            self._retire_later(version)
        if old:
            log.info("Switched model %s to version %s; draining %s", mv.name, mv.version, ", ".join(v.version for v in old))
        return old

    def remove(self, name: str) -> list[ModelVersion]:
        """Stop serving a name; its versions drain and unload in the background."""
        self._waiting.pop(name, None)
        entry = self._entries.pop(name, None)
        if entry is None:
            return []
        for version in entry.versions.values():
            self._retire_later(version)
        log.info("Removed model %s (versions %s draining)", name, ", ".join(entry.versions))
        return list(entry.versions.values())

    def set_waiting(self, name: str, why: str) -> None:
        """Mark an assigned model that has no version loaded yet (requests get 503, not 404)."""
        if name not in self._entries:
            self._waiting[name] = why

    def clear_waiting(self, name: str) -> None:
        self._waiting.pop(name, None)

    def _retire_later(self, mv: ModelVersion) -> None:
        mv.retired = True
        task = asyncio.get_running_loop().create_task(self._retire(mv), name=f"retire-{mv.name}-{mv.version}")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _retire(self, mv: ModelVersion) -> None:
        await mv.drain(self.drain_timeout_s)
        await mv.close()
        log.info("Unloaded model %s version %s", mv.name, mv.version)

    async def wait_retired(self) -> None:
        """Wait for background drains (tests and shutdown)."""
        while self._retiring:
            await asyncio.gather(*list(self._retiring), return_exceptions=True)

    async def close(self) -> None:
        """Unload everything (shutdown)."""
        for name in list(self._entries):
            self.remove(name)
        await self.wait_retired()

    def _refresh_metadata(self, name: str) -> None:
        entry = self._entries.get(name)
        if entry is None:
            return
        versions = sorted(entry.versions, key=version_key)
        for mv in entry.versions.values():
            mv.metadata_json = orjson.dumps(
                {
                    "name": name,
                    "versions": versions,
                    "platform": PLATFORM,
                    "inputs": [t.to_json() for t in mv.model.inputs],
                    "outputs": [t.to_json() for t in mv.model.outputs],
                }
            )

    # -- views -------------------------------------------------------------------------------
    def names(self) -> list[str]:
        return sorted(self._entries)

    def versions(self, name: str) -> list[ModelVersion]:
        entry = self._entries.get(name)
        return sorted(entry.versions.values(), key=lambda v: version_key(v.version)) if entry else []

    def default(self, name: str) -> ModelVersion | None:
        entry = self._entries.get(name)
        return entry.default if entry else None

    def all_ready(self) -> bool:
        """Every expected model has a version serving."""
        return not self._waiting

    def index(self) -> list[dict[str, str]]:
        """Triton repository-index rows: name, version, state, reason."""
        rows = [
            {"name": mv.name, "version": mv.version, "state": "READY", "reason": ""}
            for name in self.names()
            for mv in self.versions(name)
        ]
        rows += [{"name": n, "version": "", "state": "UNAVAILABLE", "reason": why} for n, why in sorted(self._waiting.items())]
        return rows
