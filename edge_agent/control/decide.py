"""Decide: pure functions from an observed :class:`~edge_agent.control.observe.Snapshot` to what to do.

Nothing here does I/O or sleeps; the time is the snapshot's (``agent_conditions`` stamps transitions with
``now``, the current time when not given) and the jitter of the backoff comes in as ``rng``. ``reconciler``
(act) executes the results through the artifact cache, the fetcher and the model repository;
tests/agent/test_decide*.py table-test them.

* :func:`plan_assignment`: a new ``spec.models`` -> unload / remove tail / forget / start actions;
* :func:`first_step`: an assignment about to be realised -> already satisfied, refused, or fetch;
* :func:`check_manifest` / :func:`check_split`: trust and usability (signature over the stored bytes,
  then what the signed manifest vouches for);
* :func:`cache_use`, :func:`download_bound`: use the cached copy, re-verify its manifest or refetch;
* :func:`failure`: a failed step -> reason, message and the retry time (``edgemodel.retry.Backoff``);
* :func:`retries_due`, :func:`pinned`, :func:`ready_message`: the resync pass, the cache's keep set,
  what status says of a loaded model;
* :func:`agent_conditions`, :func:`spec_change`: the EdgeAgent's own conditions (Ready, LeaseRenewed) and
  which watched specs to apply.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any
from urllib.parse import unquote, urlparse

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from edge_agent.control.observe import Snapshot, TrackKey, track_key
from edge_agent.errors import LoadError
from edgemodel.api import (
    ArtifactManifest,
    Condition,
    ConditionStatus,
    ModelAssignment,
    ModelPhase,
    ModelRole,
    ModelState,
    set_condition,
)
from edgemodel.errors import describe_validation_error
from edgemodel.retry import Backoff
from edgemodel.signing import SignatureError, verify

#: Reasons counted in edgemodel_artifact_download_failures_total.
ARTIFACT_REASONS = frozenset(
    {"DownloadFailed", "DigestMismatch", "SignatureInvalid", "ManifestInvalid", "ManifestMismatch"}
)
MAX_RETRY_DELAY_S = 300.0
"""Longest wait before a failed model is tried again."""


class StepFailed(Exception):
    """A step failed; ``reason`` goes to status, ``retryable`` says whether to try again later."""

    def __init__(self, reason: str, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retryable = retryable


def model_backoff(retry_backoff_s: float) -> Backoff:
    """When a failed model is tried again: 2x, 4x, 8x... ``retry_backoff_s`` up to 5 minutes, +-10%."""
    return Backoff(first=2 * retry_backoff_s, cap=max(MAX_RETRY_DELAY_S, 2 * retry_backoff_s), jitter=0.1)


def download_backoff(retry_backoff_s: float) -> Backoff:
    """Between attempts of one fetch: 1x, 2x, 4x... ``retry_backoff_s`` up to a minute, +-10%."""
    return Backoff(first=retry_backoff_s, cap=max(60.0, retry_backoff_s), jitter=0.1)


def load_key(a: ModelAssignment) -> tuple[Any, ...]:
    """What must match for a loaded version to satisfy an assignment."""
    b = a.batching
    split = a.split.model_dump_json() if a.split is not None else None
    return (a.revision, a.sha256, a.accelerator.value, a.gpu_fallback_to_cpu, b.enabled, b.max_batch_size, b.max_queue_delay_ms,
            a.role.value, split)  # fmt: skip


def artifact_file_name(uri: str) -> str:
    """The file name at the end of an artifact URI (what the signed manifest lists)."""
    return unquote(urlparse(uri).path).rstrip("/").rsplit("/", 1)[-1]


# -- a new desired set ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Ignore:
    """A second entry for a key already in the desired set (logged, not applied)."""

    assignment: ModelAssignment
    what: str


@dataclass(frozen=True)
class Unload:
    """Take a full or head model that is no longer assigned out of the repository (and its metrics)."""

    assignment: ModelAssignment


@dataclass(frozen=True)
class RemoveTail:
    """Take an unassigned tail revision out of the tail server."""

    assignment: ModelAssignment


@dataclass(frozen=True)
class Forget:
    """Drop the state metric of a revision that is superseded before it served."""

    namespace: str
    name: str
    revision: int


@dataclass(frozen=True)
class Start:
    """Track ``assignment`` afresh (cancelling work for what it replaces) and realise it."""

    assignment: ModelAssignment


Action = Ignore | Unload | RemoveTail | Forget | Start


@dataclass(frozen=True)
class AssignmentPlan:
    desired: dict[TrackKey, ModelAssignment]
    """The deduplicated desired set, in order (what is saved for offline restarts)."""
    actions: list[Action]
    """In order: ignored duplicates, removals, then per desired entry what changes."""


def plan_assignment(snap: Snapshot, assignments: Iterable[ModelAssignment]) -> AssignmentPlan:
    """What adopting ``assignments`` takes: entries equal to the tracked ones change nothing."""
    actions: list[Action] = []
    desired: dict[TrackKey, ModelAssignment] = {}
    for a in assignments:
        key = track_key(a)
        if key in desired:
            actions.append(
                Ignore(a, f"tail revision {a.revision}" if a.role == ModelRole.TAIL else "assignment")
            )
            continue
        desired[key] = a
    for key, facts in snap.models.items():
        if key not in desired:
            tail = facts.assignment.role == ModelRole.TAIL
            actions.append(RemoveTail(facts.assignment) if tail else Unload(facts.assignment))
    for key, a in desired.items():
        previous = snap.models.get(key)
        if previous is not None:
            if previous.assignment == a:
                continue
            old = previous.assignment
            if old.role != ModelRole.TAIL and old.revision != a.revision:
                serving = snap.serving.get(a.name)
                if serving is None or serving.version != str(old.revision):
                    actions.append(Forget(old.namespace, a.name, old.revision))
        actions.append(Start(a))
    return AssignmentPlan(desired, actions)


# -- realising one assignment --------------------------------------------------------------------
@dataclass(frozen=True)
class Satisfied:
    """What is loaded already serves the assignment: report Ready with ``message``."""

    message: str


@dataclass(frozen=True)
class Refuse:
    """The assignment cannot be served here as given (no download is attempted)."""

    error: StepFailed


@dataclass(frozen=True)
class Fetch:
    """Obtain a verified copy (cache or store), then load and swap."""


FirstStep = Satisfied | Refuse | Fetch


def first_step(snap: Snapshot, a: ModelAssignment) -> FirstStep:
    """Where realising ``a`` starts: nothing to do, a refusal, or the fetch."""
    if a.role == ModelRole.TAIL:
        loaded = snap.tails.get((a.namespace, a.name, a.revision))
        if (
            loaded is not None
            and a.split is not None
            and (loaded.sha256, loaded.cut, loaded.next_url, loaded.next_cut)
            == (a.sha256, a.split.cut, a.split.next_url, a.split.next_cut)
        ):  # a pipeline stage whose next stage moved (the operator re-planned) is registered again
            return Satisfied(f"serving the tail of revision {a.revision} on the split port")
    else:
        serving = snap.serving.get(a.name)
        if serving is not None and serving.load_key == repr(load_key(a)):
            return Satisfied(f"serving revision {a.revision} on {serving.provider}")
    try:
        check_split(a, snap.split_port)
        if a.role == ModelRole.TAIL:
            check_tail_clash(snap, a)
    except StepFailed as exc:
        return Refuse(exc)
    return Fetch()


def check_split(a: ModelAssignment, split_port: int | None) -> None:
    """Refuse head and tail entries this agent cannot serve as given, before anything is downloaded."""
    where = f"spec.models[{a.name}@{a.revision}]"
    if a.role == ModelRole.FULL:
        return
    if a.split is None:
        raise StepFailed(
            "SplitInvalid",
            f"{where}: role {a.role.value} needs split (cut, wire...); the operator must set it",
        )
    if a.role == ModelRole.TAIL:
        if split_port is None:
            raise StepFailed(
                "SplitServerDisabled",
                "this agent runs no tail server: start it with --split-port PORT (EDGEMODEL_AGENT_SPLIT_PORT) and, "
                "for mTLS, --split-tls-ca/--split-tls-cert/--split-tls-key to serve split tails",
            )
        return
    if not a.split.cloud_url:
        raise StepFailed(
            "SplitInvalid", f"{where}.split.cloudUrl is empty: no cloud agent serves the tail yet"
        )
    if (a.split.full_artifact_uri is None) != (a.split.full_sha256 is None):
        raise StepFailed(
            "SplitInvalid", f"{where}.split: fullArtifactUri and fullSha256 go together; set both or neither"
        )


def check_tail_clash(snap: Snapshot, a: ModelAssignment) -> None:
    """Tails are addressed by model name and revision: refuse one another namespace already registered."""
    clash = next((k for k in snap.tails if k[1:] == (a.name, a.revision) and k[0] != a.namespace), None)
    if clash is not None:
        raise StepFailed(
            "TailConflict",
            f"this agent already serves the tail of {a.name} revision {a.revision} from namespace {clash[0]}; "
            "tails are addressed by model name and revision, so rename one of the EdgeModels",
        )


def check_manifest(data: bytes, a: ModelAssignment, public_key: Ed25519PublicKey) -> ArtifactManifest:
    """Verify the signature over the stored bytes, then that the manifest vouches for exactly this file and
    revision (and split cut). The bytes are parsed only after they verified, and never re-serialised."""
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
        raise StepFailed("ManifestInvalid", f"{a.manifest_uri} is signed but is not a valid manifest: "
                         f"{describe_validation_error(exc)[:500]}") from exc  # fmt: skip
    if (manifest.model, manifest.namespace, manifest.revision) != (a.name, a.namespace, a.revision):
        raise StepFailed(
            "ManifestMismatch",
            f"the signed manifest is for {manifest.namespace}/{manifest.model} revision {manifest.revision}, "
            f"the assignment is {a.namespace}/{a.name} revision {a.revision}",
        )
    file_name = artifact_file_name(a.artifact_uri)
    listed = manifest.files.get(file_name) or next(
        (c.sha256 for c in manifest.choices if c.file == file_name), None
    )
    if listed is None:
        raise StepFailed(
            "ManifestMismatch",
            f"the signed manifest does not list {file_name} (artifactUri {a.artifact_uri})",
        )
    if listed != a.sha256:
        raise StepFailed(
            "DigestMismatch",
            f"the signed manifest gives {file_name} sha256 {listed}, the assignment says {a.sha256}; refusing it",
        )
    cut = manifest.split.cut if manifest.split is not None else None
    if a.split is not None and cut and cut != a.split.cut:
        raise StepFailed(
            "ManifestMismatch",
            f"the signed manifest splits at {cut!r}, the assignment's split.cut is {a.split.cut!r}",
        )
    return manifest


class CacheUse(Enum):
    """What to do with a cached blob for an assignment."""

    USE = "use"
    """Intact and a cached manifest vouches for this assignment."""
    VERIFY_MANIFEST = "verify-manifest"
    """Intact, but no cached manifest vouches for this assignment: fetch and verify its own, keep the file."""
    REFETCH = "refetch"
    """Corrupt (or unreadable): discard and download again."""


def cache_use(digest_ok: bool, vouched: bool) -> CacheUse:
    """The cached copy's fate from its re-computed sha256 and whether a cached signed manifest vouches for it."""
    if not digest_ok:
        return CacheUse.REFETCH
    return CacheUse.USE if vouched else CacheUse.VERIFY_MANIFEST


