"""The continual-learning side of the agent: watch every answered request off the request path.

``ContinualHub.observe`` is the one call on the request path: it puts references to the request
and its outputs on a bounded queue (``put_nowait``; when the queue is full the request is counted as
skipped, never waited for). One worker thread takes them off and, per model, computes the
confidence, feeds the drift detectors (``edge_agent.drift``), remembers recent predictions for
feedback and captures by policy into the model's ``CaptureStore`` (``edge_agent.capture``).

Metrics (in the agent's registry): ``edgemodel_drift_score{namespace,model,detector}``,
``edgemodel_drift_alarms_total``, ``edgemodel_feedback_accuracy``, ``edgemodel_feedback_labels_total``,
``edgemodel_capture_records``/``_bytes``, ``edgemodel_capture_total{reason}`` and
``edgemodel_capture_skipped_total{reason}``. ``status()`` is the EdgeAgent ``status.continual`` list.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import queue
import re
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from edge_agent.capture import CaptureFull, CapturePolicy, CaptureStore, confidence_entropy, probabilities
from edge_agent.drift import DriftMonitor, DriftSettings, Reference, summarise
from edgemodel.errors import UserError, describe_validation_error

log = logging.getLogger(__name__)

_SAFE = re.compile(r"[^A-Za-z0-9._-]")


BATCH_WAIT_S = 0.05
"""After the first queued request, the worker waits this long for more before a vectorised pass."""
MAX_BATCH = 512
_IDLE: Any = object()
"""Returned by the worker's queue wait when nothing came (time to check the periodic upload)."""


class ContinualSettings(BaseSettings):
    """``EDGEMODEL_AGENT_CONTINUAL_*``: capture, drift and feedback of the agent (docs/continual.md)."""

    model_config = SettingsConfigDict(env_prefix="EDGEMODEL_AGENT_CONTINUAL_", extra="ignore")

    enabled: bool = True
    """Watch requests at all (drift, feedback accuracy); false turns the whole feature off."""
    capture_dir: Path | None = None
    """Folder of the capture buffers (one sub-folder per model); unset: nothing is captured to disk (drift and
    feedback accuracy still run, in memory). Opt-in because every served model is captured, classifier or not."""
    max_bytes: int = Field(default=64 << 20, ge=1 << 16)
    """Bytes of captured inputs kept per model."""
    max_records: int = Field(default=5000, ge=10, le=1_000_000)
    """Captured requests kept per model."""
    queue_size: int = Field(default=4096, ge=16, le=1_000_000)
    """Requests waiting for the worker; beyond it requests are skipped (counted), never waited for."""
    low_confidence: float = Field(default=0.7, ge=0.0, le=1.0)
    high_entropy: float = Field(default=0.5, ge=0.0, le=1.0)
    random_rate: float = Field(default=0.02, ge=0.0, le=1.0)
    max_captures_per_s: float = Field(default=50.0, gt=0)
    """Captures per second per model at most (a token bucket): under drift most traffic is uncertain, and
    the disk writes stay bounded; the rest is counted as skipped (rate_limited)."""
    recent_ids: int = Field(default=10000, ge=0, le=1_000_000)
    """Predictions remembered per model for feedback on requests that were not captured."""
    accuracy_window: int = Field(default=500, ge=10, le=100_000)
    """Labelled-feedback accuracy is over the last this many labelled rows."""
    psi_window: int = Field(default=200, ge=10)
    psi_threshold: float = Field(default=0.25, gt=0)
    ph_delta: float = Field(default=0.01, ge=0)
    ph_threshold: float = Field(default=8.0, gt=0)
    reference_samples: int = Field(default=500, ge=10)
    store_url: str = Field(default="", pattern=r"^(https?://.+)?$")
    """Artifact store base URL the labelled samples are uploaded to (empty: no upload; fetch them over HTTP)."""
    upload_interval_s: float = Field(default=300.0, ge=1.0)
    """How often labelled samples waiting for upload are sent to the store."""


class ServedVersion(Protocol):
    """What the hub needs of a ``repository.ModelVersion``."""

    namespace: str
    name: str
    version: str


class Tensor(Protocol):
    name: str
    data: np.ndarray


class Request(Protocol):
    id: str | None
    inputs: list[Any]


Outputs = Sequence[tuple[str, np.ndarray, bool]]


