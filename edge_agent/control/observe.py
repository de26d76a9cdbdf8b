"""Observe: what the agent has, as one immutable snapshot the decisions (``decide``) are made from.

The snapshot holds the facts only: each assigned model's local state (phase, failures, retry time,
whether work is running for it), what the repository serves per model name, which tails the tail
server holds, which artifact bytes (sha256) loaded versions use, and the node facts that decide
whether an entry can be served here (the split port). Nothing in it is a live object, so the pure
functions of ``decide`` can be unit-tested with hand-built snapshots.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from edgemodel.api import ModelAssignment, ModelPhase, ModelRole

TrackKey = str | tuple[str, str, int]
"""A full or head entry is tracked by model name (one per name); a tail by (namespace, name, revision)."""

TailKey = tuple[str, str, int]
"""(namespace, name, revision) of a tail in the tail server's registry."""


def track_key(a: ModelAssignment) -> TrackKey:
    """How an assignment is tracked: tails per (namespace, name, revision), the rest per model name."""
    return (a.namespace, a.name, a.revision) if a.role == ModelRole.TAIL else a.name


@dataclass(frozen=True)
class ModelFacts:
    """One tracked assignment as the agent last left it."""

    assignment: ModelAssignment
    state: ModelPhase = ModelPhase.PENDING
    failures: int = 0
    """Consecutive failed attempts to realise it (0 after it became Ready)."""
    retry_at: float | None = None
    """Monotonic time of the next attempt after a retryable failure; None: none scheduled."""
    busy: bool = False
    """Work (fetch, verify, load) is running for it."""


@dataclass(frozen=True)
class ServingFacts:
    """The version the repository serves for one model name."""

    version: str
    load_key: str
    """``repr(load_key(assignment))`` of the assignment it was loaded for ('' when unknown)."""
    provider: str = "CPUExecutionProvider"


@dataclass(frozen=True)
class TailFacts:
    """A tail registered in the tail server (a pipeline's middle stage: with the next stage it forwards to)."""

    sha256: str
    cut: str
    next_url: str | None = None
    next_cut: str | None = None


def _frozen(mapping: Mapping[object, object] | None) -> Mapping[object, object]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class Snapshot:
    """Everything a decision of the agent's reconciler needs, read at one moment."""

    now: float
    """Monotonic clock when observed."""
    models: Mapping[TrackKey, ModelFacts] = field(default_factory=dict)
    serving: Mapping[str, ServingFacts] = field(default_factory=dict)
    """The default (serving) version per model name."""
    tails: Mapping[TailKey, TailFacts] = field(default_factory=dict)
    loaded_sha256: frozenset[str] = frozenset()
    """sha256 of every loaded version's files (a split head's whole model too): the cache must keep them."""
    split_port: int | None = None
    """The tail server's port; None: this agent serves no tails."""

    def __post_init__(self) -> None:
        for name in ("models", "serving", "tails"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))


def snapshot(
    now: float,
    models: Iterable[ModelFacts],
    serving: Mapping[str, ServingFacts],
    tails: Mapping[TailKey, TailFacts],
    loaded_sha256: Iterable[str],
    split_port: int | None,
) -> Snapshot:
    """Build a snapshot (the reconciler's ``observe`` gathers the arguments from its live objects)."""
    return Snapshot(now=now, models={track_key(m.assignment): m for m in models}, serving=serving, tails=tails,
                    loaded_sha256=frozenset(s for s in loaded_sha256 if s), split_port=split_port)  # fmt: skip
