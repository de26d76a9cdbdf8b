"""decide(): the whole reconcile of an EdgeModel as a pure function, driven without any I/O.

Each test builds a Snapshot (the EdgeModel body, typed agent views, the facts observed so far) and
checks the Decision: the status patch, the Job to create or delete, events, log lines, counters,
EdgeAgent writes, what the decision still wants observed, and when to come back. ``run`` plays the
part of observe and act for whole rollouts: it answers ``wants`` from a scripted world and applies
the decision's status patch and EdgeAgent writes to the bodies.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import logging
from typing import Any

import pytest

from edgemodel.api import ConversionResult, EdgeModelStatus, RevisionOrigin, RevisionOutcome
from edgemodel_operator import revisions, validation
from edgemodel_operator.analysis import Measurements
from edgemodel_operator.constants import ANNOTATION_SPEC_HASH
from edgemodel_operator.decide import (
    Decision,
    JobSeen,
    Snapshot,
    Wants,
    analysis_key,
    decide,
    merge_diff,
    status_patch,
)
from edgemodel_operator.scheduling import AgentView
from edgemodel_operator.settings import OperatorSettings
from tests.operator.builders import NOW, agent_body, artifacts, assignment, report, rfc

JOB = "digits-r1-convert"


def settings(**overrides: Any) -> OperatorSettings:
    base: dict[str, Any] = {"store_url": "http://store:8080", "signing_key_secret": "signing",
                            "converter_image": "edgemodel/converter:test", "standalone": True, "resync_seconds": 10.0}
    base.update(overrides)
    return OperatorSettings(**base)


def wire_spec(**overrides: Any) -> dict[str, Any]:
    wire: dict[str, Any] = {
        "source": {"uri": "file:///models/digits.pt", "format": "TorchScript"},
        "inputs": [{"name": "input", "dtype": "float32", "shape": [-1, 1, 8, 8]}],
        "selector": {"matchLabels": {"edge": "true"}},
        "rollout": {"strategy": "Canary", "steps": [50, 100], "maxUnavailable": "100%",
                    "analysis": {"windowSeconds": 30, "minRequests": 0}},
    }
    wire.update(overrides)
    return wire


def model_body(spec: dict[str, Any] | None = None, status: dict[str, Any] | None = None, generation: int = 1,
               name: str = "digits") -> dict[str, Any]:
    body: dict[str, Any] = {"apiVersion": "edgemodel.io/v1alpha1", "kind": "EdgeModel",
                            "metadata": {"name": name, "namespace": "default", "generation": generation, "uid": "u1"},
                            "spec": wire_spec() if spec is None else spec}
    if status is not None:
        body["status"] = status
    return body


def snapshot(body: dict[str, Any], agents: list[dict[str, Any]] | None = None, **facts: Any) -> Snapshot:
    return Snapshot(namespace="default", name=str(body["metadata"]["name"]), body=body, now=facts.pop("now", NOW),
                    agents=tuple(AgentView.from_body(a) for a in agents or []), seen_now=facts.pop("seen_now", NOW),
                    **facts)


def spec_hash(body: dict[str, Any]) -> str:
    spec, _ = validation.problems(body)
    assert spec is not None
    return revisions.build_hash(spec)


def job(body: dict[str, Any], state: str | None, revision: int = 1) -> dict[str, Any]:
    """A conversion Job of the body's spec: running (None), Complete or Failed."""
    out: dict[str, Any] = {"metadata": {"name": f"digits-r{revision}-convert",
                                        "annotations": {ANNOTATION_SPEC_HASH: spec_hash(body)}},
                           "status": {"active": 1}}
    if state is not None:
        out["status"] = {"conditions": [{"type": state, "status": "True", "reason": "BackoffLimitExceeded"
                                         if state == "Failed" else "Completed", "message": "pod failed"
                                         if state == "Failed" else ""}]}
    return out


def converted(revision: int = 1, classes: tuple[str, ...] = ("cpu",)) -> ConversionResult:
    return ConversionResult(ok=True, revision=revision, artifacts=artifacts(revision, classes))


def status_after(body: dict[str, Any], decision: Decision) -> dict[str, Any]:
    """The stored status once the decision's merge patch is applied."""
    def merge(target: Any, patch: Any) -> Any:
        if not isinstance(patch, dict):
            return patch
        out = dict(target) if isinstance(target, dict) else {}
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            else:
                out[key] = merge(out.get(key), value)
        return out

    return merge(body.get("status") or {}, decision.status_patch or {})


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status.get("conditions") or []}


def reasons(decision: Decision) -> list[str]:
    return [e.reason for e in decision.events]


