"""Decide: the whole reconcile of one EdgeModel as a pure function, ``decide(snapshot, settings) -> Decision``.

No I/O, no clock, no metrics, no logging: everything the reconcile will do (the status to write, the
conversion Job to create or delete, events, log lines, counter increments, EdgeAgent entries, node
counts, artifacts to delete, when to come back) is in the returned :class:`Decision`; ``act`` carries
it out. When the decision needs a fact the snapshot does not hold yet (the Job of a revision it just
opened, the analysis numbers of a step it just finished, the split plan of the revision it serves),
it says so in ``Decision.wants`` and nothing else; ``observe`` reads that fact and ``decide`` runs
again on the richer snapshot (at most once per kind of fact).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from edgemodel.api import (
    ArtifactRef,
    ConditionStatus,
    ConversionResult,
    EdgeModelSpec,
    EdgeModelStatus,
    ModelPhase,
    RevisionOutcome,
    RevisionRecord,
    get_condition,
    set_condition,
)
from edgemodel.split.chain_devices import PlanDevices
from edgemodel.split.planner import PlanError
from edgemodel_operator import (
    conversion_progress,
    jobs,
    pipeline,
    pipeline_rollout,
    revisions,
    scheduling,
    split_check,
    validation,
)
from edgemodel_operator import status as status_mod
from edgemodel_operator.analysis import (
    Check,
    Measurements,
    Verdict,
    VerdictStatus,
    judge,
    measure_from_agents,
)
from edgemodel_operator.assignments import desired_assignment, patch_for, tail_assignment, tails_patch
from edgemodel_operator.constants import ANNOTATION_SPEC_HASH
from edgemodel_operator.rollout import (
    AnalysisRequest,
    NodeState,
    RolloutInput,
    Transition,
    node_state,
    plan_rollout,
    rfc3339,
)
from edgemodel_operator.scheduling import AgentView, Selection
from edgemodel_operator.settings import OperatorSettings

CONVERSION_POLL_SECONDS = 15.0
REPLACED_JOB_POLL_SECONDS = 2.0
SPLIT_WAIT_POLL_SECONDS = 5.0
TRANSITION_LOG = {
    Transition.STARTED: "Started the rollout of",
    Transition.STEP: "Passed a rollout step of",
    Transition.PROMOTED: "Completed the rollout of",
    Transition.ROLLED_BACK: "Rolled back",
    Transition.HALTED: "Halted the rollout of",
}


# --- what goes in -----------------------------------------------------------------------------

AnalysisKey = tuple[int, tuple[str, ...], int]
"""(revision, nodes, window seconds) of an analysis request."""


@dataclass(frozen=True)
class JobSeen:
    """The conversion Job of one revision as observed: absent (None), running, or finished with its result."""

    revision: int
    job: Mapping[str, Any] | None
    result: ConversionResult | None = None
    """For a finished Job: the termination message, else result.json from the store (None: neither)."""
    progress: str = ""
    """For a running Job: its latest published progress step ('' when none), shown in ``Converted``."""


@dataclass(frozen=True)
class Snapshot:
    """Everything one reconcile decides on, read once: immutable."""

    namespace: str
    name: str
    body: Mapping[str, Any]
    """The EdgeModel as the API server returned it."""
    now: dt.datetime
    agents: tuple[AgentView, ...]
    """The fleet: typed views of every EdgeAgent (with its Node's labels and its Lease's last renewal)."""
    seen_now: dt.datetime
    """"Now" for freshness: the Lease stream's own clock (``liveness.Liveness.reference``)."""
    job: JobSeen | None = None
    measured: tuple[AnalysisKey, Measurements | str] | None = None
    """Prometheus' numbers for one analysis request (or why it could not answer)."""
    plans: Mapping[int, split_check.PlannedCuts | None] = field(default_factory=dict)
    """Revision -> the split plan in its split.json (None: none, or it could not be read)."""
    chains: Mapping[int, Mapping[str, Any] | None] = field(default_factory=dict)
    """Revision -> its chain.json (spec.split.stages; None: the revision has none)."""


def analysis_key(request: AnalysisRequest) -> AnalysisKey:
    return request.revision, request.nodes, request.window_seconds


# --- what comes out ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Event:
    type: str
    """Normal or Warning."""
    reason: str
    message: str


@dataclass(frozen=True)
class JobCreate:
    """Create the conversion Job (a 409 means a restarted operator finds it: no event then)."""

    name: str
    revision: int
    manifest: Mapping[str, Any]


@dataclass(frozen=True)
class AgentWrite:
    """Move the model's full/head entry on ``agent`` to ``entry`` (None: remove it)."""

    agent: AgentView
    entry: Mapping[str, Any] | None


