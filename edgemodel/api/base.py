"""Shared building blocks of the edgemodel.io API: the model base class and conditions.

Only pydantic and the standard library may be imported here (an import-linter contract).
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Any

from pydantic import AliasGenerator, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "edgemodel.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"


class ApiModel(BaseModel):
    """Base of every API object: camelCase on the wire, attribute docstrings as descriptions."""

    model_config = ConfigDict(
        alias_generator=AliasGenerator(alias=to_camel),
        populate_by_name=True,
        use_attribute_docstrings=True,
        extra="forbid",
        validate_assignment=True,
    )

    def to_k8s(self) -> dict[str, Any]:
        """Serialise the way the Kubernetes API expects: camelCase keys, no unset optionals."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class StatusModel(ApiModel):
    """Base of status objects: tolerant of fields written by newer versions."""

    model_config = ConfigDict(extra="ignore")


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


def now_rfc3339() -> str:
    """The current UTC time in the RFC 3339 form Kubernetes uses (second precision)."""
    return dt.datetime.now(dt.UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


class Condition(StatusModel):
    """One observation of the object's state, in the metav1.Condition shape."""

    type: str = Field(pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$", max_length=316)
    """Type of condition in CamelCase, e.g. Converted, Progressing, Available, Degraded."""
    status: ConditionStatus
    """Status of the condition: True, False or Unknown."""
    reason: str = Field(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$", max_length=1024)
    """Programmatic identifier of the reason for the last transition, in CamelCase."""
    message: str = Field(default="", max_length=32768)
    """Human-readable details about the transition; says what to do when something failed."""
    last_transition_time: str
    """When the condition last changed status (RFC 3339)."""
    observed_generation: int | None = Field(default=None, ge=0)
    """The .metadata.generation the condition was set for."""


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: ConditionStatus | bool,
    reason: str,
    message: str = "",
    observed_generation: int | None = None,
    now: str | None = None,
) -> list[Condition]:
    """Return a new condition list with ``type_`` set; ``lastTransitionTime`` moves only on a status flip."""
    if isinstance(status, bool):
        status = ConditionStatus.TRUE if status else ConditionStatus.FALSE
    timestamp = now or now_rfc3339()
    previous = get_condition(conditions, type_)
    updated = Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=previous.last_transition_time if previous and previous.status == status else timestamp,
        observed_generation=observed_generation,
    )
    if previous is None:
        return [*conditions, updated]
    return [updated if cond.type == type_ else cond for cond in conditions]


def get_condition(conditions: list[Condition], type_: str) -> Condition | None:
    """The condition of the given type, or None."""
    return next((c for c in conditions if c.type == type_), None)


class ObjectMeta(StatusModel):
    """The subset of metav1.ObjectMeta the tools read from manifests."""

    name: str | None = None
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    generation: int | None = None
    uid: str | None = None
    resource_version: str | None = None


class LabelSelectorRequirement(ApiModel):
    """A label selector requirement: a key, an operator and values."""

    key: str = Field(min_length=1)
    """The label key the selector applies to."""
    operator: str = Field(pattern=r"^(In|NotIn|Exists|DoesNotExist)$")
    """One of In, NotIn, Exists, DoesNotExist."""
    values: list[str] = Field(default_factory=list)
    """Values for In/NotIn; must be empty for Exists/DoesNotExist."""


class LabelSelector(ApiModel):
    """A metav1.LabelSelector: matchLabels AND matchExpressions; empty selects everything."""

    match_labels: dict[str, str] = Field(default_factory=dict)
    """Labels a node's EdgeAgent must carry, e.g. {"edgemodel.io/site": "store-12"}."""
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list)
    """Set-based requirements, all of which must hold."""

    def matches(self, labels: dict[str, str]) -> bool:
        """Whether a label set satisfies this selector."""
        for key, value in self.match_labels.items():
            if labels.get(key) != value:
                return False
        for req in self.match_expressions:
            present = req.key in labels
            if req.operator == "In" and (not present or labels[req.key] not in req.values):
                return False
            if req.operator == "NotIn" and present and labels[req.key] in req.values:
                return False
            if req.operator == "Exists" and not present:
                return False
            if req.operator == "DoesNotExist" and present:
                return False
        return True
