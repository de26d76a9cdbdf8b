"""End to end, as real processes: `kubectl apply -f examples/...` -> conversion Job through the
kubelet -> canary rollout to three agents -> real inference with a v2 client; a bad revision
rolled back; an API outage and an operator crash mid-rollout survived (two replicas, kopf
peering); invalid specs refused with a clear message; deletion cleans up.

The tests share one stack (module scope) and run in file order: each starts from the state the
previous one left (digits at revision 1, then 2 rolled back, then 3).
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from edgemodel_dev.demo.stack import EDGEMODEL
from tests.conftest import require_tool
from tests.operator.stack import Stack

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

CONVERT_AND_ROLL_OUT = 240.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_tool("kubectl")
    with Stack(tmp_path_factory.mktemp("e2e")) as stack:
        yield stack


def watch_rollout(stack: Stack, name: str, until: Any, timeout: float) -> list[tuple[Any, ...]]:
    """Poll the EdgeModel until ``until(status)``; returns every distinct (phase, revision, step, updated, ready)."""
    seen: list[tuple[Any, ...]] = []

    def check() -> bool:
        status = stack.status(name)
        rollout = status.get("rollout") or {}
        row = (status.get("phase"), rollout.get("revision"), rollout.get("step"), rollout.get("updatedNodes"),
               rollout.get("readyNodes"))
        if not seen or seen[-1] != row:
            seen.append(row)
        return bool(until(status))

    stack.wait_for(f"EdgeModel {name}", check, timeout, detail=lambda: f"seen (phase, revision, step, updated, ready): {seen}")
    return seen


def test_kubectl_apply_converts_rolls_out_by_canary_and_serves(stack: Stack) -> None:
    doc = stack.manifest()
    path = stack.dir / "digits.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    validated = subprocess.run([EDGEMODEL, "validate", "-f", str(path)], capture_output=True, text=True, timeout=60,
                               check=False)
    assert validated.returncode == 0, validated.stderr
    assert "edgemodel.io/digits created" in stack.cluster.kubectl("apply", "-f", str(path)).stdout

    seen = watch_rollout(stack, "digits", lambda s: s.get("phase") == "Available", CONVERT_AND_ROLL_OUT)

    phases = [row[0] for row in seen]
    assert "Converting" in phases
    assert "RollingOut" in phases
    on_new = sorted({row[3] for row in seen if row[0] == "RollingOut" and row[3]})
    assert on_new[:3] == [1, 2, 3], f"the canary went node by node per step (34/67/100 %): {seen}"
    status = stack.status("digits")
    assert (status["revision"], status["ready"], status["observedGeneration"]) == (1, "3/3", 1)
    conditions = {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}
    assert conditions["Converted"] == ("True", "Succeeded")
    assert conditions["Available"] == ("True", "Serving")
    assert conditions["Progressing"] == ("False", "RolloutComplete")
    assert conditions["Degraded"] == ("False", "AsExpected")
    assert [(r["revision"], r["outcome"]) for r in status["history"]] == [(1, "Available")]
    assert {a["hardwareClass"] for a in status["artifacts"]} == {"cpu", "gpu"}
    assert any(c["chosen"] for c in status["candidates"])
    assert stack.jobs("digits") == ["digits-r1-convert"]

    # Real inference on every node, with a client nobody here wrote.
    for endpoint in stack.endpoints():
        predicted, version = stack.predict(endpoint)
        assert version == "1"
        assert (predicted == stack.labels).mean() >= 0.9

    reasons = [e[1] for e in stack.events("digits")]
    for reason in ("RevisionCreated", "ConversionStarted", "Converted", "RolloutStarted", "StepPassed",
                   "RolloutComplete"):
        assert reason in reasons
    table = stack.cluster.kubectl("get", "em", "digits").stdout
    assert "Available" in table
    assert "3/3" in table

    metrics = stack.metrics(stack.replicas[0])
    for sample in ('edgemodel_operator_conversions_total{outcome="succeeded"} 1.0',
                   'edgemodel_operator_rollouts_total{outcome="completed"} 1.0',
                   'edgemodel_operator_nodes{model="digits",namespace="default",state="ready"} 3.0',
                   "edgemodel_operator_reconcile_duration_seconds_count",
                   'edgemodel_operator_conversion_duration_seconds_count{model="digits",namespace="default"} 1.0',
                   'edgemodel_operator_candidate_latency_seconds{candidate="fp16",chosen="true",hardware_class="gpu"',
                   'edgemodel_operator_api_requests_total{code="200",resource="edgeagents",verb="patch"}'):
        assert sample in metrics


def test_a_selector_only_change_brings_every_condition_to_the_new_generation(stack: Stack) -> None:
    """No rebuild for a selector change, yet Converted (and every other condition) reports the new generation."""
    assert stack.status("digits").get("revision") == 1, "needs the previous test's rollout"
    selector = {"matchLabels": {"node-role.kubernetes.io/edge": "true"},
                "matchExpressions": [{"key": "node-role.kubernetes.io/edge", "operator": "Exists"}]}
    stack.cluster.kubectl("patch", "em", "digits", "--type=merge", "-p", json.dumps({"spec": {"selector": selector}}))
    generation = int(stack.cluster.kubectl("get", "em", "digits", "-o", "jsonpath={.metadata.generation}").stdout)
    assert generation == 2

    def current() -> bool:
        status = stack.status("digits")
        return status.get("observedGeneration") == generation and all(
            c.get("observedGeneration") == generation for c in status.get("conditions") or [])

    stack.wait_for("every condition at generation 2", current, 30,
                   detail=lambda: str([(c["type"], c.get("observedGeneration")) for c in
                                       stack.status("digits").get("conditions") or []]))
    status = stack.status("digits")
    assert {c["type"] for c in status["conditions"]} >= {"Converted", "Progressing", "Available", "Degraded"}
    assert [(r["revision"], r["outcome"]) for r in status["history"]] == [(1, "Available")], "no rebuild"
    assert stack.jobs("digits") == ["digits-r1-convert"]


def reconciles(stack: Stack) -> float:
    """Reconciles done so far by both replicas (from their /metrics)."""
    total = 0.0
    for replica in stack.replicas:
        for line in stack.metrics(replica).splitlines():
            if line.startswith("edgemodel_operator_reconcile_duration_seconds_count"):
                total += float(line.split()[-1])
    return total


def test_an_agent_cannot_make_itself_a_cloud_node(stack: Stack) -> None:
    """Its EdgeAgent's labels are its own to write; the operator selects on its Node's labels, which it cannot."""
    node = stack.nodes[0]
    import requests

    relabelled = requests.patch(
        f"{stack.cluster.url}/apis/edgemodel.io/v1alpha1/edgeagents/{node}",
        json={"metadata": {"labels": {"edgemodel.io/tier": "cloud", "team": "b"}}}, timeout=10,
        headers={"Authorization": f"Bearer {stack.cluster.agent_token(node)}",
                 "Content-Type": "application/merge-patch+json"},
        verify=str(stack.cluster.ca_path) if stack.cluster.ca_path else True)
    assert relabelled.status_code == 200, "an agent may label its own EdgeAgent"
    before = reconciles(stack)
    stack.wait_for("two more reconciles after the relabelling", lambda: reconciles(stack) >= before + 2, 30)
    assert stack.assigned()[node] == [1], "still an edge node: the forged tier label is not what the operator reads"
    assert stack.status("digits")["ready"] == "3/3"
    labels = stack.cluster.get("v1", "nodes", node)["metadata"]["labels"]
    assert "edgemodel.io/tier" not in labels


def test_a_revision_over_its_latency_budget_is_rolled_back(stack: Stack) -> None:
    assert stack.status("digits").get("revision") == 1, "needs the previous test's rollout"
    doc = stack.manifest(maxP95LatencyMs=0.001)
    doc["spec"]["optimization"]["int8"]["enabled"] = False  # a different build: revision 2
    stack.apply(doc, "digits-r2.yaml")

    seen = watch_rollout(stack, "digits", lambda s: any(
        c["type"] == "Degraded" and c["reason"] == "RolledBack" for c in s.get("conditions", [])),
        CONVERT_AND_ROLL_OUT)

    assert max((row[3] or 0) for row in seen if row[1] == 2) == 1, f"only the first canary got revision 2: {seen}"
    status = stack.status("digits")
    degraded = stack.condition("digits", "Degraded")
    assert "p95" in degraded["message"]
    assert "> maxP95LatencyMs 0.001 ms" in degraded["message"]
    assert "rolled back to revision 1" in degraded["message"]
    assert (status["phase"], status["revision"], status["targetRevision"]) == ("Degraded", 1, 2)
    assert [(r["revision"], r["outcome"]) for r in status["history"]] == [(1, "Available"), (2, "RolledBack")]
    assert ("Warning", "RolledBack") in [(e[0], e[1]) for e in stack.events("digits")]
    stack.wait_for("every agent back on revision 1", lambda: set(map(tuple, stack.assigned().values())) == {(1,)}, 30)
    stack.wait_for("every agent serving revision 1",
             lambda: set(stack.reported().values()) == {(1, "Ready")}, 60)
    for endpoint in stack.endpoints():
        assert stack.predict(endpoint)[1] == "1"


def test_api_outage_and_operator_crashes_mid_conversion_and_mid_rollout_are_survived(stack: Stack) -> None:
    assert stack.status("digits").get("revision") == 1, "needs the previous tests' state"
    active, standby = stack.replicas
    assert active.proc is not None
    assert standby.proc is not None

    # The API goes away for a while: agents keep serving, the operators reconnect.
    endpoints = stack.endpoints()
    stack.cluster.stop()
    try:
        time.sleep(3)
        for endpoint in endpoints:
            assert stack.predict(endpoint)[1] == "1"
    finally:
        stack.cluster.start()

    stack.apply(stack.manifest(), "digits-r3.yaml")  # budget back to 50 ms, int8 back on: revision 3
    stack.wait_for("the conversion Job of revision 3", lambda: "digits-r3-convert" in stack.jobs("digits"), 60)
    active.proc.kill()  # SIGKILL mid-conversion: no cleanup, its peering record is left behind
    standby_log_start = standby.proc.log.stat().st_size
    watch_rollout(stack, "digits", lambda s: (s.get("rollout") or {}).get("revision") == 3
                  and (s.get("rollout") or {}).get("updatedNodes", 0) >= 1, CONVERT_AND_ROLL_OUT)
    taken_over = standby.proc.log.read_text()[standby_log_start:]
    assert "Converted revision 3 of EdgeModel default/digits" in taken_over, "the standby finished the conversion"
    standby.proc.kill()  # and now the standby dies mid-rollout
    mid = stack.status("digits")["rollout"]
    assert mid["updatedNodes"] < 3, f"the crash happened before the rollout finished: {mid}"
    stack.start_operator(active)  # the first replica comes back and carries on from status

    seen = watch_rollout(stack, "digits", lambda s: s.get("phase") == "Available" and s.get("revision") == 3,
                         CONVERT_AND_ROLL_OUT)
    stack.start_operator(standby)
    status = stack.status("digits")
    assert (status["revision"], status["previousRevision"], status["ready"]) == (3, 1, "3/3"), seen
    # --history-limit 2: revision 2 left the history (the serving and rollback revisions never do), and with
    # --artifact-retention delete its artifacts left the store.
    assert [(r["revision"], r["outcome"]) for r in status["history"]] == [(1, "Superseded"), (3, "Available")]
    assert not stack.stored("default/digits/2/manifest.json")
    assert stack.stored("default/digits/1/manifest.json")
    assert stack.jobs("digits") == ["digits-r1-convert", "digits-r2-convert", "digits-r3-convert"], "no duplicates"
    assert stack.assigned() == {node: [3] for node in stack.nodes}, "one entry per node, never half-assigned"
    stack.wait_for("every agent serving revision 3", lambda: set(stack.reported().values()) == {(3, "Ready")}, 60)
    for endpoint in stack.endpoints():
        assert stack.predict(endpoint)[1] == "3"


def test_a_node_with_a_stale_heartbeat_is_reported_and_not_counted(stack: Stack) -> None:
    node = stack.nodes[-1]
    agent = stack.cluster.node_processes[node]
    agent.kill()
    try:
        stack.wait_for(f"{node} reported stale", lambda: stack.status("digits").get("rollout", {}).get("staleNodes") == 1,
                 60)
        status = stack.status("digits")
        assert status["ready"] == "2/3"
        degraded = stack.condition("digits", "Degraded")
        assert degraded["reason"] == "NodesUnhealthy"
        assert f"stale heartbeat, not counted as ready: {node}" in degraded["message"]
    finally:
        agent.start()
    stack.wait_for(f"{node} back", lambda: stack.status("digits").get("ready") == "3/3"
             and stack.condition("digits", "Degraded").get("status") == "False", 60)


def test_suspend_pauses_everything(stack: Stack) -> None:
    doc = stack.manifest(name="digits-paused")
    doc["spec"]["suspend"] = True
    stack.apply(doc, "digits-paused.yaml")
    stack.wait_for("phase Suspended", lambda: stack.status("digits-paused").get("phase") == "Suspended", 60)
    assert stack.condition("digits-paused", "Progressing")["reason"] == "Suspended"
    time.sleep(2)
    assert stack.jobs("digits-paused") == [], "nothing is converted while suspended"
    assert stack.status("digits-paused").get("history", []) == []
    stack.cluster.kubectl("delete", "em", "digits-paused", "--timeout=60s")


def test_invalid_specs_are_refused_with_the_field_and_the_fix(stack: Stack) -> None:
    doc = stack.manifest(name="digits-bad")
    doc["spec"]["rollout"]["steps"] = [50, 20, 100]
    path = stack.dir / "digits-bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    refused = stack.cluster.kubectl("apply", "-f", str(path), check=False)
    assert refused.returncode != 0, "the CRD's CEL rules refuse it, as `edgemodel validate` does"
    assert "spec.rollout.steps: steps must rise strictly, e.g. [10, 50, 100]" in refused.stderr

    # What the API server cannot check (a selector requirement without values) the operator refuses.
    doc["spec"]["rollout"]["steps"] = [34, 67, 100]
    doc["spec"]["selector"] = {"matchExpressions": [{"key": "site", "operator": "In"}]}
    stack.apply(doc, "digits-bad.yaml")
    expected = "spec.selector.matchExpressions[0].values: operator In needs at least one value"
    stack.wait_for("InvalidSpec on digits-bad", lambda: stack.condition("digits-bad", "InvalidSpec").get("status") == "True",
             60)
    cond = stack.condition("digits-bad", "InvalidSpec")
    assert expected in cond["message"]
    assert stack.status("digits-bad")["phase"] == "Failed"
    described = stack.cluster.kubectl("describe", "em", "digits-bad").stdout
    assert "InvalidSpec" in described
    assert "needs at least one value" in described
    assert stack.jobs("digits-bad") == []
    assert all(revs == [] for revs in stack.assigned("digits-bad").values())

    # The same check as a validating admission webhook (kopf's server, an AdmissionReview over HTTP).
    review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "0a1b", "kind": {"group": "edgemodel.io", "version": "v1alpha1", "kind": "EdgeModel"},
        "resource": {"group": "edgemodel.io", "version": "v1alpha1", "resource": "edgemodels"},
        "operation": "CREATE", "namespace": "default", "name": "digits-bad", "object": doc,
        "userInfo": {"username": "someone"}, "dryRun": False}}
    replica = stack.replicas[0]
    request = urllib.request.Request(f"http://127.0.0.1:{replica.webhook_port}/validate/validate",
                                     data=json.dumps(review).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        answer = json.loads(resp.read())["response"]
    assert answer["allowed"] is False
    assert expected in answer["status"]["message"]

    stack.cluster.kubectl("delete", "em", "digits-bad", "--timeout=60s")
    assert stack.edgemodel("digits-bad") is None


def test_a_conversion_failure_is_a_condition_with_the_reason_and_an_event(stack: Stack) -> None:
    doc = stack.manifest(name="digits-missing")
    doc["spec"]["source"]["uri"] = (stack.dir / "no-such-model.pt").as_uri()
    stack.apply(doc, "digits-missing.yaml")
    stack.wait_for("the conversion failure", lambda: stack.condition("digits-missing", "Converted").get("reason")
             not in (None, "Converting"), 120)
    cond = stack.condition("digits-missing", "Converted")
    assert cond["status"] == "False"
    assert cond["reason"] == "SourceUnreadable", cond
    assert "no-such-model.pt" in cond["message"]
    assert stack.status("digits-missing")["phase"] == "Failed"
    warnings = [e for e in stack.events("digits-missing") if e[0] == "Warning" and e[1] == "ConversionFailed"]
    assert warnings
    assert "SourceUnreadable" in warnings[0][2]
    assert all(revs == [] for revs in stack.assigned("digits-missing").values())
    stack.cluster.kubectl("delete", "em", "digits-missing", "--timeout=60s")


def test_deleting_the_edgemodel_unassigns_it_everywhere_first(stack: Stack) -> None:
    assert stack.status("digits").get("revision") == 3
    stack.cluster.kubectl("delete", "em", "digits", "--timeout=60s")
    assert stack.edgemodel("digits") is None
    assert all(revs == [] for revs in stack.assigned().values()), "unassigned before the finalizer went"
    stack.wait_for("agents to unload digits", lambda: set(stack.reported().values()) == {None}, 60)
    stack.wait_for("the conversion Jobs to be garbage-collected", lambda: stack.jobs("digits") == [], 60)
    assert not stack.stored("default/digits/3/manifest.json"), "--artifact-retention delete"
    assert not stack.stored("default/digits/1/manifest.json")
    store = stack.dir / "store"
    assert not (store / "default" / "digits").exists(), "no empty model folder is left behind"
    assert not (store / ".staging" / "default" / "digits").exists(), "no empty staging folder is left behind"
    for endpoint in stack.endpoints():
        with pytest.raises(Exception, match="(?i)not found|unknown|404"):
            stack.predict(endpoint)


def test_the_operator_used_only_its_declared_permissions(stack: Stack) -> None:
    """Both replicas ran under a token holding exactly edgemodel_operator.rbac; nothing was forbidden."""
    logs = "".join(r.proc.log.read_text() for r in stack.replicas if r.proc)
    assert "Reconcile of EdgeModel" not in logs or "HTTP 403" not in logs
    assert "forbidden" not in logs.lower(), [line for line in logs.splitlines() if "orbidden" in line][:5]
