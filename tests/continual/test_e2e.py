"""Continual learning end to end in the emulated cluster, as real processes: three agents serve the digits CNN;
the traffic turns into rotated digits and the clients send the labels back; the agents' drift alarm (PSI
against the revision's validation reference, shipped in its signed manifest) -> signed capture bundles in the
store -> the operator's trigger -> the training Job (fine-tune with replay, gate) -> spec.source -> conversion
-> canary -> revision 2 Available on the 3 agents, serving rotated digits better. The scenario is
``bench.continual.e2e`` (which also times it); this test asserts what happened, never how fast."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.continual.e2e import ContinualStack, Timeline, run_drift_to_available
from tests.conftest import require_tool

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ContinualStack]:
    require_tool("kubectl")
    with ContinualStack(tmp_path_factory.mktemp("continual-e2e")) as s:
        yield s


@pytest.fixture(scope="module")
def timeline(stack: ContinualStack) -> Timeline:
    return run_drift_to_available(stack)


def test_drift_alarm_retrains_and_rolls_out_a_better_revision_to_three_agents(
    stack: ContinualStack, timeline: Timeline
) -> None:
    assert timeline.alarm is not None
    assert timeline.triggered is not None
    assert timeline.available is not None
    assert timeline.alarm <= timeline.triggered <= timeline.available
    status = stack.status()
    assert (status["revision"], status["phase"], status["ready"]) == (2, "Available", "3/3")

    # the round: why it was triggered, on how many samples, the gate's numbers, the revision it opened
    continual = status["continual"]
    (round_,) = continual["rounds"]
    assert round_["outcome"] == "Passed"
    assert "drift on edge-" in round_["trigger"]
    assert round_["samples"] >= 150
    assert round_["revision"] == 2
    assert round_["newAccuracyAfter"] >= round_["newAccuracyBefore"] + 0.05
    assert round_["originalAccuracyBefore"] - round_["originalAccuracyAfter"] <= 0.02
    assert round_["modelUri"] == f"{stack.store_url}/continual/default/digits/round-1/model.pt"
    conditions = {c["type"]: c for c in continual["conditions"]}
    # RevisionOpened, until revision 2's own detectors see that the traffic still differs from the original
    # validation reference: then the trigger fires again and waits out the cooldown (docs/continual.md)
    learning = conditions["ContinualLearning"]
    assert learning["reason"] == "RevisionOpened" or (
        learning["reason"] == "Waiting" and "cooldown" in learning["message"]), learning
    em = stack.edgemodel("digits") or {}
    assert em["spec"]["source"]["uri"] == round_["modelUri"]
    assert em["metadata"]["annotations"]["edgemodel.io/continual-round"] == "1"
    assert "drift on" in em["metadata"]["annotations"]["edgemodel.io/continual-trigger"]

    # the revision history and the usual conversion + canary for revision 2
    history = [(r["revision"], r["outcome"]) for r in status["history"]]
    assert history == [(1, "Superseded"), (2, "Available")]
    reasons = [e[1] for e in stack.events()]
    for reason in ("ContinualTriggered", "ContinualGatePassed", "RevisionCreated", "Converted", "RolloutComplete"):
        assert reason in reasons
    jobs = sorted(j["metadata"]["name"] for j in stack.cluster.list_objects("batch/v1", "Job", "default"))
    assert "digits-continual-1" in jobs
    assert any(name.startswith("digits-r2") for name in jobs), jobs


def test_the_agents_used_the_shipped_reference_and_signed_their_uploads(stack: ContinualStack) -> None:
    import requests

    from bench.continual.e2e import STORE_TOKEN
    from edgemodel.signing import verify_bundle

    entries = stack.continual_entries()
    assert len(entries) == 3
    assert {e["referenceSource"] for e in entries} == {"validation"}
    listing = requests.get(f"{stack.store_url}/captures/default/digits/", timeout=10).json()["entries"]
    manifests = [e["name"] for e in listing if e["name"].endswith(".json")]
    assert manifests
    for name in manifests:
        url = f"{stack.store_url}/captures/default/digits/{name}"
        verify_bundle(requests.get(url, timeout=10).content, requests.get(f"{url}.sig", timeout=10).text, STORE_TOKEN)


def test_revision_2_serves_rotated_digits_better_on_every_agent(stack: ContinualStack) -> None:
    traffic = stack.traffic
    assert traffic is not None
    served_v2 = {endpoint for (endpoint, version), n in traffic.served.items() if version == "2" and n}
    assert len(served_v2) == 3
    assert traffic.accuracy("2", True) > traffic.accuracy("1", True) + 0.05
    assert traffic.feedback[200] > 0
