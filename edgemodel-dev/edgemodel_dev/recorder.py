"""Core v1 Events from the built-in controllers and the kubelet (what `kubectl describe` lists)."""

from __future__ import annotations

import logging
import secrets
from typing import Any

from edgemodel_dev.builtin_kinds import now
from edgemodel_dev.errors import ApiError
from edgemodel_dev.registry import Registry

JSON = dict[str, Any]
log = logging.getLogger(__name__)


def record_event(registry: Registry, obj: JSON, kind: str, reason: str, message: str, component: str) -> None:
    """Post one Event about ``obj`` (in its namespace, or ``default`` for cluster-scoped objects)."""
    meta = obj.get("metadata") or {}
    namespace = meta.get("namespace") or "default"
    stamp = now()
    event = {
        "metadata": {"name": f"{meta.get('name', 'object')}.{secrets.token_hex(8)}", "namespace": namespace},
        "involvedObject": {
            "apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "name": meta.get("name"),
            "namespace": meta.get("namespace"), "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
        },
        "reason": reason,
        "message": message,
        "type": kind,
        "source": {"component": component},
        "reportingComponent": component,
        "reportingInstance": component,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }
    try:
        registry.create(registry.catalog.get("", "v1", "events"), namespace, event, field_validation="Ignore")
    except ApiError as exc:  # events are auxiliary: never fail the caller
        log.debug("Could not record event %s for %s: %s", reason, meta.get("name"), exc.message)
