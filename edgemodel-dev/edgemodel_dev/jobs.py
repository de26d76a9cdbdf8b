"""The Job controller: creates pods from a Job's template and reports the Job's progress.

Implements parallelism/completions (NonIndexed), ``backoffLimit`` (failed pods plus container
restarts), ``podFailurePolicy`` (onExitCodes/onPodConditions with FailJob, Ignore and Count),
``activeDeadlineSeconds``, ``suspend`` and ``ttlSecondsAfterFinished``, with the
``Complete``/``Failed`` (and ``SuccessCriteriaMet``/``FailureTarget``) conditions of batch/v1.
Retry back-off is ``backoff_base * 2**(failures-1)`` capped at ``backoff_max`` (Kubernetes uses
10s and 6m; the emulator defaults to fractions of a second so tests stay fast).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from typing import Any

from edgemodel_dev.builtin_kinds import JOB_UID_LABEL, now
from edgemodel_dev.errors import ApiError
from edgemodel_dev.recorder import record_event
from edgemodel_dev.registry import DeleteOptions, Registry
from edgemodel_dev.selectors import labels_match, selector_from_label_selector
from edgemodel_dev.store import Change
from edgemodel_dev.tables import parse_time

JSON = dict[str, Any]
log = logging.getLogger(__name__)
JOBS = ("batch", "jobs")
PODS = ("", "pods")


def _condition(kind: str, reason: str, message: str) -> JSON:
    stamp = now()
    return {"type": kind, "status": "True", "reason": reason, "message": message, "lastProbeTime": stamp,
            "lastTransitionTime": stamp}


def _finished(job: JSON) -> str | None:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") in ("Complete", "Failed") and cond.get("status") == "True":
            return str(cond["type"])
    return None


def pod_failure_action(policy: JSON | None, pod: JSON) -> tuple[str, str]:
    """The action (FailJob, Ignore, Count) of the first ``podFailurePolicy`` rule a failed pod
    matches, with the message Kubernetes writes for FailJob; Count when no rule matches."""
    meta = pod["metadata"]
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    conditions = (pod.get("status") or {}).get("conditions") or []
    for index, rule in enumerate((policy or {}).get("rules") or []):
        action = str(rule.get("action", "Count"))
        on_codes = rule.get("onExitCodes")
        if on_codes:
            values = set(on_codes.get("values") or [])
            for status in statuses:
                if on_codes.get("containerName") and status.get("name") != on_codes["containerName"]:
                    continue
                code = ((status.get("state") or {}).get("terminated") or {}).get("exitCode")
                if code is None or code == 0:
                    continue
                if (code in values) == (on_codes.get("operator", "In") == "In"):
                    return action, (f"Container {status.get('name')} for pod {meta['namespace']}/{meta['name']} "
                                    f"failed with exit code {code} matching {action} rule at index {index}")
        for wanted in rule.get("onPodConditions") or []:
            for cond in conditions:
                if cond.get("type") == wanted.get("type") and cond.get("status") == wanted.get("status", "True"):
                    return action, (f"Pod {meta['namespace']}/{meta['name']} has condition {cond['type']} matching "
                                    f"{action} rule at index {index}")
    return "Count", ""


class JobController:
    """Reconciles every Job whenever the Job or one of its pods changes."""

    def __init__(self, registry: Registry, backoff_base: float = 0.2, backoff_max: float = 5.0) -> None:
        self.registry = registry
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.job_rt = registry.catalog.get("batch", "v1", "jobs")
        self.pod_rt = registry.catalog.get("", "v1", "pods")
        self._queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._pending: set[tuple[str, str]] = set()
        self._task: asyncio.Task[None] | None = None
        self._unsubscribe: Any = None
        self._timers: list[asyncio.TimerHandle] = []
        #: job uid -> uids of pods already counted as succeeded / failed
        self._counted: dict[str, tuple[set[str], set[str]]] = {}
        #: job uid -> failed pods a podFailurePolicy Ignore rule matched (not counted)
        self._ignored: dict[str, set[str]] = {}
        self._last_create: dict[str, float] = {}

    def start(self) -> None:
        self._unsubscribe = self.registry.store.subscribe(self._on_change)
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="job-controller")
        for job in self.registry.store.items(JOBS):
            self._enqueue(job["metadata"]["namespace"], job["metadata"]["name"])

    async def stop(self) -> None:
        if self._unsubscribe:
            self._unsubscribe()
        for timer in self._timers:
            timer.cancel()
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _enqueue(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        if key not in self._pending:
            self._pending.add(key)
            self._queue.put_nowait(key)

    def _later(self, delay: float, namespace: str, name: str) -> None:
        loop = asyncio.get_running_loop()
        self._timers = [t for t in self._timers if not t.cancelled() and t.when() > loop.time()]
        self._timers.append(loop.call_later(max(delay, 0.0), self._enqueue, namespace, name))

    def _on_change(self, change: Change) -> None:
        meta = change.obj["metadata"]
        if change.storage == JOBS:
            if change.type == "DELETED":
                self._counted.pop(meta["uid"], None)
                self._ignored.pop(meta["uid"], None)
            else:
                self._enqueue(meta["namespace"], meta["name"])
        elif change.storage == PODS:
            for ref in meta.get("ownerReferences") or []:
                if ref.get("kind") == "Job" and ref.get("apiVersion") == "batch/v1":
                    self._enqueue(meta["namespace"], ref["name"])

    async def _loop(self) -> None:
        while True:
            key = await self._queue.get()
            self._pending.discard(key)
            try:
                self.reconcile(*key)
            except Exception:
                log.exception("The job controller failed on job %s/%s", *key)

    # reconcile ---------------------------------------------------------------------------
    def _pods(self, job: JSON) -> list[JSON]:
        selector = selector_from_label_selector((job.get("spec") or {}).get("selector"))
        uid = job["metadata"]["uid"]
        return [
            p for p in self.registry.store.items(PODS, job["metadata"]["namespace"])
            if labels_match(selector, p)
            and any(r.get("uid") == uid for r in p["metadata"].get("ownerReferences") or [])
        ]

    def reconcile(self, namespace: str, name: str) -> None:
        stored = self.registry.store.get(JOBS, namespace, name)
        if stored is None or stored["metadata"].get("deletionTimestamp"):
            return
        job = self.registry.present(self.job_rt, stored)
        spec = job.get("spec") or {}
        status = copy.deepcopy(job.get("status") or {})
        uid = job["metadata"]["uid"]
        pods = self._pods(job)
        counted = self._counted.setdefault(uid, (set(), set()))
        succeeded_uids, failed_uids = counted
        carried_ok = max(int(status.get("succeeded", 0)) - len(succeeded_uids), 0) if not succeeded_uids else 0
        carried_failed = max(int(status.get("failed", 0)) - len(failed_uids), 0) if not failed_uids else 0
        active = []
        ignored = self._ignored.setdefault(uid, set())
        fail_job: str | None = None
        for pod in pods:
            phase = (pod.get("status") or {}).get("phase")
            pod_uid = pod["metadata"]["uid"]
            if phase == "Succeeded":
                succeeded_uids.add(pod_uid)
            elif phase == "Failed" and pod_uid not in failed_uids and pod_uid not in ignored:
                action, message = pod_failure_action(spec.get("podFailurePolicy"), pod)
                if action == "Ignore":
                    ignored.add(pod_uid)
                else:
                    failed_uids.add(pod_uid)
                if action == "FailJob":
                    fail_job = message
            elif phase not in ("Succeeded", "Failed") and not pod["metadata"].get("deletionTimestamp"):
                active.append(pod)
        terminating = [p for p in pods if p["metadata"].get("deletionTimestamp")
                       and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]
        succeeded = len(succeeded_uids) + carried_ok
        failed = len(failed_uids) + carried_failed
        restarts = sum(int(c.get("restartCount", 0)) for p in active
                       for c in (p.get("status") or {}).get("containerStatuses") or [])
        completions = int(spec.get("completions") or 1)
        parallelism = int(spec.get("parallelism", 1) or 0)
        backoff_limit = int(spec.get("backoffLimit", 6) or 0)
        finished = _finished(job)
        conditions = [c for c in status.get("conditions") or [] if c.get("type") != "Suspended"
                      or spec.get("suspend")]

        if finished is None:
            deadline = spec.get("activeDeadlineSeconds")
            start = parse_time(status.get("startTime"))
            if succeeded >= completions:
                conditions += [_condition("SuccessCriteriaMet", "CompletionsReached", "Reached expected number of "
                                                                                     "succeeded pods"),
                               _condition("Complete", "CompletionsReached", "Reached expected number of succeeded "
                                                                            "pods")]
                status["completionTime"] = now()
                finished = "Complete"
                log.info("Job %s/%s completed", namespace, name)
                self._event(job, "Normal", "Completed", "Job completed")
            elif fail_job is not None:
                conditions += [_condition("FailureTarget", "PodFailurePolicy", fail_job),
                               _condition("Failed", "PodFailurePolicy", fail_job)]
                finished = "Failed"
                log.info("Job %s/%s failed: %s", namespace, name, fail_job)
                self._event(job, "Warning", "PodFailurePolicy", fail_job)
            elif failed + restarts > backoff_limit:
                message = "Job has reached the specified backoff limit"
                conditions += [_condition("FailureTarget", "BackoffLimitExceeded", message),
                               _condition("Failed", "BackoffLimitExceeded", message)]
                finished = "Failed"
                log.info("Job %s/%s failed: backoff limit %d reached", namespace, name, backoff_limit)
                self._event(job, "Warning", "BackoffLimitExceeded", message)
            elif deadline and start is not None and time.time() - start.timestamp() >= float(deadline):
                message = "Job was active longer than specified deadline"
                conditions += [_condition("FailureTarget", "DeadlineExceeded", message),
                               _condition("Failed", "DeadlineExceeded", message)]
                finished = "Failed"
                log.info("Job %s/%s failed: activeDeadlineSeconds %s passed", namespace, name, deadline)
                self._event(job, "Warning", "DeadlineExceeded", message)
            elif spec.get("suspend"):
                for pod in active:
                    self._delete_pod(pod)
                active = []
                if not any(c.get("type") == "Suspended" for c in conditions):
                    conditions.append(_condition("Suspended", "JobSuspended", "Job suspended"))
                status.pop("startTime", None)
            else:
                status.setdefault("startTime", now())
                if deadline:
                    started = parse_time(status["startTime"])
                    elapsed = time.time() - started.timestamp() if started else 0.0
                    self._later(float(deadline) - elapsed + 0.05, namespace, name)
                wanted = min(parallelism, completions - succeeded) - len(active) - len(terminating)
                if wanted > 0:
                    delay = self._backoff_delay(uid, failed)
                    if delay > 0:
                        self._later(delay, namespace, name)
                    else:
                        for _ in range(wanted):
                            created = self._create_pod(job)
                            if created is not None:
                                active.append(created)
                        self._last_create[uid] = time.monotonic()
        if finished is not None:
            for pod in active:
                self._delete_pod(pod)
            active = []
            ttl = spec.get("ttlSecondsAfterFinished")
            if ttl is not None:
                done_at = parse_time(status.get("completionTime")) or parse_time(
                    next((c.get("lastTransitionTime") for c in conditions if c.get("type") == finished), None))
                left = float(ttl) - (time.time() - done_at.timestamp()) if done_at else float(ttl)
                if left <= 0:
                    self._expire(job)
                    return
                self._later(left + 0.05, namespace, name)

        ready = sum(1 for p in active for c in (p.get("status") or {}).get("conditions") or []
                    if c.get("type") == "Ready" and c.get("status") == "True")
        status.update({"active": len(active), "succeeded": succeeded, "failed": failed, "ready": ready,
                       "terminating": len(terminating), "uncountedTerminatedPods": {}})
        for key in ("active", "succeeded", "failed"):
            if not status[key]:
                status.pop(key)
        if conditions:
            status["conditions"] = conditions
        else:
            status.pop("conditions", None)
        if status != (job.get("status") or {}):
            def write(obj: JSON) -> None:
                obj["status"] = status

            self.registry.mutate(self.job_rt, namespace, name, write, subresource="status")

    def _backoff_delay(self, uid: str, failed: int) -> float:
        if failed == 0:
            return 0.0
        wait = min(self.backoff_base * 2 ** (failed - 1), self.backoff_max)
        last = self._last_create.get(uid)
        if last is None:
            return 0.0
        return max(last + wait - time.monotonic(), 0.0)

    def _create_pod(self, job: JSON) -> JSON | None:
        meta = job["metadata"]
        template = copy.deepcopy((job.get("spec") or {}).get("template") or {})
        tmeta = template.get("metadata") or {}
        labels = dict(tmeta.get("labels") or {})
        labels.setdefault(JOB_UID_LABEL, meta["uid"])
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "generateName": f"{meta['name']}-",
                "namespace": meta["namespace"],
                "labels": labels,
                "annotations": dict(tmeta.get("annotations") or {}),
                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"], "uid": meta["uid"],
                                     "controller": True, "blockOwnerDeletion": True}],
            },
            "spec": template.get("spec") or {},
        }
        try:
            created = self.registry.create(self.pod_rt, meta["namespace"], pod, field_validation="Ignore").obj
        except ApiError as exc:
            log.warning("Could not create a pod for job %s/%s: %s", meta["namespace"], meta["name"], exc.message)
            return None
        log.info("Created pod %s for job %s/%s", created["metadata"]["name"], meta["namespace"], meta["name"])
        self._event(job, "Normal", "SuccessfulCreate", f"Created pod: {created['metadata']['name']}")
        return created

    def _event(self, job: JSON, kind: str, reason: str, message: str) -> None:
        record_event(self.registry, job, kind, reason, message, "job-controller")

    def _delete_pod(self, pod: JSON) -> None:
        with contextlib.suppress(ApiError):
            self.registry.delete(self.pod_rt, pod["metadata"]["namespace"], pod["metadata"]["name"],
                                 DeleteOptions(propagation="Background"))

    def _expire(self, job: JSON) -> None:
        log.info("Deleted job %s/%s: ttlSecondsAfterFinished passed", job["metadata"]["namespace"],
                 job["metadata"]["name"])
        with contextlib.suppress(ApiError):
            self.registry.delete(self.job_rt, job["metadata"]["namespace"], job["metadata"]["name"],
                                 DeleteOptions(propagation="Background"))
