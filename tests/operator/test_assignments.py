"""EdgeAgent.spec.models entries and the guarded JSON patches, applied with the emulator's RFC 6902 code."""

from __future__ import annotations

from typing import Any

import pytest

from edgemodel.api.edgemodel import Serving
from edgemodel_dev.errors import ApiError as EmulatorError
from edgemodel_dev.patching import json_patch
from edgemodel_operator.assignments import desired_assignment, patch_for, rebase_uri
from edgemodel_operator.scheduling import AgentView
from tests.operator.builders import agent_body, artifacts, assignment

STORE = "http://store:8080"


def desired(revision: int, agent: AgentView, serving: Serving | None = None) -> dict[str, Any]:
    want = desired_assignment("default", "digits", revision, agent, artifacts(revision), serving or Serving(), STORE,
                              STORE)
    assert want is not None
    return want


def apply(body: dict[str, Any], ops: list[dict[str, Any]] | None) -> dict[str, Any]:
    assert ops is not None
    return json_patch(body, ops)


def test_add_replace_remove_touch_only_this_models_entry() -> None:
    other = assignment(5, name="speech")
    body = agent_body("edge-1", models=[other])
    agent = AgentView.from_body(body)
    body = apply(body, patch_for(agent, "default", "digits", desired(1, agent)))
    assert [m["name"] for m in body["spec"]["models"]] == ["speech", "digits"]
    body["metadata"]["generation"] += 1
    agent = AgentView.from_body(body)
    assert patch_for(agent, "default", "digits", desired(1, agent)) is None, "nothing to write when it matches"
    body = apply(body, patch_for(agent, "default", "digits", desired(2, agent)))
    assert body["spec"]["models"][1]["revision"] == 2
    assert body["spec"]["models"][0] == other
    body["metadata"]["generation"] += 1
    agent = AgentView.from_body(body)
    body = apply(body, patch_for(agent, "default", "digits", None))
    assert body["spec"]["models"] == [other]


def test_a_stale_view_is_refused_instead_of_overwriting_another_writer() -> None:
    body = agent_body("edge-1", models=[], generation=4)
    stale = AgentView.from_body(body)
    body["spec"]["models"].append(assignment(1, name="speech"))
    body["metadata"]["generation"] = 5
    with pytest.raises(EmulatorError):
        json_patch(body, patch_for(stale, "default", "digits", desired(1, stale)))


def test_an_agent_without_spec_gets_one() -> None:
    body = agent_body("edge-1")
    del body["spec"]
    agent = AgentView.from_body(body)
    body = apply(body, patch_for(agent, "default", "digits", desired(1, agent)))
    assert body["spec"]["models"][0]["revision"] == 1


def test_serving_changes_are_written_to_existing_entries() -> None:
    body = agent_body("edge-1")
    agent = AgentView.from_body(body)
    body = apply(body, patch_for(agent, "default", "digits", desired(1, agent)))
    body["metadata"]["generation"] += 1
    agent = AgentView.from_body(body)
    batched = Serving.model_validate({"batching": {"enabled": True, "maxBatchSize": 4}})
    ops = patch_for(agent, "default", "digits", desired(1, agent, batched))
    assert ops is not None
    assert ops[-1]["op"] == "replace"
    assert apply(body, ops)["spec"]["models"][0]["batching"]["maxBatchSize"] == 4


def test_artifact_uris_are_rebased_for_agents() -> None:
    assert rebase_uri(f"{STORE}/default/digits/1/model-cpu.onnx", STORE, "https://cdn.example/store") == (
        "https://cdn.example/store/default/digits/1/model-cpu.onnx")
    assert rebase_uri("http://elsewhere/x.onnx", STORE, "https://cdn.example") == "http://elsewhere/x.onnx"
    agent = AgentView.from_body(agent_body("edge-1", hardware_class="cpu"))
    assert desired_assignment("default", "digits", 1, agent, artifacts(1, ("gpu",)), Serving(), STORE, STORE) is None
