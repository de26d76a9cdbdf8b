"""Analysis verdicts from numbers, and which agent events wake which EdgeModel."""

from __future__ import annotations

import datetime as dt

from edgemodel.api.edgemodel import Analysis
from edgemodel_operator.analysis import Measurements, VerdictStatus, judge, measure_from_agents, promql
from edgemodel_operator.fleet import Fleet, woken_models
from edgemodel_operator.scheduling import AgentView
from tests.operator.builders import NOW, agent_body, assignment, report

BUDGET = Analysis(max_p95_latency_ms=20, max_error_rate=0.01, min_requests=10, window_seconds=30)


def test_verdicts_carry_the_numbers() -> None:
    ok = judge(Measurements("agents", 200, 1, 12.5, 2), BUDGET)
    assert ok.status == VerdictStatus.PASS
    assert "p95 12.50 ms <= maxP95LatencyMs 20 ms" in ok.message
    assert "error rate 0.50% <= maxErrorRate 1.00%" in ok.message
    slow = judge(Measurements("agents", 200, 0, 31.0, 2), BUDGET)
    assert (slow.status, slow.reason) == (VerdictStatus.FAIL, "LatencyBudgetExceeded")
    assert "p95 31.00 ms > maxP95LatencyMs 20 ms" in slow.message
    assert "200 requests on 2 node(s)" in slow.message
    errors = judge(Measurements("prometheus", 100, 5, 1.0, 1), BUDGET)
    assert (errors.status, errors.reason) == (VerdictStatus.FAIL, "ErrorRateExceeded")
    assert "error rate 5.00% > maxErrorRate 1.00%" in errors.message
    assert judge(Measurements("agents", 3, 0, 1.0, 1), BUDGET).status == VerdictStatus.WAIT
    assert judge(Measurements("agents", 50, 0, None, 1), BUDGET).status == VerdictStatus.WAIT
    no_traffic = judge(Measurements("agents", 0, 0, None, 1), Analysis(max_p95_latency_ms=20))
    assert no_traffic.status == VerdictStatus.PASS


def test_agent_reports_sum_requests_and_take_the_worst_p95() -> None:
    m = measure_from_agents([
        AgentView.from_body(agent_body("a", reported=[report(2, requests=40, errors=1, p95=3.0)])).reported[0],
        AgentView.from_body(agent_body("b", reported=[report(2, requests=60, errors=0, p95=9.0)])).reported[0],
    ])
    assert (m.requests, m.errors, m.p95_ms, m.nodes) == (100, 1, 9.0, 2)


def test_promql_selects_the_namespace_model_and_version() -> None:
    queries = promql("team-a", "digits", 3, 30)
    sel = 'namespace="team-a",model="digits",version="3"'
    assert queries["p95"] == ('1000 * histogram_quantile(0.95, sum by (le) '
                              f'(rate(edgemodel_request_duration_seconds_bucket{{{sel}}}[30s])))')
    assert all(sel in q for q in queries.values())
    assert 'code=~"[45].."' in queries["errors"]


def test_woken_models_only_on_changes_that_matter() -> None:
    base = AgentView.from_body(agent_body("a", reported=[report(1, requests=5)]))
    assert woken_models(None, base, NOW, 60) is None, "a new agent wakes everything"
    relabelled = AgentView.from_body(agent_body("a", labels={"edge": "no"}, reported=[report(1, requests=5)]))
    assert woken_models(base, relabelled, NOW, 60) is None
    more_traffic = AgentView.from_body(agent_body("a", reported=[report(1, requests=50)],
                                                  heartbeat=NOW + dt.timedelta(seconds=10)))
    assert woken_models(base, more_traffic, NOW, 60) == set()
    loading = AgentView.from_body(agent_body("a", reported=[report(2, "Loading")]))
    assert woken_models(base, loading, NOW, 60) == {("default", "digits")}
    stale = AgentView.from_body(agent_body("a", reported=[report(1)], heartbeat=NOW - dt.timedelta(minutes=5)))
    assert woken_models(stale, base, NOW, 60) is None, "an agent coming back wakes everything"


def test_fleet_overlays_its_own_writes_until_the_watch_catches_up() -> None:
    woken: list[object] = []
    fleet = Fleet(wake=woken.append)
    fleet.load([agent_body("a", generation=1)])
    fleet.synced.set()
    assert woken == [], "the first list wakes nothing"
    fleet.record_write(agent_body("a", generation=2, models=[assignment(1)]))
    seen = fleet.get("a")
    assert seen is not None
    assert seen.assigned_revision("default", "digits") == 1
    fleet.on_event("MODIFIED", agent_body("a", generation=3, models=[assignment(2)]))
    seen = fleet.get("a")
    assert seen is not None
    assert seen.assigned_revision("default", "digits") == 2
    fleet.on_event("MODIFIED", agent_body("a", generation=3, models=[assignment(2)], reported=[report(1, requests=9)]))
    assert woken[-1] == {("default", "digits")}, "a reported state change wakes its model"
    fleet.on_event("DELETED", agent_body("a", generation=3))
    assert woken[-1] is None
    assert fleet.snapshot() == []


def test_selection_uses_the_node_labels_never_the_agents_own() -> None:
    """An agent may write its EdgeAgent's labels; the operator selects (and finds cloud agents) by Node labels."""
    from edgemodel_operator.scheduling import select, select_cloud
    from tests.operator.builders import spec

    forged = {"edge": "true", "edgemodel.io/tier": "cloud"}
    woken: list[object] = []
    fleet = Fleet(wake=woken.append)
    fleet.load([agent_body(name, labels=forged) for name in ("edge-0", "edge-1", "ghost")])
    fleet.load_nodes([{"metadata": {"name": "edge-0", "labels": {"edge": "true"}}},
                      {"metadata": {"name": "edge-1", "labels": {"edgemodel.io/tier": "cloud"}}}])
    fleet.synced.set()
    views = {v.name: v for v in fleet.snapshot()}
    assert views["edge-0"].labels == {"edge": "true"}
    assert not views["edge-0"].is_cloud, "the tier label on its EdgeAgent is forged"
    assert views["edge-1"].is_cloud, "the admin labelled its Node"
    assert views["ghost"].labels == {}, "an EdgeAgent without a Node has no labels"
    edge = select(spec(), "default", "digits", views.values(), NOW, 60)
    assert [a.name for a in edge.fresh] == ["edge-0"]
    split = spec(split={"cut": "view", "cloud": {"serviceUrl": "https://cloud:8443"}})
    assert [a.name for a in select_cloud(split, views.values(), NOW, 60).fresh] == ["edge-1"]
    fleet.on_event("MODIFIED", agent_body("edge-0", labels={**forged, "more": "forged"}))
    assert fleet.get("edge-0") == views["edge-0"], "an agent's own labels never reach selection"
    fleet.on_node_event("MODIFIED", {"metadata": {"name": "edge-0", "labels": {"edgemodel.io/tier": "cloud"}}})
    assert woken[-1] is None, "a Node's new labels wake every EdgeModel"
    edge_0 = fleet.get("edge-0")
    assert edge_0 is not None
    assert edge_0.is_cloud