def _by_version(items: list[Any]) -> list[tuple[ServedVersion, list[tuple[Request, Outputs]]]]:
    """Queued (version, request, outputs) grouped by version, in order of first appearance."""
    groups: dict[int, tuple[ServedVersion, list[tuple[Request, Outputs]]]] = {}
    for mv, request, outputs in items:
        groups.setdefault(id(mv), (mv, []))[1].append((request, outputs))
    return list(groups.values())


@dataclass
class ModelWatch:
    """Drift, feedback and capture state of one served model name."""

    namespace: str
    name: str
    version: str
    drift: DriftMonitor
    store: CaptureStore | None
    classes: int = 0
    recent: OrderedDict[str, tuple[str, list[int]]] = field(default_factory=OrderedDict)
    correct: deque[bool] = field(default_factory=lambda: deque(maxlen=500))
    labelled_rows: int = 0
    captured: int = 0
    last_upload: dict[str, Any] = field(default_factory=dict)

    tokens: float = 0.0
    tokens_at: float = 0.0

    def take_token(self, rate: float) -> bool:
        """Token bucket of captures (burst of one second's worth)."""
        now = time.monotonic()
        self.tokens = min(rate, self.tokens + (now - self.tokens_at) * rate) if self.tokens_at else rate
        self.tokens_at = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True

    @property
    def accuracy(self) -> float | None:
        return sum(self.correct) / len(self.correct) if self.correct else None