# -- admission: invalid, suspended, a new revision ------------------------------------------------

def test_an_invalid_spec_writes_its_condition_and_an_event_once() -> None:
    body = model_body(spec=wire_spec(inputs=[]))
    d = decide(snapshot(body), settings())
    assert d.invalid
    assert "spec.inputs" in d.invalid
    assert d.requeue_after is None
    assert reasons(d) == ["InvalidSpec"]
    after = status_after(body, d)
    assert conditions(after)["InvalidSpec"] == ("True", "InvalidSpec")
    assert after["phase"] == "Failed"
    assert not d.wants
    assert d.job_create is None
    assert not d.agent_writes
    again = decide(snapshot(model_body(spec=wire_spec(inputs=[]), status=after)), settings())
    assert again.invalid == d.invalid
    assert not again.status_patch, "nothing changed: no write"
    assert again.events == [], "and no second event"


def test_a_suspended_model_only_says_so() -> None:
    body = model_body(spec=wire_spec(suspend=True))
    d = decide(snapshot(body, [agent_body("n1")]), settings())
    assert conditions(status_after(body, d))["Progressing"] == ("False", "Suspended")
    assert not d.wants
    assert d.job_create is None
    assert d.agent_writes == []
    assert d.events == []


def test_a_new_model_opens_revision_1_and_first_wants_its_job() -> None:
    d = decide(snapshot(model_body()), settings())
    assert d.wants == Wants(job=(1, JOB))
    assert d.status_patch is None, "nothing is done before the Job was observed"
    assert d.job_create is None


def test_a_revision_opened_for_a_controller_written_source_records_its_origin() -> None:
    body = model_body()
    origin = RevisionOrigin(kind="FederatedTraining", name="default/fl", reason="completed 6 round(s)",
                            metrics={"round": 6.0, "validationAccuracy": 0.95})
    body["metadata"]["annotations"] = revisions.origin_annotation(origin, "file:///models/digits.pt")
    d = decide(snapshot(body, job=JobSeen(1, None)), settings())
    record = EdgeModelStatus.model_validate(status_after(body, d)).history[0]
    assert record.origin == origin
    assert d.events[0].message == "generation 1 opened revision 1 (from FederatedTraining default/fl)"
    # An annotation left from an earlier source is not attributed to a hand-edited one.
    body["metadata"]["annotations"] = revisions.origin_annotation(origin, "file:///models/older.pt")
    d = decide(snapshot(body, job=JobSeen(1, None)), settings())
    assert "origin" not in status_after(body, d)["history"][0]


def test_an_absent_job_is_created_with_the_revision_opened() -> None:
    body = model_body()
    d = decide(snapshot(body, job=JobSeen(1, None)), settings())
    assert not d.wants
    assert d.job_create is not None
    assert d.job_create.name == JOB
    assert d.job_create.revision == 1
    assert d.job_create.manifest["kind"] == "Job"
    assert reasons(d) == ["RevisionCreated"]
    assert ("rollouts", "superseded", 0) in d.counters
    after = status_after(body, d)
    assert after["targetRevision"] == 1
    assert [(r["revision"], r["outcome"]) for r in after["history"]] == [(1, "Converting")]
    assert any("Opened revision 1" in m for _, m in d.logs)


def test_a_job_of_the_observed_revision_only_counts_for_that_revision() -> None:
    body = model_body()
    d = decide(snapshot(body, job=JobSeen(7, None)), settings())
    assert d.wants == Wants(job=(1, JOB))


@pytest.mark.parametrize(("state", "result", "event", "outcome", "why"), [
    (None, None, None, "Converting", "running"),
    ("Complete", converted(), "Converted", "RollingOut", "converted"),
    ("Failed", None, "ConversionFailed", "Failed", "BackoffLimitExceeded"),
    ("Complete", ConversionResult(ok=True, revision=1), "ConversionFailed", "Failed", "NoArtifacts"),
    ("Failed", ConversionResult(ok=False, revision=1, reason="InvalidSpec", message="bad input"), "ConversionFailed",
     "Failed", "InvalidSpec"),
])  # fmt: skip
def test_the_job_outcome_decides_the_revision(state: str | None, result: ConversionResult | None, event: str | None,
                                              outcome: str, why: str) -> None:
    opened = model_body()
    first = decide(snapshot(opened, job=JobSeen(1, None)), settings())
    body = model_body(status=status_after(opened, first))
    d = decide(snapshot(body, job=JobSeen(1, job(body, state), result)), settings())
    assert not d.wants
    after = status_after(body, d)
    assert after["history"][0]["outcome"] == outcome
    if event is None:
        assert d.requeue_after is not None
        assert d.requeue_after <= 15.0, "a running Job is polled"
        assert d.events == []
    else:
        assert event in reasons(d)
        message = next(e.message for e in d.events if e.reason == event)
        assert why in message or why in after["history"][0]["message"] or why == "converted"
    if event == "Converted":
        assert ("conversions", "succeeded", 1) in d.counters
        assert d.conversion_recorded is not None
        assert d.conversion_recorded[0] == 1
    if event == "ConversionFailed":
        assert ("conversions", "failed", 1) in d.counters
    if state == "Failed" and result is None:
        assert "kubectl logs -n default job/digits-r1-convert" in next(e.message for e in d.events)


