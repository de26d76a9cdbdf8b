"""The operator's continual-learning tick against a fake API and a loaded fleet cache: trigger -> Job -> gate
report -> new source; and ``decide`` on its own (pure)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from edgemodel_operator import continual
from edgemodel_operator.constants import ANNOTATION_REVISION_ORIGIN
from edgemodel_operator.fleet import Fleet
from edgemodel_operator.settings import OperatorSettings

EM: dict[str, Any] = {
    "apiVersion": "edgemodel.io/v1alpha1",
    "kind": "EdgeModel",
    "metadata": {"name": "digits", "namespace": "ml", "uid": "u-1", "generation": 2},
    "spec": {
        "source": {"uri": "file:///models/digits.pt", "format": "TorchScript"},
        "inputs": [{"name": "input", "dtype": "float32", "shape": [-1, 1, 8, 8]}],
        "validation": {"dataUri": "file:///data/val.npz", "maxAccuracyDrop": 0.01},
        "optimization": {"training": {"dataUri": "file:///data/train.npz"}},
        "continual": {
            "enabled": True,
            "triggers": {"driftSeconds": 60},
            "minSamples": 20,
            "minAccuracyGain": 0.05,
        },
    },
    "status": {"revision": 2},
}


def agent(node: str, **entry: Any) -> dict[str, Any]:
    base = {"name": "digits", "namespace": "ml", "revision": 2, "labelledCaptured": 40}
    base.update(entry)
    return {"metadata": {"name": node}, "status": {"continual": [base, {"name": "other", "namespace": "ml"}]}}


class FakeClient:
    def __init__(self, agents: list[dict[str, Any]]) -> None:
        self.agents = agents
        self.created: list[dict[str, Any]] = []
        self.patches: list[tuple[str, Any]] = []
        self.jobs: dict[str, dict[str, Any]] = {}

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.created.append(body)
        self.jobs[body["metadata"]["name"]] = body
        return body

    async def patch(self, path: str, body: Any, content_type: str = "") -> dict[str, Any]:
        self.patches.append((path, copy.deepcopy(body)))
        return body

    async def get(self, path: str, *, missing_ok: bool = False) -> dict[str, Any] | None:
        return self.jobs.get(path.rsplit("/", 1)[-1])


class FakeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()


class FakeRuntime:
    def __init__(self, client: FakeClient) -> None:
        self.client = client
        self.metrics = FakeMetrics()
        self.fleet = Fleet()  # what Fleet.run fills from the list + watch of EdgeAgents
        self.fleet.load(client.agents)
        self.fleet.synced.set()
        self.settings = OperatorSettings(
            store_url="http://store:8080",
            converter_image="conv:1",  # type: ignore[call-arg]
            signing_key_secret="k",
        )


def status_of(client: FakeClient) -> dict[str, Any]:
    return [b for p, b in client.patches if p.endswith("/status")][-1]["status"]["continual"]


async def test_a_persisting_drift_starts_a_round_and_a_passed_gate_sets_the_new_source(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = FakeClient(
        [agent("n1", driftAlarm=True, driftSince="2020-01-01T00:00:00Z", driftDetector="psi")]
    )
    runtime = FakeRuntime(client)
    await continual.tick(runtime, EM)  # type: ignore[arg-type]
    job = client.created[0]
    assert job["metadata"]["name"] == "digits-continual-1"
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--captures-url") + 1] == "http://store:8080/captures/ml/digits/"
    assert args[args.index("--replay-uri") + 1] == "file:///data/train.npz"
    assert args[args.index("--max-drop") + 1] == "0.01"
    assert args[args.index("--min-gain") + 1] == "0.05"
    assert job["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    st = status_of(client)
    assert st["activeJob"] == "digits-continual-1"
    assert "drift on n1" in st["rounds"][0]["trigger"]
    assert st["conditions"][0]["reason"] == "Training"

    # the Job completes; its report says the gate passed
    client.jobs["digits-continual-1"]["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    report = {
        "passed": True,
        "modelUri": "http://store:8080/continual/ml/digits/round-1/model.pt",
        "modelSha256": "a" * 64,
        "message": "new data 0.6 -> 0.97",
        "gate": {"new_before": 0.6, "new_after": 0.97, "original_before": 0.98, "original_after": 0.975},
    }

    async def fake_report(*_: Any) -> dict[str, Any]:
        return report

    monkeypatch.setattr(continual, "_report", fake_report)
    body = copy.deepcopy(EM)
    body["status"]["continual"] = st
    await continual.tick(runtime, body)  # type: ignore[arg-type]
    spec_patch = next(b for p, b in client.patches if not p.endswith("/status"))
    assert spec_patch["spec"]["source"] == {"uri": report["modelUri"], "sha256": "a" * 64}
    assert spec_patch["metadata"]["annotations"][continual.ANNOTATION_ROUND] == "1"
    # The revision history records why the round ran and the numbers of its gate (RevisionRecord.origin).
    origin = json.loads(spec_patch["metadata"]["annotations"][ANNOTATION_REVISION_ORIGIN])
    assert origin["kind"] == "ContinualLearning"
    assert origin["sourceUri"] == report["modelUri"]
    assert origin["reason"] == st["rounds"][0]["trigger"]
    assert origin["metrics"]["newAccuracyAfter"] == 0.97
    assert origin["metrics"]["originalAccuracyAfter"] == 0.975
    st = status_of(client)
    assert st["activeJob"] == "" or "activeJob" not in st
    done = st["rounds"][0]
    assert done["outcome"] == "Passed"
    assert done["newAccuracyAfter"] == 0.97
    assert done["originalAccuracyAfter"] == 0.975
    assert done["revision"] == 3
    assert st["conditions"][0]["reason"] == "RevisionOpened"


async def test_a_rejected_gate_keeps_the_source(monkeypatch: pytest.MonkeyPatch) -> None:
    client = FakeClient([])
    runtime = FakeRuntime(client)
    body = copy.deepcopy(EM)
    body["status"]["continual"] = {
        "activeJob": "digits-continual-1",
        "lastRoundAt": "2026-01-01T00:00:00Z",
        "rounds": [{"round": 1, "trigger": "x", "startedAt": "2026-01-01T00:00:00Z"}],
    }
    client.jobs["digits-continual-1"] = {"status": {"conditions": [{"type": "Failed", "status": "True"}]}}

    async def fake_report(*_: Any) -> dict[str, Any]:
        return {
            "passed": False,
            "message": "accuracy on new data rose by +1.0 pp",
            "gate": {"new_before": 0.6},
        }

    monkeypatch.setattr(continual, "_report", fake_report)
    await continual.tick(runtime, body)  # type: ignore[arg-type]
    assert all(p.endswith("/status") for p, _ in client.patches)
    st = status_of(client)
    assert st["rounds"][0]["outcome"] == "Rejected"
    assert "+1.0 pp" in st["rounds"][0]["message"]
    assert st["conditions"][0]["status"] == "False"


async def test_a_trigger_without_replay_data_reports_the_missing_field() -> None:
    client = FakeClient([agent("n1", driftAlarm=True, driftSince="2020-01-01T00:00:00Z")])
    body = copy.deepcopy(EM)
    del body["spec"]["optimization"]
    await continual.tick(FakeRuntime(client), body)  # type: ignore[arg-type]
    assert not client.created
    assert "replayDataUri" in status_of(client)["conditions"][0]["message"]


async def test_waiting_is_reported_once_and_disabled_models_are_ignored() -> None:
    client = FakeClient([agent("n1", labelledCaptured=3, driftAlarm=True, driftSince="2020-01-01T00:00:00Z")])
    await continual.tick(FakeRuntime(client), EM)  # type: ignore[arg-type]
    assert not client.created
    assert "only 3 labelled samples" in status_of(client)["conditions"][0]["message"]
    off = copy.deepcopy(EM)
    off["spec"]["continual"]["enabled"] = False
    client.patches.clear()
    await continual.tick(FakeRuntime(client), off)  # type: ignore[arg-type]
    assert not client.patches


def test_the_timer_is_registered_for_edgemodels_with_continual_enabled() -> None:
    import kopf

    registry = kopf.OperatorRegistry()
    continual.register(registry, FakeRuntime(FakeClient([])))  # type: ignore[arg-type]
    handlers = [h for h in registry._spawning.get_all_handlers() if h.id == "continual"]
    assert len(handlers) == 1
    timer = handlers[0]
    assert timer.interval == 15.0  # OperatorSettings.continual_tick_seconds
    assert timer.when is not None
    assert timer.when(spec={"continual": {"enabled": True}}) is True  # type: ignore[call-arg]
    assert timer.when(spec={}) is False  # type: ignore[call-arg]


def test_the_operator_registry_includes_the_continual_timer() -> None:
    from edgemodel_operator.main import build_registry

    registry = build_registry(FakeRuntime(FakeClient([])))  # type: ignore[arg-type]
    assert [h.id for h in registry._spawning.get_all_handlers() if h.id == "continual"] == ["continual"]


async def test_an_unsynced_fleet_cache_decides_nothing() -> None:
    client = FakeClient([agent("n1", driftAlarm=True, driftSince="2020-01-01T00:00:00Z")])
    runtime = FakeRuntime(client)
    runtime.fleet.synced.clear()
    await continual.tick(runtime, EM)  # type: ignore[arg-type]
    assert not client.created
    assert not client.patches


def snapshot(body: dict[str, Any], agents: list[dict[str, Any]], **more: Any) -> continual.Snapshot:
    from edgemodel.api import EdgeModel
    from edgemodel.api.continual import ContinualStatus
    from edgemodel_operator.scheduling import AgentView

    em = EdgeModel.model_validate(body)
    status = (em.status.continual if em.status else None) or ContinualStatus()
    views = [AgentView.from_body(a) for a in agents]
    return continual.Snapshot(
        body=body, namespace="ml", name="digits", em=em, status=status,
        reports=continual.reports_for(views, "ml", "digits"),
        now=continual.now_utc(), **more,
    )


def test_decide_is_pure_and_reads_only_this_models_entries() -> None:
    settings = FakeRuntime(FakeClient([])).settings
    snap = snapshot(EM, [agent("n1", driftAlarm=True, driftSince="2020-01-01T00:00:00Z"),
                         agent("n2", labelledCaptured=5)])
    assert [r.node for r in snap.reports] == ["n1", "n2"]
    plan = continual.decide(snap, settings)
    assert plan.job is not None
    assert plan.job["metadata"]["name"] == "digits-continual-1"
    assert plan.outcome == "Started"
    assert plan.drifting == 1
    assert plan.samples == 45
    assert plan.status is not None
    assert plan.status.active_job == "digits-continual-1"
    assert snap.status.active_job == ""  # the snapshot is not changed
    assert plan.events[0][1] == "ContinualTriggered"


def test_decide_waits_while_the_job_runs_and_fails_a_round_whose_job_vanished() -> None:
    settings = FakeRuntime(FakeClient([])).settings
    body = copy.deepcopy(EM)
    body["status"]["continual"] = {
        "activeJob": "digits-continual-1",
        "rounds": [{"round": 1, "trigger": "x", "startedAt": "2026-01-01T00:00:00Z"}],
    }
    running = {"status": {"active": 1}}
    plan = continual.decide(snapshot(body, [], job=running), settings)
    assert plan.status is None
    assert plan.job is None
    assert not plan.events
    plan = continual.decide(snapshot(body, [], job=None), settings)
    assert plan.status is not None
    assert plan.status.active_job == ""
    assert plan.status.rounds[0].outcome == "Failed"
    assert plan.status.rounds[0].message == "the Job disappeared"
    assert plan.source_patch is None
    assert plan.outcome == "Failed"
