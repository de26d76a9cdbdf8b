"""Server-side printing: ``meta.k8s.io/v1 Table`` responses, so ``kubectl get`` shows columns."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from edgemodel_dev.jsonpath import find
from edgemodel_dev.resources import ResourceType

JSON = dict[str, Any]
Cell = Callable[[JSON], Any]


def parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def human_duration(seconds: float) -> str:
    """Kubernetes' ``duration.HumanDuration``: 45s, 3m20s, 25m, 3h4m, 20h, 3d4h, 30d, 2y45d."""
    if seconds < -1:
        return "<invalid>"
    s = int(max(seconds, 0))
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        rest = s % 60
        return f"{minutes}m{rest}s" if rest else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h{rest}m" if rest else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    if hours < 24 * 8:
        rest = hours % 24
        return f"{days}d{rest}h" if rest else f"{days}d"
    if days < 365 * 2:
        return f"{days}d"
    years = days // 365
    if years < 8:
        rest = days % 365
        return f"{years}y{rest}d" if rest else f"{years}y"
    return f"{years}y"


def age(timestamp: str | None) -> str:
    when = parse_time(timestamp)
    if when is None:
        return "<unknown>"
    return human_duration((dt.datetime.now(dt.UTC) - when).total_seconds())


def _meta(obj: JSON, key: str) -> Any:
    return (obj.get("metadata") or {}).get(key)


def _col(name: str, kind: str = "string", priority: int = 0, fmt: str = "", description: str = "") -> JSON:
    return {"name": name, "type": kind, "format": fmt, "description": description or name, "priority": priority}


NAME = _col("Name", fmt="name", description="Name must be unique within a namespace.")
AGE = _col("Age", description="CreationTimestamp of the object.")


def _name(obj: JSON) -> Any:
    return _meta(obj, "name")


def _age(obj: JSON) -> Any:
    return age(_meta(obj, "creationTimestamp"))


# built-in printers ------------------------------------------------------------------------
def pod_status(obj: JSON) -> str:
    status = obj.get("status") or {}
    if _meta(obj, "deletionTimestamp"):
        return "Terminating"
    reason = status.get("reason") or status.get("phase") or "Pending"
    for cs in status.get("initContainerStatuses") or []:
        state = cs.get("state") or {}
        if "terminated" in state and state["terminated"].get("exitCode", 0) != 0:
            return "Init:" + (state["terminated"].get("reason") or "Error")
        if "waiting" in state or "running" in state:
            return "Init:" + ((state.get("waiting") or {}).get("reason") or "Running")
    for cs in reversed(status.get("containerStatuses") or []):
        state = cs.get("state") or {}
        if "waiting" in state and state["waiting"].get("reason"):
            reason = state["waiting"]["reason"]
        elif "terminated" in state:
            reason = state["terminated"].get("reason") or (
                "Completed" if state["terminated"].get("exitCode") == 0 else "Error")
    return str(reason)


def _pod_ready(obj: JSON) -> str:
    statuses = (obj.get("status") or {}).get("containerStatuses") or []
    total = len((obj.get("spec") or {}).get("containers") or [])
    return f"{sum(1 for c in statuses if c.get('ready'))}/{total}"


def _pod_restarts(obj: JSON) -> int:
    return sum(int(c.get("restartCount", 0)) for c in (obj.get("status") or {}).get("containerStatuses") or [])


def job_status(obj: JSON) -> str:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("status") == "True" and cond.get("type") in ("Complete", "Failed", "Suspended"):
            return str(cond["type"])
    return "Running"


def _job_completions(obj: JSON) -> str:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    return f"{status.get('succeeded', 0)}/{spec.get('completions', 1)}"


def _job_duration(obj: JSON) -> str:
    status = obj.get("status") or {}
    start = parse_time(status.get("startTime"))
    if start is None:
        return ""
    end = parse_time(status.get("completionTime")) or dt.datetime.now(dt.UTC)
    return human_duration((end - start).total_seconds())


def _node_status(obj: JSON) -> str:
    ready = "Unknown"
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            ready = "Ready" if cond.get("status") == "True" else "NotReady"
    if (obj.get("spec") or {}).get("unschedulable"):
        ready += ",SchedulingDisabled"
    return ready


def _node_roles(obj: JSON) -> str:
    prefix = "node-role.kubernetes.io/"
    roles = sorted(k[len(prefix):] for k in (_meta(obj, "labels") or {}) if k.startswith(prefix))
    return ",".join(roles) or "<none>"


def _node_address(kind: str) -> Cell:
    def cell(obj: JSON) -> str:
        for addr in (obj.get("status") or {}).get("addresses") or []:
            if addr.get("type") == kind:
                return str(addr.get("address"))
        return "<none>"

    return cell


def _ports(obj: JSON) -> str:
    ports = (obj.get("spec") or {}).get("ports") or []
    return ",".join(f"{p.get('port')}/{p.get('protocol', 'TCP')}" for p in ports) or "<none>"


def _event_object(obj: JSON) -> str:
    ref = obj.get("involvedObject") or obj.get("regarding") or {}
    return f"{str(ref.get('kind', '')).lower()}/{ref.get('name', '')}"


def _event_last_seen(obj: JSON) -> str:
    return age(obj.get("lastTimestamp") or obj.get("eventTime") or _meta(obj, "creationTimestamp"))


