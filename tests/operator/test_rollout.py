"""The rollout planner driven through whole rollouts by a small simulated fleet (no API server)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgemodel.api import RolloutStatus
from edgemodel.api.edgemodel import Analysis, Rollout
from edgemodel_operator.analysis import Measurements, judge
from edgemodel_operator.rollout import (
    RolloutInput,
    RolloutPlan,
    Transition,
    max_unavailable,
    plan_rollout,
    step_counts,
)
from edgemodel_operator.scheduling import AgentView, select
from tests.operator.builders import NOW, agent_body, assignment, report, spec


@given(nodes=st.integers(min_value=0, max_value=2000),
       steps=st.lists(st.integers(min_value=1, max_value=99), max_size=6, unique=True))
def test_step_counts_rise_by_at_least_one_node_and_end_with_every_node(nodes: int, steps: list[int]) -> None:
    percentages = [*sorted(steps), 100]
    counts = step_counts(nodes, percentages)
    assert (counts[-1] if counts else 0) == nodes
    assert all(b > a for a, b in zip([0, *counts], counts, strict=False))
    assert len(counts) <= len(percentages)


def test_step_counts_for_small_fleets() -> None:
    assert step_counts(3, [10, 50, 100]) == [1, 2, 3]
    assert step_counts(3, [34, 67, 100]) == [1, 2, 3]
    assert step_counts(4, [25, 50, 100]) == [1, 2, 4]
    assert step_counts(1, [10, 50, 100]) == [1]
    assert step_counts(10, [10, 50, 100]) == [1, 5, 10]
    assert step_counts(1000, [10, 50, 100]) == [100, 500, 1000]
    assert step_counts(0, [100]) == []


def test_max_unavailable_takes_numbers_and_percentages_and_is_at_least_one() -> None:
    assert max_unavailable(2, 10) == 2
    assert max_unavailable("25%", 10) == 2
    assert max_unavailable("25%", 3) == 1
    assert max_unavailable("100%", 7) == 7


@dataclass
class SimAgent:
    name: str
    labels: dict[str, str] = field(default_factory=lambda: {"edge": "true"})
    assigned: int | None = None
    reported: dict[str, Any] | None = None
    fresh: bool = True

    def view(self, now: dt.datetime) -> AgentView:
        heartbeat = now if self.fresh else now - dt.timedelta(hours=1)
        models = [assignment(self.assigned)] if self.assigned is not None else []
        return AgentView.from_body(agent_body(self.name, labels=self.labels, heartbeat=heartbeat, models=models,
                                              reported=[self.reported] if self.reported else []))


@dataclass
class Sim:
    """Agents that load whatever they are assigned; revisions in ``broken`` fail to load; ``slow`` is over budget."""

    agents: list[SimAgent]
    rollout: Rollout
    current: int | None = None
    target: int | None = None
    broken: set[int] = field(default_factory=set)
    slow: set[int] = field(default_factory=set)
    now: dt.datetime = NOW
    progress: RolloutStatus = field(default_factory=RolloutStatus)
    transitions: list[tuple[Transition, str]] = field(default_factory=list)
    max_switching: int = 0
    history: list[int] = field(default_factory=list)
    """Nodes on the target after each plan."""

    def plan(self) -> RolloutPlan:
        views = [a.view(self.now) for a in self.agents]
        selection = select(spec(rollout=self.rollout.to_k8s()), "default", "digits", views, self.now, 60)
        inp = RolloutInput(
            namespace="default", name="digits", rollout=self.rollout, selection=selection,
            assigned=[v for v in views if v.spec_models], current=self.current, target=self.target,
            hold=frozenset(), progress=self.progress, now=self.now,
        )
        plan = plan_rollout(inp)
        if plan.analysis is not None:
            p95 = 99.0 if plan.analysis.revision in self.slow else 1.0
            inp.verdict = judge(Measurements("agents", requests=100, errors=0, p95_ms=p95, nodes=1),
                                self.rollout.analysis)
            plan = plan_rollout(inp)
        return plan

    def step(self) -> RolloutPlan:
        """One reconcile: plan, apply transitions and assignments, then the agents react."""
        plan = self.plan()
        self.progress = plan.progress
        self.transitions += plan.transitions
        for kind, _ in plan.transitions:
            if kind == Transition.PROMOTED:
                self.current, self.target = self.target, None
            if kind in (Transition.ROLLED_BACK, Transition.HALTED):
                self.target = None
        by_name = {a.name: a for a in self.agents}
        for name, revision in plan.desired.items():
            if by_name[name].assigned != revision:
                by_name[name].assigned = revision
                by_name[name].reported = None
        switching = sum(1 for a in self.agents if a.assigned == self.target and a.reported is None and a.fresh)
        self.max_switching = max(self.max_switching, switching)
        self.history.append(sum(1 for a in self.agents if self.target is not None and a.assigned == self.target))
        for agent in self.agents:
            if agent.assigned is not None and agent.reported is None and agent.fresh:
                failed = agent.assigned in self.broken
                agent.reported = report(agent.assigned, "Failed" if failed else "Ready",
                                        reason="LoadFailed" if failed else "", message="bad graph" if failed else "")
        self.now += dt.timedelta(seconds=plan.requeue_after or 1)
        return plan

    def run(self, limit: int = 200) -> None:
        for _ in range(limit):
            self.step()
            if self.target is None:
                self.step()  # the steady-state reconcile after a transition
                return
        raise AssertionError("the rollout did not finish in time")


def canary(**kw: Any) -> Rollout:
    return Rollout(analysis=Analysis(window_seconds=5, max_p95_latency_ms=10), **kw)


def fleet(n: int, on: int | None = None) -> list[SimAgent]:
    agents = [SimAgent(f"edge-{i:02d}") for i in range(n)]
    for a in agents:
        if on is not None:
            a.assigned, a.reported = on, report(on)
    return agents


def test_canary_goes_through_each_step_and_promotes() -> None:
    sim = Sim(fleet(3, on=1), canary(steps=[10, 50, 100], max_unavailable=1), current=1, target=2)
    sim.run()
    kinds = [k for k, _ in sim.transitions]
    assert kinds == [Transition.STARTED, Transition.STEP, Transition.STEP, Transition.PROMOTED]
    assert sim.current == 2
    assert all(a.assigned == 2 for a in sim.agents)
    assert sorted(set(sim.history) - {0}) == [1, 2, 3]
    assert sim.max_switching <= 1


def test_max_unavailable_bounds_nodes_switching_at_once() -> None:
    sim = Sim(fleet(20, on=1), canary(steps=[50, 100], max_unavailable=3), current=1, target=2)
    sim.run()
    assert sim.current == 2
    assert sim.max_switching <= 3


def test_all_at_once_is_one_step() -> None:
    sim = Sim(fleet(10, on=1), canary(strategy="AllAtOnce", max_unavailable="100%"), current=1, target=2)
    sim.run()
    assert [k for k, _ in sim.transitions] == [Transition.STARTED, Transition.PROMOTED]
    assert sim.max_switching == 10


def test_a_revision_over_latency_budget_is_rolled_back_after_the_first_step() -> None:
    sim = Sim(fleet(4, on=1), canary(steps=[25, 100], max_unavailable=1), current=1, target=2, slow={2})
    sim.run()
    rolled = [m for k, m in sim.transitions if k == Transition.ROLLED_BACK]
    assert rolled
    assert "p95 99.00 ms > maxP95LatencyMs 10 ms" in rolled[0]
    assert sim.current == 1
    assert all(a.assigned == 1 for a in sim.agents)
    assert max(sim.history) == 1, "only the first step's node ever got the bad revision"


def test_a_revision_failing_to_load_fails_the_step_at_once() -> None:
    sim = Sim(fleet(5, on=1), canary(steps=[20, 100], max_unavailable=1), current=1, target=2, broken={2})
    sim.run()
    rolled = [m for k, m in sim.transitions if k == Transition.ROLLED_BACK]
    assert rolled
    assert "failed to load" in rolled[0]
    assert "LoadFailed: bad graph" in rolled[0]
    assert all(a.assigned == 1 for a in sim.agents)


def test_without_auto_rollback_the_rollout_halts_and_nodes_keep_the_revision() -> None:
    sim = Sim(fleet(4, on=1), canary(steps=[25, 100], max_unavailable=1, auto_rollback=False), current=1, target=2,
              slow={2})
    plans = [sim.step() for _ in range(20) if sim.target is not None]
    halted = [m for k, m in sim.transitions if k == Transition.HALTED]
    assert halted
    assert "autoRollback is off" in halted[0]
    assert sorted(a.assigned for a in sim.agents) == [1, 1, 1, 2]
    canary_node = next(a.name for a in sim.agents if a.assigned == 2)
    assert canary_node not in plans[-1].desired
    # Afterwards (steady state, the halted revision held) the canary node still stays where it is.
    views = [a.view(sim.now) for a in sim.agents]
    selection = select(spec(), "default", "digits", views, sim.now, 60)
    steady = plan_rollout(RolloutInput("default", "digits", sim.rollout, selection, views, current=1, target=None,
                                       hold=frozenset({2}), progress=sim.progress, now=sim.now))
    assert canary_node not in steady.desired
    assert {n: r for n, r in steady.desired.items()} == {a.name: 1 for a in sim.agents if a.name != canary_node}


def test_first_revision_rolls_out_to_unassigned_nodes_and_a_failure_unassigns() -> None:
    sim = Sim(fleet(3), canary(steps=[34, 100], max_unavailable=1), current=None, target=1, broken={1})
    sim.run()
    assert any(k == Transition.ROLLED_BACK for k, _ in sim.transitions)
    assert all(a.assigned is None for a in sim.agents)


def test_new_nodes_get_the_good_revision_while_a_canary_runs() -> None:
    agents = fleet(4, on=1)
    agents.append(SimAgent("edge-new"))
    sim = Sim(agents, canary(steps=[20, 100], max_unavailable=1), current=1, target=2)
    plan = sim.plan()
    assert plan.desired["edge-new"] == 2, "a node serving nothing is the first canary"
    assert [n for n, r in plan.desired.items() if r == 2] == ["edge-new"]


def test_stale_nodes_are_left_alone_and_unselected_nodes_are_unassigned() -> None:
    agents = fleet(3, on=1)
    agents[0].fresh = False
    agents[1].labels = {"edge": "false"}
    sim = Sim(agents, canary(), current=1, target=None)
    plan = sim.step()
    assert "edge-00" not in plan.desired
    assert plan.desired["edge-01"] is None
    assert plan.desired["edge-02"] == 1
    assert plan.progress.stale_nodes == 1


def test_no_fresh_node_means_waiting_not_promoting() -> None:
    agents = fleet(2)
    for a in agents:
        a.fresh = False
    sim = Sim(agents, canary(), current=None, target=1)
    plan = sim.step()
    assert sim.target == 1
    assert "waiting for agents" in plan.progress.message
    assert plan.desired == {}


def test_restart_mid_rollout_resumes_from_status_without_restarting_steps() -> None:
    sim = Sim(fleet(4, on=1), canary(steps=[25, 50, 100], max_unavailable=1), current=1, target=2)
    for _ in range(6):
        sim.step()
    step_before = sim.progress.step
    assert step_before >= 2
    # A new operator process: only status (progress) and the agents survive.
    resumed = Sim(sim.agents, sim.rollout, current=1, target=2, now=sim.now,
                  progress=RolloutStatus.model_validate(sim.progress.to_k8s()))
    plan = resumed.step()
    assert Transition.STARTED not in [k for k, _ in plan.transitions]
    assert resumed.progress.step >= step_before
    resumed.run()
    assert resumed.current == 2


@pytest.mark.parametrize("requests", [0, 5])
def test_analysis_waits_for_min_requests(requests: int) -> None:
    verdict = judge(Measurements("agents", requests, 0, 1.0, 1), Analysis(min_requests=10))
    assert verdict.status.value == "Wait"
    assert f"{requests} requests < minRequests 10" in verdict.message