@dataclass(frozen=True)
class TailWrite:
    """Make the model's tail entries on (cloud) ``agent`` exactly ``tails`` (revision -> entry)."""

    agent: AgentView
    tails: Mapping[int, Mapping[str, Any]]


@dataclass(frozen=True)
class Wants:
    """Facts the decision needs before it can be made (observe reads them, then decide runs again)."""

    job: tuple[int, str] | None = None
    """(revision, Job name): read the conversion Job (and its result when it finished)."""
    analysis: AnalysisRequest | None = None
    """Ask Prometheus for this analysis window."""
    plan: tuple[int, str] | None = None
    """(revision, split.json URI): read the revision's split plan."""
    chains: tuple[int, ...] = ()
    """Revisions whose chain.json (pipeline stages) to read."""

    def __bool__(self) -> bool:
        return self.job is not None or self.analysis is not None or self.plan is not None or bool(self.chains)


@dataclass
class Decision:
    """What to do, in this order: Job, status, events, EdgeAgents, tails, metrics, artifact deletion."""

    requeue_after: float | None
    invalid: str | None = None
    wants: Wants = field(default_factory=Wants)
    job_delete: str | None = None
    job_create: JobCreate | None = None
    status_patch: dict[str, Any] | None = None
    """A merge patch of ``status`` (only what changed); None or empty: no write."""
    events: list[Event] = field(default_factory=list)
    logs: list[tuple[int, str]] = field(default_factory=list)
    counters: list[tuple[str, str, float]] = field(default_factory=list)
    """(counter, label value, increment): rollouts{outcome}, conversions{outcome}, analyses{result/source}."""
    analysed: tuple[str, str] | None = None
    """(result, source) of the analysis judged in this decision (edgemodel_operator_analyses_total)."""
    conversion_recorded: tuple[int, float | None, Sequence[Any]] | None = None
    """(revision, Job duration, candidates) of a conversion that just finished."""
    agent_writes: list[AgentWrite] = field(default_factory=list)
    tail_writes: list[TailWrite] = field(default_factory=list)
    tail_revisions: tuple[int, ...] = ()
    node_counts: dict[str, int] | None = None
    delete_revisions: list[int] = field(default_factory=list)

    def requeue(self, seconds: float) -> None:
        """Come back after ``seconds`` at the latest."""
        self.requeue_after = seconds if self.requeue_after is None else min(self.requeue_after, seconds)

    def log(self, level: int, message: str) -> None:
        self.logs.append((level, message))


# --- pure helpers -----------------------------------------------------------------------------

def merge_diff(before: Any, after: Any) -> Any:
    """A JSON merge patch (RFC 7386) turning ``before`` into ``after`` (removed keys become null)."""
    if not isinstance(before, Mapping) or not isinstance(after, Mapping):
        return after
    patch: dict[str, Any] = {}
    for key in before.keys() - after.keys():
        patch[key] = None
    for key, value in after.items():
        if key not in before:
            patch[key] = value
        elif before[key] != value:
            patch[key] = merge_diff(before[key], value)
    return patch


def status_patch(raw_before: Mapping[str, Any], after: EdgeModelStatus, generation: int) -> dict[str, Any]:
    """The merge patch of status from what is stored to ``after`` (every condition at ``generation``)."""
    patch = merge_diff(dict(raw_before), status_mod.processed(after, generation).to_k8s())
    return patch if isinstance(patch, dict) else {}


def has_split(artifacts: Sequence[ArtifactRef]) -> bool:
    return any(a.split is not None for a in artifacts)


def cloud_url(spec: EdgeModelSpec, cloud: Selection) -> str:
    """Where edge nodes reach the tails: spec.split.cloud.serviceUrl, else a cloud agent's split endpoint."""
    if spec.split.cloud.service_url:
        return spec.split.cloud.service_url
    return next((a.split_endpoint for a in cloud.fresh + cloud.stale if a.split_endpoint), "")


def split_gate(namespace: str, name: str, revision: int, cloud: Selection, url: str) -> tuple[str | None, str | None]:
    """(why the edge must wait, why the revision failed) for a split revision's tail; (None, None) means go."""
    if not cloud.fresh:
        stale = f" ({len(cloud.stale)} stale)" if cloud.stale else ""
        return (f"waiting for a cloud agent for the split tail: none is fresh and matches spec.split.cloud.selector"
                f"{stale}; run agents labelled edgemodel.io/tier=cloud with --split-port"), None
    if not url:
        return ("waiting for a split endpoint: no cloud agent reports status.splitEndpoint and "
                "spec.split.cloud.serviceUrl is empty"), None
    waiting = []
    for agent in cloud.fresh:
        report = agent.tail_report(namespace, name, revision)
        if report is not None and report.state == ModelPhase.FAILED.value:
            return None, (f"the split tail of revision {revision} failed on cloud agent {agent.name}: "
                          f"{report.reason}: {report.message}")
        if report is None or report.state != ModelPhase.READY.value:
            waiting.append(agent.name)
    if waiting:
        return (f"waiting for the split tail of revision {revision} on cloud agent(s) {', '.join(waiting[:5])}"
                f" before any edge node gets its head"), None
    return None, None