def _path(path: str) -> Cell:
    def cell(obj: JSON) -> Any:
        values = find(obj, path)
        return values[0] if values else None

    return cell


BUILTIN_COLUMNS: dict[str, list[tuple[JSON, Cell]]] = {
    "Pod": [
        (NAME, _name), (_col("Ready"), _pod_ready), (_col("Status"), pod_status),
        (_col("Restarts", "integer"), _pod_restarts), (AGE, _age),
        (_col("IP", priority=1), _path(".status.podIP")), (_col("Node", priority=1), _path(".spec.nodeName")),
    ],
    "Job": [
        (NAME, _name), (_col("Status"), job_status), (_col("Completions"), _job_completions),
        (_col("Duration"), _job_duration), (AGE, _age),
        (_col("Containers", priority=1),
         lambda o: ",".join(c.get("name", "") for c in find(o, ".spec.template.spec.containers[*]"))),
        (_col("Images", priority=1),
         lambda o: ",".join(c.get("image", "") for c in find(o, ".spec.template.spec.containers[*]"))),
    ],
    "Namespace": [(NAME, _name), (_col("Status"), _path(".status.phase")), (AGE, _age)],
    "Node": [
        (NAME, _name), (_col("Status"), _node_status), (_col("Roles"), _node_roles), (AGE, _age),
        (_col("Version"), _path(".status.nodeInfo.kubeletVersion")),
        (_col("Internal-IP", priority=1), _node_address("InternalIP")),
        (_col("OS-Image", priority=1), _path(".status.nodeInfo.osImage")),
    ],
    "ConfigMap": [(NAME, _name), (_col("Data", "integer"), lambda o: len(o.get("data") or {})
                                 + len(o.get("binaryData") or {})), (AGE, _age)],
    "Secret": [(NAME, _name), (_col("Type"), lambda o: o.get("type", "Opaque")),
               (_col("Data", "integer"), lambda o: len(o.get("data") or {})), (AGE, _age)],
    "Service": [
        (NAME, _name), (_col("Type"), _path(".spec.type")), (_col("Cluster-IP"), _path(".spec.clusterIP")),
        (_col("External-IP"), lambda o: "<none>"), (_col("Port(s)"), _ports), (AGE, _age),
    ],
    "Event": [
        (_col("Last Seen"), _event_last_seen), (_col("Type"), lambda o: o.get("type")),
        (_col("Reason"), lambda o: o.get("reason")), (_col("Object"), _event_object),
        (_col("Message"), lambda o: o.get("message") or o.get("note")),
    ],
    "ServiceAccount": [(NAME, _name), (_col("Secrets", "integer"), lambda o: len(o.get("secrets") or [])),
                       (AGE, _age)],
    "PersistentVolumeClaim": [
        (NAME, _name), (_col("Status"), _path(".status.phase")), (_col("Volume"), _path(".spec.volumeName")),
        (_col("Capacity"), _path(".status.capacity.storage")),
        (_col("Access Modes"), lambda o: ",".join(
            {"ReadWriteOnce": "RWO", "ReadOnlyMany": "ROX", "ReadWriteMany": "RWX"}.get(m, m)
            for m in (o.get("spec") or {}).get("accessModes") or [])),
        (_col("StorageClass"), _path(".spec.storageClassName")), (AGE, _age),
    ],
    "Lease": [(NAME, _name), (_col("Holder"), _path(".spec.holderIdentity")), (AGE, _age)],
    "CustomResourceDefinition": [(NAME, _name), (_col("Created At", "date"),
                                                 lambda o: _meta(o, "creationTimestamp"))],
}


def _crd_columns(rt: ResourceType) -> list[tuple[JSON, Cell]]:
    if not rt.printer_columns:
        return [(NAME, _name), (AGE, _age)]
    columns: list[tuple[JSON, Cell]] = [(NAME, _name)]
    for spec in rt.printer_columns:
        kind = spec.get("type", "string")
        definition = _col(spec["name"], kind, int(spec.get("priority", 0)), spec.get("format", ""),
                          spec.get("description", ""))
        columns.append((definition, _crd_cell(spec["jsonPath"], kind)))
    return columns


def _crd_cell(path: str, kind: str) -> Cell:
    def cell(obj: JSON) -> Any:
        try:
            values = find(obj, path)
        except ValueError:
            return None
        if not values:
            return None
        value = values[0]
        if kind == "date":
            return age(value) if isinstance(value, str) else value
        if isinstance(value, dict | list):
            import json

            return json.dumps(value)
        return value

    return cell


def columns_for(rt: ResourceType) -> list[tuple[JSON, Cell]]:
    if not rt.builtin:
        return _crd_columns(rt)
    return BUILTIN_COLUMNS.get(rt.kind, [(NAME, _name), (AGE, _age)])


def row(obj: JSON, columns: list[tuple[JSON, Cell]], include_object: str) -> JSON:
    cells = []
    for _, cell in columns:
        try:
            cells.append(cell(obj))
        except (KeyError, TypeError, ValueError, AttributeError):
            cells.append(None)
    result: JSON = {"cells": cells}
    if include_object == "Object":
        result["object"] = obj
    elif include_object != "None":
        result["object"] = {
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj.get("metadata") or {},
        }
    return result


def table(rt: ResourceType, objects: list[JSON], include_object: str, list_meta: JSON) -> JSON:
    columns = columns_for(rt)
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": [c for c, _ in columns],
        "rows": [row(o, columns, include_object) for o in objects],
    }
