"""Observe: read what one reconcile decides on into an immutable :class:`decide.Snapshot`.

The EdgeModel comes from the API server; the fleet (typed ``AgentView``s of every EdgeAgent, with
their Nodes' labels and Leases' renewals) from the runtime's list + watch, never a request per
reconcile; the conversion Job and its result, Prometheus' numbers for an analysis window and a
revision's split plan only when ``decide`` asks for them (``Decision.wants``).

The artifact store is read through ``edgemodel.store``'s client (``HttpStore``: synchronous urllib
with the one retry policy), run in a worker thread (``asyncio.to_thread``) so that a slow store never
blocks the event loop; split plans are immutable per revision and cached in the runtime.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import logging
from typing import Any

from edgemodel.api import ConversionResult
from edgemodel.store.client import StoreError
from edgemodel_operator import conversion_progress, jobs, split_check
from edgemodel_operator.analysis import Measurements, PrometheusError, measure_with_prometheus
from edgemodel_operator.constants import LABEL_MODEL, LABEL_REVISION
from edgemodel_operator.decide import JobSeen, Snapshot, Wants, analysis_key
from edgemodel_operator.kube import Paths
from edgemodel_operator.pipeline_rollout import CHAIN_FILE
from edgemodel_operator.runtime import Runtime

log = logging.getLogger(__name__)


async def snapshot(rt: Runtime, namespace: str, name: str) -> Snapshot | None:
    """The EdgeModel and the fleet now; None when the EdgeModel is gone or being deleted."""
    body = await rt.client.get(Paths.edgemodel(namespace, name), missing_ok=True)
    if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
        return None
    return Snapshot(
        namespace=namespace, name=name, body=body, now=dt.datetime.now(dt.UTC), agents=tuple(rt.fleet.snapshot()),
        seen_now=rt.liveness.now(), plans=rt.plans.of(namespace, name), chains=rt.chains.of(namespace, name),
    )


async def more(rt: Runtime, snap: Snapshot, wants: Wants) -> Snapshot:
    """``snap`` with the facts ``wants`` names read."""
    if wants.job is not None:
        snap = dataclasses.replace(snap, job=await conversion_job(rt, snap.namespace, snap.name, *wants.job))
    if wants.analysis is not None and rt.settings.prometheus_url:  # decide asks only with a Prometheus
        request = wants.analysis
        measured: Measurements | str
        try:
            measured = await measure_with_prometheus(
                rt.session(), rt.settings.prometheus_url, snap.namespace, snap.name, request.revision,
                request.window_seconds, len(request.nodes))
        except PrometheusError as exc:
            measured = str(exc)
        snap = dataclasses.replace(snap, measured=(analysis_key(request), measured))
    if wants.plan is not None:
        revision, manifest_uri = wants.plan
        planned = await planned_cuts(rt, snap.namespace, snap.name, revision, manifest_uri)
        snap = dataclasses.replace(snap, plans={**snap.plans, revision: planned})
    if wants.chains:
        read = {r: await chain_doc(rt, snap.namespace, snap.name, r) for r in wants.chains}
        snap = dataclasses.replace(snap, chains={**snap.chains, **read})
    return snap


async def conversion_job(rt: Runtime, namespace: str, name: str, revision: int, jname: str) -> JobSeen:
    """The conversion Job of ``revision``; once it finished, its ConversionResult: the termination message of
    its pod first, result.json in the store second."""
    job = await rt.client.get(Paths.job(namespace, jname), missing_ok=True)
    if job is None:
        return JobSeen(revision, None)
    state = jobs.job_state(job)
    if state.phase == jobs.JobPhase.RUNNING:
        progress = await conversion_progress.read(rt.session(), rt.settings.store_url, namespace, name, revision)
        return JobSeen(revision, job, progress=progress)
    pods = await rt.client.list(Paths.pods(namespace), label_selector=f"{LABEL_MODEL}={name},"
                                f"{LABEL_REVISION}={revision}")
    result = jobs.result_from_pods(pods)
    if state.phase == jobs.JobPhase.SUCCEEDED and (result is None or not result.candidates):
        stored = await stored_result(rt, namespace, name, revision)
        result = stored or result
    return JobSeen(revision, job, result)


async def stored_result(rt: Runtime, namespace: str, name: str, revision: int) -> ConversionResult | None:
    text = await stored_file(rt, namespace, name, revision, "result.json")
    return None if text is None else jobs.parse_result(text)


async def stored_file(rt: Runtime, namespace: str, name: str, revision: int, file: str,
                      level: int = logging.WARNING) -> str | None:
    """A file of a revision in the artifact store; None when it is not there or the store cannot be reached
    (logged at ``level``)."""
    key = f"{namespace}/{name}/{revision}/{file}"
    try:
        data = await asyncio.to_thread(rt.store.get_bytes, key)
    except StoreError as exc:
        log.log(logging.DEBUG if exc.status == 404 else level, "Could not read %s: %s", rt.store.url(key), exc)
        return None
    return data.decode(errors="replace")


async def planned_cuts(rt: Runtime, namespace: str, name: str, revision: int,
                       manifest_uri: str) -> split_check.PlannedCuts | None:
    """The plan in a revision's split.json, read once from the store (immutable per revision; the runtime
    remembers it, unless it could not be read: then the next reconcile tries again)."""
    if rt.plans.has(namespace, name, revision):
        return rt.plans.get(namespace, name, revision)
    file = manifest_uri.rsplit("/", 1)[-1] or "split.json"
    text = await stored_file(rt, namespace, name, revision, file, level=logging.DEBUG)
    if text is None:
        return None
    try:
        doc = json.loads(text)
    except ValueError as exc:
        log.debug("Could not parse %s of %s/%s revision %s: %s", file, namespace, name, revision, exc)
        return None
    planned = split_check.PlannedCuts.from_split_json(doc)
    rt.plans.put(namespace, name, revision, planned)
    return planned


async def chain_doc(rt: Runtime, namespace: str, name: str, revision: int) -> dict[str, Any] | None:
    """A revision's chain.json (pipeline stages), read once from the store: None when it has none (cached too)
    or it is malformed; a store that cannot be reached is retried on the next reconcile."""
    if rt.chains.has(namespace, name, revision):
        return rt.chains.get(namespace, name, revision)
    key = f"{namespace}/{name}/{revision}/{CHAIN_FILE}"
    try:
        data = await asyncio.to_thread(rt.store.get_bytes, key)
    except StoreError as exc:
        if exc.status != 404:
            log.warning("Could not read %s: %s", rt.store.url(key), exc)
            return None
        rt.chains.put(namespace, name, revision, None)
        return None
    try:
        doc = json.loads(data)
    except ValueError as exc:
        log.warning("Ignored the malformed %s of %s/%s revision %s: %s", CHAIN_FILE, namespace, name, revision, exc)
        doc = None
    doc = doc if isinstance(doc, dict) else None
    rt.chains.put(namespace, name, revision, doc)
    return doc
