"""The API models: defaults, validation messages that name the field, conditions, selectors."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from edgemodel.api import (
    Condition,
    ConditionStatus,
    EdgeModelSpec,
    LabelSelector,
    get_condition,
    set_condition,
)
from edgemodel.errors import describe_validation_error

MINIMAL = {"source": {"uri": "file:///m.pt", "format": "TorchScript"}, "inputs": [{"name": "input", "shape": [-1, 4]}]}


def test_minimal_spec_gets_documented_defaults() -> None:
    spec = EdgeModelSpec.model_validate(MINIMAL)
    assert spec.rollout.strategy == "Canary"
    assert spec.rollout.steps == [10, 50, 100]
    assert spec.optimization.mode == "auto"
    assert spec.validation.max_accuracy_drop == 0.01
    wire = spec.to_k8s()
    assert wire["rollout"]["maxUnavailable"] == "25%"
    assert wire["inputs"][0] == {"name": "input", "dtype": "float32", "shape": [-1, 4]}


@pytest.mark.parametrize(
    ("patch", "field", "words"),
    [
        ({"rollout": {"steps": [50, 10, 100]}}, "spec.rollout.steps", "rise"),
        ({"rollout": {"steps": [10, 50]}}, "spec.rollout.steps", "100"),
        ({"rollout": {"maxUnavailable": "lots"}}, "spec.rollout.maxUnavailable", "percentage"),
        ({"source": {"uri": "ftp://x", "format": "TorchScript"}}, "source.uri", "pattern"),
        ({"source": {"uri": "file:///m", "format": "Pickle"}}, "source.format", "TorchScript"),
        ({"inputs": []}, "inputs", "at least 1"),
        ({"surprise": 1}, "surprise", "unknown field"),
        ({"optimization": {"mode": "explicit", "int8": {"method": "static"}}}, "spec.optimization.int8.calibrationDataUri", "calibrationDataUri"),
        ({"hardware": {"requireGpu": True}, "serving": {"accelerator": "cpu"}}, "spec.hardware.requireGpu", "contradicts"),
    ],
)
def test_bad_specs_name_the_field_and_the_fix(patch: dict[str, object], field: str, words: str) -> None:
    with pytest.raises(ValidationError) as info:
        EdgeModelSpec.model_validate({**MINIMAL, **patch})
    message = describe_validation_error(info.value)
    assert message.startswith(field + ":") or f"; {field}:" in message, message
    assert words in message


def test_explicit_dynamic_int8_needs_no_calibration_data() -> None:
    spec = EdgeModelSpec.model_validate({**MINIMAL, "optimization": {"mode": "explicit", "int8": {"method": "dynamic"}}})
    assert spec.optimization.int8.calibration_data_uri is None


def test_set_condition_moves_transition_time_only_on_status_flip() -> None:
    conds: list[Condition] = []
    conds = set_condition(conds, "Converted", False, "Converting", "running", 1, now="2026-01-01T00:00:00Z")
    conds = set_condition(conds, "Converted", False, "Converting", "still running", 2, now="2026-01-01T00:01:00Z")
    cond = get_condition(conds, "Converted")
    assert cond is not None
    assert cond.last_transition_time == "2026-01-01T00:00:00Z"
    assert cond.message == "still running"
    assert cond.observed_generation == 2
    conds = set_condition(conds, "Converted", True, "Converted", "done", 2, now="2026-01-01T00:02:00Z")
    conds = set_condition(conds, "Available", ConditionStatus.UNKNOWN, "Waiting", now="2026-01-01T00:02:00Z")
    assert [c.type for c in conds] == ["Converted", "Available"]
    assert conds[0].status == ConditionStatus.TRUE
    assert conds[0].last_transition_time == "2026-01-01T00:02:00Z"


def test_condition_reason_must_be_camel_case() -> None:
    with pytest.raises(ValidationError):
        set_condition([], "Converted", True, "not a reason!")


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ({}, {"a": "1"}, True),
        ({"matchLabels": {"a": "1"}}, {"a": "1", "b": "2"}, True),
        ({"matchLabels": {"a": "1"}}, {"a": "2"}, False),
        ({"matchExpressions": [{"key": "site", "operator": "In", "values": ["x", "y"]}]}, {"site": "y"}, True),
        ({"matchExpressions": [{"key": "site", "operator": "In", "values": ["x"]}]}, {}, False),
        ({"matchExpressions": [{"key": "site", "operator": "NotIn", "values": ["x"]}]}, {}, True),
        ({"matchExpressions": [{"key": "site", "operator": "NotIn", "values": ["x"]}]}, {"site": "x"}, False),
        ({"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}, {"gpu": ""}, True),
        ({"matchExpressions": [{"key": "gpu", "operator": "DoesNotExist"}]}, {"gpu": ""}, False),
    ],
)
def test_label_selector_semantics(selector: dict[str, object], labels: dict[str, str], expected: bool) -> None:
    assert LabelSelector.model_validate(selector).matches(labels) is expected