class FeedbackError(Exception):
    """A feedback request the agent refuses, with its HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ContinualMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["namespace", "model"]
        self.drift_score = Gauge(
            "edgemodel_drift_score",
            "Drift score of a model by detector: mean per-feature PSI "
            "of the recent inputs (psi), or Page-Hinkley statistic / threshold of the confidence "
            "(page_hinkley; 1 = alarm).",
            [*labels, "detector"],
            registry=registry,
        )
        self.drift_alarms = Counter(
            "edgemodel_drift_alarms_total",
            "Drift alarm episodes started, by first detector.",
            [*labels, "detector"],
            registry=registry,
        )
        self.drift_active = Gauge(
            "edgemodel_drift_active", "1 while a drift alarm episode lasts.", labels, registry=registry
        )
        self.accuracy = Gauge(
            "edgemodel_feedback_accuracy",
            "Top-1 accuracy of the served model on the last labelled feedback rows.",
            labels,
            registry=registry,
        )
        self.labels = Counter(
            "edgemodel_feedback_labels_total",
            "Feedback labels received, by outcome (captured, counted, unknown).",
            [*labels, "outcome"],
            registry=registry,
        )
        self.records = Gauge(
            "edgemodel_capture_records", "Captured requests on disk.", labels, registry=registry
        )
        self.bytes = Gauge(
            "edgemodel_capture_bytes", "Bytes of captured requests on disk.", labels, registry=registry
        )
        self.captured = Counter(
            "edgemodel_capture_total",
            "Requests captured, by reason (uncertain, random).",
            [*labels, "reason"],
            registry=registry,
        )
        self.skipped = Counter(
            "edgemodel_capture_skipped_total",
            "Requests not watched or not captured, by reason (queue_full, buffer_full, error).",
            [*labels, "reason"],
            registry=registry,
        )


class ContinualHub:
    """Per-model drift, feedback and capture, fed from the request path through a bounded queue."""

    def __init__(
        self, settings: ContinualSettings, registry: CollectorRegistry, capture_dir: Path | None = None
    ) -> None:
        self.settings = settings
        self.capture_dir = settings.capture_dir or capture_dir
        self.metrics = ContinualMetrics(registry)
        self.policy = CapturePolicy(settings.low_confidence, settings.high_entropy, settings.random_rate)
        self.watches: dict[str, ModelWatch] = {}
        self._queue: queue.Queue[
            tuple[ServedVersion, Request, Sequence[tuple[str, np.ndarray, bool]]] | None
        ] = queue.Queue(settings.queue_size)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.skipped = 0
        self.enqueued = 0
        """Requests put on the queue (event-loop thread)."""
        self.handled = 0
        """Requests taken off it and processed (worker thread); feedback waits for the ones before it."""
        self.processed = 0

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        if self.settings.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="continual", daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        if self._thread is not None:
            with contextlib.suppress(queue.Full):
                self._queue.put(None, timeout=timeout_s)
            self._thread.join(timeout_s)
            self._thread = None

    def drain(self, timeout_s: float = 10.0) -> None:
        """Wait until the requests queued so far were processed (at most ``timeout_s``; later ones do not count)."""
        target = self.enqueued
        deadline = time.monotonic() + timeout_s
        while self._thread is not None and self.handled < target and time.monotonic() < deadline:
            time.sleep(0.005)

    # -- request path --------------------------------------------------------------------------
    def observe(
        self, mv: ServedVersion, request: Request, outputs: Sequence[tuple[str, np.ndarray, bool]]
    ) -> None:
        """Hand an answered request to the worker without waiting (skipped and counted when the queue is full)."""
        if self._thread is None:
            return
        try:
            self._queue.put_nowait((mv, request, outputs))
            self.enqueued += 1
        except queue.Full:
            self.skipped += 1
            self.metrics.skipped.labels(mv.namespace, mv.name, "queue_full").inc()

    # -- worker --------------------------------------------------------------------------------
    def _run(self) -> None:
        next_upload = time.monotonic() + self.settings.upload_interval_s
        while True:
            try:
                first = self._queue.get(timeout=max(0.05, next_upload - time.monotonic()))
            except queue.Empty:
                first = _IDLE
            if time.monotonic() >= next_upload:
                next_upload = time.monotonic() + self.settings.upload_interval_s
                self.upload_waiting()
            if first is _IDLE:
                continue
            if first is not None:
                time.sleep(
                    BATCH_WAIT_S
                )  # let a batch gather: one vectorised pass costs less than many small ones
            batch = [first]
            while batch[-1] is not None and len(batch) < MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = batch[-1] is None
            items = [b for b in batch if b is not None]
            try:
                for mv, group in _by_version(items):
                    try:
                        self.process_batch(mv, group)
                    except Exception:  # a bug must not stop the watching of later requests
                        log.exception(
                            "Continual learning: processing %d request(s) of %s failed", len(group), mv.name
                        )
                        self.metrics.skipped.labels(mv.namespace, mv.name, "error").inc(len(group))
            finally:
                self.handled += len(items)
                for _ in batch:
                    self._queue.task_done()
            if stop:
                return

    def _store(self, mv: ServedVersion) -> CaptureStore | None:
        if self.capture_dir is None:
            return None
        folder = self.capture_dir / _SAFE.sub("_", f"{mv.namespace or '_'}.{mv.name}")
        try:
            return CaptureStore(folder, self.settings.max_bytes, self.settings.max_records)
        except OSError as exc:
            log.error(
                "Capture for model %s is off: cannot use %s (%s); mount a writable volume",
                mv.name,
                folder,
                exc,
            )
            return None

    def _reference(self, mv: ServedVersion) -> tuple[Reference | None, str]:
        """The version's PSI reference and where it came from: the signed manifest's driftReference (the
        validation inputs' summary), else reference-{version}.npz in the model's capture folder, else none
        (the detector then takes the first samples served, and says so: referenceSource first-served)."""
        shipped = getattr(mv, "drift_reference", None)
        if isinstance(shipped, Reference):
            return shipped, "validation"
        if self.capture_dir is None:
            return None, ""
        path = (
            self.capture_dir
            / _SAFE.sub("_", f"{mv.namespace or '_'}.{mv.name}")
            / f"reference-{mv.version}.npz"
        )
        if not path.exists():
            return None, ""
        try:
            with np.load(path, allow_pickle=False) as z:
                return Reference.from_npz(dict(z)), "validation-file"
        except (OSError, ValueError, KeyError) as exc:
            log.warning(
                "Drift reference %s is unreadable (%s); using the first samples served instead", path, exc
            )
            return None, ""

    def _monitor(self, mv: ServedVersion) -> DriftMonitor:
        reference, source = self._reference(mv)
        monitor = DriftMonitor(self._drift_settings(), reference, source or "validation")
        if reference is None:
            log.info(
                "Model %s version %s: its manifest has no driftReference (no validation data); the PSI "
                "reference is the first %d samples served (referenceSource first-served)",
                mv.name, mv.version, self.settings.reference_samples,
            )  # fmt: skip
        return monitor

    def _drift_settings(self) -> DriftSettings:
        s = self.settings
        return DriftSettings(s.reference_samples, s.psi_window, s.psi_threshold, s.ph_delta, s.ph_threshold)

    def watch(self, mv: ServedVersion) -> ModelWatch:
        """The watch of a model; a new version gets fresh detectors (its own reference)."""
        with self._lock:
            w = self.watches.get(mv.name)
            if w is None:
                w = ModelWatch(
                    mv.namespace,
                    mv.name,
                    mv.version,
                    self._monitor(mv),
                    self._store(mv),
                )
                w.correct = deque(maxlen=self.settings.accuracy_window)
                self.watches[mv.name] = w
            elif w.version != mv.version:
                w.version = mv.version
                w.drift = self._monitor(mv)
                w.correct.clear()
            return w

    def process(
        self, mv: ServedVersion, request: Request, outputs: Sequence[tuple[str, np.ndarray, bool]]
    ) -> None:
        """Drift, recent predictions and capture for one answered request."""
        self.process_batch(mv, [(request, outputs)])

    def process_batch(self, mv: ServedVersion, items: list[tuple[Request, Outputs]]) -> None:
        """Drift, recent predictions and capture for answered requests of one version, in one vectorised pass."""
        items = [(r, o) for r, o in items if o and r.inputs]
        if not items:
            return
        raw = [np.asarray(o[0][1]) for _, o in items]
        rows = [a.shape[0] if a.ndim >= 2 else 1 for a in raw]
        first = [np.asarray(r.inputs[0].data) for r, _ in items]
        try:
            scores = np.concatenate([a.reshape(n, -1) for a, n in zip(raw, rows, strict=True)])
            inputs = np.concatenate([x.reshape(n, -1) for x, n in zip(first, rows, strict=True)])
        except ValueError:  # shapes differ between requests (or rows do not divide the input): one at a time
            if len(items) > 1:
                for item in items:
                    self.process_batch(mv, [item])
                return
            scores, inputs = raw[0].reshape(rows[0], -1), None
        w = self.watch(mv)
        p = probabilities(scores)
        w.classes = p.shape[1]
        predicted, confidence, entropy = confidence_entropy(p)
        if inputs is not None and inputs.size and np.issubdtype(inputs.dtype, np.number):
            for detector in w.drift.update(summarise(inputs), confidence):
                self.metrics.drift_alarms.labels(mv.namespace, mv.name, detector).inc()
        for detector, score in w.drift.scores().items():
            self.metrics.drift_score.labels(mv.namespace, mv.name, detector).set(score)
        self.metrics.drift_active.labels(mv.namespace, mv.name).set(1.0 if w.drift.alarm_since else 0.0)
        self.processed += len(items)
        remember = self.settings.recent_ids
        offsets = np.cumsum([0, *rows[:-1]])
        lows = np.minimum.reduceat(confidence, offsets)
        highs = np.maximum.reduceat(entropy, offsets)
        preds = predicted.tolist()
        if remember:
            for (request, _), at, n in zip(items, offsets.tolist(), rows, strict=True):
                if request.id:
                    w.recent[request.id] = (mv.version, preds[at : at + n])
        captured = False
        limited = 0
        reasons = self.policy.decide_many(lows, highs) if w.store is not None else []
        for index, reason in enumerate(reasons):
            if reason is None or w.store is None:
                continue
            if not w.take_token(self.settings.max_captures_per_s):
                limited += 1
                continue
            request = items[index][0]
            at, n = int(offsets[index]), rows[index]
            arrays = {t.name: np.asarray(t.data) for t in request.inputs}
            try:
                w.store.add(
                    request.id or f"_{time.time_ns()}",
                    mv.version,
                    arrays,
                    preds[at : at + n],
                    float(lows[index]),
                    reason,
                )
            except CaptureFull:
                self.metrics.skipped.labels(mv.namespace, mv.name, "buffer_full").inc()
                continue
            w.captured += 1
            captured = True
            self.metrics.captured.labels(mv.namespace, mv.name, reason).inc()
        if limited:
            self.metrics.skipped.labels(mv.namespace, mv.name, "rate_limited").inc(limited)
        while len(w.recent) > remember:
            w.recent.popitem(last=False)
        if captured and w.store is not None:
            summary = w.store.summary()
            self.metrics.records.labels(mv.namespace, mv.name).set(summary["records"])
            self.metrics.bytes.labels(mv.namespace, mv.name).set(summary["bytes"])

    # -- feedback ------------------------------------------------------------------------------
    def feedback(self, name: str, items: list[tuple[str, list[int]]]) -> dict[str, Any]:
        """Attach labels (validated by ``edge_agent.feedback``) to recent requests of model ``name``.

        Each id is captured (label stored for training), counted (prediction known: accuracy only) or
        unknown. FeedbackError 404 when the model is not watched or no id is known.
        """
        self.drain(timeout_s=2.0)  # requests answered just before their feedback are known
        w = self.watches.get(name)
        if w is None:
            raise FeedbackError(
                404,
                f"model {name!r} has not answered any request on this agent yet; send feedback "
                "for the ids of requests it answered",
            )
        for index, (request_id, labels) in enumerate(items):  # validate all before changing anything
            if w.classes and any(label >= w.classes for label in labels):
                raise FeedbackError(
                    400,
                    f"labels[{index}].label: {labels} is out of range; model {name!r} has "
                    f"{w.classes} classes (0..{w.classes - 1})",
                )
            seen = w.recent.get(request_id)
            record = w.store.get(request_id) if w.store is not None else None
            predicted = seen[1] if seen is not None else record.predicted if record is not None else None
            if predicted is not None and len(predicted) != len(labels):
                raise FeedbackError(
                    400,
                    f"labels[{index}].label: request {request_id!r} had {len(predicted)} row(s) "
                    f"but {len(labels)} label(s) were sent; send one label per row",
                )
        captured: list[str] = []
        counted: list[str] = []
        unknown: list[str] = []
        for request_id, labels in items:
            seen = w.recent.pop(request_id, None)
            record = w.store.label(request_id, labels) if w.store is not None else None
            if seen is None and record is None:
                unknown.append(request_id)
                continue
            if seen is not None and seen[0] == w.version:  # accuracy of the version serving now
                w.correct.extend(p == t for p, t in zip(seen[1], labels, strict=True))
                w.labelled_rows += len(labels)
            (captured if record is not None else counted).append(request_id)
        for outcome, ids in (("captured", captured), ("counted", counted), ("unknown", unknown)):
            if ids:
                self.metrics.labels.labels(w.namespace, name, outcome).inc(len(ids))
        if w.accuracy is not None:
            self.metrics.accuracy.labels(w.namespace, name).set(w.accuracy)
        result = {
            "model": name,
            "captured": len(captured),
            "counted": len(counted),
            "unknown": unknown[:100],
            "unknownCount": len(unknown),
            "feedbackAccuracy": w.accuracy,
        }
        if not captured and not counted:
            raise FeedbackError(
                404,
                f"none of the {len(unknown)} request id(s) is known for model {name!r} (not "
                f"answered here, too old, or already labelled): {', '.join(unknown[:5])}",
            )
        return result

    # -- export and upload ---------------------------------------------------------------------
    def export(self, name: str) -> tuple[bytes, dict[str, Any], list[Any]]:
        """The labelled records not uploaded yet as one .npz, its manifest (sha256, bytes, samples) and the records."""
        w = self.watches.get(name)
        if w is None or w.store is None:
            raise FeedbackError(
                404,
                f"model {name!r} has no capture buffer on this agent (no request yet, or no "
                "--capture-dir: set EDGEMODEL_AGENT_CONTINUAL_CAPTURE_DIR)",
            )
        records = w.store.labelled()
        if not records:
            raise FeedbackError(
                409,
                f"model {name!r} has no labelled captured samples waiting for upload; send "
                f"feedback (POST /v2/models/{name}/feedback) first",
            )
        data = w.store.bundle(records)
        manifest = {
            "model": name,
            "namespace": w.namespace,
            "version": w.version,
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
            "samples": sum(len(r.labels or []) for r in records),
            "createdAt": time.time(),
        }
        return data, manifest, records

    uploader: Callable[[str], dict[str, Any]] | None = None
    """Uploads one model's labelled samples (set by ``attach_continual`` when a store URL is configured)."""

    def upload_waiting(self) -> None:
        """Periodic upload of every model's labelled samples waiting for it (worker thread)."""
        if self.uploader is None:
            return
        for name, w in list(self.watches.items()):
            if w.store is None or not w.store.labelled():
                continue
            try:
                manifest = self.uploader(name)
                log.info(
                    "Uploaded %d labelled samples of model %s to %s",
                    manifest["samples"],
                    name,
                    manifest.get("uri"),
                )
            except Exception as exc:
                log.warning(
                    "Uploading the labelled samples of model %s failed (%s); retrying in %.0f s",
                    name,
                    exc,
                    self.settings.upload_interval_s,
                )

    def upload(self, name: str, store: Any, node: str, token: str = "") -> dict[str, Any]:
        """Upload the labelled samples of ``name`` to the artifact store (``edgemodel.store.client.HttpStore``):
        ``captures/{namespace}/{name}/{node}-{time}.npz``, its ``.json`` manifest (sha256, bytes, samples, node)
        and, with a store token, ``.json.sig`` (the manifest's HMAC under that token, ``edgemodel.signing``)."""
        import tempfile

        from edgemodel.signing import sign_bundle

        data, manifest, records = self.export(name)
        manifest["node"] = node
        w = self.watches[name]
        stem = f"captures/{_SAFE.sub('_', w.namespace or 'default')}/{_SAFE.sub('_', name)}/{_SAFE.sub('_', node)}-{int(time.time() * 1000)}"
        with tempfile.TemporaryDirectory() as tmp:
            npz = Path(tmp) / "samples.npz"
            npz.write_bytes(data)
            manifest["uri"] = store.put_file(f"{stem}.npz", npz)
            meta = Path(tmp) / "manifest.json"
            meta.write_text(json.dumps(manifest, indent=1))
            if token:  # the signature first: a reader never sees a manifest that should have one without it
                sig = Path(tmp) / "manifest.json.sig"
                sig.write_text(sign_bundle(meta.read_bytes(), token) + "\n")
                store.put_file(f"{stem}.json.sig", sig)
            store.put_file(f"{stem}.json", meta)
        assert w.store is not None
        w.store.mark_uploaded(records)
        w.last_upload = manifest
        return manifest

    # -- status --------------------------------------------------------------------------------
    def status(self) -> list[dict[str, Any]]:
        """The EdgeAgent ``status.continual`` entries (camelCase), one per watched model."""
        out = []
        for w in list(self.watches.values()):
            scores = w.drift.scores()
            entry: dict[str, Any] = {
                "name": w.name,
                "namespace": w.namespace,
                "revision": int(w.version) if w.version.isdigit() else 0,
                "samples": w.drift.samples,
                "driftScores": {k: round(v, 2) for k, v in scores.items()},
                "driftAlarm": w.drift.alarm_since is not None,
                "driftAlarms": w.drift.alarms,
                "referenceSource": w.drift.reference_source,
                "labelledRows": w.labelled_rows,
                "captured": w.captured,
            }
            if w.drift.alarm_since is not None:
                entry["driftSince"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(w.drift.alarm_since))
                entry["driftDetector"] = w.drift.last_alarm_detector
            if w.accuracy is not None:
                entry["feedbackAccuracy"] = round(w.accuracy, 4)
            if w.store is not None:
                summary = w.store.summary()
                entry["captureRecords"] = summary["records"]
                entry["captureBytes"] = summary["bytes"]
                entry["labelledWaiting"] = summary["waitingUpload"]
                entry["labelledCaptured"] = summary["labelled"]
                entry["captureFull"] = w.store.full
            if w.last_upload:
                entry["lastUploadUri"] = w.last_upload.get("uri", "")
            out.append(entry)
        return out


class _Server(Protocol):
    """What ``attach_continual`` needs of ``edge_agent.server.AgentServer``."""

    settings: Any
    metrics: Any
    api: Any
    app: Any


def attach_continual(server: _Server) -> ContinualHub:
    """Create the hub of an AgentServer, hook it on the inference path and add the feedback routes."""
    from edge_agent.feedback import FeedbackApi

    try:
        settings = ContinualSettings()
    except ValidationError as exc:
        raise UserError(
            f"continual-learning settings (EDGEMODEL_AGENT_CONTINUAL_*): {describe_validation_error(exc)}"
        ) from exc
    agent = server.settings
    hub = ContinualHub(settings, server.metrics.registry)
    if settings.store_url:
        from edgemodel.store.client import HttpStore

        try:
            token = agent.store_token_file.read_text().strip() if agent.store_token_file is not None else ""
        except OSError as exc:
            raise UserError(
                f"--store-token-file {agent.store_token_file}: cannot read it ({exc.strerror}); the "
                "capture upload to EDGEMODEL_AGENT_CONTINUAL_STORE_URL needs it"
            ) from exc
        store = HttpStore(settings.store_url, token=token)
        hub.uploader = lambda name: hub.upload(name, store, agent.node_name or "standalone", token)
    if settings.enabled:
        server.api.observer = hub.observe
    server.app.add_routes(FeedbackApi(hub, server.api._authorize, hub.uploader).routes())
    return hub
