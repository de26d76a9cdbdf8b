"""The result a conversion Job reports to the operator.

Written by ``edgemodel convert --job`` as JSON to its termination message (at most 4 KiB; the
candidate list is dropped first when it does not fit) and, on success, as ``result.json``
beside ``manifest.json`` in the artifact store.
"""

from __future__ import annotations

from pydantic import Field

from edgemodel.api.base import StatusModel
from edgemodel.api.edgemodel import ArtifactRef, CandidateSummary


class ConversionResult(StatusModel):
    """Outcome of one conversion Job."""

    ok: bool
    """Whether a signed artifact was produced for every target hardware class."""
    revision: int = 0
    reason: str = ""
    """Converted on success; on failure a CamelCase reason (``edgemodel.convert.errors.Reason``):
    bad input (exit 2) InvalidSpec, SourceUnreadable, SourceDigestMismatch, WrongFormat, InputMismatch,
    NonFiniteOutput, MissingCalibrationData, InvalidData, ExportFailed, ExportMismatch,
    AccuracyBudgetNotMet, NoAcceptableCandidate, InvalidSplit, StudentMismatch, SigningKeyUnreadable; retryable (exit 1)
    SourceUnavailable, StoreUnavailable (exit 2 when the store refuses the token), Internal."""
    message: str = ""
    """One line a person can act on."""
    retryable: bool = False
    """Whether running the Job again may help (store outage yes, a bad model no)."""
    manifest_uri: str = ""
    artifacts: list[ArtifactRef] = Field(default_factory=list)
    candidates: list[CandidateSummary] = Field(default_factory=list)
