"""Feedback and capture through a running agent: hostile input gets 4xx, nothing is lost, serving goes on."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from edge_agent.capture_worker import FeedbackError
from edge_agent.feedback import MAX_ITEMS, parse_feedback
from edge_agent.settings import AgentSettings, LocalModel
from tests.agent.conftest import AgentThread
from tests.continual.models import classifier

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[AgentThread]:
    monkeypatch.setenv("EDGEMODEL_AGENT_CONTINUAL_CAPTURE_DIR", str(tmp_path / "captures"))
    monkeypatch.setenv("EDGEMODEL_AGENT_CONTINUAL_RANDOM_RATE", "0")
    monkeypatch.setenv("EDGEMODEL_AGENT_CONTINUAL_MAX_RECORDS", "10")
    (tmp_path / "token").write_text(TOKEN)
    model = LocalModel("clf", "1", classifier(tmp_path / "clf.onnx"))
    with AgentThread(AgentSettings(port=0, token_file=tmp_path / "token"), [model]) as running:
        yield running


def infer(agent: AgentThread, request_id: str, row: list[float]) -> requests.Response:
    body = {"id": request_id, "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": row}]}
    return requests.post(
        f"http://127.0.0.1:{agent.port}/v2/models/clf/infer", json=body, headers=AUTH, timeout=10
    )


def feedback(agent: AgentThread, body: Any, headers: dict[str, str] | None = None) -> requests.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(
        f"http://127.0.0.1:{agent.port}/v2/models/clf/feedback",
        data=data,
        headers=AUTH if headers is None else headers,
        timeout=10,
    )


def drain(agent: AgentThread) -> None:
    assert agent.server is not None
    agent.server.continual.drain()


def test_uncertain_requests_are_captured_and_labelled(agent: AgentThread) -> None:
    assert infer(agent, "sure", [1, 0, 0, 0]).status_code == 200  # confident: class 0
    assert infer(agent, "unsure", [0, 0, 0, 1]).status_code == 200  # uniform: captured
    drain(agent)
    r = feedback(agent, {"labels": [{"id": "unsure", "label": 2}, {"id": "sure", "label": 0}]})
    assert r.status_code == 200, r.text
    assert r.json()["captured"] == 1
    assert r.json()["counted"] == 1
    assert r.json()["feedbackAccuracy"] == pytest.approx(0.5)  # "unsure" predicted class 0, labelled 2
    status = requests.get(
        f"http://127.0.0.1:{agent.port}/v2/models/clf/continual", headers=AUTH, timeout=10
    ).json()
    assert status["captureRecords"] == 1
    assert status["labelledWaiting"] == 1
    assert status["feedbackAccuracy"] == 0.5
    samples = requests.get(
        f"http://127.0.0.1:{agent.port}/v2/models/clf/capture/labelled", headers=AUTH, timeout=10
    )
    assert samples.status_code == 200
    import hashlib
    import io

    assert hashlib.sha256(samples.content).hexdigest() == samples.headers["X-Checksum-Sha256"]
    with np.load(io.BytesIO(samples.content)) as z:
        assert z["labels"].tolist() == [2]
        assert z["input"].tolist() == [[0, 0, 0, 1]]
    metrics = requests.get(f"http://127.0.0.1:{agent.port}/metrics", timeout=10).text
    assert 'edgemodel_drift_score{detector="page_hinkley",model="clf",namespace=""}' in metrics
    assert 'edgemodel_feedback_accuracy{model="clf",namespace=""} 0.5' in metrics
    assert 'edgemodel_capture_total{model="clf",namespace="",reason="uncertain"} 1.0' in metrics


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"not json", 400, "not JSON"),
        ({"labels": "x"}, 400, '"labels" list'),
        ({"labels": []}, 400, "empty"),
        ({"labels": [{"id": "", "label": 1}]}, 400, "labels[0].id"),
        ({"labels": [{"id": "a" * 300, "label": 1}]}, 400, "labels[0].id"),
        ({"labels": [{"id": "a", "label": "cat"}]}, 400, "labels[0].label"),
        ({"labels": [{"id": "a", "label": -1}]}, 400, "labels[0].label"),
        ({"labels": [{"id": "a", "label": True}]}, 400, "labels[0].label"),
        ({"labels": [{"id": "a", "label": 1}, {"id": "a", "label": 1}]}, 400, "twice"),
        ({"labels": [{"id": str(i), "label": 1} for i in range(MAX_ITEMS + 1)]}, 413, "batches"),
        ({"labels": [{"id": "never-seen", "label": 1}]}, 404, "none of the 1 request id"),
    ],
)
def test_hostile_feedback_gets_a_clear_4xx_and_serving_goes_on(
    agent: AgentThread, body: Any, status: int, needle: str
) -> None:
    assert infer(agent, "kept", [0, 0, 0, 1]).status_code == 200
    drain(agent)
    r = feedback(agent, body)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]
    assert infer(agent, "after", [0, 1, 0, 0]).status_code == 200  # serving unaffected
    assert feedback(agent, {"labels": [{"id": "kept", "label": 1}]}).json()["captured"] == 1  # nothing lost


def test_feedback_is_all_or_nothing_and_checks_classes_and_rows(agent: AgentThread) -> None:
    infer(agent, "a", [0, 0, 0, 1])
    infer(agent, "b", [0, 0, 0, 1])
    drain(agent)
    r = feedback(agent, {"labels": [{"id": "a", "label": 1}, {"id": "b", "label": 7}]})
    assert r.status_code == 400
    assert "labels[1].label" in r.json()["error"]
    assert "3 classes" in r.json()["error"]
    r = feedback(agent, {"labels": [{"id": "a", "label": 1}, {"id": "b", "label": [1, 2]}]})
    assert r.status_code == 400
    assert "one label per row" in r.json()["error"]
    r = feedback(
        agent, {"labels": [{"id": "a", "label": 1}, {"id": "b", "label": 2}, {"id": "zzz", "label": 0}]}
    )
    assert r.status_code == 200
    assert r.json()["captured"] == 2
    assert r.json()["unknown"] == ["zzz"]


def test_feedback_needs_the_token_and_a_bounded_body(agent: AgentThread) -> None:
    assert feedback(agent, {"labels": [{"id": "a", "label": 1}]}, headers={}).status_code == 401
    big = b'{"labels": [' + b" " * (2 << 20) + b"]}"
    r = feedback(agent, big)
    assert r.status_code == 413
    assert (
        requests.get(
            f"http://127.0.0.1:{agent.port}/v2/models/nope/continual", headers=AUTH, timeout=10
        ).status_code
        == 404
    )
    assert (
        feedback(agent, {"labels": [{"id": "a", "label": 1}]}).status_code == 404
    )  # no request answered yet
    r = requests.post(f"http://127.0.0.1:{agent.port}/v2/models/clf/capture/upload", headers=AUTH, timeout=10)
    assert r.status_code == 409
    assert "standalone" in r.json()["error"]


def test_a_full_capture_buffer_is_reported_and_keeps_its_labelled_samples(agent: AgentThread) -> None:
    for i in range(10):
        infer(agent, f"r{i}", [0, 0, 0, 1])
    drain(agent)
    assert (
        feedback(agent, {"labels": [{"id": f"r{i}", "label": 1} for i in range(10)]}).json()["captured"] == 10
    )
    for i in range(10, 15):
        assert infer(agent, f"r{i}", [0, 0, 0, 1]).status_code == 200  # serving goes on
    drain(agent)
    status = requests.get(
        f"http://127.0.0.1:{agent.port}/v2/models/clf/continual", headers=AUTH, timeout=10
    ).json()
    assert status["captureFull"] is True
    assert status["labelledWaiting"] == 10
    metrics = requests.get(f"http://127.0.0.1:{agent.port}/metrics", timeout=10).text
    assert 'edgemodel_capture_skipped_total{model="clf",namespace="",reason="buffer_full"} 5.0' in metrics


def test_parse_feedback_accepts_lists_of_labels() -> None:
    assert parse_feedback(b'{"labels": [{"id": "a", "label": [1, 2]}, {"id": "b", "label": 0}]}') == [
        ("a", [1, 2]),
        ("b", [0]),
    ]
    with pytest.raises(FeedbackError, match="labels\\[0\\]: expected an object"):
        parse_feedback(b'{"labels": [3]}')


def test_status_entries_are_valid_edgeagent_status(agent: AgentThread) -> None:
    """Every key the agent writes into EdgeAgent.status.continual is a field of the API (none dropped)."""
    from edgemodel.api.continual import AgentContinualState

    infer(agent, "a", [0, 0, 0, 1])
    drain(agent)
    assert agent.server is not None
    (entry,) = agent.server.continual.status()
    aliases = {f.alias or name for name, f in AgentContinualState.model_fields.items()}
    assert set(entry) <= aliases
    state = AgentContinualState.model_validate(entry)
    assert state.name == "clf"
    assert state.capture_records == 1
    assert state.labelled_captured == 0


def test_bad_continual_settings_fail_with_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edge_agent.server import AgentServer
    from edgemodel.errors import UserError

    monkeypatch.setenv("EDGEMODEL_AGENT_CONTINUAL_LOW_CONFIDENCE", "2")
    with pytest.raises(UserError, match="EDGEMODEL_AGENT_CONTINUAL_.*low_confidence"):
        AgentServer(AgentSettings(port=0))
