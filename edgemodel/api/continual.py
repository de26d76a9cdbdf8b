"""Continual learning in the API: ``EdgeModel.spec.continual``, its status, and the agents' report.

Only pydantic and the standard library (an import-linter contract). docs/continual.md explains the loop.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from edgemodel.api.base import ApiModel, Condition, StatusModel

URI = r"^(file|https?|s3)://.+"


class ContinualMethod(StrEnum):
    FINE_TUNE_REPLAY = "fineTuneReplay"
    """Fine-tune the current model on the labelled captured samples mixed with replayed original training data."""


class ContinualTriggers(ApiModel):
    """When to retrain; any trigger that is set fires (none set: only a manual request, see docs/continual.md)."""

    drift_seconds: int | None = Field(default=300, ge=1, le=30 * 86400)
    """A drift alarm lasting this long on any selected agent triggers; null turns the trigger off."""
    min_feedback_accuracy: float | None = Field(default=None, ge=0.0, le=1.0)
    """Labelled-feedback accuracy below this on any agent (with at least minFeedbackRows rows) triggers."""
    min_feedback_rows: int = Field(default=50, ge=1, le=1_000_000)
    """Labelled rows an agent needs before its feedback accuracy counts."""
    labelled_samples: int | None = Field(default=None, ge=1, le=10_000_000)
    """This many labelled captured samples over the selected agents trigger (Sedna's sample-count trigger)."""
    interval_seconds: int | None = Field(default=None, ge=60, le=365 * 86400)
    """Retrain on a schedule: at most this long after the last round (needs labelled samples)."""


class Continual(ApiModel):
    """Retrain from what the edge sees: triggers, method and the gate a new revision must pass."""

    enabled: bool = False
    """Turn continual learning on for this EdgeModel."""
    triggers: ContinualTriggers = Field(default_factory=ContinualTriggers)
    method: ContinualMethod = ContinualMethod.FINE_TUNE_REPLAY
    """fineTuneReplay: fine-tune on new samples mixed with replay of the original data."""
    replay_data_uri: str | None = Field(default=None, pattern=URI)
    """An .npz of original training data (inputs + "labels") replayed during fine-tuning; default
    spec.optimization.training.dataUri."""
    replay_ratio: float = Field(default=1.0, ge=0.0, le=20.0)
    """Replayed original samples per new sample in each epoch."""
    epochs: int = Field(default=15, ge=1, le=1000)
    """Passes over the new samples (each with its replayed share) in one round."""
    learning_rate: float = Field(default=1e-3, gt=0, le=1.0)
    """Adam learning rate of the fine-tuning."""
    min_samples: int = Field(default=50, ge=1, le=10_000_000)
    """Labelled captured samples needed to train at all (a trigger with fewer waits for more)."""
    holdout_fraction: float = Field(default=0.3, gt=0.0, lt=1.0)
    """Share of the new samples kept out of training to measure the gain on new data."""
    min_accuracy_gain: float = Field(default=0.05, ge=0.0, le=1.0)
    """The new revision must be this much more accurate on the held-out new samples than the current one
    (0.05 = 5 percentage points); and it must not lose more than spec.validation.maxAccuracyDrop on the
    original validation set."""
    cooldown_seconds: int = Field(default=600, ge=0, le=30 * 86400)
    """Least time between two training rounds (a failed gate waits this long too)."""
    max_training_seconds: int = Field(default=600, ge=10, le=86400)
    """Wall-time bound of one training Job."""


class ContinualRound(StatusModel):
    """One retraining round: why, on what, and the gate's numbers."""

    round: int
    """Round number, from 1."""
    trigger: str
    """What fired, e.g. "drift on node-2 for 312 s (psi)", "feedback accuracy 0.71 < 0.9 on node-1"."""
    started_at: str
    """When the training Job was created (RFC 3339)."""
    samples: int = 0
    """Labelled new samples used (train + held out)."""
    outcome: str = "Training"
    """Training, Passed (a new revision opened), Rejected (gate failed) or Failed (the Job failed)."""
    new_accuracy_before: float | None = None
    """Accuracy of the current model on the held-out new samples."""
    new_accuracy_after: float | None = None
    """Accuracy of the retrained model on the held-out new samples."""
    original_accuracy_before: float | None = None
    """Accuracy of the current model on the original validation set."""
    original_accuracy_after: float | None = None
    """Accuracy of the retrained model on the original validation set."""
    message: str = ""
    """The gate's verdict with its numbers, or why the round failed."""
    model_uri: str = ""
    """The retrained model (the new spec.source.uri) when the gate passed."""
    revision: int | None = None
    """The revision the round opened."""


class ContinualStatus(StatusModel):
    """Continual-learning state of an EdgeModel, written by the operator."""

    rounds: list[ContinualRound] = Field(default_factory=list)
    """Recent rounds, newest last (bounded)."""
    last_round_at: str | None = None
    """When the last round started (RFC 3339); the cooldown and the schedule count from it."""
    active_job: str = ""
    """Name of the training Job running now."""
    conditions: list[Condition] = Field(default_factory=list)
    """ContinualLearning: True while training or after a passed round, False while waiting or after a rejected one."""


class AgentContinualState(StatusModel):
    """What an agent sees of one model: drift, labelled feedback and its capture buffer."""

    name: str
    """Served model name."""
    namespace: str = ""
    """Namespace of the EdgeModel."""
    revision: int = 0
    """The revision serving (detectors restart with each revision)."""
    samples: int = 0
    """Rows the drift detectors saw for this revision."""
    drift_scores: dict[str, float] = Field(default_factory=dict)
    """Current score per detector: psi (mean per-feature PSI) and page_hinkley (1.0 = alarm)."""
    drift_alarm: bool = False
    """A drift alarm episode is open (it ends after enough samples without alarm)."""
    drift_since: str | None = None
    """Start of the current drift alarm episode (RFC 3339)."""
    drift_detector: str = ""
    """The detector that alarmed last: psi or page_hinkley."""
    drift_alarms: int = 0
    """Alarm episodes since this revision was loaded."""
    reference_source: str = ""
    """Where the PSI reference came from: validation, first-served or none (still collecting)."""
    feedback_accuracy: float | None = None
    """Top-1 accuracy on the last labelled feedback rows of this revision."""
    labelled_rows: int = 0
    """Feedback rows counted in feedbackAccuracy so far."""
    captured: int = 0
    """Requests captured since the agent started."""
    capture_records: int = 0
    """Captured requests in the buffer on disk."""
    labelled_captured: int = 0
    """Captured samples with a label in the buffer (uploaded or not): what a training round can use."""
    capture_bytes: int = 0
    """Bytes of the buffer on disk."""
    labelled_waiting: int = 0
    """Labelled captured samples not uploaded yet."""
    capture_full: bool = False
    """Labelled samples waiting for upload fill the capture buffer: new captures are refused."""
    last_upload_uri: str = ""
    """Store URL of the last upload of labelled samples."""
