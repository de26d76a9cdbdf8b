"""Defaulting and validation of the built-in kinds, as the real API server's strategies do it."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re
from typing import Any

from edgemodel_dev.errors import cause
from edgemodel_dev.resources import ResourceType
from edgemodel_dev.selectors import labels_match, selector_from_label_selector

JSON = dict[str, Any]

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")

JOB_UID_LABEL = "batch.kubernetes.io/controller-uid"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"


def now() -> str:
    """RFC 3339 UTC with seconds, as Kubernetes writes timestamps."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def validate_name(name: str, label: bool, field: str = "metadata.name") -> list[JSON]:
    if len(name) > (63 if label else 253):
        return [cause(field, "FieldValueInvalid",
                      f'Invalid value: "{name}": must be no more than {63 if label else 253} characters')]
    pattern = DNS_LABEL if label else DNS_SUBDOMAIN
    if not pattern.match(name):
        what = "RFC 1123 label" if label else "lowercase RFC 1123 subdomain"
        chars = "'-'" if label else "'-' or '.'"
        return [cause(field, "FieldValueInvalid",
                      f'Invalid value: "{name}": a {what} must consist of lower case alphanumeric characters, '
                      f"{chars}, and must start and end with an alphanumeric character")]
    return []


def validate_metadata(meta: JSON) -> list[JSON]:
    causes = []
    for key, value in (meta.get("labels") or {}).items():
        prefix, _, name = key.rpartition("/")
        if not QUALIFIED_NAME.match(name) or len(name) > 63 or (prefix and not DNS_SUBDOMAIN.match(prefix)):
            causes.append(cause("metadata.labels", "FieldValueInvalid",
                                f'Invalid value: "{key}": name part must consist of alphanumeric characters, '
                                "'-', '_' or '.', and must start and end with an alphanumeric character"))
        if not isinstance(value, str) or len(value) > 63 or not LABEL_VALUE.match(value):
            causes.append(cause("metadata.labels", "FieldValueInvalid",
                                f"Invalid value: {value!r}: a valid label must be an empty string or consist of "
                                "alphanumeric characters, '-', '_' or '.', and must start and end with an "
                                "alphanumeric character"))
    for key, value in (meta.get("annotations") or {}).items():
        if not isinstance(value, str):
            causes.append(cause(f"metadata.annotations.{key}", "FieldValueInvalid",
                                "Invalid value: annotation values must be strings"))
    for index, ref in enumerate(meta.get("ownerReferences") or []):
        for field in ("apiVersion", "kind", "name", "uid"):
            if not ref.get(field):
                causes.append(cause(f"metadata.ownerReferences[{index}].{field}", "FieldValueRequired",
                                    "Required value"))
    if sum(1 for r in meta.get("ownerReferences") or [] if r.get("controller")) > 1:
        causes.append(cause("metadata.ownerReferences", "FieldValueInvalid",
                            "Invalid value: only one reference can have Controller set to true"))
    return causes


# pods ---------------------------------------------------------------------------------------
def default_pod_spec(spec: JSON) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("securityContext", {})
    spec.setdefault("enableServiceLinks", True)
    if "serviceAccountName" not in spec:
        spec["serviceAccountName"] = spec.get("serviceAccount") or "default"
    spec.setdefault("serviceAccount", spec["serviceAccountName"])
    for container in (spec.get("containers") or []) + (spec.get("initContainers") or []):
        if not isinstance(container, dict):
            continue
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
        image = str(container.get("image", ""))
        tag = image.rsplit(":", 1)[-1] if ":" in image.rsplit("/", 1)[-1] else ""
        container.setdefault("imagePullPolicy", "Always" if tag in ("", "latest") else "IfNotPresent")
        container.setdefault("resources", {})
        for port in container.get("ports") or []:
            port.setdefault("protocol", "TCP")
        for env in container.get("env") or []:
            field_ref = (env.get("valueFrom") or {}).get("fieldRef")
            if isinstance(field_ref, dict):
                field_ref.setdefault("apiVersion", "v1")
    for volume in spec.get("volumes") or []:
        for source in ("secret", "configMap"):
            if isinstance(volume.get(source), dict):
                volume[source].setdefault("defaultMode", 420)
        if isinstance(volume.get("hostPath"), dict):
            volume["hostPath"].setdefault("type", "")


