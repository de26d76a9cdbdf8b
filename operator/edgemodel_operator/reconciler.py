"""The one level-driven reconcile of an EdgeModel: observe, decide with the pure modules, act.

Order of effects, so that a crash at any point is repaired by the next reconcile:
1. create the conversion Job (deterministic name: a restart finds it, never duplicates it);
2. write status once, only if it changed (revision outcomes first: a rollback is recorded
   before any node is moved back, so a restart never re-rolls a bad revision);
3. patch the EdgeAgents whose entry differs from the plan (one small JSON patch each).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import json
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import kopf
from pydantic import ValidationError

from edgemodel.api import (
    ArtifactRef,
    ConversionResult,
    EdgeModelSpec,
    EdgeModelStatus,
    ModelPhase,
    RevisionOutcome,
    RevisionRecord,
)
from edgemodel_operator import conversion_progress, jobs, revisions, scheduling, split_check, validation
from edgemodel_operator import status as status_mod
from edgemodel_operator.analysis import (
    Check,
    PrometheusError,
    Verdict,
    VerdictStatus,
    judge,
    measure_from_agents,
    measure_with_prometheus,
)
from edgemodel_operator.assignments import (
    JsonPatch,
    desired_assignment,
    patch_for,
    removal_patch,
    tail_assignment,
    tails_patch,
)
from edgemodel_operator.constants import ANNOTATION_SPEC_HASH, LABEL_MODEL, LABEL_REVISION
from edgemodel_operator.kube import JSON_PATCH, MERGE_PATCH, ApiError, ApiUnavailable, Paths
from edgemodel_operator.rollout import (
    AnalysisRequest,
    NodeState,
    RolloutInput,
    Transition,
    node_state,
    plan_rollout,
    rfc3339,
)
from edgemodel_operator.runtime import Runtime
from edgemodel_operator.scheduling import AgentView, Selection

log = logging.getLogger(__name__)
PLAN_CACHE_SIZE = 256
"""Split plans (split.json) kept in memory, oldest dropped first."""

AGENT_WRITE_ATTEMPTS = 3
TRANSITION_LOG = {
    Transition.STARTED: "Started the rollout of",
    Transition.STEP: "Passed a rollout step of",
    Transition.PROMOTED: "Completed the rollout of",
    Transition.ROLLED_BACK: "Rolled back",
    Transition.HALTED: "Halted the rollout of",
}
CONVERSION_POLL_SECONDS = 15.0


@dataclass
class Outcome:
    """What the caller does next: reconcile again after ``requeue_after`` seconds (or on a wake-up)."""

    requeue_after: float | None
    invalid: str | None = None
    events: list[tuple[str, str, str]] = field(default_factory=list)


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


class Reconciler:
    """Reconciles EdgeModels with the runtime's clients; stateless between calls except the fleet overlay
    and a cache of split plans (immutable per revision)."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self._plans: dict[tuple[str, str, int], split_check.PlannedCuts | None] = {}

    async def reconcile(self, namespace: str, name: str) -> Outcome:
        """Bring one EdgeModel one step closer to its spec; safe to call any time, any number of times."""
        started = time.monotonic()
        result = "error"
        try:
            async with self.rt.lock((namespace, name)):
                outcome = await self._reconcile(namespace, name)
            result = "invalid" if outcome.invalid else "ok"
            return outcome
        finally:
            self.rt.metrics.reconcile_duration.labels(result=result).observe(time.monotonic() - started)

    async def _reconcile(self, namespace: str, name: str) -> Outcome:
        rt, settings = self.rt, self.rt.settings
        body = await rt.client.get(Paths.edgemodel(namespace, name))
        if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
            return Outcome(None)
        meta = body["metadata"]
        generation = int(meta.get("generation") or 1)
        now_dt = dt.datetime.now(dt.UTC)
        now = rfc3339(now_dt)
        raw_status = body.get("status") or {}
        try:
            before = EdgeModelStatus.model_validate(raw_status)
        except ValidationError:
            log.warning("Ignored the unreadable status of EdgeModel %s/%s; rebuilding it", namespace, name)
            before = EdgeModelStatus()
        outcome = Outcome(settings.resync_seconds)

        spec, problems = validation.problems(body)
        if spec is None:
            message = validation.message(problems)
            after = status_mod.invalid(before, message, generation, now)
            if await self._write_status(namespace, name, raw_status, after, generation):
                outcome.events.append(("Warning", "InvalidSpec", message))
                log.warning("Refused EdgeModel %s/%s: %s", namespace, name, message)
            self._emit(body, outcome.events)
            outcome.invalid = message
            outcome.requeue_after = None
            return outcome
        status = status_mod.valid(before, generation, now)

        if spec.suspend:
            status = status_mod.suspended(status, generation, now)
            await self._write_status(namespace, name, raw_status, status, generation)
            return outcome

        spec_hash = revisions.build_hash(spec)
        if revisions.needs_new_revision(status, spec_hash):
            superseded = sum(1 for r in status.history if r.outcome == RevisionOutcome.ROLLING_OUT)
            status = revisions.open_revision(status, generation, spec_hash, now, settings.history_limit)
            rt.metrics.rollouts.labels(outcome="superseded").inc(superseded)
            outcome.events.append(("Normal", "RevisionCreated",
                                   f"generation {generation} opened revision {status.target_revision}"))
            log.info("Opened revision %s of EdgeModel %s/%s for generation %s", status.target_revision, namespace,
                     name, generation)
        newest = revisions.latest(status)
        assert newest is not None
        if newest.outcome == RevisionOutcome.CONVERTING:
            status = await self._convert(body, spec, status, newest, spec_hash, generation, now, outcome)
            newest = revisions.latest(status)
            assert newest is not None

        status = await self._rollout(body, spec, status, newest, generation, now_dt, outcome)
        dropped = {r.revision for r in before.history} - {r.revision for r in status.history}
        if dropped and settings.artifact_retention == "delete":
            await self.delete_artifacts(namespace, name, sorted(dropped))
        return outcome

    # --- conversion ---------------------------------------------------------------------------

    async def _convert(self, body: Mapping[str, Any], spec: EdgeModelSpec, status: EdgeModelStatus,
                       record: RevisionRecord, spec_hash: str, generation: int, now: str,
                       outcome: Outcome) -> EdgeModelStatus:
        rt = self.rt
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        revision = record.revision
        jname = jobs.job_name(name, revision)
        job = await rt.client.get(Paths.job(namespace, jname))
        if job is not None and (job["metadata"].get("annotations") or {}).get(ANNOTATION_SPEC_HASH) != spec_hash:
            log.warning("Deleted conversion Job %s/%s: it was built from another spec", namespace, jname)
            await rt.client.delete(Paths.job(namespace, jname))
            outcome.requeue_after = min(outcome.requeue_after or 2.0, 2.0)
            return status_mod.conversion_running(status, revision, jname, "replacing a Job of another spec",
                                                 generation, now)
        if job is None:
            measured = scheduling.measured_rtt_ms(namespace, name, rt.fleet.snapshot())
            job_spec = jobs.with_measured_rtt(spec, measured)
            if job_spec is not spec and measured is not None:
                log.info("Planning the split of revision %s of %s/%s for the RTT the edge measured: %.1f ms "
                         "(median of %d head(s); spec.split.link.rttMs is empty)", revision, namespace, name,
                         *measured)
                outcome.events.append(("Normal", "SplitLinkMeasured", f"revision {revision} plans its cut for a "
                                       f"{measured[0]:.1f} ms RTT measured by {measured[1]} edge node(s)"))
            manifest = jobs.build_conversion_job(body, job_spec, revision, spec_hash, rt.settings)
            try:
                await rt.client.create(Paths.jobs(namespace), manifest)
                rt.metrics.conversions.labels(outcome="started").inc()
                outcome.events.append(("Normal", "ConversionStarted", f"created conversion Job {jname}"))
                log.info("Created conversion Job %s/%s for revision %s", namespace, jname, revision)
            except ApiError as exc:
                if exc.status != 409:
                    raise
                log.info("Found conversion Job %s/%s already created", namespace, jname)
            return status_mod.conversion_running(status, revision, jname, "created", generation, now)

        state = jobs.job_state(job)
        if state.phase == jobs.JobPhase.RUNNING:
            outcome.requeue_after = min(outcome.requeue_after or CONVERSION_POLL_SECONDS, CONVERSION_POLL_SECONDS)
            progress = await conversion_progress.read(rt.session(), rt.settings.store_url, namespace, name, revision)
            return status_mod.conversion_running(status, revision, jname,
                                                 conversion_progress.running_detail(state.message, progress),
                                                 generation, now)
        result = await self._job_result(namespace, name, revision, jname, state)
        if state.phase == jobs.JobPhase.SUCCEEDED and result.ok and result.artifacts:
            rt.metrics.conversions.labels(outcome="succeeded").inc()
            rt.metrics.record_conversion(namespace, name, revision, jobs.job_duration_seconds(job), result.candidates)
            chosen = ", ".join(f"{a.hardware_class.value}={a.candidate or a.precision.value}" for a in result.artifacts)
            outcome.events.append(("Normal", "Converted", f"revision {revision} converted: {chosen}"))
            log.info("Converted revision %s of EdgeModel %s/%s: %s", revision, namespace, name, chosen)
            return status_mod.conversion_succeeded(status, revision, result, generation, now)
        if state.phase == jobs.JobPhase.SUCCEEDED and result.ok:
            result = result.model_copy(update={"ok": False, "reason": "NoArtifacts",
                                               "message": "the Job succeeded but reported no artifact"})
        rt.metrics.conversions.labels(outcome="failed").inc()
        message = f"revision {revision}: {result.reason or state.reason}: {result.message or state.message}"
        outcome.events.append(("Warning", "ConversionFailed", message))
        log.warning("Conversion of EdgeModel %s/%s failed: %s (Job %s)", namespace, name, message, jname)
        return status_mod.conversion_failed(status, revision, result, generation, now)

    async def _job_result(self, namespace: str, name: str, revision: int, jname: str,
                          state: jobs.JobState) -> ConversionResult:
        """The Job's ConversionResult: termination message first, result.json in the store second."""
        pods = await self.rt.client.list(Paths.pods(namespace), label_selector=f"{LABEL_MODEL}={name},"
                                         f"{LABEL_REVISION}={revision}")
        result = jobs.result_from_pods(pods)
        if state.phase == jobs.JobPhase.SUCCEEDED and (result is None or not result.candidates):
            stored = await self._stored_result(namespace, name, revision)
            result = stored or result
        if result is not None:
            return result
        return ConversionResult(
            ok=False, revision=revision, reason=state.reason or "JobFailed",
            message=(state.message or "the Job left no result") + f"; see `kubectl logs -n {namespace} job/{jname}`",
        )

    async def _stored_result(self, namespace: str, name: str, revision: int) -> ConversionResult | None:
        text = await self._stored_file(namespace, name, revision, "result.json")
        return None if text is None else jobs.parse_result(text)

    async def _stored_file(self, namespace: str, name: str, revision: int, file: str,
                           level: int = logging.WARNING) -> str | None:
        """A file of a revision in the artifact store; None when it is not there or the store cannot be reached
        (logged at ``level``)."""
        url = f"{self.rt.settings.store_url.rstrip('/')}/{namespace}/{name}/{revision}/{file}"
        try:
            async with self.rt.session().get(url) as resp:
                if resp.status != 200:
                    log.debug("Could not read %s: HTTP %s", url, resp.status)
                    return None
                return await resp.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.log(level, "Could not read %s: %s", url, exc)
            return None

    # --- rollout ------------------------------------------------------------------------------

    async def _rollout(self, body: Mapping[str, Any], spec: EdgeModelSpec, status: EdgeModelStatus,
                       newest: RevisionRecord, generation: int, now_dt: dt.datetime,
                       outcome: Outcome) -> EdgeModelStatus:
        rt, settings = self.rt, self.rt.settings
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        now = rfc3339(now_dt)
        agents = rt.fleet.snapshot()
        by_name = {a.name: a for a in agents}
        seen_now = rt.liveness.now()  # freshness by the Lease stream's clock (see liveness.Liveness.reference)
        selection = scheduling.select(spec, namespace, name, agents, seen_now, settings.heartbeat_timeout_seconds)
        cloud = scheduling.select_cloud(spec, agents, seen_now, settings.heartbeat_timeout_seconds)
        artifacts = {r.revision: r.artifacts for r in status.history}
        url = cloud_url(spec, cloud)
        target = newest.revision if newest.outcome == RevisionOutcome.ROLLING_OUT else None
        split_wait: str | None = None
        if target is not None and spec.split.enabled and _has_split(artifacts.get(target, [])) and not any(
                a.assigned_revision(namespace, name) == target for a in selection.fresh + selection.stale):
            # A split revision reaches the edge only once its tail serves on every fresh cloud agent.
            split_wait, failure = split_gate(namespace, name, target, cloud, url)
            if failure is not None:
                status = self._transition(f"{namespace}/{name}", status, Transition.ROLLED_BACK, failure, target,
                                          outcome)
                split_wait = None
            if split_wait is not None or failure is not None:
                target = None
        hold = {newest.revision} if newest.outcome == RevisionOutcome.FAILED and newest.artifacts else set()
        if status.revision is None:  # nothing verified to fall back to: only a rolled-back revision is removed
            hold |= {r.revision for r in status.history if r.outcome != RevisionOutcome.ROLLED_BACK}
        inp = RolloutInput(
            namespace=namespace, name=name, rollout=spec.rollout, selection=selection,
            assigned=[a for a in agents if a.assignment_index(namespace, name) is not None],
            current=status.revision, target=target, hold=frozenset(hold), progress=status.rollout, now=now_dt,
        )
        plan = plan_rollout(inp)
        if plan.analysis is not None:
            inp.verdict = await self._analyse(namespace, name, spec, plan.analysis)
            plan = plan_rollout(inp)
        for kind, message in plan.transitions:
            status = self._transition(f"{namespace}/{name}", status, kind, message, target, outcome)
        counts = self._counts(selection, namespace, name, status.revision)
        observed = status_mod.Observed(
            selected=selection.total, serving_current=counts["serving"], failed_current=counts["failed_current"],
            stale=[a.name for a in selection.stale],
        )
        if len(observed.stale) > status.rollout.stale_nodes:
            message = (f"{len(observed.stale)} selected node(s) renewed no Lease for {settings.heartbeat_timeout_seconds:.0f}"
                       f" s: {', '.join(observed.stale[:10])}; they keep their models and are not counted as ready "
                       "until their agent renews again (check the agent and its node)")
            log.warning("Found stale EdgeAgents of EdgeModel %s/%s: %s", namespace, name, message)
            outcome.events.append(("Warning", "NodesStale", message))
        elif len(observed.stale) < status.rollout.stale_nodes:
            message = (f"{status.rollout.stale_nodes - len(observed.stale)} node(s) renewed their Lease again; "
                       f"{len(observed.stale)} stale")
            log.info("Found EdgeAgents of EdgeModel %s/%s fresh again: %s", namespace, name, message)
            outcome.events.append(("Normal", "NodesReturned", message))
        progress = plan.progress
        if split_wait is not None:
            progress = progress.model_copy(update={"message": split_wait})
            log.info("Holding the rollout of EdgeModel %s/%s: %s", namespace, name, split_wait)
            _requeue_soon(outcome, 5.0)
        status = status_mod.summarize(status, progress, observed, generation, now)
        status = await self._check_split_cut(namespace, name, spec, status, artifacts, agents, generation, now,
                                             outcome)
        await self._write_status(namespace, name, body.get("status") or {}, status, generation)
        self._emit(body, outcome.events)
        written = await self._apply(namespace, name, spec, status, plan.desired, by_name, url)
        tails = tail_revisions(namespace, name, agents, plan.desired, artifacts, spec.split.enabled,
                               newest.revision if split_wait is not None else None)
        tail_writes = await self._apply_tails(namespace, name, artifacts, agents, cloud, tails)
        for key, count in tail_writes.items():
            written[key] = written.get(key, 0) + count
        rt.metrics.set_nodes(namespace, name, {k: v for k, v in counts.items() if k in
                                               ("ready", "updating", "failed", "stale", "unassigned")})
        if plan.requeue_after is not None:
            outcome.requeue_after = min(outcome.requeue_after or plan.requeue_after, plan.requeue_after)
        if written.get("error") or written.get("conflict"):
            outcome.requeue_after = min(outcome.requeue_after or 5.0, 5.0)
        return status

    def _transition(self, key: str, status: EdgeModelStatus, kind: Transition, message: str, target: int | None,
                    outcome: Outcome) -> EdgeModelStatus:
        metrics = self.rt.metrics
        verb = TRANSITION_LOG[kind]
        log.log(logging.WARNING if kind in (Transition.ROLLED_BACK, Transition.HALTED) else logging.INFO,
                "%s EdgeModel %s: %s", verb, key, message)
        if kind == Transition.STARTED:
            outcome.events.append(("Normal", "RolloutStarted", message))
        elif kind == Transition.STEP:
            outcome.events.append(("Normal", "StepPassed", message))
        elif kind == Transition.PROMOTED and target is not None:
            status = revisions.promote(status, target, message)
            metrics.rollouts.labels(outcome="completed").inc()
            outcome.events.append(("Normal", "RolloutComplete", message))
        elif kind == Transition.ROLLED_BACK and target is not None:
            status = revisions.set_outcome(status, target, RevisionOutcome.ROLLED_BACK, message)
            metrics.rollouts.labels(outcome="rolled_back").inc()
            outcome.events.append(("Warning", "RolledBack", message))
        elif kind == Transition.HALTED and target is not None:
            status = revisions.set_outcome(status, target, RevisionOutcome.FAILED, message)
            metrics.rollouts.labels(outcome="halted").inc()
            outcome.events.append(("Warning", "RolloutHalted", message))
        return status

    async def _check_split_cut(self, namespace: str, name: str, spec: EdgeModelSpec, status: EdgeModelStatus,
                               artifacts: Mapping[int, list[ArtifactRef]], agents: list[AgentView], generation: int,
                               now: str, outcome: Outcome) -> EdgeModelStatus:
        """SplitCutCurrent for the serving revision's auto cut against what the heads measure (advice only)."""
        check = None
        revision = status.revision
        split = next((a.split for a in artifacts.get(revision, []) if a.split is not None), None) if revision else None
        if spec.split.enabled and revision is not None and split is not None and split.chosen_by == "auto":
            planned = await self._planned_cuts(namespace, name, revision, split.manifest_uri)
            rtt = scheduling.measured_rtt_ms(namespace, name, agents)
            head = scheduling.measured_head_ms(namespace, name, agents, revision)
            measured = split_check.Measured(rtt[0] if rtt else None, head[0] if head else None,
                                            max(rtt[1] if rtt else 0, head[1] if head else 0))
            check = split_check.check_cut(spec.split, split.cut, planned, measured)
        status, stale = status_mod.split_cut(status, check, generation, now)
        if stale and check is not None:
            log.info("Found a better split cut for EdgeModel %s/%s: %s", namespace, name, check.message)
            outcome.events.append(("Normal", "SplitCutStale", check.message))
        return status

    async def _planned_cuts(self, namespace: str, name: str, revision: int,
                            manifest_uri: str) -> split_check.PlannedCuts | None:
        """The plan in a revision's split.json, read once from the store (immutable per revision)."""
        key = (namespace, name, revision)
        if key in self._plans:
            return self._plans[key]
        file = manifest_uri.rsplit("/", 1)[-1] or "split.json"
        text = await self._stored_file(namespace, name, revision, file, level=logging.DEBUG)
        if text is None:
            return None  # not remembered: the next reconcile tries again
        try:
            doc = json.loads(text)
        except ValueError as exc:
            log.debug("Could not parse %s of %s/%s revision %s: %s", file, namespace, name, revision, exc)
            return None
        planned = split_check.PlannedCuts.from_split_json(doc)
        while len(self._plans) >= PLAN_CACHE_SIZE:
            self._plans.pop(next(iter(self._plans)))
        self._plans[key] = planned
        return planned

    def _counts(self, selection: Selection, namespace: str, name: str, current: int | None) -> dict[str, int]:
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

    async def _analyse(self, namespace: str, name: str, spec: EdgeModelSpec, request: AnalysisRequest) -> Verdict:
        settings, analysis = self.rt.settings, spec.rollout.analysis
        if settings.prometheus_url:
            try:
                measured = await measure_with_prometheus(self.rt.session(), settings.prometheus_url, namespace, name,
                                                         request.revision, request.window_seconds, len(request.nodes))
            except PrometheusError as exc:
                log.warning("Postponed the analysis of EdgeModel %s/%s revision %s: %s", namespace, name,
                            request.revision, exc)
                self.rt.metrics.analyses.labels(result="Wait", source="prometheus").inc()
                return Verdict(VerdictStatus.WAIT, (Check("prometheus", False, str(exc)),), None,
                               "AnalysisUnavailable")
        else:
            measured = measure_from_agents(request.reports)
        verdict = judge(measured, analysis)
        self.rt.metrics.analyses.labels(result=verdict.status.value, source=measured.source).inc()
        log.info("Analysed revision %s of EdgeModel %s/%s: %s (%s)", request.revision, namespace, name,
                 verdict.status.value, verdict.message)
        return verdict

    # --- writes -------------------------------------------------------------------------------

    async def _write_status(self, namespace: str, name: str, raw_before: Mapping[str, Any],
                            after: EdgeModelStatus, generation: int) -> bool:
        """One merge patch of status if anything changed, every condition at ``generation``; whether it wrote."""
        patch = merge_diff(dict(raw_before), status_mod.processed(after, generation).to_k8s())
        if not patch:
            return False
        await self.rt.client.patch(Paths.edgemodel_status(namespace, name), {"status": patch}, MERGE_PATCH)
        return True

    async def _apply(self, namespace: str, name: str, spec: EdgeModelSpec, status: EdgeModelStatus,
                     desired: Mapping[str, int | None], by_name: Mapping[str, AgentView],
                     split_url: str = "") -> dict[str, int]:
        settings = self.rt.settings
        artifacts = {r.revision: r.artifacts for r in status.history}
        cache: dict[tuple[int, str], dict[str, Any] | None] = {}
        writes = []
        for agent_name, revision in desired.items():
            agent = by_name.get(agent_name)
            if agent is None:
                continue
            want: dict[str, Any] | None = None
            if revision is not None:
                key = (revision, agent.hardware_class)
                if key not in cache:
                    cache[key] = desired_assignment(namespace, name, revision, agent, artifacts.get(revision, []),
                                                    spec.serving, settings.store_url, settings.agent_base_url,
                                                    spec.split, split_url)
                want = cache[key]
                if want is None:
                    log.warning("Left EdgeAgent %s unchanged: revision %s of %s/%s has no artifact for class %s",
                                agent_name, revision, namespace, name, agent.hardware_class)
                    continue
                if (want.get("split") or {}).get("cloudUrl") == "" and want.get("role") == "head":
                    log.warning("Left EdgeAgent %s unchanged: no cloud agent reports a split endpoint for %s/%s "
                                "and spec.split.cloud.serviceUrl is empty", agent_name, namespace, name)
                    continue
            if patch_for(agent, namespace, name, want) is not None:
                writes.append(self._write_agent(agent, namespace, name, want))
        results = await _tally(writes)
        if writes:
            log.info("Patched %d EdgeAgent(s) for %s/%s: %s", len(writes), namespace, name, results)
        return results

    async def _apply_tails(self, namespace: str, name: str, artifacts: Mapping[int, list[ArtifactRef]],
                           agents: list[AgentView], cloud: Selection, revisions_: set[int]) -> dict[str, int]:
        """Give every selected cloud agent exactly the tails in ``revisions_``; take them from the others."""
        settings = self.rt.settings
        entries = {}
        for revision in sorted(revisions_):
            entry = tail_assignment(namespace, name, revision, artifacts.get(revision, []), settings.store_url,
                                    settings.agent_base_url)
            if entry is not None:
                entries[revision] = entry
        selected = {a.name for a in cloud.fresh + cloud.stale}
        writes = []
        for agent in agents:
            want = entries if agent.name in selected else {}
            if tails_patch(agent, namespace, name, want) is not None:
                writes.append(self._write_agent_with(agent, functools.partial(
                    _tails_patch_of, namespace=namespace, name=name, desired=want)))
        results = await _tally(writes)
        if writes:
            log.info("Set the split tails of %s/%s (revisions %s) on %d cloud EdgeAgent(s): %s", namespace, name,
                     sorted(entries) or "none", len(writes), results)
        return results

    async def _write_agent(self, agent: AgentView, namespace: str, name: str, want: dict[str, Any] | None) -> str:
        return await self._write_agent_with(agent, lambda a: patch_for(a, namespace, name, want))

    async def _write_agent_with(self, agent: AgentView, make_patch: Callable[[AgentView], JsonPatch | None]) -> str:
        """Apply ``make_patch(agent)``; on a conflict re-read the agent and rebuild the patch."""
        client, fleet, metrics = self.rt.client, self.rt.fleet, self.rt.metrics
        for _ in range(AGENT_WRITE_ATTEMPTS):
            ops = make_patch(agent)
            if ops is None:
                return "noop"
            try:
                body = await client.patch(Paths.edgeagent(agent.name), ops, JSON_PATCH)
            except ApiError as exc:
                if exc.status == 404:
                    return "gone"
                if exc.status not in (409, 422):
                    metrics.agent_writes.labels(result="error").inc()
                    log.warning("Could not patch EdgeAgent %s: %s", agent.name, exc)
                    return "error"
                metrics.agent_writes.labels(result="conflict").inc()
                fresh = await client.get(Paths.edgeagent(agent.name))
                if fresh is None:
                    return "gone"
                agent = fleet.record_write(fresh)
                continue
            except ApiUnavailable as exc:
                metrics.agent_writes.labels(result="error").inc()
                log.warning("Could not patch EdgeAgent %s: %s", agent.name, exc)
                return "error"
            fleet.record_write(body)
            metrics.agent_writes.labels(result="ok").inc()
            return "ok"
        log.warning("Gave up patching EdgeAgent %s after %d conflicts; the next reconcile retries", agent.name,
                    AGENT_WRITE_ATTEMPTS)
        return "conflict"

    async def unassign_everywhere(self, namespace: str, name: str) -> list[str]:
        """Remove the model from every EdgeAgent (read fresh from the API); returns agents still holding it."""
        async with self.rt.lock((namespace, name)):
            items = await self.rt.client.list(Paths.edgeagents())
            holders = [AgentView.from_body(b) for b in items]
            holders = [a for a in holders
                       if a.assignment_index(namespace, name) is not None or a.tail_revisions(namespace, name)]

            results = await asyncio.gather(*(self._write_agent_with(a, functools.partial(
                removal_patch, namespace=namespace, name=name)) for a in holders))
            left = [a.name for a, r in zip(holders, results, strict=True) if r not in ("ok", "noop", "gone")]
            log.info("Unassigned EdgeModel %s/%s from %d EdgeAgent(s)%s", namespace, name, len(holders) - len(left),
                     f"; failed on {left}" if left else "")
            return left

    async def delete_artifacts(self, namespace: str, name: str, revisions_: list[int]) -> list[int]:
        """Delete revision folders from the store (retention); returns the revisions that could not be deleted."""
        settings = self.rt.settings
        headers = {}
        if settings.store_token_file is not None:
            headers["Authorization"] = f"Bearer {settings.store_token_file.read_text().strip()}"
        failed = []
        for revision in revisions_:
            url = f"{settings.store_url.rstrip('/')}/{namespace}/{name}/{revision}"
            try:
                async with self.rt.session().delete(url, headers=headers) as resp:
                    status = resp.status
                    detail = f"HTTP {status}: {(await resp.text())[:200]}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                status, detail = 0, f"{exc.__class__.__name__}: {exc}"
            if status in (200, 204):
                log.info("Deleted the artifacts of revision %s of EdgeModel %s/%s from the store", revision,
                         namespace, name)
            elif status != 404:
                failed.append(revision)
                log.warning("Could not delete %s (artifact retention): %s", url, detail)
        return failed

    def _emit(self, body: Mapping[str, Any], events: list[tuple[str, str, str]]) -> None:
        for type_, reason, message in events:
            try:
                kopf.event(dict(body), type=type_, reason=reason, message=message[:1000])  # type: ignore[arg-type]
            except LookupError:
                log.info("Event %s %s: %s", type_, reason, message)
        events.clear()


def _has_split(artifacts: list[ArtifactRef]) -> bool:
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


def tail_revisions(namespace: str, name: str, agents: list[AgentView], desired: Mapping[str, int | None],
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
    return {r for r in needed if _has_split(artifacts.get(r, []))}


def _tails_patch_of(agent: AgentView, *, namespace: str, name: str,
                    desired: Mapping[int, Mapping[str, Any]]) -> JsonPatch | None:
    return tails_patch(agent, namespace, name, desired)


async def _tally(writes: list[Coroutine[Any, Any, str]]) -> dict[str, int]:
    """Run the agent writes at once; how many ended ok, noop, conflict, error or gone."""
    results: dict[str, int] = {}
    for result in await asyncio.gather(*writes):
        results[result] = results.get(result, 0) + 1
    return results


def _requeue_soon(outcome: Outcome, seconds: float) -> None:
    outcome.requeue_after = seconds if outcome.requeue_after is None else min(outcome.requeue_after, seconds)
