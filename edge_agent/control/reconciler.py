"""Make the served models match ``EdgeAgent.spec.models``: fetch, verify, load, swap, unload.

Each assigned model walks Downloading -> Verifying -> Loading -> Ready, or ends Failed with a
CamelCase reason. Downloading: fetch manifest.json, verify its ed25519 signature and that it
vouches for this file and revision (so an unsigned artifact is never downloaded), then fetch the
model file with resume. Verifying: the file's sha256 (a cached file: signature and sha256 again).
Loading: ONNX Runtime session on the chosen provider and warm-up. A failure never touches the version being served: the previous revision keeps
answering until a new one is loaded and warmed up, then ``repository.swap`` switches atomically.

Split inference (docs/split-inference.md): a ``head`` entry walks the same steps for head.onnx and,
with fallback local, the whole model (both vouched for by the same signed manifest), then serves
as one v2 model version that runs the head here and the tail in the cloud. ``tail`` entries are
tracked per (namespace, name, revision): a cloud agent may hold several revisions of one model at
once; each is registered in the tail server's registry when Ready and removed when unassigned.

Reasons (``ModelState.reason``):
  Loaded (Ready), SignatureInvalid, ManifestInvalid, ManifestMismatch, DigestMismatch,
  DownloadFailed (retried with backoff), LoadFailed, UnsupportedModel, GpuUnavailable, Internal,
  SplitInvalid (a head or tail entry the agent cannot use as given), SplitServerDisabled (a tail on
  an agent without --split-port), TailConflict (the same model name and revision from two namespaces).

Observe -> decide -> act: :meth:`Reconciler.observe` reads the tracked entries, the repository and
the tail registry into an immutable ``observe.Snapshot``; the pure functions of ``decide`` turn it
into actions (what a new spec.models changes, where realising one entry starts, what a failure
means and when to retry, what the cache keeps); this module acts on them through the artifact
cache, the fetcher and the repository. The long-lived objects (the on-disk cache, the HTTP session,
the per-sha256 fetch locks, the loaded tails) belong to the Reconciler, which lives as long as the
agent: nothing is rebuilt per pass.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_agent import pipeline
from edge_agent.control import decide
from edge_agent.control.artifacts import FetchError, download, fetch_bytes, sha256_of
from edge_agent.control.cache import ArtifactCache
from edge_agent.control.decide import (
    ARTIFACT_REASONS,
    MAX_RETRY_DELAY_S,
    StepFailed,
    artifact_file_name,
    check_manifest,
    check_split,
    load_key,
)
from edge_agent.control.observe import (
    ModelFacts,
    ServingFacts,
    Snapshot,
    TailFacts,
    TrackKey,
    snapshot,
    track_key,
)
from edge_agent.drift import Reference
from edge_agent.repository import BatchingConfig, ModelVersion
from edge_agent.server import AgentServer
from edge_agent.settings import AgentSettings
from edge_agent.split import SplitModelVersion, TailPart, declared_outputs
from edgemodel.api import ArtifactManifest, ModelAssignment, ModelPhase, ModelRole, ModelState, now_rfc3339
from edgemodel.retry import retry_async
from edgemodel.split.codec import WireFormat
from edgemodel.split.remote import FallbackPolicy, RemoteTail

log = logging.getLogger(__name__)

T = TypeVar("T")

__all__ = [
    "ARTIFACT_REASONS",
    "MAX_RETRY_DELAY_S",
    "ApplyFailed",
    "Reconciler",
    "StepFailed",
    "TrackKey",
    "Tracked",
    "artifact_file_name",
    "check_manifest",
    "check_split",
    "load_key",
    "track_key",
]


class ApplyFailed(Exception):
    """A new assignment could not be adopted (nothing changed); the caller retries it with backoff."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


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

    @property
    def key(self) -> TrackKey:
        return track_key(self.assignment)

    @property
    def is_tail(self) -> bool:
        return self.assignment.role == ModelRole.TAIL


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
        self.tracked: dict[TrackKey, Tracked] = {}
        self.tails: dict[tuple[str, str, int], TailPart] = {}
        """Loaded tails registered in the server's tail registry, by (namespace, name, revision)."""
        self._background: set[asyncio.Task[Any]] = set()
        self._http: aiohttp.ClientSession | None = None
        self._fetching: dict[str, asyncio.Lock] = {}
        """One download at a time per sha256 (two names may share an artifact)."""
        self.model_backoff = decide.model_backoff(settings.retry_backoff_s)
        """When a failed model is tried again (the resync loop calls :meth:`retry_due`)."""
        self.download_backoff = decide.download_backoff(settings.retry_backoff_s)
        """Between the attempts of one fetch."""
        self.rng = random.Random()
        """The jitter of the model backoff (tests may seed it); one fetch's attempts jitter inside edgemodel.retry."""

    async def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession()
        return self._http

    # -- observe -----------------------------------------------------------------------------
    def observe(self, now: float | None = None) -> Snapshot:
        """The facts every decision is made from, read at one moment."""
        serving: dict[str, ServingFacts] = {}
        loaded: set[str] = set()
        for name in self.repository.names():
            default = self.repository.default(name)
            if default is not None:
                serving[name] = ServingFacts(default.version, str(default.revision_meta.get("key", "")), default.provider)
            for v in self.repository.versions(name):
                loaded.add(v.sha256)
                if isinstance(v, SplitModelVersion):
                    loaded.add(v.full_sha256)
        models = [ModelFacts(t.assignment, t.state, t.failures, t.retry_at, t.task is not None and not t.task.done())
                  for t in self.tracked.values()]  # fmt: skip
        tails = {key: TailFacts(part.sha256, part.cut, *part.next_hop) for key, part in self.tails.items()}
        return snapshot(time.monotonic() if now is None else now, models, serving, tails, loaded, self.server.split_port)

    # -- desired state -----------------------------------------------------------------------
    def apply(self, assignments: Iterable[ModelAssignment], persist: bool = True, generation: int | None = None) -> None:
        """Adopt a new desired set: start work for new or changed models, unload unassigned ones.

        ApplyFailed when the assignment cannot be saved first; then nothing has changed.
        """
        plan = decide.plan_assignment(self.observe(), assignments)
        if persist:  # before anything changes: a failed save leaves the reconciler as it was, to retry whole
            try:
                self.cache.save_assignment(
                    {"generation": generation, "savedAt": now_rfc3339(), "models": [a.to_k8s() for a in plan.desired.values()]}
                )
            except OSError as exc:
                raise ApplyFailed(
                    "SaveFailed",
                    f"cannot save the assignment to {self.cache.assignment_path} ({exc.strerror or exc}); "
                    "free space on the cache volume or fix its permissions",
                ) from exc
        for action in plan.actions:
            self._act(action)
        self.on_change()

    def _act(self, action: decide.Action) -> None:
        """Carry out one action of :func:`decide.plan_assignment`."""
        if isinstance(action, decide.Ignore):
            a = action.assignment
            log.error("Ignored a second %s for model %s (namespace %s): entries must be unique", action.what, a.name, a.namespace)
        elif isinstance(action, decide.RemoveTail):
            self._cancel(self.tracked.pop(track_key(action.assignment), None))
            self._remove_tail(action.assignment)
        elif isinstance(action, decide.Unload):
            a = action.assignment
            self._cancel(self.tracked.pop(track_key(a), None))
            removed = self.repository.remove(a.name)
            for mv in removed:
                self.metrics.forget_state(mv.namespace, a.name, mv.version)
            self.metrics.forget_state(a.namespace, a.name, str(a.revision))
            log.info("Unassigned model %s: unloading (revision %s)", a.name, ", ".join(v.version for v in removed) or "none loaded")
        elif isinstance(action, decide.Forget):
            self.metrics.forget_state(action.namespace, action.name, str(action.revision))
        else:
            key = track_key(action.assignment)
            self._cancel(self.tracked.get(key))
            t = self.tracked[key] = Tracked(assignment=action.assignment)
            self._start(t)

    @staticmethod
    def _cancel(t: Tracked | None) -> None:
        if t is not None and t.task is not None:
            t.task.cancel()

    def _remove_tail(self, a: ModelAssignment) -> None:
        """Take an unassigned tail revision out of the tail server (requests in flight finish)."""
        self.metrics.forget_state(a.namespace, a.name, str(a.revision))
        part = self.tails.pop((a.namespace, a.name, a.revision), None)
        if part is None:
            return
        self.server.tails.remove(a.name, str(a.revision))
        pipeline.release(self, a.namespace, a.name, a.revision)
        part.unload()
        log.info("Unassigned the split tail of %s/%s revision %d: removed from the tail server", a.namespace, a.name, a.revision)

    def retry_due(self, now: float | None = None) -> int:
        """Restart failed models whose retry time has come; how many restarted."""
        due = decide.retries_due(self.observe(now))
        for key in due:
            t = self.tracked[key]
            t.retry_at = None
            self._start(t)
        return len(due)

    def _start(self, t: Tracked) -> None:
        a = t.assignment
        if t.is_tail:
            t.task = asyncio.get_running_loop().create_task(self._realize_tail(t), name=f"reconcile-tail-{a.name}-{a.revision}")
            return
        if self.repository.default(a.name) is None:
            self.repository.set_waiting(a.name, f"revision {a.revision} pending")
        t.task = asyncio.get_running_loop().create_task(self._realize(t), name=f"reconcile-{a.name}")

    # -- state -------------------------------------------------------------------------------
    def _current(self, t: Tracked) -> bool:
        """Whether ``t`` is still the tracked entry for its key (not superseded or unassigned)."""
        return self.tracked.get(t.key) is t

    def _set(self, t: Tracked, state: ModelPhase, reason: str = "", message: str = "") -> None:
        if not self._current(t):
            return  # superseded by a newer assignment
        changed = state != t.state
        t.state, t.reason, t.message = state, reason, message
        a = t.assignment
        if changed:
            t.since = now_rfc3339()
            what = f"The {a.role.value} of model" if a.role != ModelRole.FULL else "Model"
            log.info("%s %s revision %d is %s%s", what, a.name, a.revision, state.value, f" ({reason}: {message})" if reason and state == ModelPhase.FAILED else "")
        self.metrics.set_state(a.namespace, a.name, str(a.revision), state.value)
        if t.is_tail:
            self.on_change()
            return
        if self.repository.default(a.name) is None:
            self.repository.set_waiting(a.name, f"{state.value} revision {a.revision}" + (f": {reason}" if reason else ""))
        self.on_change()

    def _fail(self, t: Tracked, exc: StepFailed) -> None:
        """Count and record a failure (:func:`decide.failure`); ``_set`` ignores it when ``t`` was superseded."""
        serving = None if t.is_tail else self.repository.default(t.assignment.name)
        outcome = decide.failure(exc, t.failures, t.assignment.revision, serving.version if serving is not None else None,
                                 self.model_backoff, self.rng)  # fmt: skip
        t.failures = outcome.failures
        if outcome.counts_as_artifact_failure:
            self.metrics.download_failures.labels(outcome.reason).inc()
        t.retry_at = None if outcome.retry_in is None else time.monotonic() + outcome.retry_in
        self._set(t, ModelPhase.FAILED, outcome.reason, outcome.message)

    def states(self) -> list[ModelState]:
        """Per-model status for EdgeAgent.status.models, with counts and latency of the serving version.

        Tails are reported one per revision (role tail); heads add the measured cloud RTT and the fallback count.
        """
        result: list[ModelState] = []
        for key in sorted(self.tracked, key=lambda k: (k, 0) if isinstance(k, str) else (k[1], 1, k[0], k[2])):
            t = self.tracked[key]
            a = t.assignment
            common = {"name": a.name, "namespace": a.namespace, "revision": a.revision, "state": t.state, "reason": t.reason,
                      "message": t.message, "last_transition_time": t.since, "role": a.role}  # fmt: skip
            if t.is_tail:
                part = self.tails.get((a.namespace, a.name, a.revision))
                p50 = p95 = None
                if part is not None:
                    p50, p95 = part.percentiles_ms()
                result.append(ModelState(
                    **common, serving_revision=a.revision if part is not None else None,
                    provider=part.provider if part is not None else "",
                    request_count=part.request_count if part is not None else 0,
                    error_count=part.error_count if part is not None else 0, p50_ms=p50, p95_ms=p95,
                    stage_ms=p50,  # TailPart times its own session run only: the stage's compute
                ))  # fmt: skip
                continue
            serving = self.repository.default(a.name)
            p50 = p95 = None
            if serving is not None:
                p50, p95 = serving.latencies.percentiles_ms()
            split = serving if isinstance(serving, SplitModelVersion) else None
            result.append(
                ModelState(
                    **common,
                    serving_revision=int(serving.version) if serving is not None and serving.version.isdigit() else None,
                    provider=serving.provider if serving is not None else "",
                    request_count=serving.request_count if serving is not None else 0,
                    error_count=serving.error_count if serving is not None else 0,
                    p50_ms=p50,
                    p95_ms=p95,
                    cloud_rtt_ms=split.cloud_rtt_ms if split is not None else None,
                    head_ms=split.head_latencies.percentiles_ms()[0] if split is not None else None,
                    fallback_count=split.fallback_count if split is not None else 0,
                )
            )
        return result

    def all_ready(self) -> bool:
        return all(t.state == ModelPhase.READY for t in self.tracked.values())

    def pinned(self) -> set[str]:
        """sha256s that must stay in the cache: assigned or serving."""
        return decide.pinned(self.observe())

    async def measure_rtts(self) -> None:
        """Measure every serving head's round trip to its cloud tail (status cloudRttMs); failures only blank it."""
        heads = [mv for name in self.repository.names() if isinstance(mv := self.repository.default(name), SplitModelVersion)]
        if heads:
            await asyncio.gather(*(mv.measure_rtt() for mv in heads if not mv.retired))

    def _in_background(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- the work ----------------------------------------------------------------------------
    def _fail_step(self, t: Tracked, exc: Exception, what: str) -> None:
        """Record why realising an assignment failed (CancelledError is never caught, so it propagates)."""
        known = decide.as_step_failure(exc)
        if known is None:
            a = t.assignment
            log.error("Reconciling %s %s revision %d failed unexpectedly", what, a.name, a.revision, exc_info=exc)
            known = decide.internal_failure(exc)
        self._fail(t, known)

    async def _realize(self, t: Tracked) -> None:
        a = t.assignment
        step = decide.first_step(self.observe(), a)
        if isinstance(step, decide.Satisfied):
            self._set(t, ModelPhase.READY, "Loaded", step.message)
            return
        try:
            if isinstance(step, decide.Refuse):
                raise step.error
            path, manifest = await self._obtain(t, a)
            if a.role == ModelRole.HEAD:
                mv: ModelVersion = await self._load_head(t, path, manifest)
            else:
                self._set(t, ModelPhase.LOADING, "", f"loading {path.name} into ONNX Runtime ({a.accelerator.value})")
                b = a.batching
                mv = await self.server.load_version(
                    a.name, str(a.revision), path, sha256=a.sha256, accelerator=a.accelerator.value,
                    gpu_fallback_to_cpu=a.gpu_fallback_to_cpu,
                    batching=BatchingConfig(b.enabled, b.max_batch_size, b.max_queue_delay_ms), namespace=a.namespace,
                )  # fmt: skip
            if not self._current(t):
                await mv.close()
                return
            mv.revision_meta = {"key": repr(load_key(a)), "namespace": a.namespace}
            if manifest.drift_reference is not None:
                mv.drift_reference = Reference.from_manifest(manifest.drift_reference)
            old = self.repository.swap(mv)
            for previous in old:
                if previous.version != mv.version:
                    self.metrics.forget_state(previous.namespace, a.name, previous.version)
            t.failures = 0
            split = mv if isinstance(mv, SplitModelVersion) else None
            if split is not None:
                self._in_background(self._first_rtt(split), f"rtt-{a.name}-{a.revision}")
            overlapping = mv.max_concurrent_runs if type(mv) is ModelVersion and mv.model.narrow_session is not None else 0
            message = decide.ready_message(a, mv.provider, split.cut_names[0] if split is not None else None,
                                           split is not None and split.full is not None, overlapping)  # fmt: skip
            self._set(t, ModelPhase.READY, "Loaded", message)
            await asyncio.to_thread(self.cache.evict, self.pinned())
        except Exception as exc:
            self._fail_step(t, exc, "model")

    async def _load_head(self, t: Tracked, head_path: Path, manifest: ArtifactManifest) -> SplitModelVersion:
        """Fetch the whole model too (fallback local), then load both as one split version."""
        a = t.assignment
        split = a.split
        assert split is not None  # check_split
        full_path: Path | None = None
        policy = FallbackPolicy(split.fallback.value)
        if split.full_artifact_uri and split.full_sha256 and policy is FallbackPolicy.LOCAL:  # with fail it never runs
            full = a.model_copy(update={"artifact_uri": split.full_artifact_uri, "sha256": split.full_sha256})
            full_path, _ = await self._obtain(t, full)
        try:
            outputs = declared_outputs(manifest.outputs)
        except ValueError as exc:
            raise StepFailed("ManifestInvalid", f"{a.manifest_uri}: {exc}; re-run the conversion") from exc
        try:
            remote = RemoteTail(split.cloud_url, a.name, str(a.revision), split.cut, wire=WireFormat.parse(split.wire),
                                tls=self.server.split_tls)  # fmt: skip
        except ValueError as exc:
            raise StepFailed("SplitInvalid", f"spec.models[{a.name}@{a.revision}]: {exc}") from exc
        what = f"{head_path.name} and the whole model" if full_path is not None else head_path.name
        self._set(t, ModelPhase.LOADING, "", f"loading {what} into ONNX Runtime ({a.accelerator.value})")
        try:
            return await self.server.load_head(
                a.name, str(a.revision), head_path, a.sha256, remote, policy,
                full_source=full_path, full_sha256=split.full_sha256 or "", outputs=outputs,
                accelerator=a.accelerator.value, gpu_fallback_to_cpu=a.gpu_fallback_to_cpu, namespace=a.namespace,
            )  # fmt: skip
        except BaseException:
            await remote.close()
            raise

    async def _first_rtt(self, mv: SplitModelVersion) -> None:
        """Measure a new head's cloud RTT right away (then on the heartbeat cadence) and report it."""
        rtt = await mv.measure_rtt()
        log.info("Cloud RTT of %s:%s to %s: %s", mv.name, mv.version, mv.remote.health_url,
                 f"{rtt:.2f} ms" if rtt is not None else "not measurable (the tail server does not answer)")  # fmt: skip
        self.on_change()

    async def _realize_tail(self, t: Tracked) -> None:
        """Fetch, verify and load a tail, then register it with the tail server."""
        a = t.assignment
        key = (a.namespace, a.name, a.revision)
        step = decide.first_step(self.observe(), a)
        if isinstance(step, decide.Satisfied):
            self._set(t, ModelPhase.READY, "Loaded", step.message)
            return
        try:
            if isinstance(step, decide.Refuse):
                raise step.error
            assert a.split is not None  # check_split
            path, _ = await self._obtain(t, a)
            self._set(t, ModelPhase.LOADING, "", f"loading {path.name} into ONNX Runtime ({a.accelerator.value})")
            part = await self.server.load_tail(a.name, str(a.revision), a.namespace, path, a.sha256, a.split.cut,
                                               accelerator=a.accelerator.value, gpu_fallback_to_cpu=a.gpu_fallback_to_cpu)
            if not self._current(t):
                part.unload()
                return
            try:
                decide.check_tail_clash(self.observe(), a)  # another namespace may have registered it while this one loaded
            except StepFailed:
                part.unload()
                raise
            self.server.tails.add(a.name, str(a.revision), pipeline.served(part, a, self.server.split_tls, self),
                                  cut=a.split.cut)  # pipelines: a middle stage forwards (edge_agent/pipeline.py)
            part.next_hop = (a.split.next_url, a.split.next_cut)
            previous = self.tails.get(key)
            self.tails[key] = part
            if previous is not None and previous is not part:
                previous.unload()
            t.failures = 0
            self._set(t, ModelPhase.READY, "Loaded",
                      f"serving the tail of revision {a.revision} (cut {a.split.cut!r}) on {part.provider} at "
                      f"{self.server.split_url}")  # fmt: skip
            await asyncio.to_thread(self.cache.evict, self.pinned())
        except Exception as exc:
            self._fail_step(t, exc, "the tail of")

    async def _obtain(self, t: Tracked, a: ModelAssignment) -> tuple[Path, ArtifactManifest]:
        """A verified local copy of ``a``'s artifact (from the cache or downloaded) and its signed manifest.

        One fetch at a time per sha256: entries sharing bytes (two names, two revisions) wait for the first.
        """
        async with self._fetching.setdefault(a.sha256, asyncio.Lock()):
            return await self._obtain_unlocked(t, a)

    async def _obtain_unlocked(self, t: Tracked, a: ModelAssignment) -> tuple[Path, ArtifactManifest]:
        sha = a.sha256
        if self.cache.has(sha):
            file = artifact_file_name(a.artifact_uri)
            self._set(t, ModelPhase.VERIFYING, "", f"verifying the cached {file} (signature and sha256)")
            cached: ArtifactManifest | None = None
            for path in self.cache.manifests_for(sha):  # the same bytes may be vouched for by several revisions
                try:
                    cached = check_manifest(path.read_bytes(), a, self.public_key)
                    break
                except (StepFailed, OSError):
                    continue
            try:
                actual = await asyncio.to_thread(sha256_of, self.cache.blob(sha))
            except OSError as exc:
                actual = f"unreadable ({exc.strerror})"
            use = decide.cache_use(actual == sha, cached is not None)
            if use is decide.CacheUse.USE and cached is not None:
                self.cache.touch(sha)
                return self.cache.blob(sha), cached
            if use is decide.CacheUse.VERIFY_MANIFEST:
                # Good bytes, but no cached manifest vouches for this assignment: verify its own, keep the file.
                session = await self._session()
                self._set(t, ModelPhase.VERIFYING, "", f"the cached {file} is intact; verifying the manifest {a.manifest_uri}")
                data = await self._retrying(t, lambda: fetch_bytes(session, a.manifest_uri, self.store_headers))
                checked = check_manifest(data, a, self.public_key)
                self.cache.store_manifest(sha, data)
                self.cache.touch(sha)
                return self.cache.blob(sha), checked
            log.warning("Cached artifact %s is corrupt (sha256 %s); fetching it again", sha[:12], actual[:12])
            self.cache.discard(sha)
        session = await self._session()
        self._set(t, ModelPhase.DOWNLOADING, "", f"fetching the manifest {a.manifest_uri}")
        manifest = await self._retrying(t, lambda: fetch_bytes(session, a.manifest_uri, self.store_headers))
        checked = check_manifest(manifest, a, self.public_key)  # before the big download: unsigned artifacts never are
        part = self.cache.part(sha)
        max_bytes = self._download_bound(checked, a)

        def progress(done: int, total: int | None) -> None:
            of = f" of {total / 1e6:.1f}" if total else ""
            self._set(t, ModelPhase.DOWNLOADING, "", f"downloading {a.artifact_uri}: {done / 1e6:.1f}{of} MB")

        self._set(t, ModelPhase.DOWNLOADING, "", f"manifest signature verified; downloading {a.artifact_uri}")
        await self._retrying(
            t,
            lambda: download(
                session, a.artifact_uri, part, self.store_headers, self.settings.download_timeout_s,
                on_bytes=self.metrics.download_bytes.inc, progress=progress, max_bytes=max_bytes,
            ),  # fmt: skip
        )
        self._set(t, ModelPhase.VERIFYING, "", f"verifying the sha256 of the downloaded {artifact_file_name(a.artifact_uri)}")
        actual = await asyncio.to_thread(sha256_of, part)
        if actual != sha:
            part.unlink(missing_ok=True)
            raise StepFailed(
                "DigestMismatch",
                f"{a.artifact_uri} has sha256 {actual}, the signed manifest says {sha}: the file is corrupt or was replaced",
            )
        self.cache.store_manifest(sha, manifest)
        return self.cache.commit(sha), checked

    def _download_bound(self, manifest: ArtifactManifest, a: ModelAssignment) -> int:
        """Bytes a download may write (:func:`decide.download_bound`), with room made in the cache."""
        file = artifact_file_name(a.artifact_uri)
        bound = decide.download_bound(file, manifest.sizes.get(file), self.cache.max_bytes)
        part = self.cache.part(a.sha256)
        have = part.stat().st_size if part.exists() else 0
        self.cache.evict(self.pinned(), reserve=max(0, bound - have))
        return bound

    async def _retrying(self, t: Tracked, fetch: Callable[[], Awaitable[T]]) -> T:
        """``fetch`` with ``download_attempts`` attempts on the download backoff (edgemodel.retry); StepFailed after."""
        attempts = self.settings.download_attempts
        made = 0

        async def attempt() -> T:
            nonlocal made
            made += 1
            try:
                return await fetch()
            except FetchError as exc:
                if exc.retryable and made < attempts:
                    self._set(t, ModelPhase.DOWNLOADING, "", f"attempt {made}/{attempts} failed ({exc.message}); retrying")
                raise

        try:
            return await retry_async(
                attempt, what=f"the download for {t.assignment.name} ({t.assignment.artifact_uri})", attempts=attempts,
                backoff=self.download_backoff, retry_on=lambda exc: isinstance(exc, FetchError) and exc.retryable,
            )  # fmt: skip
        except FetchError as last:
            raise StepFailed(last.reason, f"{last.message} (after {made} attempt{'s' if made > 1 else ''})",
                             retryable=last.retryable) from last  # fmt: skip

    async def close(self) -> None:
        for t in self.tracked.values():
            if t.task is not None:
                t.task.cancel()
        for task in self._background:
            task.cancel()
        tasks = [t.task for t in self.tracked.values() if t.task is not None] + list(self._background)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await pipeline.close_all(self)
        if self._http is not None:
            await self._http.close()