def validate_pod_spec(spec: JSON, prefix: str, restart_policies: tuple[str, ...]) -> list[JSON]:
    causes: list[JSON] = []
    containers = spec.get("containers")
    if not containers:
        return [cause(f"{prefix}.containers", "FieldValueRequired", "Required value")]
    names: set[str] = set()
    volume_names = {v.get("name") for v in spec.get("volumes") or [] if isinstance(v, dict)}
    all_containers = [("initContainers", c) for c in spec.get("initContainers") or []] + [
        ("containers", c) for c in containers]
    counters: dict[str, int] = {}
    for group, container in all_containers:
        index = counters.get(group, 0)
        counters[group] = index + 1
        where = f"{prefix}.{group}[{index}]"
        if not isinstance(container, dict):
            causes.append(cause(where, "FieldValueTypeInvalid", "Invalid value: must be an object"))
            continue
        name = container.get("name")
        if not name:
            causes.append(cause(f"{where}.name", "FieldValueRequired", "Required value"))
        elif name in names:
            causes.append(cause(f"{where}.name", "FieldValueDuplicate", f'Duplicate value: "{name}"'))
        else:
            causes += validate_name(str(name), True, f"{where}.name")
            names.add(str(name))
        if not container.get("image"):
            causes.append(cause(f"{where}.image", "FieldValueRequired", "Required value"))
        for mindex, mount in enumerate(container.get("volumeMounts") or []):
            if mount.get("name") not in volume_names:
                causes.append(cause(f"{where}.volumeMounts[{mindex}].name", "FieldValueNotFound",
                                    f'Not found: "{mount.get("name")}"'))
            if not str(mount.get("mountPath", "")).startswith("/"):
                causes.append(cause(f"{where}.volumeMounts[{mindex}].mountPath", "FieldValueInvalid",
                                    f'Invalid value: "{mount.get("mountPath", "")}": must be an absolute path'))
    policy = spec.get("restartPolicy")
    if policy not in restart_policies:
        supported = ", ".join(f'"{p}"' for p in restart_policies)
        causes.append(cause(f"{prefix}.restartPolicy", "FieldValueNotSupported",
                            f'Unsupported value: "{policy}": supported values: {supported}'))
    seen_volumes: set[str] = set()
    for index, volume in enumerate(spec.get("volumes") or []):
        vname = volume.get("name") if isinstance(volume, dict) else None
        if not vname:
            causes.append(cause(f"{prefix}.volumes[{index}].name", "FieldValueRequired", "Required value"))
        elif vname in seen_volumes:
            causes.append(cause(f"{prefix}.volumes[{index}].name", "FieldValueDuplicate",
                                f'Duplicate value: "{vname}"'))
        else:
            seen_volumes.add(vname)
    return causes


