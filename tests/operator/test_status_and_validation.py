"""Status a person can read (phase, conditions, observedGeneration) and the InvalidSpec checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edgemodel.api import ConversionResult, EdgeModelStatus, RolloutStatus, get_condition
from edgemodel.manifests import load_documents
from edgemodel_operator import revisions, validation
from edgemodel_operator import status as st
from edgemodel_operator.decide import merge_diff
from tests.operator.builders import artifacts

T0, T1, T2 = "2025-01-01T00:00:00Z", "2025-01-01T00:01:00Z", "2025-01-01T00:02:00Z"


def observed(selected: int = 3, serving: int = 3, failed: int = 0, stale: list[str] | None = None) -> st.Observed:
    return st.Observed(selected=selected, serving_current=serving, failed_current=failed, stale=stale or [])


def converted(generation: int = 1) -> EdgeModelStatus:
    status = revisions.open_revision(EdgeModelStatus(), generation, "h", T0, 10)
    status = st.conversion_running(status, 1, "digits-r1-convert", "created", generation, T0)
    result = ConversionResult(ok=True, revision=1, artifacts=artifacts(1))
    return st.conversion_succeeded(status, 1, result, generation, T0)


def test_a_rolled_out_model_is_available_with_conditions_for_its_generation() -> None:
    status = revisions.promote(converted(), 1, "done")
    status = st.summarize(status, RolloutStatus(revision=1, step=3, total_steps=3), observed(), 1, T1)
    assert (status.phase.value, status.ready, status.observed_generation) == ("Available", "3/3", 1)
    conds = {c.type: (c.status.value, c.reason, c.observed_generation) for c in status.conditions}
    assert conds == {"Converted": ("True", "Succeeded", 1), "Progressing": ("False", "RolloutComplete", 1),
                     "Available": ("True", "Serving", 1), "Degraded": ("False", "AsExpected", 1)}


def test_last_transition_time_moves_only_when_the_status_flips() -> None:
    status = revisions.promote(converted(), 1, "done")
    first = st.summarize(status, RolloutStatus(), observed(), 1, T1)
    again = st.summarize(first, RolloutStatus(), observed(serving=2), 1, T2)
    avail = get_condition(again.conditions, "Available")
    assert avail is not None
    assert avail.last_transition_time == T1
    assert "2/3" in avail.message
    stale = st.summarize(again, RolloutStatus(), observed(serving=2, stale=["edge-3"]), 1, T2)
    degraded = get_condition(stale.conditions, "Degraded")
    assert degraded is not None
    assert degraded.status.value == "True"
    assert degraded.last_transition_time == T2
    assert "edge-3" in degraded.message
    assert stale.phase.value == "Degraded"


def test_a_failed_conversion_names_the_reason_and_keeps_the_good_revision() -> None:
    status = revisions.promote(converted(), 1, "done")
    status = revisions.open_revision(status, 2, "h2", T1, 10)
    failed = ConversionResult(ok=False, revision=2, reason="AccuracyBudgetNotMet",
                              message="int8 top1 dropped 4.1 points > 0.5; raise maxAccuracyDrop or disable int8")
    status = st.conversion_failed(status, 2, failed, 2, T1)
    status = st.summarize(status, RolloutStatus(), observed(), 2, T2)
    assert status.phase.value == "Degraded"
    assert status.revision == 1
    converted_cond = get_condition(status.conditions, "Converted")
    assert converted_cond is not None
    assert converted_cond.reason == "AccuracyBudgetNotMet"
    assert "raise maxAccuracyDrop" in converted_cond.message


def test_invalid_spec_condition_then_cleared() -> None:
    status = st.invalid(EdgeModelStatus(), "spec.rollout.steps: the last step must be 100", 4, T0)
    cond = get_condition(status.conditions, "InvalidSpec")
    assert cond is not None
    assert cond.status.value == "True"
    assert cond.observed_generation == 4
    assert status.phase.value == "Failed"
    cleared = st.valid(status, 5, T1)
    cond = get_condition(cleared.conditions, "InvalidSpec")
    assert cond is not None
    assert cond.status.value == "False"
    assert cond.observed_generation == 5


def body(spec: dict[str, Any], name: str = "digits") -> dict[str, Any]:
    base: dict[str, Any] = {
        "source": {"uri": "file:///m.pt", "format": "TorchScript"},
        "inputs": [{"name": "input", "shape": [-1, 1, 8, 8]}],
    }
    base.update(spec)
    return {"metadata": {"name": name}, "spec": base}


@pytest.mark.parametrize(
    ("spec", "name", "expected"),
    [
        ({"rollout": {"steps": [50, 20, 100]}}, "digits", "spec.rollout.steps: steps must rise strictly"),
        ({"rollout": {"steps": [10, 50]}}, "digits", "spec.rollout.steps: the last step must be 100"),
        ({"rollout": {"steps": [34, 67, 150]}}, "digits", "spec.rollout.steps: every step must be a percentage"),
        ({"rollout": {"maxUnavailable": "lots"}}, "digits", "spec.rollout.maxUnavailable: must be a number of at "
         "least 1 or a percentage"),
        ({"inputs": [{"name": "x", "shape": [1]}, {"name": "x", "shape": [1]}]}, "digits",
         "spec.inputs: every input needs its own name"),
        ({"inputs": [{"name": "x", "shape": [-1, 0]}]}, "digits", "spec.inputs: a dimension of a shape is a positive"),
        ({"hardware": {"requireGpu": True}}, "digits", "spec.optimization.targets: hardware.requireGpu selects only"),
        ({"optimization": {"targets": [{"hardwareClass": "cpu"}, {"hardwareClass": "cpu"}]}}, "digits",
         "spec.optimization.targets: list each hardwareClass once"),
        ({"selector": {"matchExpressions": [{"key": "site", "operator": "In"}]}}, "digits",
         "spec.selector.matchExpressions[0].values: operator In needs at least one value"),
        ({}, "Digits_Model", "metadata.name: 'Digits_Model' must be a DNS label"),
        ({"hardware": {"requireGpu": True}, "serving": {"accelerator": "cpu"},
          "optimization": {"targets": [{"hardwareClass": "gpu"}]}}, "digits",
         "spec.hardware.requireGpu: requireGpu contradicts serving.accelerator: cpu"),
        ({"rollout": {"stepz": [100]}}, "digits", "spec.rollout.stepz: unknown field"),
    ],
)
def test_invalid_specs_name_the_field_and_the_fix(spec: dict[str, Any], name: str, expected: str) -> None:
    parsed, problems = validation.problems(body(spec, name))
    assert parsed is None
    assert expected in validation.message(problems)


def test_every_example_manifest_is_valid_for_the_operator(repo_root: Path) -> None:
    found = sorted((repo_root / "examples").glob("*.yaml"))
    assert found
    for path in found:
        for doc in load_documents(path):
            if doc.get("kind") == "EdgeModel":
                parsed, problems = validation.problems(doc)
                assert problems == [], (path, problems)
                assert parsed is not None


def test_merge_diff_removes_keys_with_null_and_only_sends_changes() -> None:
    before = {"phase": "RollingOut", "rollout": {"step": 1, "analysisStartedAt": T0}, "ready": "0/3"}
    after = {"phase": "RollingOut", "rollout": {"step": 2}, "ready": "1/3"}
    assert merge_diff(before, after) == {"rollout": {"step": 2, "analysisStartedAt": None}, "ready": "1/3"}
    assert merge_diff(after, after) == {}
