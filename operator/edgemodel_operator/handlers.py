"""Bodies of the kopf handlers: each one is a few lines calling the reconciler or the pure modules."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import aiohttp
import kopf

from edgemodel.retry import Backoff
from edgemodel_operator import validation
from edgemodel_operator.constants import LABEL_MODEL
from edgemodel_operator.kube import ApiError, ApiUnavailable
from edgemodel_operator.reconciler import Reconciler
from edgemodel_operator.runtime import Runtime

log = logging.getLogger(__name__)

DEBOUNCE_SECONDS = 0.2
"""Pause after a wake-up so that a burst of agent events makes one reconcile."""
ERROR_BACKOFF = Backoff(first=1.0, cap=60.0)
"""Wait before the next reconcile after consecutive failures (the one retry policy, ``edgemodel.retry``)."""
LIVENESS_SYNC_SECONDS = 15.0
TRANSIENT = (ApiUnavailable, ApiError, aiohttp.ClientError, TimeoutError)


async def reconcile_once(runtime: Runtime, namespace: str, name: str) -> None:
    """create/update/resume: reconcile now; an invalid spec fails the handler for good (after its condition)."""
    await wait_for_liveness(runtime)
    outcome = await Reconciler(runtime).reconcile(namespace, name)
    runtime.wakeups.wake([(namespace, name)])
    if outcome.invalid:
        raise kopf.PermanentError(f"invalid spec: {outcome.invalid}")


async def reconcile_loop(runtime: Runtime, namespace: str, name: str, stopped: kopf.DaemonStopped) -> None:
    """The daemon of one EdgeModel: reconcile, then sleep until woken, requeued or stopped."""
    key = (namespace, name)
    wake = runtime.wakeups.event(key)
    reconciler = Reconciler(runtime)
    await wait_for_liveness(runtime)
    failures = 0
    try:
        while not stopped:
            wake.clear()
            delay: float
            try:
                outcome = await reconciler.reconcile(namespace, name)
                delay = outcome.requeue_after or runtime.settings.resync_seconds
                failures = 0
            except TRANSIENT as exc:
                failures += 1
                delay = ERROR_BACKOFF.delay(failures)
                log.warning("Reconcile of EdgeModel %s/%s failed (%s); retrying in %.0f s", namespace, name, exc, delay)
            except Exception:
                failures += 1
                delay = ERROR_BACKOFF.delay(failures)
                log.exception("Reconcile of EdgeModel %s/%s crashed; retrying in %.0f s", namespace, name, delay)
            await _sleep_until(wake, stopped, min(delay, runtime.settings.resync_seconds))
            if not stopped:
                await asyncio.sleep(DEBOUNCE_SECONDS)
    finally:
        runtime.wakeups.forget(key)


async def wait_for_liveness(runtime: Runtime) -> None:
    """Wait for the first list of EdgeAgents (a plan never starts from an empty fleet), and (bounded) for the
    first list of Leases, so that no node looks stale just because it was not read yet."""
    while not runtime.fleet.synced.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(runtime.fleet.synced.wait(), LIVENESS_SYNC_SECONDS)
        if not runtime.fleet.synced.is_set():
            log.warning("Waiting for the first list of EdgeAgents before reconciling (see the errors above)")
    if not runtime.liveness.synced.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(runtime.liveness.synced.wait(), LIVENESS_SYNC_SECONDS)


async def _sleep_until(wake: asyncio.Event, stopped: kopf.DaemonStopped, timeout: float) -> None:
    waits = [asyncio.ensure_future(wake.wait()), asyncio.ensure_future(stopped.wait())]
    try:
        await asyncio.wait(waits, timeout=max(timeout, 0.05), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()
        await asyncio.gather(*waits, return_exceptions=True)


async def unassign_on_delete(runtime: Runtime, namespace: str, name: str, status: Mapping[str, Any]) -> None:
    """Deletion: remove the model from every agent before kopf removes the finalizer; then retention."""
    reconciler = Reconciler(runtime)
    try:
        left = await reconciler.unassign_everywhere(namespace, name)
    except TRANSIENT as exc:
        raise kopf.TemporaryError(f"could not unassign {namespace}/{name} from the EdgeAgents: {exc}", delay=5) from exc
    if left:
        raise kopf.TemporaryError(f"still assigned on {len(left)} EdgeAgent(s): {', '.join(left[:5])}", delay=5)
    if runtime.settings.artifact_retention == "delete":
        revisions = sorted({int(r.get("revision", 0)) for r in status.get("history") or []} - {0})
        await reconciler.delete_artifacts(namespace, name, revisions)
    runtime.metrics.forget_model(namespace, name)
    runtime.wakeups.forget((namespace, name))


def job_event(runtime: Runtime, namespace: str | None, labels: Mapping[str, str]) -> None:
    """A conversion Job changed: wake its EdgeModel."""
    model = labels.get(LABEL_MODEL)
    if namespace and model:
        runtime.wakeups.wake([(namespace, model)])


def admission_check(body: Mapping[str, Any]) -> None:
    """The validating webhook: refuse an EdgeModel the operator could not act on, saying why."""
    _, problems = validation.problems(body)
    if problems:
        raise kopf.AdmissionError(validation.message(problems), code=422)