def tail_revisions(namespace: str, name: str, agents: Sequence[AgentView], desired: Mapping[str, int | None],
                   artifacts: Mapping[int, list[ArtifactRef]], split_on: bool, pending: int | None) -> set[int]:
    """Split revisions any edge node runs (or is about to run) a head of: their tails must serve in the cloud."""
    if not split_on:
        return set()
    needed = {pending} if pending is not None else set()
    for agent in agents:
        if agent.is_cloud:
            continue
        revision = desired[agent.name] if agent.name in desired else agent.assigned_revision(namespace, name)
        if revision is not None:
            needed.add(revision)
        previous = agent.assigned_revision(namespace, name)
        if previous is not None:  # an agent switching revisions serves the old one until the new one is ready
            needed.add(previous)
    return {r for r in needed if has_split(artifacts.get(r, []))}


def node_counts(selection: Selection, namespace: str, name: str, current: int | None) -> dict[str, int]:
    """Selected nodes by state (ready/updating/failed/stale/unassigned) and those serving ``current``."""
    counts = {"ready": 0, "updating": 0, "failed": 0, "stale": len(selection.stale), "unassigned": 0,
              "serving": 0, "failed_current": 0}
    for agent in selection.fresh:
        assigned = agent.assigned_revision(namespace, name)
        if assigned is None:
            counts["unassigned"] += 1
            continue
        state, _ = node_state(agent, namespace, name, assigned)
        counts[{NodeState.READY: "ready", NodeState.UPDATING: "updating", NodeState.FAILED: "failed"}[state]] += 1
        if assigned == current:
            counts["serving"] += state == NodeState.READY
            counts["failed_current"] += state == NodeState.FAILED
    return counts


# --- the decision -----------------------------------------------------------------------------

@dataclass
class _Context:
    snap: Snapshot
    settings: OperatorSettings
    spec: EdgeModelSpec
    generation: int
    now: str
    d: Decision

    @property
    def key(self) -> str:
        return f"{self.snap.namespace}/{self.snap.name}"


def decide(snap: Snapshot, settings: OperatorSettings) -> Decision:
    """The reconcile of ``snap``'s EdgeModel (see the module docstring). Pure."""
    namespace, name = snap.namespace, snap.name
    meta = snap.body.get("metadata") or {}
    generation = int(meta.get("generation") or 1)
    now = rfc3339(snap.now)
    raw_status = snap.body.get("status") or {}
    d = Decision(requeue_after=settings.resync_seconds)
    try:
        before = EdgeModelStatus.model_validate(raw_status)
    except ValidationError:
        d.log(logging.WARNING, f"Ignored the unreadable status of EdgeModel {namespace}/{name}; rebuilding it")
        before = EdgeModelStatus()

    spec, problems = validation.problems(snap.body)
    if spec is None:
        message = validation.message(problems)
        d.status_patch = status_patch(raw_status, status_mod.invalid(before, message, generation, now), generation)
        if d.status_patch:
            d.events.append(Event("Warning", "InvalidSpec", message))
            d.log(logging.WARNING, f"Refused EdgeModel {namespace}/{name}: {message}")
        d.invalid = message
        d.requeue_after = None
        return d
    status = status_mod.valid(before, generation, now)
    if spec.suspend:
        d.status_patch = status_patch(raw_status, status_mod.suspended(status, generation, now), generation)
        return d

    ctx = _Context(snap, settings, spec, generation, now, d)
    spec_hash = revisions.build_hash(spec)
    if revisions.needs_new_revision(status, spec_hash):
        superseded = sum(1 for r in status.history if r.outcome == RevisionOutcome.ROLLING_OUT)
        annotations = meta.get("annotations") or {}
        status = revisions.open_revision(
            status, generation, spec_hash, now, settings.history_limit, revisions.origin(annotations, spec)
        )
        d.counters.append(("rollouts", "superseded", superseded))
        opened = revisions.latest(status)
        source = f" (from {opened.origin.kind} {opened.origin.name})" if opened and opened.origin else ""
        d.events.append(Event("Normal", "RevisionCreated",
                              f"generation {generation} opened revision {status.target_revision}{source}"))
        d.log(logging.INFO, f"Opened revision {status.target_revision} of EdgeModel {ctx.key} for generation "
                            f"{generation}")
    newest = revisions.latest(status)
    assert newest is not None
    if newest.outcome == RevisionOutcome.CONVERTING:
        status = _convert(ctx, status, newest, spec_hash)
        if d.wants:
            return d
        newest = revisions.latest(status)
        assert newest is not None

    status = _rollout(ctx, status, newest)
    if d.wants:
        return d
    dropped = {r.revision for r in before.history} - {r.revision for r in status.history}
    if dropped and settings.artifact_retention == "delete":
        d.delete_revisions = sorted(dropped)
    return d