def test_a_job_of_another_spec_is_deleted_and_polled_soon() -> None:
    opened = model_body()
    body = model_body(status=status_after(opened, decide(snapshot(opened, job=JobSeen(1, None)), settings())))
    other = job(body, None)
    other["metadata"]["annotations"][ANNOTATION_SPEC_HASH] = "different"
    d = decide(snapshot(body, job=JobSeen(1, other)), settings())
    assert d.job_delete == JOB
    assert d.job_create is None
    assert d.requeue_after == 2.0


def test_an_unreadable_status_is_rebuilt_with_a_warning() -> None:
    body = model_body(status={"history": "not a list"})
    d = decide(snapshot(body, job=JobSeen(1, None)), settings())
    assert (logging.WARNING, "Ignored the unreadable status of EdgeModel default/digits; rebuilding it") in d.logs
    assert d.job_create is not None


# -- rollouts, played through by a scripted world ---------------------------------------------------

@dataclasses.dataclass
class World:
    """The cluster as decide sees it: the EdgeModel, the agents, and what observe would answer."""

    body: dict[str, Any]
    agents: dict[str, dict[str, Any]]
    settings: OperatorSettings
    now: dt.datetime = NOW
    result: ConversionResult = dataclasses.field(default_factory=converted)
    prometheus: Measurements | str | None = None
    stale: set[str] = dataclasses.field(default_factory=set)
    """Agents whose heartbeat stops (the others report at every step)."""
    decisions: list[Decision] = dataclasses.field(default_factory=list)
    observed: list[Wants] = dataclasses.field(default_factory=list)
    chain: dict[str, Any] | None = None
    """What observe reads as chain.json for every revision (pipelines)."""

    def step(self) -> Decision:
        """One reconcile: observe (answering wants), decide, and act on the bodies."""
        for name, agent in self.agents.items():
            if name not in self.stale:
                agent["status"]["heartbeatTime"] = rfc(self.now)
        snap = snapshot(self.body, list(self.agents.values()), now=self.now, seen_now=self.now)
        d = decide(snap, self.settings)
        while d.wants:
            self.observed.append(d.wants)
            if d.wants.job is not None:
                created = bool((self.body.get("status") or {}).get("history"))  # the first step creates the Job
                seen = job(self.body, "Complete") if created else None
                snap = dataclasses.replace(snap, job=JobSeen(d.wants.job[0], seen, self.result if created else None))
            if d.wants.analysis is not None:
                assert self.prometheus is not None, "no Prometheus in this world"
                snap = dataclasses.replace(snap, measured=(analysis_key(d.wants.analysis), self.prometheus))
            if d.wants.plan is not None:
                snap = dataclasses.replace(snap, plans={**snap.plans, d.wants.plan[0]: None})
            if d.wants.chains:
                snap = dataclasses.replace(snap, chains={**snap.chains, **{r: self.chain for r in d.wants.chains}})
            d = decide(snap, self.settings)
        self.body = {**self.body, "status": status_after(self.body, d)}
        for write in d.agent_writes:  # an agent's entry is replaced; its pipeline stages (tails) stay
            agent = self.agents[write.agent.name]
            models = [m for m in agent["spec"]["models"] if m["name"] != "digits" or m.get("role") == "tail"]
            if write.entry is not None:
                models.append(dict(write.entry))
            agent["spec"]["models"] = models
            agent["metadata"]["generation"] += 1
        for tails in d.tail_writes:  # the stages a node hosts are replaced as a set
            agent = self.agents[tails.agent.name]
            models = [m for m in agent["spec"]["models"] if m["name"] != "digits" or m.get("role") != "tail"]
            agent["spec"]["models"] = models + [dict(e) for _, e in sorted(tails.tails.items())]
            agent["metadata"]["generation"] += 1
        self.decisions.append(d)
        return d

    def report(self, *names: str, state: str = "Ready", **kw: Any) -> None:
        """The named agents report their assigned revision in ``state``."""
        for name in names:
            agent = self.agents[name]
            revision = next(m["revision"] for m in agent["spec"]["models"] if m["name"] == "digits")
            agent["status"]["models"] = [report(revision, state, **kw)]

    def assigned(self) -> dict[str, int | None]:
        return {n: next((m["revision"] for m in a["spec"]["models"] if m["name"] == "digits"), None)
                for n, a in sorted(self.agents.items())}


