"""When to retrain: ``spec.continual.triggers`` against what the agents report (pure, no I/O).

The operator calls ``evaluate`` with the ``status.continual`` entries of the selected agents for one
EdgeModel; it returns a ``Decision``: fire (with the reason recorded in the round and the revision
history), wait (with why, e.g. cooldown or too few samples), or nothing to do.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from edgemodel.api.continual import AgentContinualState, Continual, ContinualStatus


@dataclass(frozen=True)
class AgentReport:
    """One agent's view of the model (its node name and its ``status.continual`` entry)."""

    node: str
    state: AgentContinualState


@dataclass(frozen=True)
class Decision:
    fire: bool
    reason: str
    """Why it fired (several triggers are joined with "; "), or why it waits; empty when nothing is due."""
    samples: int = 0
    """Labelled captured samples over the agents."""


def parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        return dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        return None


def evaluate(
    spec: Continual,
    reports: list[AgentReport],
    status: ContinualStatus | None,
    now: dt.datetime,
    revision: int | None = None,
) -> Decision:
    """Whether to start a training round now for ``revision`` (the revision serving; None: any)."""
    if not spec.enabled:
        return Decision(False, "")
    t = spec.triggers
    current = [r for r in reports if revision is None or r.state.revision in (revision, 0)]
    samples = sum(r.state.labelled_captured for r in reports)
    fired: list[str] = []
    if t.drift_seconds is not None:
        for r in current:
            since = parse_time(r.state.drift_since)
            if r.state.drift_alarm and since is not None and (now - since).total_seconds() >= t.drift_seconds:
                fired.append(
                    f"drift on {r.node} for {(now - since).total_seconds():.0f} s "
                    f"({r.state.drift_detector or 'detector'}; psi {r.state.drift_scores.get('psi', 0):.2f})"
                )
                break
    if t.min_feedback_accuracy is not None:
        for r in current:
            acc = r.state.feedback_accuracy
            if (
                acc is not None
                and r.state.labelled_rows >= t.min_feedback_rows
                and acc < t.min_feedback_accuracy
            ):
                fired.append(
                    f"feedback accuracy {acc:.3f} < {t.min_feedback_accuracy:g} on {r.node} "
                    f"({r.state.labelled_rows} labelled rows)"
                )
                break
    if t.labelled_samples is not None and samples >= t.labelled_samples:
        fired.append(f"{samples} labelled samples >= {t.labelled_samples}")
    last = parse_time(status.last_round_at) if status is not None else None
    if t.interval_seconds is not None and (
        last is None or (now - last).total_seconds() >= t.interval_seconds
    ):
        fired.append(f"schedule: every {t.interval_seconds} s")
    if not fired:
        return Decision(False, "", samples)
    if status is not None and status.active_job:
        return Decision(False, f"training Job {status.active_job} is still running", samples)
    if last is not None and (now - last).total_seconds() < spec.cooldown_seconds:
        wait = spec.cooldown_seconds - (now - last).total_seconds()
        return Decision(False, f"{'; '.join(fired)}, but the cooldown lasts {wait:.0f} s more", samples)
    uploaded = sum(max(0, r.state.labelled_captured - r.state.labelled_waiting) for r in reports)
    if uploaded < spec.min_samples:
        waiting = samples - uploaded
        more = f" ({waiting} more wait for the agents' next upload)" if waiting > 0 else ""
        return Decision(
            False,
            f"{'; '.join(fired)}, but only {uploaded} labelled samples are in the store{more} (minSamples "
            f"{spec.min_samples}); send feedback for captured requests",
            samples,
        )
    return Decision(True, "; ".join(fired), samples)