# kind strategies ----------------------------------------------------------------------------
def prepare_for_create(rt: ResourceType, obj: JSON) -> None:
    """Defaults and status reset of a new object of a built-in kind."""
    meta = obj["metadata"]
    kind = rt.kind
    if kind == "Pod":
        default_pod_spec(obj.setdefault("spec", {}))
        obj["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
    elif kind == "Job":
        spec = obj.setdefault("spec", {})
        spec.setdefault("parallelism", 1)
        spec.setdefault("completions", 1)
        spec.setdefault("backoffLimit", 6)
        spec.setdefault("completionMode", "NonIndexed")
        spec.setdefault("suspend", False)
        spec.setdefault("podReplacementPolicy", "TerminatingOrFailed")
        template = spec.setdefault("template", {})
        tmeta = template.setdefault("metadata", {})
        if not spec.get("manualSelector"):
            labels = tmeta.setdefault("labels", {})
            labels.update({JOB_UID_LABEL: meta["uid"], JOB_NAME_LABEL: meta["name"],
                           "controller-uid": meta["uid"], "job-name": meta["name"]})
            spec["selector"] = {"matchLabels": {JOB_UID_LABEL: meta["uid"]}}
        if not meta.get("labels"):
            meta["labels"] = dict(tmeta.get("labels") or {})
        default_pod_spec(template.setdefault("spec", {}))
        obj["status"] = {}
    elif kind == "Service":
        spec = obj.setdefault("spec", {})
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")
        spec.setdefault("internalTrafficPolicy", "Cluster")
        for port in spec.get("ports") or []:
            port.setdefault("protocol", "TCP")
            port.setdefault("targetPort", port.get("port"))
        obj["status"] = {"loadBalancer": {}}
    elif kind == "Secret":
        obj.setdefault("type", "Opaque")
        string_data = obj.pop("stringData", None) or {}
        data = obj.setdefault("data", {}) if string_data else obj.get("data")
        for key, value in string_data.items():
            assert data is not None
            data[key] = base64.b64encode(str(value).encode()).decode()
    elif kind == "Namespace":
        obj["spec"] = {"finalizers": ["kubernetes"]}
        obj["status"] = {"phase": "Active"}
        meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta["name"]
    elif kind == "PersistentVolumeClaim":
        spec = obj.setdefault("spec", {})
        spec.setdefault("volumeMode", "Filesystem")
        spec.setdefault("storageClassName", "local")
        spec["volumeName"] = f"pvc-{meta['uid']}"
        storage = ((spec.get("resources") or {}).get("requests") or {}).get("storage", "1Gi")
        obj["status"] = {"phase": "Bound", "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                         "capacity": {"storage": storage}}
    elif kind == "CustomResourceDefinition":
        names = obj["spec"].get("names") or {}
        accepted = dict(names)
        accepted.setdefault("singular", str(names.get("kind", "")).lower())
        accepted.setdefault("listKind", f"{names.get('kind', '')}List")
        stored = [v["name"] for v in obj["spec"].get("versions") or [] if v.get("storage")]
        obj["status"] = {
            "acceptedNames": accepted,
            "storedVersions": stored,
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
                 "message": "no conflicts found", "lastTransitionTime": now()},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                 "message": "the initial names have been accepted", "lastTransitionTime": now()},
            ],
        }
    elif kind == "Deployment":
        spec = obj.setdefault("spec", {})
        spec.setdefault("replicas", 1)
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("progressDeadlineSeconds", 600)
        spec.setdefault("strategy", {"type": "RollingUpdate",
                                     "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}})
        default_pod_spec(spec.setdefault("template", {}).setdefault("spec", {}))
        obj["status"] = {}
    elif kind == "DaemonSet":
        spec = obj.setdefault("spec", {})
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("updateStrategy", {"type": "RollingUpdate",
                                           "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}})
        default_pod_spec(spec.setdefault("template", {}).setdefault("spec", {}))
        obj["status"] = {"currentNumberScheduled": 0, "desiredNumberScheduled": 0, "numberMisscheduled": 0,
                         "numberReady": 0}
    elif kind in ("PodDisruptionBudget", "ValidatingAdmissionPolicy"):
        obj["status"] = {}
    elif kind == "Event" and rt.group == "":
        obj.setdefault("firstTimestamp", obj.get("lastTimestamp") or None)
        obj.setdefault("count", 1)


def validate_object(rt: ResourceType, obj: JSON, old: JSON | None) -> list[JSON]:
    """Causes for a new (old is None) or updated object of a built-in kind."""
    kind = rt.kind
    causes: list[JSON] = []
    if kind == "Pod":
        causes += validate_pod_spec(obj.get("spec") or {}, "spec", ("Always", "OnFailure", "Never"))
        if old is not None:
            old_spec, new_spec = dict(old.get("spec") or {}), dict(obj.get("spec") or {})
            for spec in (old_spec, new_spec):
                spec.pop("activeDeadlineSeconds", None)
                spec.pop("terminationGracePeriodSeconds", None)
            if [c.get("image") for c in old_spec.get("containers") or []] != [
                    c.get("image") for c in new_spec.get("containers") or []]:
                old_spec["containers"] = new_spec.get("containers")
            if old_spec != new_spec and old_spec.get("nodeName") == new_spec.get("nodeName"):
                causes.append(cause("spec", "FieldValueForbidden",
                                    "Forbidden: pod updates may not change fields other than `spec.containers[*].image`,"
                                    " `spec.activeDeadlineSeconds` or `spec.terminationGracePeriodSeconds`"))
    elif kind == "Job":
        spec = obj.get("spec") or {}
        template = spec.get("template") or {}
        causes += validate_pod_spec(template.get("spec") or {}, "spec.template.spec", ("OnFailure", "Never"))
        for field in ("parallelism", "completions", "backoffLimit", "activeDeadlineSeconds",
                      "ttlSecondsAfterFinished"):
            value = spec.get(field)
            if value is not None and (not isinstance(value, int) or value < (1 if field == "activeDeadlineSeconds"
                                                                               else 0)):
                causes.append(cause(f"spec.{field}", "FieldValueInvalid",
                                    f"Invalid value: {value}: must be greater than or equal to 0"))
        if old is not None and (old.get("spec") or {}).get("template") != template \
                and not (old.get("spec") or {}).get("suspend"):
            causes.append(cause("spec.template", "FieldValueInvalid",
                                "Invalid value: field is immutable"))
        if old is not None and (old.get("spec") or {}).get("selector") != spec.get("selector"):
            causes.append(cause("spec.selector", "FieldValueInvalid", "Invalid value: field is immutable"))
    elif kind in ("Deployment", "DaemonSet"):
        spec = obj.get("spec") or {}
        template = spec.get("template") or {}
        causes += validate_pod_spec(template.get("spec") or {}, "spec.template.spec", ("Always",))
        selector = spec.get("selector")
        if not selector:
            causes.append(cause("spec.selector", "FieldValueRequired", "Required value"))
        else:
            if not labels_match(selector_from_label_selector(selector), template):
                causes.append(cause("spec.template.metadata.labels", "FieldValueInvalid",
                                    f"Invalid value: {json.dumps((template.get('metadata') or {}).get('labels') or {})}"
                                    ": `selector` does not match template `labels`"))
            if old is not None and (old.get("spec") or {}).get("selector") != selector:
                causes.append(cause("spec.selector", "FieldValueInvalid", "Invalid value: field is immutable"))
    elif kind == "Namespace":
        causes += validate_name(obj["metadata"]["name"], True)
    elif kind == "Secret":
        for key, value in (obj.get("data") or {}).items():
            try:
                base64.b64decode(str(value), validate=True)
            except (binascii.Error, ValueError):
                causes.append(cause(f"data[{key}]", "FieldValueInvalid",
                                    "Invalid value: must be base64 (use stringData for plain text)"))
    elif kind == "ConfigMap":
        for key, value in (obj.get("data") or {}).items():
            if not isinstance(value, str):
                causes.append(cause(f"data[{key}]", "FieldValueTypeInvalid",
                                    "Invalid value: ConfigMap data values must be strings"))
    elif kind == "CustomResourceDefinition":
        causes += validate_crd(obj)
    elif kind == "Service":
        for index, port in enumerate((obj.get("spec") or {}).get("ports") or []):
            if not isinstance(port.get("port"), int):
                causes.append(cause(f"spec.ports[{index}].port", "FieldValueRequired", "Required value"))
    return causes


def validate_crd(obj: JSON) -> list[JSON]:
    spec = obj.get("spec") or {}
    causes: list[JSON] = []
    names = spec.get("names") or {}
    for field in ("plural", "kind"):
        if not names.get(field):
            causes.append(cause(f"spec.names.{field}", "FieldValueRequired", "Required value"))
    if not spec.get("group"):
        causes.append(cause("spec.group", "FieldValueRequired", "Required value"))
    if spec.get("scope") not in ("Namespaced", "Cluster"):
        causes.append(cause("spec.scope", "FieldValueNotSupported",
                            f'Unsupported value: "{spec.get("scope")}": supported values: "Cluster", "Namespaced"'))
    versions = spec.get("versions") or []
    if not versions:
        causes.append(cause("spec.versions", "FieldValueRequired", "Required value"))
    elif sum(1 for v in versions if v.get("storage")) != 1:
        causes.append(cause("spec.versions", "FieldValueInvalid",
                            "Invalid value: must have exactly one version marked as storage version"))
    expected = f"{names.get('plural')}.{spec.get('group')}"
    if names.get("plural") and spec.get("group") and obj["metadata"]["name"] != expected:
        causes.append(cause("metadata.name", "FieldValueInvalid",
                            f'Invalid value: "{obj["metadata"]["name"]}": must be spec.names.plural+"."+spec.group'))
    for index, version in enumerate(versions):
        schema = (version.get("schema") or {}).get("openAPIV3Schema")
        if not isinstance(schema, dict):
            causes.append(cause(f"spec.versions[{index}].schema.openAPIV3Schema", "FieldValueRequired",
                                "Required value: schemas are required"))
        elif schema.get("type") != "object":
            causes.append(cause(f"spec.versions[{index}].schema.openAPIV3Schema.type", "FieldValueRequired",
                                'Required value: must be "object" at the root'))
    return causes


# events.k8s.io/v1 <-> core/v1 ---------------------------------------------------------------
_EVENT_FIELDS = (
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
)


def event_to_core(obj: JSON) -> JSON:
    result = dict(obj)
    for new, old in _EVENT_FIELDS:
        if new in result:
            result[old] = result.pop(new)
    result["apiVersion"] = "v1"
    return result


def event_from_core(obj: JSON) -> JSON:
    result = dict(obj)
    for new, old in _EVENT_FIELDS:
        if old in result:
            result[new] = result.pop(old)
    if not result.get("eventTime"):  # required in events.k8s.io/v1; core events often lack it
        stamp = result.get("deprecatedFirstTimestamp") or (result.get("metadata") or {}).get("creationTimestamp")
        result["eventTime"] = str(stamp).replace("Z", ".000000Z") if stamp else None
    result["apiVersion"] = "events.k8s.io/v1"
    return result
