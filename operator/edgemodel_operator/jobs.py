"""The conversion Job: its manifest (pure, from settings) and how to read its outcome.

Contract (docs/architecture.md): ``edgemodel convert --job --revision N --store-url URL
--signing-key /var/run/edgemodel/signing/private.pem`` with the EdgeModel as JSON in
``EDGEMODEL_OBJECT``; exit 0 ok, 2 bad input (never retried), 1 retryable; the termination
message holds a ConversionResult as JSON.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import kopf
from pydantic import ValidationError

from edgemodel.api import API_VERSION, ConversionResult, EdgeModelSpec
from edgemodel.split.chain_devices import ENV as PIPELINE_DEVICES_ENV
from edgemodel_operator.constants import (
    ANNOTATION_GENERATION,
    ANNOTATION_SPEC_HASH,
    CONVERTER_CONTAINER,
    LABEL_COMPONENT,
    LABEL_MANAGED_BY,
    LABEL_MODEL,
    LABEL_REVISION,
    MANAGER,
    SIGNING_KEY_DIR,
    SIGNING_KEY_FILE,
    STORE_TOKEN_KEY,
)
from edgemodel_operator.settings import OperatorSettings

MAX_NAME = 63
SCRATCH_DIR = "/scratch"
"""Writable emptyDir (the root filesystem is read-only); TMPDIR points here."""
EXIT_BAD_INPUT = 2


def job_name(model: str, revision: int) -> str:
    """``<model>-r<revision>-convert``; long names keep a hash so the name stays unique and <= 63."""
    suffix = f"-r{revision}-convert"
    if len(model) + len(suffix) <= MAX_NAME:
        return model + suffix
    digest = hashlib.sha256(model.encode()).hexdigest()[:8]
    head = model[: MAX_NAME - len(suffix) - len(digest) - 1].rstrip("-.")
    return f"{head}-{digest}{suffix}"


def job_labels(model: str, revision: int) -> dict[str, str]:
    """Labels of the Job and its Pods; the operator watches Jobs by these."""
    return {
        LABEL_MANAGED_BY: MANAGER,
        LABEL_COMPONENT: "converter",
        LABEL_MODEL: model,
        LABEL_REVISION: str(revision),
    }


def edgemodel_object(owner: Mapping[str, Any], spec: EdgeModelSpec) -> str:
    """The EDGEMODEL_OBJECT value: apiVersion, kind, metadata{name,namespace,generation}, spec (defaults applied)."""
    meta = owner.get("metadata", {})
    obj = {
        "apiVersion": API_VERSION,
        "kind": "EdgeModel",
        "metadata": {"name": meta.get("name"), "namespace": meta.get("namespace"), "generation": meta.get("generation")},
        "spec": spec.to_k8s(),
    }
    return json.dumps(obj, separators=(",", ":"), sort_keys=True)


def with_measured_rtt(spec: EdgeModelSpec, measured: tuple[float, int] | None) -> EdgeModelSpec:
    """The spec the Job gets: an empty spec.split.link.rttMs filled with the RTT the edge heads measured."""
    link = spec.split.link
    if not spec.split.enabled or link is None or link.rtt_ms is not None or measured is None:
        return spec
    split = spec.split.model_copy(update={"link": link.model_copy(update={"rtt_ms": measured[0]})})
    return spec.model_copy(update={"split": split})


CONTAINER_SECURITY: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}
"""The restricted container of every Job the operator runs with the converter image (conversion, training)."""


def converter_pod_security(settings: OperatorSettings, *, fs_group: bool = True) -> dict[str, Any]:
    """The pod securityContext of the converter image's Jobs: non-root with the configured user and group;
    ``fs_group`` when a mounted Secret must be readable through the group (mode 0440)."""
    context: dict[str, Any] = {
        "runAsNonRoot": True,
        "runAsUser": settings.converter_run_as_user,
        "runAsGroup": settings.converter_run_as_group,
    }
    if fs_group:
        context["fsGroup"] = settings.converter_fs_group
    context["seccompProfile"] = {"type": "RuntimeDefault"}
    return context


def build_conversion_job(
    owner: Mapping[str, Any], spec: EdgeModelSpec, revision: int, spec_hash: str, settings: OperatorSettings,
    pipeline_devices: str | None = None,
) -> dict[str, Any]:
    """The batch/v1 Job converting ``revision`` of the EdgeModel ``owner`` (a body with metadata.uid);
    ``pipeline_devices``: the devices a pipeline's auto cuts are planned for (``PlanDevices.to_json``)."""
    meta = owner["metadata"]
    name = meta["name"]
    labels = job_labels(name, revision)
    env: list[dict[str, Any]] = [
        {"name": "EDGEMODEL_OBJECT", "value": edgemodel_object(owner, spec)},
        {"name": "TMPDIR", "value": SCRATCH_DIR},
    ]
    if pipeline_devices is not None:
        env.append({"name": PIPELINE_DEVICES_ENV, "value": pipeline_devices})
    if settings.store_token_secret:
        env.append({
            "name": "EDGEMODEL_STORE_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": settings.store_token_secret, "key": STORE_TOKEN_KEY}},
        })
    container: dict[str, Any] = {
        "name": CONVERTER_CONTAINER,
        "image": settings.converter_image,
        "imagePullPolicy": settings.converter_image_pull_policy,
        "command": ["edgemodel"],
        "args": [
            "convert", "--job",
            "--revision", str(revision),
            "--store-url", settings.store_url,
            "--signing-key", f"{SIGNING_KEY_DIR}/{SIGNING_KEY_FILE}",
        ],
        "env": env,
        "resources": {
            "requests": {"cpu": settings.converter_cpu_request, "memory": settings.converter_memory_request},
            "limits": {"cpu": settings.converter_cpu_limit, "memory": settings.converter_memory_limit},
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            {"name": "signing-key", "mountPath": SIGNING_KEY_DIR, "readOnly": True},
            {"name": "scratch", "mountPath": SCRATCH_DIR},
        ],
        "securityContext": dict(CONTAINER_SECURITY),
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        # Explicit user and fsGroup: the key is mounted owned by root with group fsGroup, mode 0440, so
        # the non-root converter reads it through its group (without fsGroup, 0400 root:root is unreadable).
        "securityContext": converter_pod_security(settings),
        "containers": [container],
        "volumes": [
            {
                "name": "signing-key",
                "secret": {
                    "secretName": settings.signing_key_secret,
                    "items": [{"key": SIGNING_KEY_FILE, "path": SIGNING_KEY_FILE}],
                    "defaultMode": 0o440,
                },
            },
            {"name": "scratch", "emptyDir": {}},
        ],
    }
    if settings.converter_service_account:
        pod_spec["serviceAccountName"] = settings.converter_service_account
    job: dict[str, Any] = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(name, revision),
            "labels": dict(labels),
            "annotations": {ANNOTATION_SPEC_HASH: spec_hash, ANNOTATION_GENERATION: str(meta.get("generation", ""))},
        },
        "spec": {
            "backoffLimit": settings.converter_backoff_limit,
            "activeDeadlineSeconds": settings.converter_deadline_seconds,
            "podFailurePolicy": {
                "rules": [{
                    "action": "FailJob",
                    "onExitCodes": {"containerName": CONVERTER_CONTAINER, "operator": "In", "values": [EXIT_BAD_INPUT]},
                }],
            },
            "template": {"metadata": {"labels": dict(labels)}, "spec": pod_spec},
        },
    }
    kopf.adopt(job, owner=kopf.Body(dict(owner)))  # type: ignore[arg-type]
    return job