def fleet(count: int, **kw: Any) -> dict[str, dict[str, Any]]:
    return {f"n{i}": agent_body(f"n{i}", **kw) for i in range(1, count + 1)}


def test_a_canary_rollout_from_conversion_to_available() -> None:
    world = World(model_body(), fleet(4), settings())
    world.step()  # opens revision 1, creates the Job
    assert world.decisions[-1].job_create is not None
    d = world.step()  # the Job completed: rolling out, step 1 (50% of 4 nodes)
    assert "Converted" in reasons(d)
    assert "RolloutStarted" in reasons(d)
    assert sorted(world.assigned().values(), key=str) == [1, 1, None, None]
    assert d.node_counts == {"ready": 0, "updating": 0, "failed": 0, "stale": 0, "unassigned": 4}
    canaries = [n for n, r in world.assigned().items() if r == 1]
    world.report(*canaries)
    d = world.step()  # ready: the analysis window opens
    assert d.requeue_after is not None
    assert d.requeue_after <= 30
    assert world.body["status"]["rollout"]["analysisStartedAt"]
    world.now += dt.timedelta(seconds=31)
    d = world.step()  # window over: judged from what the agents report (no Prometheus), step 2
    assert d.analysed == ("Pass", "agents")
    assert "StepPassed" in reasons(d)
    assert list(world.assigned().values()) == [1, 1, 1, 1]
    world.report("n1", "n2", "n3", "n4")
    world.step()
    world.now += dt.timedelta(seconds=31)
    d = world.step()
    assert "RolloutComplete" in reasons(d)
    assert ("rollouts", "completed", 1) in d.counters
    status = EdgeModelStatus.model_validate(world.body["status"])
    assert status.revision == 1
    assert status.history[0].outcome == RevisionOutcome.AVAILABLE
    assert conditions(world.body["status"])["Available"][0] == "True"
    settled = world.step()  # the steady state summarises once
    assert settled.status_patch == {"rollout": {"analysisStartedAt": None,
                                                "message": "4/4 fresh node(s) serve revision 1"}}
    steady = world.step()
    assert steady.agent_writes == [], "nothing left to do"
    assert steady.events == []
    assert not steady.status_patch
    assert not any(w.analysis for w in world.observed), "no Prometheus: never asked"


def test_a_node_failing_to_load_rolls_back_at_once() -> None:
    world = World(model_body(), fleet(2), settings())
    world.step()
    world.step()
    canary = next(n for n, r in world.assigned().items() if r == 1)
    world.report(canary, state="Failed", reason="LoadFailed", message="bad model")
    d = world.step()
    assert "RolledBack" in reasons(d)
    assert ("rollouts", "rolled_back", 1) in d.counters
    assert world.body["status"]["history"][0]["outcome"] == "RolledBack"
    assert world.assigned()[canary] is None, "no good revision: the canary is unassigned"
    assert "LoadFailed" in next(e.message for e in d.events if e.reason == "RolledBack")


@pytest.mark.parametrize(("measured", "verdict", "event"), [
    ("Prometheus at http://prom did not answer: timeout", ("Wait", "prometheus"), None),
    (Measurements("prometheus", requests=500, errors=0, p95_ms=1.0), ("Pass", "prometheus"), "StepPassed"),
    (Measurements("prometheus", requests=500, errors=400, p95_ms=1.0), ("Fail", "prometheus"), "RolledBack"),
])  # fmt: skip
def test_prometheus_numbers_are_asked_for_and_judged(measured: Measurements | str, verdict: tuple[str, str],
                                                     event: str | None) -> None:
    world = World(model_body(), fleet(2), settings(prometheus_url="http://prom:9090"), prometheus=measured)
    world.step()
    world.step()
    world.report(*[n for n, r in world.assigned().items() if r == 1])
    world.step()
    world.now += dt.timedelta(seconds=31)
    d = world.step()
    assert any(w.analysis is not None and w.analysis.revision == 1 for w in world.observed)
    assert d.analysed == verdict
    if event is None:
        assert d.requeue_after is not None
        assert d.requeue_after <= 10
        assert "did not answer" in world.body["status"]["rollout"]["message"]
    else:
        assert event in reasons(d)


