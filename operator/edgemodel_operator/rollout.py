"""The rollout planner: which node should serve which revision now. Pure: state in, plan out.

Steady state: every fresh selected node serves the good revision. Rollout of a new revision:
canary steps (e.g. 10%, 50%, 100% of the fresh selected nodes, at least one more node per step)
or one step of 100% (AllAtOnce); at most ``maxUnavailable`` nodes switching at once; when all of
a step's nodes are ready, an analysis window runs and its verdict advances, promotes or fails the
rollout. A node failing to load the revision fails the step at once. On failure the nodes on the
new revision go back to the good one (``autoRollback``) or stay where they are (halted).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from edgemodel.api import ModelPhase, RolloutStatus, RolloutStrategy
from edgemodel.api.edgemodel import Rollout
from edgemodel_operator.analysis import Verdict, VerdictStatus, load_failure
from edgemodel_operator.scheduling import AgentView, ReportedModel, Selection, parse_time

UNASSIGN = None


def rfc3339(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def step_counts(nodes: int, steps: Sequence[int]) -> list[int]:
    """Nodes on the new revision after each step: the percentage rounded half up, at least one more per step."""
    counts: list[int] = []
    previous = 0
    for percent in steps:
        count = min(nodes, max(math.floor(nodes * percent / 100 + 0.5), previous + 1))
        if count > previous:
            counts.append(count)
            previous = count
    return counts


def max_unavailable(value: int | str, nodes: int) -> int:
    """``maxUnavailable`` as a node count (percentages round down), at least 1."""
    if isinstance(value, int):
        return max(1, value)
    return max(1, math.floor(nodes * int(value.rstrip("%")) / 100))


class NodeState(StrEnum):
    READY = "Ready"
    UPDATING = "Updating"
    FAILED = "Failed"


def node_state(agent: AgentView, namespace: str, name: str, revision: int) -> tuple[NodeState, ReportedModel | None]:
    """How a node is doing with the revision it is assigned."""
    report = agent.report(namespace, name)
    if report is None or report.revision != revision:
        return NodeState.UPDATING, report
    if report.state == ModelPhase.READY.value and report.serving_revision in (None, revision):
        return NodeState.READY, report
    if report.state == ModelPhase.FAILED.value:
        return NodeState.FAILED, report
    return NodeState.UPDATING, report


class Transition(StrEnum):
    STARTED = "RolloutStarted"
    STEP = "StepPassed"
    PROMOTED = "RolloutComplete"
    ROLLED_BACK = "RolledBack"
    HALTED = "RolloutHalted"


@dataclass(frozen=True)
class AnalysisRequest:
    """The planner needs a verdict on these nodes of ``revision`` over ``window_seconds``."""

    revision: int
    nodes: tuple[str, ...]
    reports: tuple[ReportedModel, ...]
    window_seconds: int


@dataclass
class RolloutInput:
    namespace: str
    name: str
    rollout: Rollout
    selection: Selection
    assigned: Sequence[AgentView]
    """Every agent that has this model in spec.models (selected or not)."""
    current: int | None
    """The good revision (status.revision)."""
    target: int | None
    """The revision being rolled out, or None in the steady state."""
    hold: frozenset[int]
    """Revisions nodes may stay on (a halted rollout); they are not moved back."""
    progress: RolloutStatus
    now: dt.datetime
    verdict: Verdict | None = None


@dataclass
class RolloutPlan:
    desired: dict[str, int | None] = field(default_factory=dict)
    """Agent -> revision to assign (None: unassign). Agents not listed are left alone."""
    progress: RolloutStatus = field(default_factory=RolloutStatus)
    transitions: list[tuple[Transition, str]] = field(default_factory=list)
    verdict: Verdict | None = None
    analysis: AnalysisRequest | None = None
    requeue_after: float | None = None


def _unassign_unselected(inp: RolloutInput, plan: RolloutPlan) -> None:
    selected = {a.name for a in inp.selection.fresh} | {a.name for a in inp.selection.stale}
    for agent in inp.assigned:
        if agent.name not in selected:
            plan.desired[agent.name] = UNASSIGN


def _requeue(plan: RolloutPlan, seconds: float) -> None:
    plan.requeue_after = seconds if plan.requeue_after is None else min(plan.requeue_after, seconds)


def _steady(inp: RolloutInput, plan: RolloutPlan) -> RolloutPlan:
    """Every fresh selected node on the good revision (nodes on a held revision stay)."""
    ready = failed = 0
    for agent in inp.selection.fresh:
        assigned = agent.assigned_revision(inp.namespace, inp.name)
        if assigned is not None and assigned in inp.hold:
            continue
        plan.desired[agent.name] = inp.current
        if assigned == inp.current and inp.current is not None:
            state, _ = node_state(agent, inp.namespace, inp.name, inp.current)
            ready += state == NodeState.READY
            failed += state == NodeState.FAILED
    _unassign_unselected(inp, plan)
    updated = sum(
        1 for a in inp.selection.fresh
        if (plan.desired.get(a.name, a.assigned_revision(inp.namespace, inp.name)) == inp.current)
    ) if inp.current is not None else 0
    keep = inp.progress if inp.progress.revision == inp.current else RolloutStatus(revision=inp.current or 0)
    plan.progress = RolloutStatus(
        revision=inp.current or 0,
        step=keep.step,
        total_steps=keep.total_steps,
        desired_nodes=inp.selection.total,
        updated_nodes=updated,
        ready_nodes=ready,
        failed_nodes=failed,
        stale_nodes=len(inp.selection.stale),
        step_started_at=keep.step_started_at,
        analysis_started_at=None,
        message=_steady_message(inp, ready, failed),
    )
    return plan


def _steady_message(inp: RolloutInput, ready: int, failed: int) -> str:
    if inp.current is None:
        return "no revision is serving yet"
    parts = [f"{ready}/{len(inp.selection.fresh)} fresh node(s) serve revision {inp.current}"]
    if failed:
        parts.append(f"{failed} failed")
    if inp.selection.stale:
        parts.append(f"{len(inp.selection.stale)} stale: {_names([a.name for a in inp.selection.stale])}")
    return "; ".join(parts)


def _names(names: Sequence[str], limit: int = 5) -> str:
    head = ", ".join(names[:limit])
    return head + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _pick_order(inp: RolloutInput, agent: AgentView) -> tuple[int, str]:
    """Nodes to move first: those serving nothing, then those on an unverified revision, then the good one."""
    assigned = agent.assigned_revision(inp.namespace, inp.name)
    rank = 0 if assigned is None else (2 if assigned == inp.current else 1)
    return rank, agent.name


def plan_rollout(inp: RolloutInput) -> RolloutPlan:
    """The plan for this moment (see the module docstring)."""
    plan = RolloutPlan()
    target = inp.target
    if target is None or target == inp.current:
        return _steady(inp, plan)

    fresh = inp.selection.fresh
    nodes = len(fresh)
    steps = [100] if inp.rollout.strategy == RolloutStrategy.ALL_AT_ONCE else list(inp.rollout.steps)
    counts = step_counts(nodes, steps)
    base = inp.progress if inp.progress.revision == target and inp.progress.step >= 1 else None
    if base is None and counts:
        plan.transitions.append((Transition.STARTED, f"rollout of revision {target} started over {nodes} node(s) "
                                 f"in {len(counts)} step(s) of {', '.join(map(str, counts))} node(s)"))
    step = base.step if base else 1
    step_started = base.step_started_at if base else rfc3339(inp.now)
    analysis_started = base.analysis_started_at if base else None
    _unassign_unselected(inp, plan)

    def progress(message: str, on_target: int, ready: int, failed: int) -> RolloutStatus:
        return RolloutStatus(
            revision=target, step=step if counts else 0, total_steps=len(counts), desired_nodes=inp.selection.total,
            updated_nodes=on_target, ready_nodes=ready, failed_nodes=failed, stale_nodes=len(inp.selection.stale),
            step_started_at=step_started, analysis_started_at=analysis_started, message=message,
        )

    if not counts:
        plan.progress = progress(
            f"waiting for agents: none is fresh and matches spec.selector and spec.hardware "
            f"({len(inp.selection.stale)} stale, {len(inp.selection.excluded)} excluded)", 0, 0, 0)
        return plan

    window = inp.rollout.analysis.window_seconds
    verdict = inp.verdict
    for _ in range(len(counts) + 1):
        step = min(step, len(counts))
        wanted = counts[step - 1]
        on_target = [a for a in fresh if plan.desired.get(a.name, a.assigned_revision(inp.namespace, inp.name)) == target]
        states = {a.name: node_state(a, inp.namespace, inp.name, target) for a in on_target}
        failed = [(n, r) for n, (s, r) in states.items() if s == NodeState.FAILED and r is not None]
        ready = [n for n, (s, _) in states.items() if s == NodeState.READY]
        updating = [n for n, (s, _) in states.items() if s == NodeState.UPDATING]

        if failed:
            return _fail(inp, plan, load_failure(failed), on_target, progress("", len(on_target), len(ready), len(failed)))

        # Nodes outside this step keep their revision (entries are re-applied, e.g. new serving
        # settings); unassigned ones serve the good revision meanwhile.
        for agent in fresh:
            if agent.name in plan.desired:
                continue
            assigned = agent.assigned_revision(inp.namespace, inp.name)
            if assigned in (target, inp.current) and assigned is not None:
                plan.desired[agent.name] = assigned
            elif assigned is None and inp.current is not None:
                plan.desired[agent.name] = inp.current

        if len(on_target) < wanted:
            slots = max_unavailable(inp.rollout.max_unavailable, nodes) - len(updating)
            names_on = {a.name for a in on_target}
            candidates = sorted((a for a in fresh if a.name not in names_on), key=lambda a: _pick_order(inp, a))
            picks = candidates[: max(0, min(wanted - len(on_target), slots))]
            for agent in picks:
                plan.desired[agent.name] = target
            switching = len(updating) + len(picks)
            plan.progress = progress(
                f"step {step}/{len(counts)}: {len(on_target) + len(picks)}/{wanted} node(s) assigned revision {target}, "
                f"{len(ready)} ready, {switching} switching (maxUnavailable {inp.rollout.max_unavailable})",
                len(on_target) + len(picks), len(ready), 0)
            return plan

        if updating:
            plan.progress = progress(
                f"step {step}/{len(counts)}: {len(ready)}/{len(on_target)} node(s) ready on revision {target}; "
                f"waiting for {_names(sorted(updating))}", len(on_target), len(ready), 0)
            return plan

        # Every node of the step is ready: the analysis window runs.
        if analysis_started is None:
            analysis_started = rfc3339(inp.now)
        started = parse_time(analysis_started) or inp.now
        elapsed = (inp.now - started).total_seconds()
        if elapsed < window:
            plan.progress = progress(
                f"step {step}/{len(counts)}: {len(ready)} node(s) ready on revision {target}; analysing "
                f"({elapsed:.0f}/{window} s)", len(on_target), len(ready), 0)
            _requeue(plan, window - elapsed)
            return plan

        if verdict is None:
            reports = tuple(r for _, (_, r) in states.items() if r is not None)
            plan.analysis = AnalysisRequest(target, tuple(sorted(ready)), reports, window)
            plan.progress = progress(f"step {step}/{len(counts)}: judging the analysis window", len(on_target),
                                     len(ready), 0)
            return plan
        plan.verdict = verdict
        if verdict.status == VerdictStatus.WAIT:
            plan.progress = progress(f"step {step}/{len(counts)}: {verdict.message}", len(on_target), len(ready), 0)
            _requeue(plan, min(window, 10))
            return plan
        if verdict.status == VerdictStatus.FAIL:
            return _fail(inp, plan, verdict, on_target, progress("", len(on_target), len(ready), 0))

        # Passed.
        if step >= len(counts):
            plan.transitions.append((Transition.PROMOTED, f"revision {target} is ready on {len(ready)} node(s) and "
                                     f"passed analysis: {verdict.message}"))
            plan.progress = progress(f"revision {target} rolled out to {len(ready)} node(s)", len(on_target),
                                     len(ready), 0)
            return plan
        plan.transitions.append((Transition.STEP, f"step {step}/{len(counts)} of revision {target} passed: "
                                 f"{verdict.message}"))
        step += 1
        step_started = rfc3339(inp.now)
        analysis_started = None
        verdict = None
    raise AssertionError("the step loop is bounded by the number of steps")


def _fail(
    inp: RolloutInput, plan: RolloutPlan, verdict: Verdict, on_target: Sequence[AgentView], base: RolloutStatus
) -> RolloutPlan:
    plan.verdict = verdict
    target = inp.target
    if inp.rollout.auto_rollback:
        back = f"revision {inp.current}" if inp.current is not None else "no revision (unassigned)"
        for agent in on_target:
            plan.desired[agent.name] = inp.current
        plan.transitions.append((Transition.ROLLED_BACK, f"revision {target} failed analysis ({verdict.message}); "
                                 f"{len(on_target)} node(s) rolled back to {back}"))
        message = f"rolled back to {back}: {verdict.message}"
    else:
        for name in [a.name for a in on_target]:
            plan.desired.pop(name, None)
        plan.transitions.append((Transition.HALTED, f"revision {target} failed analysis ({verdict.message}); "
                                 "autoRollback is off, so the nodes keep what they have"))
        message = f"halted: {verdict.message}"
    plan.progress = base.model_copy(update={"message": message})
    return plan