def download_bound(file: str, signed_size: int | None, cache_max_bytes: int) -> int:
    """Bytes a download may write: the signed size (older manifests: the cache bound), never above the cache."""
    bound = cache_max_bytes if signed_size is None else signed_size
    if bound > cache_max_bytes:
        raise StepFailed(
            "DownloadFailed",
            f"{file} is {bound} bytes, more than the artifact cache holds ({cache_max_bytes} bytes); "
            "raise --cache-max-bytes (Helm agent.cache.maxBytes)",
        )
    return bound


def as_step_failure(exc: Exception) -> StepFailed | None:
    """A step's exception as a status reason; None for an unexpected one (logged, then Internal, retried)."""
    if isinstance(exc, StepFailed):
        return exc
    if isinstance(exc, LoadError):
        return StepFailed(exc.reason, exc.message, retryable=False)
    return None


def internal_failure(exc: Exception) -> StepFailed:
    return StepFailed("Internal", f"{type(exc).__name__}: {exc}", retryable=True)


@dataclass(frozen=True)
class Failure:
    """A failed model's status and next attempt."""

    reason: str
    message: str
    failures: int
    """Consecutive failures including this one."""
    retry_in: float | None
    """Seconds until the next attempt; None: not retried (a new assignment is needed)."""
    counts_as_artifact_failure: bool