def _convert(ctx: _Context, status: EdgeModelStatus, record: RevisionRecord, spec_hash: str) -> EdgeModelStatus:
    snap, d, generation, now = ctx.snap, ctx.d, ctx.generation, ctx.now
    revision = record.revision
    jname = jobs.job_name(snap.name, revision)
    seen = snap.job
    if seen is None or seen.revision != revision:
        d.wants = Wants(job=(revision, jname))
        return status
    job = seen.job
    if job is not None and ((job.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_SPEC_HASH) != spec_hash:
        d.log(logging.WARNING, f"Deleted conversion Job {snap.namespace}/{jname}: it was built from another spec")
        d.job_delete = jname
        d.requeue(REPLACED_JOB_POLL_SECONDS)
        return status_mod.conversion_running(status, revision, jname, "replacing a Job of another spec", generation,
                                             now)
    if job is None:
        measured = scheduling.measured_rtt_ms(snap.namespace, snap.name, snap.agents)
        job_spec = jobs.with_measured_rtt(ctx.spec, measured)
        if job_spec is not ctx.spec and measured is not None:
            d.log(logging.INFO, f"Planning the split of revision {revision} of {ctx.key} for the RTT the edge "
                                f"measured: {measured[0]:.1f} ms (median of {measured[1]} head(s); "
                                "spec.split.link.rttMs is empty)")
            d.events.append(Event("Normal", "SplitLinkMeasured", f"revision {revision} plans its cut for a "
                                  f"{measured[0]:.1f} ms RTT measured by {measured[1]} edge node(s)"))
        devices = None
        stages = ctx.spec.split.stages
        if stages is not None and not stages.cuts and status.revision is not None and status.revision not in snap.chains:
            d.wants = Wants(chains=(status.revision,))  # the serving chain's measured speeds plan the next one
            return status
        if ctx.spec.split.pipelined:  # count auto: plan over the stage nodes there are
            timeout = ctx.settings.heartbeat_timeout_seconds
            selected = scheduling.select(ctx.spec, snap.namespace, snap.name, snap.agents, snap.seen_now, timeout)
            fresh = [a for a in snap.agents if a.is_fresh(snap.seen_now, timeout)]
            entries = {a.name for a in selected.fresh + selected.stale}
            job_spec, capped = pipeline_rollout.job_spec(job_spec, fresh, entries)
            if capped:
                d.log(logging.INFO, f"The conversion of revision {revision} of {ctx.key} {capped}")
                d.events.append(Event("Normal", "PipelineStagesCapped", f"revision {revision} {capped}"))
            devices = _pipeline_devices(ctx, status, selected.fresh, fresh, entries)
            if devices is not None:
                what = devices.reason if devices.known else f"identical devices: {devices.reason}"
                d.log(logging.INFO, f"The conversion of revision {revision} of {ctx.key} plans its pipeline for {what}")
                d.events.append(Event("Normal", "PipelineDevices", f"revision {revision} plans its pipeline for {what}"))
        manifest = jobs.build_conversion_job(snap.body, job_spec, revision, spec_hash, ctx.settings,
                                             pipeline_devices=devices.to_json() if devices is not None else None)
        d.job_create = JobCreate(jname, revision, manifest)
        return status_mod.conversion_running(status, revision, jname, "created", generation, now)

    state = jobs.job_state(job)
    if state.phase == jobs.JobPhase.RUNNING:
        d.requeue(CONVERSION_POLL_SECONDS)
        detail = conversion_progress.running_detail(state.message, seen.progress)
        return status_mod.conversion_running(status, revision, jname, detail, generation, now)
    result = seen.result or ConversionResult(
        ok=False, revision=revision, reason=state.reason or "JobFailed",
        message=(state.message or "the Job left no result") + f"; see `kubectl logs -n {snap.namespace} job/{jname}`",
    )
    if state.phase == jobs.JobPhase.SUCCEEDED and result.ok and result.artifacts:
        d.counters.append(("conversions", "succeeded", 1))
        d.conversion_recorded = (revision, jobs.job_duration_seconds(job), result.candidates)
        chosen = ", ".join(f"{a.hardware_class.value}={a.candidate or a.precision.value}" for a in result.artifacts)
        d.events.append(Event("Normal", "Converted", f"revision {revision} converted: {chosen}"))
        d.log(logging.INFO, f"Converted revision {revision} of EdgeModel {ctx.key}: {chosen}")
        return status_mod.conversion_succeeded(status, revision, result, generation, now)
    if state.phase == jobs.JobPhase.SUCCEEDED and result.ok:
        result = result.model_copy(update={"ok": False, "reason": "NoArtifacts",
                                           "message": "the Job succeeded but reported no artifact"})
    d.counters.append(("conversions", "failed", 1))
    message = f"revision {revision}: {result.reason or state.reason}: {result.message or state.message}"
    d.events.append(Event("Warning", "ConversionFailed", message))
    d.log(logging.WARNING, f"Conversion of EdgeModel {ctx.key} failed: {message} (Job {jname})")
    return status_mod.conversion_failed(status, revision, result, generation, now)


def _rollout(ctx: _Context, status: EdgeModelStatus, newest: RevisionRecord) -> EdgeModelStatus:
    snap, spec, settings, d = ctx.snap, ctx.spec, ctx.settings, ctx.d
    namespace, name, generation, now = snap.namespace, snap.name, ctx.generation, ctx.now
    agents = list(snap.agents)
    timeout = settings.heartbeat_timeout_seconds
    selection = scheduling.select(spec, namespace, name, agents, snap.seen_now, timeout)
    cloud = scheduling.select_cloud(spec, agents, snap.seen_now, timeout)
    artifacts = {r.revision: r.artifacts for r in status.history}
    url = cloud_url(spec, cloud)
    target = newest.revision if newest.outcome == RevisionOutcome.ROLLING_OUT else None
    split_wait: str | None = None
    chains: dict[int, Mapping[str, Any]] = {}
    placed: dict[int, pipeline_rollout.ChainNodes] = {}
    if spec.split.pipelined:
        needed = {r for r in (target, status.revision, *(a.assigned_revision(namespace, name) for a in agents))
                  if r is not None and artifacts.get(r)}
        missing = tuple(sorted(r for r in needed if r not in snap.chains))
        if missing:
            d.wants = Wants(chains=missing)
            return status
        entry_names = {a.name for a in selection.fresh + selection.stale}
        candidates = [a for a in agents if a.is_fresh(snap.seen_now, timeout)]
        for revision in needed:
            chain = snap.chains.get(revision)
            if chain:
                chains[revision] = chain
                placed[revision] = pipeline_rollout.chain_nodes(spec.split, chain, candidates, entry_names)
        if target in chains and not any(a.assigned_revision(namespace, name) == target
                                        for a in selection.fresh + selection.stale):
            # A chain rolls out as one unit: entries move once the revision's stage is Ready on every stage node.
            split_wait, failure = pipeline_rollout.gate(namespace, name, target, placed[target])
            if placed[target].problem is not None and split_wait != status.rollout.message:
                d.events.append(Event("Warning", "PipelineUnplaceable", split_wait or ""))
                d.log(logging.WARNING, f"Cannot place the stages of EdgeModel {ctx.key}: {split_wait}")
            if failure is not None:
                status = _transition(ctx, status, Transition.ROLLED_BACK, failure, target)
                split_wait = None
            if split_wait is not None or failure is not None:
                target = None
    if target is not None and spec.split.enabled and has_split(artifacts.get(target, [])) and not any(
            a.assigned_revision(namespace, name) == target for a in selection.fresh + selection.stale):
        # A split revision reaches the edge only once its tail serves on every fresh cloud agent.
        split_wait, failure = split_gate(namespace, name, target, cloud, url)
        if failure is not None:
            status = _transition(ctx, status, Transition.ROLLED_BACK, failure, target)
            split_wait = None
        if split_wait is not None or failure is not None:
            target = None
    hold = {newest.revision} if newest.outcome == RevisionOutcome.FAILED and newest.artifacts else set()
    if status.revision is None:  # nothing verified to fall back to: only a rolled-back revision is removed
        hold |= {r.revision for r in status.history if r.outcome != RevisionOutcome.ROLLED_BACK}
    inp = RolloutInput(
        namespace=namespace, name=name, rollout=spec.rollout, selection=selection,
        assigned=[a for a in agents if a.assignment_index(namespace, name) is not None],
        current=status.revision, target=target, hold=frozenset(hold), progress=status.rollout, now=snap.now,
    )
    plan = plan_rollout(inp)
    if plan.analysis is not None:
        verdict = _verdict(ctx, plan.analysis)
        if verdict is None:
            return status
        inp.verdict = verdict
        plan = plan_rollout(inp)
    for kind, message in plan.transitions:
        status = _transition(ctx, status, kind, message, target)
    counts = node_counts(selection, namespace, name, status.revision)
    observed = status_mod.Observed(
        selected=selection.total, serving_current=counts["serving"], failed_current=counts["failed_current"],
        stale=[a.name for a in selection.stale],
    )
    if len(observed.stale) > status.rollout.stale_nodes:
        message = (f"{len(observed.stale)} selected node(s) renewed no Lease for {timeout:.0f} s: "
                   f"{', '.join(observed.stale[:10])}; they keep their models and are not counted as ready "
                   "until their agent renews again (check the agent and its node)")
        d.log(logging.WARNING, f"Found stale EdgeAgents of EdgeModel {ctx.key}: {message}")
        d.events.append(Event("Warning", "NodesStale", message))
    elif len(observed.stale) < status.rollout.stale_nodes:
        message = (f"{status.rollout.stale_nodes - len(observed.stale)} node(s) renewed their Lease again; "
                   f"{len(observed.stale)} stale")
        d.log(logging.INFO, f"Found EdgeAgents of EdgeModel {ctx.key} fresh again: {message}")
        d.events.append(Event("Normal", "NodesReturned", message))
    progress = plan.progress
    if split_wait is not None:
        progress = progress.model_copy(update={"message": split_wait})
        d.log(logging.INFO, f"Holding the rollout of EdgeModel {ctx.key}: {split_wait}")
        d.requeue(SPLIT_WAIT_POLL_SECONDS)
    status = status_mod.summarize(status, progress, observed, generation, now)
    checked = _check_split_cut(ctx, status, artifacts)
    if checked is None:
        return status
    status = _check_pipeline(ctx, checked, selection, chains, placed)
    d.status_patch = status_patch(snap.body.get("status") or {}, status, generation)
    d.agent_writes = _agent_writes(ctx, status, plan.desired, {a.name: a for a in agents}, url, chains, placed)
    pending = newest.revision if split_wait is not None else None
    if spec.split.pipelined:
        entry_revisions = {a.name: r for a in agents if (r := a.assigned_revision(namespace, name)) is not None}
        entry_revisions |= {n: r for n, r in plan.desired.items() if r is not None}
        keep = pipeline.revisions_to_keep(entry_revisions, pending) & chains.keys()
        d.tail_revisions = tuple(sorted(keep))
        d.tail_writes = _stage_writes(ctx, artifacts, agents, {r: (chains[r], placed[r]) for r in keep})
    else:
        tails = tail_revisions(namespace, name, agents, plan.desired, artifacts, spec.split.enabled, pending)
        d.tail_revisions = tuple(sorted(tails))
        d.tail_writes = _tail_writes(ctx, artifacts, agents, cloud, tails)
    d.node_counts = {k: v for k, v in counts.items() if k in ("ready", "updating", "failed", "stale", "unassigned")}
    if plan.requeue_after is not None:
        d.requeue(plan.requeue_after)
    return status


def _verdict(ctx: _Context, request: AnalysisRequest) -> Verdict | None:
    """The verdict on an analysis window; None (with ``wants``) until Prometheus' numbers are observed."""
    snap, d, analysis = ctx.snap, ctx.d, ctx.spec.rollout.analysis
    if ctx.settings.prometheus_url:
        if snap.measured is None or snap.measured[0] != analysis_key(request):
            d.wants = Wants(analysis=request)
            return None
        measured = snap.measured[1]
        if isinstance(measured, str):
            d.log(logging.WARNING, f"Postponed the analysis of EdgeModel {ctx.key} revision {request.revision}: "
                                   f"{measured}")
            d.analysed = ("Wait", "prometheus")
            return Verdict(VerdictStatus.WAIT, (Check("prometheus", False, measured),), None, "AnalysisUnavailable")
    else:
        measured = measure_from_agents(request.reports)
    verdict = judge(measured, analysis)
    d.analysed = (verdict.status.value, measured.source)
    d.log(logging.INFO, f"Analysed revision {request.revision} of EdgeModel {ctx.key}: {verdict.status.value} "
                        f"({verdict.message})")
    return verdict


def _transition(ctx: _Context, status: EdgeModelStatus, kind: Transition, message: str,
                target: int | None) -> EdgeModelStatus:
    d = ctx.d
    level = logging.WARNING if kind in (Transition.ROLLED_BACK, Transition.HALTED) else logging.INFO
    d.log(level, f"{TRANSITION_LOG[kind]} EdgeModel {ctx.key}: {message}")
    if kind == Transition.STARTED:
        d.events.append(Event("Normal", "RolloutStarted", message))
    elif kind == Transition.STEP:
        d.events.append(Event("Normal", "StepPassed", message))
    elif kind == Transition.PROMOTED and target is not None:
        status = revisions.promote(status, target, message)
        d.counters.append(("rollouts", "completed", 1))
        d.events.append(Event("Normal", "RolloutComplete", message))
    elif kind == Transition.ROLLED_BACK and target is not None:
        status = revisions.set_outcome(status, target, RevisionOutcome.ROLLED_BACK, message)
        d.counters.append(("rollouts", "rolled_back", 1))
        d.events.append(Event("Warning", "RolledBack", message))
    elif kind == Transition.HALTED and target is not None:
        status = revisions.set_outcome(status, target, RevisionOutcome.FAILED, message)
        d.counters.append(("rollouts", "halted", 1))
        d.events.append(Event("Warning", "RolloutHalted", message))
    return status


def _pipeline_devices(ctx: _Context, status: EdgeModelStatus, entries: Sequence[AgentView],
                      fresh: Sequence[AgentView], entry_names: set[str]) -> PlanDevices | None:
    """The devices the Job plans auto cuts for (speeds measured by the serving chain, else node labels);
    None with manual cuts."""
    stages = ctx.spec.split.stages
    if stages is None or stages.cuts:
        return None
    snap, serving = ctx.snap, status.revision
    chain = snap.chains.get(serving) if serving is not None else None
    measured = (pipeline_rollout.measured_slowdowns(snap.namespace, snap.name, serving, chain, fresh)
                if serving is not None else {})
    try:
        hosts = pipeline_rollout.stage_hosts(ctx.spec.split, fresh, entry_names)
    except PlanError as exc:
        return PlanDevices(reason=str(exc))
    return pipeline_rollout.job_devices(ctx.spec.split, entries, hosts, measured, serving)


def _check_split_cut(ctx: _Context, status: EdgeModelStatus,
                     artifacts: Mapping[int, list[ArtifactRef]]) -> EdgeModelStatus | None:
    """SplitCutCurrent for the serving revision's auto cut against what the heads measure (advice only);
    None (with ``wants``) until the revision's split plan is observed."""
    snap, spec, d = ctx.snap, ctx.spec, ctx.d
    check = None
    revision = status.revision
    split = next((a.split for a in artifacts.get(revision, []) if a.split is not None), None) if revision else None
    if spec.split.enabled and revision is not None and split is not None and split.chosen_by == "auto":
        if revision not in snap.plans:
            d.wants = Wants(plan=(revision, split.manifest_uri))
            return None
        rtt = scheduling.measured_rtt_ms(snap.namespace, snap.name, snap.agents)
        head = scheduling.measured_head_ms(snap.namespace, snap.name, snap.agents, revision)
        measured = split_check.Measured(rtt[0] if rtt else None, head[0] if head else None,
                                        max(rtt[1] if rtt else 0, head[1] if head else 0))
        check = split_check.check_cut(spec.split, split.cut, snap.plans[revision], measured)
    status, stale = status_mod.split_cut(status, check, ctx.generation, ctx.now)
    if stale and check is not None:
        d.log(logging.INFO, f"Found a better split cut for EdgeModel {ctx.key}: {check.message}")
        d.events.append(Event("Normal", "SplitCutStale", check.message))
    return status


def _check_pipeline(ctx: _Context, status: EdgeModelStatus, selection: Selection,
                    chains: Mapping[int, Mapping[str, Any]],
                    placed: Mapping[int, pipeline_rollout.ChainNodes]) -> EdgeModelStatus:
    """PipelinePlanCurrent for the serving chain (removed without one), with an event when its verdict changes."""
    snap, d, revision = ctx.snap, ctx.d, status.revision
    namespace, name = snap.namespace, snap.name
    previous = get_condition(status.conditions, pipeline.CONDITION)
    if revision is None or revision not in chains:
        if previous is None:
            return status
        new = status.model_copy(deep=True)
        new.conditions = [c for c in new.conditions if c.type != pipeline.CONDITION]
        return new
    serving = [a for a in selection.fresh if a.assigned_revision(namespace, name) == revision]
    head_ms = [r.head_ms for a in serving if (r := a.report(namespace, name)) is not None
               and r.serving_revision == revision and r.head_ms is not None]
    stage_ms = {a.name: r.stage_ms for a in placed[revision].nodes
                if (r := a.tail_report(namespace, name, revision)) is not None and r.stage_ms is not None}
    check = pipeline_rollout.plan_current(ctx.spec.split, chains[revision], placed[revision], serving, head_ms,
                                          stage_ms)
    value = ConditionStatus.TRUE if check.current else ConditionStatus.FALSE
    if previous is not None and previous.status == value and previous.reason == check.reason:
        return status  # the same verdict: numbers in the message move every reconcile, the condition need not
    if check.reason == pipeline_rollout.STAGE_NODES_LOST:
        d.events.append(Event("Warning", "PipelineReplanned", f"revision {revision}: {check.message}"))
        d.log(logging.WARNING, f"Re-planned the pipeline of EdgeModel {ctx.key}: {check.message}")
    elif previous is not None and previous.reason == pipeline_rollout.STAGE_NODES_LOST:
        d.events.append(Event("Normal", "PipelineReplanned", f"revision {revision}: the chain runs again on "
                              f"{[a.name for a in placed[revision].nodes]}"))
        d.log(logging.INFO, f"Re-planned the pipeline of EdgeModel {ctx.key}: the chain runs again")
    if check.reason == "BetterPlanMeasured":
        d.events.append(Event("Normal", "PipelinePlanStale", check.message))
        d.log(logging.INFO, f"Found a better pipeline plan for EdgeModel {ctx.key}: {check.message}")
    new = status.model_copy(deep=True)
    new.conditions = set_condition(new.conditions, pipeline.CONDITION, value, check.reason, check.message[:32000],
                                   ctx.generation, ctx.now)
    return new


def _stage_writes(ctx: _Context, artifacts: Mapping[int, list[ArtifactRef]], agents: Sequence[AgentView],
                  keep: Mapping[int, tuple[Mapping[str, Any], pipeline_rollout.ChainNodes]]) -> list[TailWrite]:
    """Every stage node gets exactly the stages of ``keep``'s revisions it hosts; every other agent loses its own."""
    namespace, name, settings = ctx.snap.namespace, ctx.snap.name, ctx.settings
    tails = pipeline_rollout.stage_tails(namespace, name, keep, artifacts, settings.store_url,
                                         settings.agent_base_url)
    writes = []
    for agent in agents:
        want = tails.get(agent.name, {})
        if tails_patch(agent, namespace, name, want) is not None:
            writes.append(TailWrite(agent, want))
    return writes


def _agent_writes(ctx: _Context, status: EdgeModelStatus, desired: Mapping[str, int | None],
                  by_name: Mapping[str, AgentView], split_url: str,
                  chains: Mapping[int, Mapping[str, Any]] | None = None,
                  placed: Mapping[int, pipeline_rollout.ChainNodes] | None = None) -> list[AgentWrite]:
    snap, spec, settings, d = ctx.snap, ctx.spec, ctx.settings, ctx.d
    namespace, name = snap.namespace, snap.name
    artifacts = {r.revision: r.artifacts for r in status.history}
    entries: dict[tuple[int, str], dict[str, Any] | None] = {}
    writes = []
    for agent_name, revision in desired.items():
        agent = by_name.get(agent_name)
        if agent is None:
            continue
        want: dict[str, Any] | None = None
        if revision is not None and chains and placed and revision in chains:
            chain_placed = placed[revision]
            if chain_placed.problem is None:
                want = pipeline_rollout.entry_assignment(namespace, name, revision, agent, artifacts.get(revision, []),
                                                         chains[revision], chain_placed, settings.store_url,
                                                         settings.agent_base_url)
            else:  # too few stage nodes: the entry serves the whole model (one stage) until they are back
                want = desired_assignment(namespace, name, revision, agent, artifacts.get(revision, []),
                                          spec.serving, settings.store_url, settings.agent_base_url)
            if want is None:
                d.log(logging.WARNING, f"Left EdgeAgent {agent_name} unchanged: revision {revision} of {ctx.key} has "
                                       f"no artifact for class {agent.hardware_class}")
                continue
        elif revision is not None:
            key = (revision, agent.hardware_class)
            if key not in entries:
                entries[key] = desired_assignment(namespace, name, revision, agent, artifacts.get(revision, []),
                                                  spec.serving, settings.store_url, settings.agent_base_url,
                                                  spec.split, split_url)
            want = entries[key]
            if want is None:
                d.log(logging.WARNING, f"Left EdgeAgent {agent_name} unchanged: revision {revision} of {ctx.key} has "
                                       f"no artifact for class {agent.hardware_class}")
                continue
            if (want.get("split") or {}).get("cloudUrl") == "" and want.get("role") == "head":
                d.log(logging.WARNING, f"Left EdgeAgent {agent_name} unchanged: no cloud agent reports a split "
                                       f"endpoint for {ctx.key} and spec.split.cloud.serviceUrl is empty")
                continue
        if patch_for(agent, namespace, name, want) is not None:
            writes.append(AgentWrite(agent, want))
    return writes


def _tail_writes(ctx: _Context, artifacts: Mapping[int, list[ArtifactRef]], agents: Sequence[AgentView],
                 cloud: Selection, wanted: set[int]) -> list[TailWrite]:
    """Every selected cloud agent gets exactly the tails in ``wanted``; the others lose theirs."""
    namespace, name, settings = ctx.snap.namespace, ctx.snap.name, ctx.settings
    entries = {}
    for revision in sorted(wanted):
        entry = tail_assignment(namespace, name, revision, artifacts.get(revision, []), settings.store_url,
                                settings.agent_base_url)
        if entry is not None:
            entries[revision] = entry
    selected = {a.name for a in cloud.fresh + cloud.stale}
    writes = []
    for agent in agents:
        want = entries if agent.name in selected else {}
        if tails_patch(agent, namespace, name, want) is not None:
            writes.append(TailWrite(agent, want))
    return writes
