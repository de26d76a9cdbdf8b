"""kopf's example operator flow, run by test_kopf_flow.py against the emulator.

On create it patches status and creates a child Job (adopted, so it is garbage-collected with the
parent); it sees the Job complete through the local kubelet and records that in the parent's
status; on update it records the new field; on delete it only logs (the Job goes by GC).
"""

from __future__ import annotations

import os
from typing import Any

import kopf
import kubernetes

GROUP, VERSION, PLURAL = "kopf.dev", "v1", "kopfexamples"


def _api() -> Any:
    return kubernetes.config.new_client_from_config(config_file=os.environ["KUBECONFIG"])


@kopf.on.login()
def login(**kwargs: Any) -> Any:
    return kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = "kopf.dev/example"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kopf.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="kopf.dev")
    settings.watching.server_timeout = 30
    settings.networking.error_backoffs = [0.2, 0.5, 1]


@kopf.on.create(GROUP, VERSION, PLURAL)
def create_fn(spec: Any, name: str, namespace: str, body: Any, **_: Any) -> dict[str, Any]:
    job = {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": f"{name}-child", "labels": {"kopf-example": name}},
        "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never", "containers": [{
            "name": "main", "image": "python", "command": ["python", "-c", f"print('child of {name}: {spec['duration']}')"],
        }]}}},
    }
    kopf.adopt(job)
    with _api() as api:
        kubernetes.client.BatchV1Api(api).create_namespaced_job(namespace, job)
    kopf.info(body, reason="ChildCreated", message=f"Created Job {name}-child")
    return {"job": f"{name}-child"}


@kopf.on.update(GROUP, VERSION, PLURAL)
def update_fn(spec: Any, **_: Any) -> dict[str, Any]:
    return {"field": spec.get("field")}


@kopf.on.field("batch", "v1", "jobs", field="status.succeeded", labels={"kopf-example": kopf.PRESENT})
def child_done(new: Any, namespace: str, labels: Any, **_: Any) -> None:
    if new:
        with _api() as api:
            kubernetes.client.CustomObjectsApi(api).patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, labels["kopf-example"], {"status": {"childSucceeded": new}})


@kopf.on.delete(GROUP, VERSION, PLURAL)
def delete_fn(name: str, logger: Any, **_: Any) -> None:
    logger.info(f"Deleting {name}; its Job is garbage-collected")
