"""Failures of a federated run, each naming the spec field and the fix; the exit code tells the operator whether
a retry can help (2: bad input, never retried; 1: retryable)."""

from __future__ import annotations

from enum import StrEnum

EXIT_OK = 0
EXIT_RETRYABLE = 1
EXIT_BAD_INPUT = 2


class Reason(StrEnum):
    INVALID_SPEC = "InvalidSpec"
    DATA_MISSING = "DataMissing"
    DATA_INVALID = "DataInvalid"
    MODEL_UNREADABLE = "ModelUnreadable"
    MODEL_NOT_TRAINABLE = "ModelNotTrainable"
    SOURCE_UNAVAILABLE = "SourceUnavailable"
    TRAINING_FAILED = "TrainingFailed"
    UPLOAD_FAILED = "UploadFailed"


RETRYABLE = {Reason.SOURCE_UNAVAILABLE, Reason.UPLOAD_FAILED, Reason.TRAINING_FAILED}


class FederatedError(Exception):
    """A failure with a reason (CamelCase, for a condition) and a message that names the field and the fix."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    @property
    def exit_code(self) -> int:
        return EXIT_RETRYABLE if self.reason in RETRYABLE else EXIT_BAD_INPUT
