"""The edgemodel.io/v1alpha1 API: pydantic models that are the single source of truth.

The CRDs in ``crds/`` are generated from these models (``edgemodel crds --write``).
This package imports only pydantic and the standard library (an import-linter contract).
"""

from edgemodel.api.artifact import ArtifactChoice, ArtifactManifest, CandidateResult, LatencyStats
from edgemodel.api.base import (
    API_VERSION,
    GROUP,
    VERSION,
    ApiModel,
    Condition,
    ConditionStatus,
    LabelSelector,
    ObjectMeta,
    get_condition,
    now_rfc3339,
    set_condition,
)
from edgemodel.api.conversion import ConversionResult
from edgemodel.api.edgeagent import (
    Capabilities,
    EdgeAgent,
    EdgeAgentSpec,
    EdgeAgentStatus,
    ModelAssignment,
    ModelPhase,
    ModelState,
)
from edgemodel.api.edgemodel import (
    Accelerator,
    ArtifactRef,
    CandidateSummary,
    EdgeModel,
    EdgeModelPhase,
    EdgeModelSpec,
    EdgeModelStatus,
    HardwareClass,
    Precision,
    RevisionOutcome,
    RevisionRecord,
    RolloutStatus,
    RolloutStrategy,
    SourceFormat,
)
from edgemodel.api.tensors import DType, TensorSpec

__all__ = [
    "API_VERSION",
    "GROUP",
    "VERSION",
    "Accelerator",
    "ApiModel",
    "ArtifactChoice",
    "ArtifactManifest",
    "ArtifactRef",
    "CandidateResult",
    "CandidateSummary",
    "Capabilities",
    "Condition",
    "ConversionResult",
    "ConditionStatus",
    "DType",
    "EdgeAgent",
    "EdgeAgentSpec",
    "EdgeAgentStatus",
    "EdgeModel",
    "EdgeModelPhase",
    "EdgeModelSpec",
    "EdgeModelStatus",
    "HardwareClass",
    "LabelSelector",
    "LatencyStats",
    "ModelAssignment",
    "ModelPhase",
    "ModelState",
    "ObjectMeta",
    "Precision",
    "RevisionOutcome",
    "RevisionRecord",
    "RolloutStatus",
    "RolloutStrategy",
    "SourceFormat",
    "TensorSpec",
    "get_condition",
    "now_rfc3339",
    "set_condition",
]