def test_stale_nodes_are_reported_once_and_their_return_too() -> None:
    world = World(model_body(), fleet(3), settings())
    world.step()
    world.step()
    world.stale.add("n3")
    world.now += dt.timedelta(seconds=41)
    d = world.step()
    assert "NodesStale" in reasons(d)
    assert world.body["status"]["rollout"]["staleNodes"] == 1
    assert "NodesStale" not in reasons(world.step()), "said once"
    world.stale.clear()
    assert "NodesReturned" in reasons(world.step())


def test_unselected_and_missing_artifact_nodes() -> None:
    agents = fleet(2)
    agents["gpu"] = agent_body("gpu", hardware_class="gpu")
    agents["other"] = agent_body("other", labels={"edge": "false"}, models=[assignment(1)])
    targets = {"targets": [{"hardwareClass": "cpu"}, {"hardwareClass": "gpu"}]}
    world = World(model_body(spec=wire_spec(rollout={"strategy": "AllAtOnce", "maxUnavailable": "100%"}, optimization=targets)),
                  agents, settings(), result=converted(classes=("gpu",)))
    world.step()
    d = world.step()
    assert world.assigned()["other"] is None, "a node the selector no longer matches is unassigned"
    assert any("Left EdgeAgent n1 unchanged" in m and "no artifact for class cpu" in m for _, m in d.logs)
    assert world.assigned() == {"gpu": 1, "n1": None, "n2": None, "other": None}


def test_retention_deletes_the_revisions_that_leave_the_history() -> None:
    history = [{"revision": r, "generation": r, "outcome": "Superseded", "createdAt": "2025-01-01T00:00:00Z",
                "specHash": "old"} for r in (1, 2)]
    body = model_body(status={"history": history}, generation=3)
    d = decide(snapshot(body, job=JobSeen(3, None)), settings(history_limit=2, artifact_retention="delete"))
    assert d.delete_revisions == [1]
    keep = decide(snapshot(body, job=JobSeen(3, None)), settings(history_limit=2))
    assert keep.delete_revisions == []


# -- purity --------------------------------------------------------------------------------------

def test_decide_is_pure_and_deterministic() -> None:
    world = World(model_body(), fleet(3), settings())
    world.step()
    world.step()
    body, agents = copy.deepcopy(world.body), copy.deepcopy(list(world.agents.values()))
    snap = snapshot(world.body, list(world.agents.values()), job=JobSeen(1, job(world.body, "Complete"), converted()))
    first, second = decide(snap, world.settings), decide(snap, world.settings)
    assert first == second
    assert world.body == body, "the snapshot is never changed"
    assert list(world.agents.values()) == agents


def test_the_job_to_create_is_the_same_every_time() -> None:
    body = model_body()
    snap = snapshot(body, [agent_body("n1")], job=JobSeen(1, None))
    first, second = decide(snap, settings()), decide(snap, settings())
    assert first.job_create is not None
    assert first.job_create == second.job_create, "a deterministic Job: a restarted operator finds it"
    assert first == second


def test_status_patch_sends_only_changes() -> None:
    status = EdgeModelStatus()
    patch = status_patch({}, status, 1)
    assert patch
    assert status_patch(patch, status, 1) == {}
    assert merge_diff({"a": 1, "b": {"c": 2}}, {"b": {"c": 3}}) == {"a": None, "b": {"c": 3}}


def test_agent_views_are_read_through_the_typed_status_and_keep_what_validates() -> None:
    body = agent_body("n1", reported=[report(1, requests=7, p95=2.5), {"name": "bad", "revision": "x"},
                                      {**report(2, name="tail"), "role": "tail", "cloudRttMs": 3.0}])
    body["status"]["conditions"] = [{"type": "not a valid type!", "status": "True"}]
    body["status"]["capabilities"]["memoryBytes"] = "lots"
    view = AgentView.from_body(body)
    assert [(r.name, r.revision, r.state, r.request_count, r.p95_ms) for r in view.reported][:1] == [
        ("digits", 1, "Ready", 7, 2.5)]
    assert [r.name for r in view.reported] == ["digits", "tail"], "the malformed entry alone is dropped"
    assert view.reported[1].role == "tail"
    assert view.reported[1].cloud_rtt_ms == 3.0
    assert view.memory_bytes == 0, "unreadable capabilities fall back to none"
    assert view.heartbeat == NOW
    assert view.endpoint == "http://127.0.0.1:9000/n1"
    assert AgentView.from_body({"metadata": {"name": "new"}}).reported == (), "no status yet"