def failure(error: StepFailed, failures_before: int, revision: int, serving_version: str | None, backoff: Backoff,
            rng: random.Random | None = None) -> Failure:  # fmt: skip
    """What status says after ``error``, and when to try again (the older serving revision keeps answering)."""
    failures = failures_before + 1
    message = error.message
    if serving_version is not None and serving_version != str(revision):
        message += f"; revision {serving_version} keeps serving"
    retry_in = None
    if error.retryable:
        retry_in = backoff.delay(failures, rng)
        message += f"; retrying in {retry_in:.0f} s"
    return Failure(error.reason, message[:1000], failures, retry_in, error.reason in ARTIFACT_REASONS)


def retries_due(snap: Snapshot) -> list[TrackKey]:
    """Failed models whose retry time has come and for which no work is running."""
    return [key for key, m in snap.models.items()
            if m.state == ModelPhase.FAILED and m.retry_at is not None and m.retry_at <= snap.now and not m.busy]  # fmt: skip


def pinned(snap: Snapshot) -> set[str]:
    """sha256s the cache must keep: assigned (a head's whole model too), registered tails, loaded versions."""
    keep = {m.assignment.sha256 for m in snap.models.values()}
    keep.update(m.assignment.split.full_sha256 for m in snap.models.values()
                if m.assignment.split is not None and m.assignment.split.full_sha256)  # fmt: skip
    keep.update(t.sha256 for t in snap.tails.values())
    keep.update(snap.loaded_sha256)
    return keep


