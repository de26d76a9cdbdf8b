"""Revisions: which spec generation becomes which revision, and the bounded history in status.

A revision is a build: a new one opens when the parts of the spec that decide what the
conversion Job produces (source, inputs, optimization, validation, and spec.split except its
fallback and cloud) change. Changes of the
selector, hardware, serving, rollout or suspend apply to the current revision without a rebuild.
All functions are pure: they take a status and return a new one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

from pydantic import ValidationError

from edgemodel.api import (
    ArtifactRef,
    EdgeModelSpec,
    EdgeModelStatus,
    RevisionOrigin,
    RevisionOutcome,
    RevisionRecord,
)
from edgemodel_operator.constants import ANNOTATION_REVISION_ORIGIN

BUILD_FIELDS = ("source", "inputs", "optimization", "validation")
SPLIT_IN_PLACE = ("fallback", "cloud")
"""spec.split fields that apply to the current revision without a rebuild (the rest are BUILD_FIELDS too)."""
STAGES_IN_PLACE = ("pool", "stageSelectors")
"""spec.split.stages fields that only move stages between nodes (the operator re-assigns, no rebuild)."""
IN_FLIGHT = (RevisionOutcome.CONVERTING, RevisionOutcome.ROLLING_OUT)


def build_hash(spec: EdgeModelSpec) -> str:
    """sha256 over the normalised build-relevant spec (defaults applied, camelCase, sorted keys)."""
    wire = spec.to_k8s()
    relevant = {key: wire.get(key) for key in BUILD_FIELDS}
    if spec.split.enabled or spec.split.pipelined:  # only what changes the parts (fallback and cloud apply in place)
        split = {k: v for k, v in wire["split"].items() if k not in SPLIT_IN_PLACE}
        if "stages" in split:  # which nodes host the stages does not change the stage files
            split["stages"] = {k: v for k, v in split["stages"].items() if k not in STAGES_IN_PLACE}
        relevant["split"] = split
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def latest(status: EdgeModelStatus) -> RevisionRecord | None:
    """The newest revision record (highest number), or None."""
    return max(status.history, key=lambda r: r.revision, default=None)


def find(status: EdgeModelStatus, revision: int | None) -> RevisionRecord | None:
    """The record of one revision, or None (never built or trimmed from the history)."""
    if revision is None:
        return None
    return next((r for r in status.history if r.revision == revision), None)


def needs_new_revision(status: EdgeModelStatus, spec_hash: str) -> bool:
    """Whether the spec asks for a build no revision in the history was opened for."""
    newest = latest(status)
    return newest is None or newest.spec_hash != spec_hash


def origin(annotations: Mapping[str, str], spec: EdgeModelSpec) -> RevisionOrigin | None:
    """The ``edgemodel.io/revision-origin`` annotation as a RevisionOrigin, if it belongs to ``spec.source``.

    A controller that sets spec.source (federated training, continual learning) sets the annotation in the
    same patch, with the ``sourceUri`` it wrote; a later hand edit of the source no longer matches it.
    Unreadable annotations are ignored (the revision simply has no origin).
    """
    raw = annotations.get(ANNOTATION_REVISION_ORIGIN)
    if not raw:
        return None
    try:
        data = json.loads(raw)
        if not isinstance(data, dict) or data.get("sourceUri") != spec.source.uri:
            return None
        return RevisionOrigin.model_validate(data)
    except (ValueError, ValidationError):
        return None


def origin_annotation(record: RevisionOrigin, source_uri: str) -> dict[str, str]:
    """The annotation a controller sets beside ``spec.source.uri = source_uri`` (inverse of :func:`origin`)."""
    wire = {**record.to_k8s(), "sourceUri": source_uri}
    return {ANNOTATION_REVISION_ORIGIN: json.dumps(wire, sort_keys=True, separators=(",", ":"))}


def open_revision(
    status: EdgeModelStatus,
    generation: int,
    spec_hash: str,
    now: str,
    history_limit: int,
    origin: RevisionOrigin | None = None,
) -> EdgeModelStatus:
    """Open the next revision (Converting); in-flight older revisions become Superseded."""
    new = status.model_copy(deep=True)
    newest = latest(new)
    number = (newest.revision if newest else 0) + 1
    for record in new.history:
        if record.outcome in IN_FLIGHT:
            record.outcome = RevisionOutcome.SUPERSEDED
            record.message = f"superseded by revision {number} (generation {generation}) before it finished"
    new.history.append(
        RevisionRecord(
            revision=number,
            generation=generation,
            outcome=RevisionOutcome.CONVERTING,
            created_at=now,
            message="conversion Job created",
            spec_hash=spec_hash,
            origin=origin,
        )
    )
    new.target_revision = number
    new.artifacts = []
    new.candidates = []
    return trim_history(new, history_limit)


def trim_history(status: EdgeModelStatus, limit: int) -> EdgeModelStatus:
    """Keep the newest ``limit`` records, and always the serving and the rollback revision."""
    keep_always = {status.revision, status.previous_revision, status.target_revision}
    ordered = sorted(status.history, key=lambda r: r.revision)
    removable = [r for r in ordered if r.revision not in keep_always]
    excess = len(ordered) - limit
    dropped = {r.revision for r in removable[: max(excess, 0)]}
    if not dropped:
        return status
    new = status.model_copy(deep=True)
    new.history = [r for r in ordered if r.revision not in dropped]
    return new


def set_outcome(
    status: EdgeModelStatus,
    revision: int,
    outcome: RevisionOutcome,
    message: str,
    artifacts: list[ArtifactRef] | None = None,
) -> EdgeModelStatus:
    """A copy of ``status`` with one revision's outcome (and optionally its artifacts) set."""
    new = status.model_copy(deep=True)
    for record in new.history:
        if record.revision == revision:
            record.outcome = outcome
            record.message = message
            if artifacts is not None:
                record.artifacts = list(artifacts)
    return new


def promote(status: EdgeModelStatus, revision: int, message: str) -> EdgeModelStatus:
    """Make ``revision`` the serving one; the one before becomes the rollback target (Superseded)."""
    new = status.model_copy(deep=True)
    old = new.revision
    if old is not None and old != revision:
        new.previous_revision = old
        for record in new.history:
            if record.revision == old:
                record.outcome = RevisionOutcome.SUPERSEDED
                record.message = f"replaced by revision {revision}"
    new.revision = revision
    return set_outcome(new, revision, RevisionOutcome.AVAILABLE, message)
