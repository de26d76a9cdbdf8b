"""Make the served models match ``EdgeAgent.spec.models``: fetch, verify, load, swap, unload.

Each assigned model walks Downloading -> Verifying -> Loading -> Ready, or ends Failed with a
CamelCase reason. Downloading: fetch manifest.json, verify its ed25519 signature and that it
vouches for this file and revision (so an unsigned artifact is never downloaded), then fetch the
model file with resume. Verifying: the file's sha256 (a cached file: signature and sha256 again).
Loading: ONNX Runtime session on the chosen provider and warm-up. A failure never touches the version being served: the previous revision keeps
answering until a new one is loaded and warmed up, then ``repository.swap`` switches atomically.

Reasons (``ModelState.reason``):
  Loaded (Ready), SignatureInvalid, ManifestInvalid, ManifestMismatch, DigestMismatch,
  DownloadFailed (retried with backoff), LoadFailed, UnsupportedModel, GpuUnavailable, Internal.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from edge_agent.control.artifacts import FetchError, download, fetch_bytes, sha256_of
from edge_agent.control.cache import ArtifactCache
from edge_agent.errors import LoadError
from edge_agent.repository import BatchingConfig
from edge_agent.server import AgentServer
from edge_agent.settings import AgentSettings
from edgemodel.api import ArtifactManifest, ModelAssignment, ModelPhase, ModelState, now_rfc3339
from edgemodel.signing import SignatureError, verify

log = logging.getLogger(__name__)

#: Reasons counted in edgemodel_artifact_download_failures_total.
ARTIFACT_REASONS = frozenset({"DownloadFailed", "DigestMismatch", "SignatureInvalid", "ManifestInvalid", "ManifestMismatch"})
MAX_RETRY_DELAY_S = 300.0


class StepFailed(Exception):
    """A step failed; ``reason`` goes to status, ``retryable`` says whether to try again later."""

    def __init__(self, reason: str, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retryable = retryable


def load_key(a: ModelAssignment) -> tuple[Any, ...]:
    """What must match for a loaded version to satisfy an assignment."""
    b = a.batching
    return (a.revision, a.sha256, a.accelerator.value, a.gpu_fallback_to_cpu, b.enabled, b.max_batch_size, b.max_queue_delay_ms)


def artifact_file_name(uri: str) -> str:
    return unquote(urlparse(uri).path).rstrip("/").rsplit("/", 1)[-1]


def check_manifest(data: bytes, a: ModelAssignment, public_key: Ed25519PublicKey) -> ArtifactManifest:
    """Verify the signature, then that the manifest vouches for exactly this file and revision."""
    try:
        verify(data, a.signature, public_key)
    except SignatureError as exc:
        raise StepFailed(
            "SignatureInvalid",
            f"the signature of {a.manifest_uri} does not verify with the fleet public key: the artifact is unsigned, "
            "signed with another key or altered; re-run the conversion or fix the agent's --public-key",
        ) from exc
    try:
        manifest = ArtifactManifest.model_validate_json(data)
    except ValidationError as exc:
        raise StepFailed("ManifestInvalid", f"{a.manifest_uri} is signed but is not a valid manifest: {exc.errors()[0]['msg']}") from exc
    if (manifest.model, manifest.namespace, manifest.revision) != (a.name, a.namespace, a.revision):
        raise StepFailed(
            "ManifestMismatch",
            f"the signed manifest is for {manifest.namespace}/{manifest.model} revision {manifest.revision}, "
            f"the assignment is {a.namespace}/{a.name} revision {a.revision}",
        )
    file_name = artifact_file_name(a.artifact_uri)
    listed = manifest.files.get(file_name) or next((c.sha256 for c in manifest.choices if c.file == file_name), None)
    if listed is None:
        raise StepFailed("ManifestMismatch", f"the signed manifest does not list {file_name} (artifactUri {a.artifact_uri})")
    if listed != a.sha256:
        raise StepFailed(
            "DigestMismatch",
            f"the signed manifest gives {file_name} sha256 {listed}, the assignment says {a.sha256}; refusing it",
        )
    return manifest


@dataclass
class Tracked:
    """Local state of one assigned model."""

    assignment: ModelAssignment
    state: ModelPhase = ModelPhase.PENDING
    reason: str = ""
    message: str = ""
    since: str = field(default_factory=now_rfc3339)
    failures: int = 0
    retry_at: float | None = None
    task: asyncio.Task[None] | None = None


class Reconciler:
    """Drives every assigned model to Ready (or Failed) and keeps the repository in line."""

    def __init__(
        self,
        server: AgentServer,
        cache: ArtifactCache,
        public_key: Ed25519PublicKey,
        settings: AgentSettings,
        on_change: Callable[[], None] = lambda: None,
        store_headers: dict[str, str] | None = None,
    ) -> None:
        self.server = server
        self.repository = server.repository
        self.metrics = server.metrics
        self.cache = cache
        self.public_key = public_key
        self.settings = settings
        self.on_change = on_change
        self.store_headers = store_headers or {}
        self.tracked: dict[str, Tracked] = {}
        self._http: aiohttp.ClientSession | None = None
        self._fetching: dict[str, asyncio.Lock] = {}
        """One download at a time per sha256 (two names may share an artifact)."""

    async def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession()
        return self._http

    # -- desired state -----------------------------------------------------------------------
    def apply(self, assignments: Iterable[ModelAssignment], persist: bool = True, generation: int | None = None) -> None:
        """Adopt a new desired set: start work for new or changed models, unload unassigned ones."""
        desired: dict[str, ModelAssignment] = {}
        for a in assignments:
            if a.name in desired:
                log.error("Ignored a second assignment for model %s (namespace %s): names must be unique", a.name, a.namespace)
                continue
            desired[a.name] = a
        if persist:
            self.cache.save_assignment(
                {"generation": generation, "savedAt": now_rfc3339(), "models": [a.to_k8s() for a in desired.values()]}
            )
        for name in [n for n in self.tracked if n not in desired]:
            t = self.tracked.pop(name)
            if t.task is not None:
                t.task.cancel()
            removed = self.repository.remove(name)
            for mv in removed:
                self.metrics.forget_state(name, mv.version)
            self.metrics.forget_state(name, str(t.assignment.revision))
            log.info("Unassigned model %s: unloading (revision %s)", name, ", ".join(v.version for v in removed) or "none loaded")
        for name, a in desired.items():
            previous = self.tracked.get(name)
            if previous is not None:
                if previous.assignment == a:
                    continue
                if previous.task is not None:
                    previous.task.cancel()
                serving = self.repository.default(name)
                if previous.assignment.revision != a.revision and (serving is None or serving.version != str(previous.assignment.revision)):
                    self.metrics.forget_state(name, str(previous.assignment.revision))
            t = self.tracked[name] = Tracked(assignment=a)
            self._start(t)
        self.on_change()

    def retry_due(self, now: float | None = None) -> int:
        """Restart failed models whose retry time has come; how many restarted."""
        now = time.monotonic() if now is None else now
        restarted = 0
        for t in self.tracked.values():
            if t.state == ModelPhase.FAILED and t.retry_at is not None and t.retry_at <= now and (t.task is None or t.task.done()):
                t.retry_at = None
                self._start(t)
                restarted += 1
        return restarted

    def _start(self, t: Tracked) -> None:
        if self.repository.default(t.assignment.name) is None:
            self.repository.set_waiting(t.assignment.name, f"revision {t.assignment.revision} pending")
        t.task = asyncio.get_running_loop().create_task(self._realize(t), name=f"reconcile-{t.assignment.name}")

    # -- state -------------------------------------------------------------------------------
    def _set(self, t: Tracked, state: ModelPhase, reason: str = "", message: str = "") -> None:
        if self.tracked.get(t.assignment.name) is not t:
            return  # superseded by a newer assignment
        changed = state != t.state
        t.state, t.reason, t.message = state, reason, message
        if changed:
            t.since = now_rfc3339()
            log.info("Model %s revision %d is %s%s", t.assignment.name, t.assignment.revision, state.value, f" ({reason}: {message})" if reason and state == ModelPhase.FAILED else "")
        a = t.assignment
        self.metrics.set_state(a.name, str(a.revision), state.value)
        if self.repository.default(a.name) is None:
            self.repository.set_waiting(a.name, f"{state.value} revision {a.revision}" + (f": {reason}" if reason else ""))
        self.on_change()

    def _fail(self, t: Tracked, exc: StepFailed) -> None:
        t.failures += 1
        if exc.reason in ARTIFACT_REASONS:
            self.metrics.download_failures.labels(exc.reason).inc()
        serving = self.repository.default(t.assignment.name)
        message = exc.message
        if serving is not None and serving.version != str(t.assignment.revision):
            message += f"; revision {serving.version} keeps serving"
        if exc.retryable:
            delay = min(MAX_RETRY_DELAY_S, self.settings.retry_backoff_s * 2 ** min(t.failures, 10))
            t.retry_at = time.monotonic() + delay
            message += f"; retrying in {delay:.0f} s"
        else:
            t.retry_at = None
        self._set(t, ModelPhase.FAILED, exc.reason, message[:1000])

    def states(self) -> list[ModelState]:
        """Per-model status for EdgeAgent.status.models, with counts and latency of the serving version."""
        result: list[ModelState] = []
        for name in sorted(self.tracked):
            t = self.tracked[name]
            serving = self.repository.default(name)
            p50 = p95 = None
            if serving is not None:
                p50, p95 = serving.latencies.percentiles_ms()
            result.append(
                ModelState(
                    name=name,
                    namespace=t.assignment.namespace,
                    revision=t.assignment.revision,
                    serving_revision=int(serving.version) if serving is not None and serving.version.isdigit() else None,
                    state=t.state,
                    reason=t.reason,
                    message=t.message,
                    provider=serving.provider if serving is not None else "",
                    request_count=serving.request_count if serving is not None else 0,
                    error_count=serving.error_count if serving is not None else 0,
                    p50_ms=p50,
                    p95_ms=p95,
                    last_transition_time=t.since,
                )
            )
        return result

    def all_ready(self) -> bool:
        return all(t.state == ModelPhase.READY for t in self.tracked.values())

    def pinned(self) -> set[str]:
        """sha256s that must stay in the cache: assigned or serving."""
        keep = {t.assignment.sha256 for t in self.tracked.values()}
        for name in self.repository.names():
            keep.update(v.sha256 for v in self.repository.versions(name))
        return keep

    # -- the work ----------------------------------------------------------------------------
    async def _realize(self, t: Tracked) -> None:
        a = t.assignment
        serving = self.repository.default(a.name)
        if serving is not None and serving.revision_meta.get("key") == repr(load_key(a)):
            self._set(t, ModelPhase.READY, "Loaded", f"serving revision {a.revision} on {serving.provider}")
            return
        try:
            async with self._fetching.setdefault(a.sha256, asyncio.Lock()):
                path = await self._obtain(t)
            self._set(t, ModelPhase.LOADING, "", f"loading {path.name} into ONNX Runtime ({a.accelerator.value})")
            b = a.batching
            mv = await self.server.load_version(
                a.name, str(a.revision), path, sha256=a.sha256, accelerator=a.accelerator.value,
                gpu_fallback_to_cpu=a.gpu_fallback_to_cpu,
                batching=BatchingConfig(b.enabled, b.max_batch_size, b.max_queue_delay_ms),
            )  # fmt: skip
            if self.tracked.get(a.name) is not t:
                await mv.close()
                return
            mv.revision_meta = {"key": repr(load_key(a)), "namespace": a.namespace}
            old = self.repository.swap(mv)
            for previous in old:
                if previous.version != mv.version:
                    self.metrics.forget_state(a.name, previous.version)
            t.failures = 0
            note = ""
            if a.accelerator.value == "gpu" and mv.provider == "CPUExecutionProvider":
                note = " (no GPU provider loads here; fell back to CPU per gpuFallbackToCpu)"
            self._set(t, ModelPhase.READY, "Loaded", f"serving revision {a.revision} on {mv.provider}{note}")
            await asyncio.to_thread(self.cache.evict, self.pinned())
        except StepFailed as exc:
            self._fail(t, exc)
        except LoadError as exc:
            self._fail(t, StepFailed(exc.reason, exc.message, retryable=False))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("Reconciling model %s revision %d failed unexpectedly", a.name, a.revision)
            self._fail(t, StepFailed("Internal", f"{type(exc).__name__}: {exc}", retryable=True))

    async def _obtain(self, t: Tracked) -> Path:
        """A verified local copy of the artifact: from the cache or downloaded."""
        a = t.assignment
        sha = a.sha256
        if self.cache.has(sha):
            self._set(t, ModelPhase.VERIFYING, "", "verifying the cached artifact (signature and sha256)")
            try:
                check_manifest(self.cache.manifest(sha).read_bytes(), a, self.public_key)
                actual = await asyncio.to_thread(sha256_of, self.cache.blob(sha))
            except (StepFailed, OSError) as exc:
                log.warning("Cached artifact %s failed verification (%s); fetching it again", sha[:12], exc)
            else:
                if actual == sha:
                    self.cache.touch(sha)
                    return self.cache.blob(sha)
                log.warning("Cached artifact %s is corrupt (sha256 %s); fetching it again", sha[:12], actual[:12])
            self.cache.discard(sha)
        session = await self._session()
        self._set(t, ModelPhase.DOWNLOADING, "", f"fetching the manifest {a.manifest_uri}")
        manifest = await self._retrying(t, lambda: fetch_bytes(session, a.manifest_uri, self.store_headers))
        check_manifest(manifest, a, self.public_key)  # before the big download: unsigned artifacts never are
        part = self.cache.part(sha)

        def progress(done: int, total: int | None) -> None:
            of = f" of {total / 1e6:.1f}" if total else ""
            self._set(t, ModelPhase.DOWNLOADING, "", f"downloading {a.artifact_uri}: {done / 1e6:.1f}{of} MB")

        self._set(t, ModelPhase.DOWNLOADING, "", f"manifest signature verified; downloading {a.artifact_uri}")
        await self._retrying(
            t,
            lambda: download(
                session, a.artifact_uri, part, self.store_headers, self.settings.download_timeout_s,
                on_bytes=self.metrics.download_bytes.inc, progress=progress,
            ),  # fmt: skip
        )
        self._set(t, ModelPhase.VERIFYING, "", "verifying the sha256 of the downloaded file")
        actual = await asyncio.to_thread(sha256_of, part)
        if actual != sha:
            part.unlink(missing_ok=True)
            raise StepFailed(
                "DigestMismatch",
                f"{a.artifact_uri} has sha256 {actual}, the signed manifest says {sha}: the file is corrupt or was replaced",
            )
        self.cache.store_manifest(sha, manifest)
        return self.cache.commit(sha)

    async def _retrying(self, t: Tracked, attempt: Callable[[], Any]) -> Any:
        attempts = self.settings.download_attempts
        last: FetchError | None = None
        for number in range(1, attempts + 1):
            try:
                return await attempt()
            except FetchError as exc:
                last = exc
                if not exc.retryable or number == attempts:
                    break
                delay = min(60.0, self.settings.retry_backoff_s * 2 ** (number - 1))
                log.warning("Download attempt %d/%d for %s failed: %s; retrying in %.1f s", number, attempts, t.assignment.name, exc.message, delay)
                self._set(t, ModelPhase.DOWNLOADING, "", f"attempt {number}/{attempts} failed ({exc.message}); retrying")
                await asyncio.sleep(delay)
        assert last is not None
        raise StepFailed(last.reason, f"{last.message} (after {number} attempt{'s' if number > 1 else ''})", retryable=last.retryable)

    async def close(self) -> None:
        for t in self.tracked.values():
            if t.task is not None:
                t.task.cancel()
        tasks = [t.task for t in self.tracked.values() if t.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
