"""EdgeModel status a person can read: phase, ready/total, conditions with observedGeneration.

Conditions (metav1.Condition shape, via ``edgemodel.api.set_condition``): ``InvalidSpec``,
``Converted``, ``Progressing``, ``Available``, ``Degraded``. Everything here is pure: a status
and the facts go in, a new status comes out; the reconciler writes it once if it changed.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgemodel.api import (
    ConditionStatus,
    ConversionResult,
    EdgeModelPhase,
    EdgeModelStatus,
    RevisionOutcome,
    RolloutStatus,
    get_condition,
    set_condition,
)
from edgemodel_operator import revisions
from edgemodel_operator.split_check import CONDITION, CutCheck, restates

INVALID_SPEC = "InvalidSpec"
CONVERTED = "Converted"
PROGRESSING = "Progressing"
AVAILABLE = "Available"
DEGRADED = "Degraded"
SPLIT_CUT = CONDITION


def _set(status: EdgeModelStatus, type_: str, value: ConditionStatus | bool, reason: str, message: str,
         generation: int, now: str) -> EdgeModelStatus:
    new = status.model_copy(deep=True)
    new.conditions = set_condition(new.conditions, type_, value, reason, message[:32000], generation, now)
    return new


def invalid(status: EdgeModelStatus, message: str, generation: int, now: str) -> EdgeModelStatus:
    """The spec cannot be acted on: say which field and how to fix it; nothing is rolled out (nodes keep
    serving the good revision, if any: then the phase is Degraded, else Failed)."""
    new = _set(status, INVALID_SPEC, True, "InvalidSpec", message, generation, now)
    new = _set(new, PROGRESSING, False, "InvalidSpec", "nothing is converted or rolled out until the spec is fixed",
               generation, now)
    new.phase = EdgeModelPhase.DEGRADED if new.revision is not None else EdgeModelPhase.FAILED
    new.observed_generation = generation
    return new


def valid(status: EdgeModelStatus, generation: int, now: str) -> EdgeModelStatus:
    """Clear InvalidSpec (it is kept, False, once it was ever set)."""
    if not any(c.type == INVALID_SPEC for c in status.conditions):
        return status
    return _set(status, INVALID_SPEC, False, "Valid", "the spec is valid", generation, now)


def suspended(status: EdgeModelStatus, generation: int, now: str) -> EdgeModelStatus:
    """spec.suspend: nothing moves; nodes keep what they serve."""
    new = _set(status, PROGRESSING, False, "Suspended",
               "spec.suspend is true: conversion and rollout are paused; nodes keep what they serve", generation, now)
    new.phase = EdgeModelPhase.SUSPENDED
    new.observed_generation = generation
    return new


def conversion_running(status: EdgeModelStatus, revision: int, job: str, detail: str, generation: int,
                       now: str) -> EdgeModelStatus:
    return _set(status, CONVERTED, False, "Converting", f"conversion Job {job} of revision {revision} is running "
                f"({detail})", generation, now)


def conversion_succeeded(status: EdgeModelStatus, revision: int, result: ConversionResult, generation: int,
                         now: str) -> EdgeModelStatus:
    """Record the artifacts and candidates; the revision moves on to the rollout."""
    chosen = ", ".join(f"{a.hardware_class.value}: {a.candidate or a.precision.value}" for a in result.artifacts)
    new = revisions.set_outcome(status, revision, RevisionOutcome.ROLLING_OUT, f"converted ({chosen})",
                                artifacts=result.artifacts)
    new.artifacts = list(result.artifacts)
    new.candidates = list(result.candidates)
    return _set(new, CONVERTED, True, "Succeeded", f"revision {revision} converted and signed ({chosen})",
                generation, now)


def conversion_failed(status: EdgeModelStatus, revision: int, result: ConversionResult, generation: int,
                      now: str) -> EdgeModelStatus:
    """The revision failed for good; nodes keep serving the good revision, if any."""
    reason = result.reason or "ConversionFailed"
    message = f"revision {revision}: {reason}: {result.message or 'the conversion Job failed'}"
    new = revisions.set_outcome(status, revision, RevisionOutcome.FAILED, message)
    new.candidates = list(result.candidates)
    return _set(new, CONVERTED, False, reason, message, generation, now)


@dataclass(frozen=True)
class Observed:
    """Node counts of this reconcile, for the summary."""

    selected: int
    serving_current: int
    failed_current: int
    stale: list[str]


def summarize(status: EdgeModelStatus, rollout: RolloutStatus, observed: Observed, generation: int,
              now: str) -> EdgeModelStatus:
    """Phase, ready/total, Progressing/Available/Degraded from the revisions' outcomes and the nodes."""
    new = status.model_copy(deep=True)
    new.rollout = rollout
    new.observed_generation = generation
    new.ready = f"{observed.serving_current}/{observed.selected}"
    newest = revisions.latest(new)
    outcome = newest.outcome if newest else None
    current = new.revision

    if outcome == RevisionOutcome.CONVERTING:
        progressing = (True, "Converting", f"revision {newest.revision} is being converted" if newest else "")
    elif outcome == RevisionOutcome.ROLLING_OUT:
        progressing = (True, "RollingOut", rollout.message)
    elif outcome == RevisionOutcome.AVAILABLE:
        progressing = (False, "RolloutComplete", f"revision {current} is rolled out")
    elif outcome == RevisionOutcome.ROLLED_BACK:
        progressing = (False, "RolledBack", newest.message if newest else "")
    elif outcome == RevisionOutcome.FAILED:
        progressing = (False, "RevisionFailed", newest.message if newest else "")
    else:
        progressing = (False, "NoRevision", "no revision yet")
    new = _set(new, PROGRESSING, progressing[0], progressing[1], progressing[2], generation, now)

    if current is not None and observed.serving_current > 0:
        new = _set(new, AVAILABLE, True, "Serving",
                   f"{observed.serving_current}/{observed.selected} selected node(s) serve revision {current}",
                   generation, now)
    else:
        why = "no revision has been rolled out yet" if current is None else f"no node serves revision {current} yet"
        new = _set(new, AVAILABLE, False, "NotServing", f"{why} ({observed.selected} node(s) selected)",
                   generation, now)

    degraded: tuple[str, str] | None = None
    if outcome == RevisionOutcome.ROLLED_BACK and newest is not None:
        degraded = ("RolledBack", newest.message)
    elif outcome == RevisionOutcome.FAILED and newest is not None:
        degraded = ("ConversionFailed" if not newest.artifacts else "AnalysisFailed", newest.message)
    elif observed.failed_current or observed.stale:
        parts = []
        if observed.failed_current:
            parts.append(f"{observed.failed_current} node(s) failed to serve revision {current}")
        if observed.stale:
            shown = ", ".join(observed.stale[:5]) + (f" and {len(observed.stale) - 5} more" if len(observed.stale) > 5 else "")
            parts.append(f"{len(observed.stale)} node(s) with a stale heartbeat, not counted as ready: {shown}")
        degraded = ("NodesUnhealthy", "; ".join(parts))
    if degraded:
        new = _set(new, DEGRADED, True, degraded[0], degraded[1], generation, now)
    else:
        new = _set(new, DEGRADED, False, "AsExpected", "no failed check, no failed or stale node", generation, now)

    if outcome == RevisionOutcome.CONVERTING:
        new.phase = EdgeModelPhase.CONVERTING
    elif outcome == RevisionOutcome.ROLLING_OUT:
        new.phase = EdgeModelPhase.ROLLING_OUT
    elif degraded:
        new.phase = EdgeModelPhase.DEGRADED if current is not None else EdgeModelPhase.FAILED
    elif current is not None and observed.serving_current > 0:
        new.phase = EdgeModelPhase.AVAILABLE
    else:
        new.phase = EdgeModelPhase.PENDING
    return new


def processed(status: EdgeModelStatus, generation: int) -> EdgeModelStatus:
    """Every condition was (re)evaluated for ``generation``: bring its observedGeneration there.

    A condition this reconcile did not set (e.g. ``Converted`` after a selector-only change) still
    holds for the current spec, so it must not report an older generation.
    """
    if all(c.observed_generation == generation for c in status.conditions):
        return status
    new = status.model_copy(deep=True)
    for condition in new.conditions:
        condition.observed_generation = generation
    return new


def split_cut(status: EdgeModelStatus, check: CutCheck | None, generation: int, now: str) -> tuple[EdgeModelStatus, bool]:
    """Set SplitCutCurrent from ``check`` (None: remove it); True when it has just turned stale or names another cut.

    A verdict the condition already states (:func:`split_check.restates`) leaves the status as it is.
    """
    previous = get_condition(status.conditions, SPLIT_CUT)
    if check is None:
        if previous is None:
            return status, False
        new = status.model_copy(deep=True)
        new.conditions = [c for c in new.conditions if c.type != SPLIT_CUT]
        return new, False
    if restates(check, previous):
        return status, False
    return _set(status, SPLIT_CUT, check.current, check.reason, check.message, generation, now), not check.current
