"""Act: carry out a :class:`decide.Decision` through the one Kubernetes client, in an order a crash cannot hurt.

1. delete / create the conversion Job (deterministic name: a restart finds it, never duplicates it);
2. write status once, only if it changed (revision outcomes first: a rollback is recorded before any
   node is moved back, so a restart never re-rolls a bad revision); then the events;
3. patch the EdgeAgents whose entry differs from the plan (one small JSON patch each, guarded by the
   agent's generation; a conflict re-reads the agent and rebuilds the patch);
4. metrics, and the artifacts of revisions that left the history (retention ``delete``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

import kopf

from edgemodel.convert.published_progress import progress_key
from edgemodel.store.client import HttpStore, StoreError
from edgemodel.store.layout import RevisionRef
from edgemodel_operator.assignments import JsonPatch, patch_for, removal_patch, tails_patch
from edgemodel_operator.decide import Decision, Event
from edgemodel_operator.kube import JSON_PATCH, MERGE_PATCH, ApiError, ApiUnavailable, Paths
from edgemodel_operator.runtime import Runtime
from edgemodel_operator.scheduling import AgentView

log = logging.getLogger(__name__)

AGENT_WRITE_ATTEMPTS = 3
WRITE_FAILED_POLL_SECONDS = 5.0


@dataclass
class Outcome:
    """What the caller does next: reconcile again after ``requeue_after`` seconds (or on a wake-up)."""

    requeue_after: float | None
    invalid: str | None = None


async def act(rt: Runtime, body: Mapping[str, Any], decision: Decision) -> Outcome:
    """Apply ``decision`` for the EdgeModel ``body``; the outcome says when to come back."""
    meta = body.get("metadata") or {}
    namespace, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
    metrics = rt.metrics
    for level, message in decision.logs:
        log.log(level, "%s", message)
    for counter, label, amount in decision.counters:
        if counter == "rollouts":
            metrics.rollouts.labels(outcome=label).inc(amount)
        elif counter == "conversions":
            metrics.conversions.labels(outcome=label).inc(amount)
    if decision.analysed is not None:
        metrics.analyses.labels(result=decision.analysed[0], source=decision.analysed[1]).inc()
    if decision.conversion_recorded is not None:
        revision, seconds, candidates = decision.conversion_recorded
        metrics.record_conversion(namespace, name, revision, seconds, list(candidates))
    events = list(decision.events)

    if decision.job_delete is not None:
        await rt.client.delete(Paths.job(namespace, decision.job_delete))
    if decision.job_create is not None:
        job = decision.job_create
        try:
            await rt.client.create(Paths.jobs(namespace), dict(job.manifest))
            metrics.conversions.labels(outcome="started").inc()
            events.append(Event("Normal", "ConversionStarted", f"created conversion Job {job.name}"))
            log.info("Created conversion Job %s/%s for revision %s", namespace, job.name, job.revision)
        except ApiError as exc:
            if exc.status != 409:
                raise
            log.info("Found conversion Job %s/%s already created", namespace, job.name)

    if decision.status_patch:
        await rt.client.patch(Paths.edgemodel_status(namespace, name), {"status": decision.status_patch}, MERGE_PATCH)
    emit(body, events)

    outcome = Outcome(decision.requeue_after, decision.invalid)
    written = await _tally([write_agent(rt, w.agent, functools.partial(_entry_patch, namespace=namespace, name=name,
                                                                      entry=w.entry))
                            for w in decision.agent_writes])
    if decision.agent_writes:
        log.info("Patched %d EdgeAgent(s) for %s/%s: %s", len(decision.agent_writes), namespace, name, written)
    tails = await _tally([write_agent(rt, w.agent, functools.partial(_tails_patch, namespace=namespace, name=name,
                                                                    tails=w.tails))
                          for w in decision.tail_writes])
    if decision.tail_writes:
        log.info("Set the split tails of %s/%s (revisions %s) on %d cloud EdgeAgent(s): %s", namespace, name,
                 list(decision.tail_revisions) or "none", len(decision.tail_writes), tails)
    for key, count in tails.items():
        written[key] = written.get(key, 0) + count
    if decision.node_counts is not None:
        metrics.set_nodes(namespace, name, decision.node_counts)
    if written.get("error") or written.get("conflict"):
        outcome.requeue_after = min(outcome.requeue_after or WRITE_FAILED_POLL_SECONDS, WRITE_FAILED_POLL_SECONDS)
    if decision.delete_revisions:
        await delete_artifacts(rt, namespace, name, decision.delete_revisions)
    return outcome


def emit(body: Mapping[str, Any], events: list[Event]) -> None:
    """Post the events on the EdgeModel (through kopf; logged instead outside a handler)."""
    for event in events:
        try:
            kopf.event(dict(body), type=event.type, reason=event.reason, message=event.message[:1000])  # type: ignore[arg-type]
        except LookupError:
            log.info("Event %s %s: %s", event.type, event.reason, event.message)


def _entry_patch(agent: AgentView, *, namespace: str, name: str, entry: Mapping[str, Any] | None) -> JsonPatch | None:
    return patch_for(agent, namespace, name, entry)


def _tails_patch(agent: AgentView, *, namespace: str, name: str,
                 tails: Mapping[int, Mapping[str, Any]]) -> JsonPatch | None:
    return tails_patch(agent, namespace, name, tails)


async def write_agent(rt: Runtime, agent: AgentView, make_patch: Callable[[AgentView], JsonPatch | None]) -> str:
    """Apply ``make_patch(agent)``; on a conflict re-read the agent and rebuild the patch. The result: ok, noop,
    gone, conflict or error."""
    client, fleet, metrics = rt.client, rt.fleet, rt.metrics
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
            fresh = await client.get(Paths.edgeagent(agent.name), missing_ok=True)
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


async def _tally(writes: list[Coroutine[Any, Any, str]]) -> dict[str, int]:
    """Run the agent writes at once; how many ended ok, noop, conflict, error or gone."""
    results: dict[str, int] = {}
    for result in await asyncio.gather(*writes):
        results[result] = results.get(result, 0) + 1
    return results


async def unassign_everywhere(rt: Runtime, namespace: str, name: str) -> list[str]:
    """Remove the model from every EdgeAgent (read fresh from the API); returns agents still holding it."""
    items = await rt.client.list(Paths.edgeagents())
    holders = [AgentView.from_body(b) for b in items]
    holders = [a for a in holders if a.assignment_index(namespace, name) is not None or a.tail_revisions(namespace, name)]
    results = await asyncio.gather(*(write_agent(rt, a, functools.partial(removal_patch, namespace=namespace,
                                                                            name=name)) for a in holders))
    left = [a.name for a, r in zip(holders, results, strict=True) if r not in ("ok", "noop", "gone")]
    log.info("Unassigned EdgeModel %s/%s from %d EdgeAgent(s)%s", namespace, name, len(holders) - len(left),
             f"; failed on {left}" if left else "")
    return left


async def delete_artifacts(rt: Runtime, namespace: str, name: str, revisions: list[int]) -> list[int]:
    """Delete revision folders from the store (retention); returns the revisions that could not be deleted."""
    settings = rt.settings
    token = settings.store_token_file.read_text().strip() if settings.store_token_file is not None else ""
    store = HttpStore(settings.store_url, token=token, timeout_s=rt.store.timeout_s, retries=rt.store.retries,
                      backoff_s=rt.store.backoff_s)
    failed = []
    for revision in revisions:
        key = f"{namespace}/{name}/{revision}"
        with contextlib.suppress(StoreError):  # the conversion's last progress step, beside the revision folder
            await asyncio.to_thread(store.delete, progress_key(RevisionRef(namespace, name, revision)))
        try:
            await asyncio.to_thread(store.delete, key)
        except StoreError as exc:
            if exc.status != 404:
                failed.append(revision)
                log.warning("Could not delete %s (artifact retention): %s", store.url(key), exc)
            continue
        log.info("Deleted the artifacts of revision %s of EdgeModel %s/%s from the store", revision, namespace, name)
    return failed
