"""Trigger logic: each trigger fires on its own; cooldown, a running Job and too few samples hold it back."""

from __future__ import annotations

import datetime as dt

from edgemodel.api.continual import (
    AgentContinualState,
    Continual,
    ContinualRound,
    ContinualStatus,
    ContinualTriggers,
)
from edgemodel.continual.triggers import AgentReport, evaluate

NOW = dt.datetime(2026, 12, 2, 12, 0, 0, tzinfo=dt.UTC)


def state(**kw: object) -> AgentContinualState:
    base: dict[str, object] = {"name": "digits", "namespace": "ns", "revision": 2, "labelled_captured": 100}
    base.update(kw)
    return AgentContinualState.model_validate(base)


def spec(**triggers: object) -> Continual:
    t = {"drift_seconds": None, **triggers}
    return Continual(
        enabled=True, triggers=ContinualTriggers.model_validate(t), min_samples=50, cooldown_seconds=600
    )


def test_drift_must_persist_for_the_window() -> None:
    fresh = AgentReport(
        "n1", state(drift_alarm=True, drift_since="2026-12-02T11:59:00Z", drift_detector="psi")
    )
    old = AgentReport(
        "n2", state(drift_alarm=True, drift_since="2026-12-02T11:50:00Z", drift_detector="page_hinkley")
    )
    assert not evaluate(spec(drift_seconds=300), [fresh], None, NOW, revision=2).fire
    decision = evaluate(spec(drift_seconds=300), [fresh, old], None, NOW, revision=2)
    assert decision.fire
    assert "drift on n2 for 600 s (page_hinkley" in decision.reason
    # an alarm about an older revision does not count
    stale = AgentReport("n3", state(revision=1, drift_alarm=True, drift_since="2026-12-02T11:00:00Z"))
    assert not evaluate(spec(drift_seconds=300), [stale], None, NOW, revision=2).fire


def test_feedback_accuracy_needs_enough_rows() -> None:
    few = AgentReport("n1", state(feedback_accuracy=0.5, labelled_rows=10))
    enough = AgentReport("n1", state(feedback_accuracy=0.5, labelled_rows=80))
    good = AgentReport("n1", state(feedback_accuracy=0.97, labelled_rows=80))
    s = spec(min_feedback_accuracy=0.9, min_feedback_rows=50)
    assert not evaluate(s, [few], None, NOW).fire
    assert not evaluate(s, [good], None, NOW).fire
    assert "feedback accuracy 0.500 < 0.9 on n1" in evaluate(s, [enough], None, NOW).reason


def test_sample_count_and_schedule() -> None:
    reports = [
        AgentReport("n1", state(labelled_captured=300)),
        AgentReport("n2", state(labelled_captured=250)),
    ]
    decision = evaluate(spec(labelled_samples=500), reports, None, NOW)
    assert decision.fire
    assert decision.samples == 550
    last = ContinualStatus(last_round_at="2026-12-02T10:00:00Z")
    assert evaluate(spec(interval_seconds=3600), reports, last, NOW).fire
    assert not evaluate(spec(interval_seconds=86400), reports, last, NOW).fire


def test_cooldown_running_job_and_min_samples_hold_a_trigger_back() -> None:
    reports = [AgentReport("n1", state(labelled_captured=600))]
    recent = ContinualStatus(
        last_round_at="2026-12-02T11:55:00Z",
        rounds=[ContinualRound(round=1, trigger="x", started_at="2026-12-02T11:55:00Z")],
    )
    d = evaluate(spec(labelled_samples=500), reports, recent, NOW)
    assert not d.fire
    assert "cooldown lasts 300 s more" in d.reason
    running = ContinualStatus(active_job="digits-continual-1")
    assert "still running" in evaluate(spec(labelled_samples=500), reports, running, NOW).reason
    few = [AgentReport("n1", state(labelled_captured=10, feedback_accuracy=0.1, labelled_rows=100))]
    d = evaluate(spec(min_feedback_accuracy=0.9), few, None, NOW)
    assert not d.fire
    assert "only 10 labelled samples" in d.reason
    # captured and labelled, but not uploaded yet: the training Job would not find them in the store
    waiting = [AgentReport("n1", state(labelled_captured=600, labelled_waiting=580, feedback_accuracy=0.1,
                                       labelled_rows=100))]
    d = evaluate(spec(min_feedback_accuracy=0.9), waiting, None, NOW)
    assert not d.fire
    assert "only 20 labelled samples are in the store (580 more wait for the agents' next upload)" in d.reason
    assert not evaluate(Continual(enabled=False), reports, None, NOW).fire