def ready_message(
    a: ModelAssignment, provider: str, split_cut: str | None = None, local_fallback: bool = False, overlapping_runs: int = 0
) -> str:
    """Status message of a newly loaded full or head version; says when a GPU request fell back to CPU
    and when the load-time run plan lets ``overlapping_runs`` one-thread runs overlap (docs/architecture.md)."""
    note = ""
    if a.accelerator.value == "gpu" and provider == "CPUExecutionProvider":
        note = " (no GPU provider loads here; fell back to CPU per gpuFallbackToCpu)"
    if split_cut is not None:
        local = ", the whole model here for a local fallback" if local_fallback else ""
        note += f"; split at {split_cut!r}, tail at {a.split.cloud_url if a.split else ''}{local}"
    if overlapping_runs > 1:
        note += f"; up to {overlapping_runs} runs at once (a one-thread session for overlapping requests)"
    return f"serving revision {a.revision} on {provider}{note}"


# -- the EdgeAgent's own status ------------------------------------------------------------------
@dataclass(frozen=True)
class LeaseFacts:
    renewed: bool
    where: str
    error: str = ""


def agent_conditions(conditions: Sequence[Condition], models: Sequence[ModelState], lease: LeaseFacts | None,
                     heartbeat_interval_s: float, now: str | None = None) -> list[Condition]:  # fmt: skip
    """Ready (every model Ready) and LeaseRenewed, set on top of ``conditions`` (SpecValid, Applied stay)."""
    result = list(conditions)
    not_ready = [m for m in models if m.state != ModelPhase.READY]
    if not_ready:
        detail = ", ".join(f"{m.name}{f' (tail of revision {m.revision})' if m.role == ModelRole.TAIL else ''}: "
                           f"{m.state.value}{' ' + m.reason if m.reason else ''}" for m in not_ready)  # fmt: skip
        result = set_condition(
            result, "Ready", ConditionStatus.FALSE, "ModelsNotReady", detail[:1000], now=now
        )
    else:
        result = set_condition(
            result,
            "Ready",
            ConditionStatus.TRUE,
            "AllModelsReady",
            f"{len(models)} model(s) serving",
            now=now,
        )
    if lease is not None:
        if lease.renewed:
            result = set_condition(result, "LeaseRenewed", ConditionStatus.TRUE, "Renewed",
                                   f"{lease.where} renewed every {heartbeat_interval_s:g} s", now=now)  # fmt: skip
        else:
            result = set_condition(result, "LeaseRenewed", ConditionStatus.FALSE, "RenewFailed",
                                   f"{lease.where}: {lease.error}"[:1000], now=now)  # fmt: skip
    return result


def apply_retry_delay(failures: int, backoff: Backoff, rng: random.Random | None = None) -> float:
    """Wait before applying again a spec that could not be applied (e.g. the cache volume is full)."""
    return backoff.delay(failures, rng)


class SpecChange(Enum):
    """What a watched EdgeAgent spec means to the agent (:func:`spec_change`)."""

    UNCHANGED = "unchanged"
    """The spec the agent already applied (or already refused)."""
    OWN_EMPTY_SPEC = "own-empty-spec"
    """The empty spec the agent wrote when it (re)created its EdgeAgent: keep serving the saved assignment."""
    APPLY = "apply"
    """A spec the operator wrote: validate and apply it."""


def spec_change(
    fingerprint: bytes, applied: bytes | None, created: bytes | None, serving_saved: bool
) -> SpecChange:
    """Whether to apply a spec, from its fingerprint, the last applied one, the one the agent created (if it
    just created its EdgeAgent) and whether a saved assignment is being served."""
    if fingerprint == applied:
        return SpecChange.UNCHANGED
    if fingerprint == created and serving_saved:
        return SpecChange.OWN_EMPTY_SPEC
    return SpecChange.APPLY