class JobPhase(StrEnum):
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


@dataclass(frozen=True)
class JobState:
    """What a conversion Job's status says."""

    phase: JobPhase
    reason: str = ""
    message: str = ""


def job_state(job: Mapping[str, Any]) -> JobState:
    """Running, Succeeded or Failed (with the Job's condition reason and message)."""
    status = job.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("status") != "True":
            continue
        if cond.get("type") == "Failed":
            return JobState(JobPhase.FAILED, cond.get("reason") or "JobFailed", cond.get("message") or "")
        if cond.get("type") == "Complete":
            return JobState(JobPhase.SUCCEEDED, cond.get("reason") or "Completed", cond.get("message") or "")
    if (status.get("succeeded") or 0) >= 1:
        return JobState(JobPhase.SUCCEEDED, "Completed")
    return JobState(JobPhase.RUNNING, "Running", f"{status.get('active') or 0} active, {status.get('failed') or 0} failed Pods")


def parse_result(text: str | None) -> ConversionResult | None:
    """A ConversionResult from a termination message or result.json; None if it is not one."""
    if not text:
        return None
    try:
        return ConversionResult.model_validate_json(text.strip())
    except ValidationError:
        return None


def _finished_at(pod: Mapping[str, Any]) -> str:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        terminated = (status.get("state") or {}).get("terminated") or {}
        if terminated:
            return str(terminated.get("finishedAt") or "")
    return ""


def termination_message(pod: Mapping[str, Any]) -> str | None:
    """The converter container's termination message of a Pod, if it terminated."""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") != CONVERTER_CONTAINER:
            continue
        terminated = (status.get("state") or {}).get("terminated") or {}
        message = terminated.get("message")
        return str(message) if message else None
    return None


def result_from_pods(pods: Sequence[Mapping[str, Any]]) -> ConversionResult | None:
    """The ConversionResult of the Job's most recently finished Pod, if any Pod left one."""
    finished = sorted((p for p in pods if _finished_at(p)), key=_finished_at, reverse=True)
    for pod in finished:
        result = parse_result(termination_message(pod))
        if result is not None:
            return result
    return None


def job_duration_seconds(job: Mapping[str, Any]) -> float | None:
    """Seconds from the Job's creation to its completion, when both are known."""
    import datetime as dt

    created = (job.get("metadata") or {}).get("creationTimestamp")
    finished = (job.get("status") or {}).get("completionTime")
    if not created or not finished:
        return None
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    try:
        delta = dt.datetime.strptime(finished, fmt) - dt.datetime.strptime(created, fmt)
    except ValueError:
        return None
    return max(delta.total_seconds(), 0.0)
