"""Why a conversion failed: a CamelCase reason the operator puts in a status condition, one line, an exit code."""

from __future__ import annotations

from enum import StrEnum

from edgemodel.errors import UserError


class Reason(StrEnum):
    """Reasons a conversion ends without an artifact (``ConversionResult.reason``)."""

    INVALID_SPEC = "InvalidSpec"
    """The EdgeModel (or the Job's arguments) cannot be used as given."""
    SOURCE_UNREADABLE = "SourceUnreadable"
    """The model file is missing, empty, corrupt or not a model at all."""
    SOURCE_DIGEST_MISMATCH = "SourceDigestMismatch"
    """The model file's sha256 differs from spec.source.sha256."""
    WRONG_FORMAT = "WrongFormat"
    """The model file is a model, but not of the format spec.source.format names."""
    INPUT_MISMATCH = "InputMismatch"
    """spec.inputs (names, count, shapes, dtypes) does not match the model or the data files."""
    NON_FINITE_OUTPUT = "NonFiniteOutput"
    """The original model produces NaN or Inf on the validation/calibration inputs."""
    MISSING_CALIBRATION_DATA = "MissingCalibrationData"
    """Static INT8 was pinned but calibration data is not configured or cannot be found."""
    INVALID_DATA = "InvalidData"
    """A calibration/validation .npz cannot be read, or lacks labels the metric needs."""
    EXPORT_FAILED = "ExportFailed"
    """torch.onnx could not export the model (unsupported operator, data-dependent control flow)."""
    EXPORT_MISMATCH = "ExportMismatch"
    """The exported ONNX model's outputs differ from the original model beyond the tolerance."""
    ACCURACY_BUDGET_NOT_MET = "AccuracyBudgetNotMet"
    """No allowed candidate stays within spec.validation.maxAccuracyDrop."""
    NO_ACCEPTABLE_CANDIDATE = "NoAcceptableCandidate"
    """Candidates met the budget but none is allowed for a hardware class (precision, speed)."""
    INVALID_SPLIT = "InvalidSplit"
    """spec.split cannot be built: the cut is not a valid cut of the exported graph, or the split settings are
    inconsistent (the message lists valid cuts)."""
    STUDENT_MISMATCH = "StudentMismatch"
    """The distillation student's outputs are not shaped like the teacher's."""
    SIGNING_KEY_UNREADABLE = "SigningKeyUnreadable"
    """The ed25519 private key is missing or not an ed25519 PEM key."""
    SOURCE_UNAVAILABLE = "SourceUnavailable"
    """The model or data could not be fetched because a server did not answer (retryable)."""
    STORE_UNAVAILABLE = "StoreUnavailable"
    """The artifact store did not accept the upload (retryable)."""
    INTERNAL = "Internal"
    """An unexpected error; the log has the traceback (retryable)."""


RETRYABLE = {Reason.SOURCE_UNAVAILABLE, Reason.STORE_UNAVAILABLE, Reason.INTERNAL}


class ConversionError(UserError):
    """A conversion failure with its reason; exit code 2 for bad input, 1 when retrying may help."""

    def __init__(self, reason: Reason, message: str, retryable: bool | None = None) -> None:
        self.reason = reason
        self.retryable = reason in RETRYABLE if retryable is None else retryable
        super().__init__(" ".join(message.split()), exit_code=1 if self.retryable else 2)


def first_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message`` of an exception, for one-line error messages."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:limit]}" if text else type(exc).__name__
