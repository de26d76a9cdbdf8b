"""API semantics on top of the store: create, read, update, patch and delete with the rules of the
real API server (system metadata, optimistic concurrency, status subresource, generation, CRD
schemas, finalizers, graceful pod deletion, propagation policies).

Used by the HTTP layer and, directly, by the built-in controllers and the kubelet.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import uuid
from dataclasses import dataclass, field
from typing import Any

import yaml

from edgemodel_dev import admission, builtin_kinds, errors, fieldmanager, patching, schema
from edgemodel_dev import fastcopy as copy
from edgemodel_dev.builtin_schemas import PatchMeta, definitions, drop_fields, unknown_fields
from edgemodel_dev.errors import ApiError
from edgemodel_dev.resources import Catalog, ResourceType, storage_version
from edgemodel_dev.selectors import (
    FieldTerm,
    Requirement,
    fields_match,
    labels_match,
)
from edgemodel_dev.store import Store

JSON = dict[str, Any]
log = logging.getLogger(__name__)

NAMESPACES = ("", "namespaces")
CRDS = ("apiextensions.k8s.io", "customresourcedefinitions")
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
SYSTEM_META = ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation",
               "resourceVersion", "selfLink")
_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"


@dataclass
class WriteResult:
    """An object written (or, for dry runs, that would be written) and the warnings for the client."""

    obj: JSON
    warnings: list[str] = field(default_factory=list)
    created: bool = False


@dataclass
class DeleteOptions:
    propagation: str | None = None
    grace_seconds: int | None = None
    precondition_uid: str | None = None
    precondition_rv: str | None = None
    dry_run: bool = False

    @classmethod
    def parse(cls, body: JSON | None, query: dict[str, str]) -> DeleteOptions:
        body = body or {}
        propagation = query.get("propagationPolicy") or body.get("propagationPolicy")
        orphan = query.get("orphanDependents") or body.get("orphanDependents")
        if propagation is None and orphan is not None:
            propagation = "Orphan" if str(orphan).lower() == "true" else "Background"
        if propagation not in (None, "Orphan", "Background", "Foreground"):
            raise errors.bad_request(f"propagationPolicy {propagation!r} is not one of Orphan, Background, "
                                     "Foreground")
        grace = query.get("gracePeriodSeconds", body.get("gracePeriodSeconds"))
        pre = body.get("preconditions") or {}
        dry = query.get("dryRun") or body.get("dryRun")
        return cls(propagation, int(grace) if grace is not None else None, pre.get("uid"),
                   pre.get("resourceVersion"), bool(dry))


# Built-in kinds whose strategy sets metadata.generation (the rest, e.g. ConfigMap, Secret, Service,
# Event, Lease, Node, Namespace, ServiceAccount and the RBAC kinds, have none); custom resources always do.
GENERATION_KINDS = frozenset({
    "Pod", "Job", "CronJob", "Deployment", "ReplicaSet", "DaemonSet", "StatefulSet", "CustomResourceDefinition",
    "NetworkPolicy", "PodDisruptionBudget", "Ingress", "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding", "ValidatingWebhookConfiguration", "MutatingWebhookConfiguration",
})


def field_manager_of(manager: str | None, tracked: bool) -> str | None:
    """The manager a non-apply write records: ``fieldManager``, else (only on an object whose fields
    are already managed) the client's user agent, passed as ``"?<user agent>"``."""
    if manager and manager.startswith("?"):
        return (manager[1:].split("/")[0] or "unknown") if tracked else None
    return manager


def has_generation(rt: ResourceType) -> bool:
    """Whether objects of this kind carry metadata.generation."""
    return not rt.builtin or rt.kind in GENERATION_KINDS


def _timestamp(offset_seconds: float = 0) -> str:
    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=offset_seconds)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _comparable(obj: JSON) -> JSON:
    """The object without resourceVersion and managedFields' times, for comparison only (shares its values).

    A write that changes only the times of managedFields is a no-op (ownership changes are not).
    """
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "resourceVersion"}
    if meta.get("managedFields"):
        meta["managedFields"] = [{k: v for k, v in item.items() if k != "time"} for item in meta["managedFields"]]
    return {**obj, "metadata": meta}


def _without(obj: JSON, *keys: str) -> JSON:
    result = {k: v for k, v in obj.items() if k not in keys}
    return result


class Registry:
    """The REST semantics of every resource the server serves."""

    def __init__(self, store: Store, catalog: Catalog) -> None:
        self.store = store
        self.catalog = catalog

    # conversion between the storage form and a served version ------------------------------
    def _storage_api_version(self, rt: ResourceType) -> str:
        if rt.builtin:
            return "v1" if rt.storage == ("", "events") else rt.api_version
        crd = self.store.get(CRDS, "", rt.crd_name)
        version = storage_version(crd) if crd else rt.version
        return f"{rt.group}/{version}"

    def present(self, rt: ResourceType, stored: JSON) -> JSON:
        """A copy of a stored object as the requested group version shows it."""
        obj = copy.deepcopy(stored)
        if rt.storage == ("", "events") and rt.group == "events.k8s.io":
            return builtin_kinds.event_from_core(obj)
        obj["apiVersion"] = rt.api_version
        obj.setdefault("kind", rt.kind)
        if not rt.builtin and rt.schema is not None:
            schema.apply_defaults(obj, rt.schema)
        return obj

    def _to_storage(self, rt: ResourceType, obj: JSON) -> JSON:
        if rt.storage == ("", "events") and rt.group == "events.k8s.io":
            obj = builtin_kinds.event_to_core(obj)
            obj["kind"] = "Event"
            return obj
        obj["apiVersion"] = self._storage_api_version(rt)
        return obj

    # reads ----------------------------------------------------------------------------------
    def _namespace_of(self, rt: ResourceType, namespace: str | None) -> str:
        return (namespace or "") if rt.namespaced else ""

    def get_stored(self, rt: ResourceType, namespace: str | None, name: str) -> JSON:
        stored = self.store.get(rt.storage, self._namespace_of(rt, namespace), name)
        if stored is None:
            raise errors.not_found(rt.group, rt.plural, name)
        return stored

    def get(self, rt: ResourceType, namespace: str | None, name: str) -> JSON:
        return self.present(rt, self.get_stored(rt, namespace, name))

    def list_objects(
        self,
        rt: ResourceType,
        namespace: str | None,
        labels: list[Requirement] | None = None,
        fields: list[FieldTerm] | None = None,
    ) -> list[JSON]:
        """The selected objects as they are now."""
        return self.list_at(rt, namespace, labels, fields) or []

    def list_at(
        self,
        rt: ResourceType,
        namespace: str | None,
        labels: list[Requirement] | None = None,
        fields: list[FieldTerm] | None = None,
        *,
        at_rv: int | None = None,
    ) -> list[JSON] | None:
        """The selected objects now, or as they were at ``at_rv``; None when ``at_rv`` is older
        than the kind's history (a paged list's continue token that expired)."""
        ns = self._namespace_of(rt, namespace) or None
        if at_rv is None:
            stored_items: list[JSON] | None = self._candidates(rt, namespace, fields or [])
        else:
            stored_items = self.store.items_at(rt.storage, at_rv, ns)
        if stored_items is None:
            return None
        result = []
        for stored in stored_items:
            if labels and not labels_match(labels, stored):  # labels are the same stored and presented
                continue
            obj = self.present(rt, stored)
            if fields and not fields_match(fields, obj):
                continue
            result.append(obj)
        return result

    def _candidates(self, rt: ResourceType, namespace: str | None, fields: list[FieldTerm]) -> list[JSON]:
        """Stored objects a list may return: one lookup for ``metadata.name=X``, else the namespace's (or all);
        only matching objects are then copied and presented."""
        ns = self._namespace_of(rt, namespace)
        name = next((t.value for t in fields if t.path == "metadata.name" and not t.negate), None)
        if name is not None and (ns or not rt.namespaced):
            found = self.store.get(rt.storage, ns, name)
            return [found] if found is not None else []
        return self.store.items(rt.storage, ns or None)

    # helpers --------------------------------------------------------------------------------
    def _check_identity(self, rt: ResourceType, body: JSON) -> None:
        if not isinstance(body, dict):
            raise errors.bad_request("the body of the request must be a JSON object")
        kind = body.get("kind")
        if kind and kind != rt.kind:
            raise errors.bad_request(f"the kind in the data ({kind}) does not match the expected kind ({rt.kind})")
        api_version = body.get("apiVersion")
        if api_version and api_version != rt.api_version:
            raise errors.bad_request(
                f"the API version in the data ({api_version}) does not match the expected API version "
                f"({rt.api_version})"
            )
        if not isinstance(body.get("metadata", {}), dict):
            raise errors.bad_request("metadata must be an object")

    def _unknown(self, rt: ResourceType, obj: JSON, field_validation: str) -> list[str]:
        """Find, drop and report fields no schema knows (the strict/warn/ignore field validation)."""
        found = unknown_fields(obj.get("metadata") or {}, definitions().get(OBJECT_META), "metadata")
        drop_fields(obj, found)
        if rt.builtin and rt.definition in definitions():
            extra = unknown_fields(_without(obj, "metadata"), definitions()[rt.definition])
            drop_fields(obj, extra)
            found += extra
        elif not rt.builtin and rt.schema is not None:
            schema.drop_nulls(obj, rt.schema)
            schema.apply_defaults(obj, rt.schema)
            found += schema.prune(obj, rt.schema, root=True)
        return self._field_validation(found, field_validation)

    @staticmethod
    def _field_validation(found: list[str], field_validation: str) -> list[str]:
        if not found or field_validation == "Ignore":
            return []
        messages = [f'unknown field "{path}"' for path in sorted(found)]
        if field_validation == "Strict":
            raise errors.bad_request("strict decoding error: " + ", ".join(messages))
        return messages

    def _validate(self, rt: ResourceType, obj: JSON, old: JSON | None) -> None:
        name = obj["metadata"].get("name", "")
        causes = builtin_kinds.validate_metadata(obj["metadata"])
        if rt.kind != "Namespace" and rt.builtin:
            if rt.kind not in ("Event",):
                causes += builtin_kinds.validate_name(name, False)
        elif not rt.builtin:
            causes += builtin_kinds.validate_name(name, False)
        if rt.builtin:
            causes += builtin_kinds.validate_object(rt, obj, old)
        elif rt.schema is not None:
            structural = schema.validate(obj, rt.schema)
            causes += structural or schema.validate_rules(obj, rt.schema, old)
        if causes:
            raise errors.invalid(rt.group, rt.kind, name, causes)

    def _check_namespace(self, rt: ResourceType, namespace: str) -> None:
        if not rt.namespaced:
            return
        ns = self.store.get(NAMESPACES, "", namespace)
        if ns is None:
            raise errors.not_found("", "namespaces", namespace)
        if ns["metadata"].get("deletionTimestamp"):
            raise ApiError(403, "Forbidden",
                           f"{rt.qualified} is forbidden: unable to create new content in namespace {namespace} "
                           "because it is being terminated",
                           details={"name": namespace, "kind": "namespaces",
                                    "causes": [{"reason": "NamespaceTerminating",
                                                "message": f"namespace {namespace} is being terminated",
                                                "field": "metadata.namespace"}]})

    # create ---------------------------------------------------------------------------------
    def create(
        self,
        rt: ResourceType,
        namespace: str | None,
        body: JSON,
        *,
        dry_run: bool = False,
        field_validation: str = "Warn",
        field_manager: str | None = None,
        managed_fields: list[JSON] | None = None,
    ) -> WriteResult:
        self._check_identity(rt, body)
        obj = copy.deepcopy(body)
        obj["apiVersion"] = rt.api_version
        obj["kind"] = rt.kind
        meta = obj.setdefault("metadata", {})
        ns = self._namespace_of(rt, namespace)
        if rt.namespaced:
            if meta.get("namespace") and namespace and meta["namespace"] != namespace:
                raise errors.bad_request("the namespace of the provided object does not match the namespace sent "
                                         "on the request")
            ns = ns or meta.get("namespace") or "default"
            meta["namespace"] = ns
        else:
            meta.pop("namespace", None)
        warnings = self._unknown(rt, obj, field_validation)
        if not meta.get("name"):
            if meta.get("generateName"):
                meta["name"] = self._generate_name(rt, ns, str(meta["generateName"]))
            else:
                raise errors.invalid(rt.group, rt.kind, "", [errors.cause(
                    "metadata.name", "FieldValueRequired", "Required value: name or generateName is required")])
        if meta.get("resourceVersion"):
            # what the real server's storage layer answers (an InternalError, not a 4xx)
            raise ApiError(500, "InternalError",
                           "Internal error occurred: resourceVersion should not be set on objects to be created",
                           details={"causes": [{"message": "resourceVersion should not be set on objects to be "
                                                           "created"}]})
        for key in SYSTEM_META:
            meta.pop(key, None)
        meta.pop("managedFields", None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _timestamp()
        if has_generation(rt):
            meta["generation"] = 1
        if rt.builtin:
            builtin_kinds.prepare_for_create(rt, obj)
        elif rt.has_status:
            obj.pop("status", None)
        if managed_fields is not None:
            meta["managedFields"] = managed_fields
        elif field_manager and not field_manager.startswith("?"):
            paths = fieldmanager.field_set(obj, self._patch_meta(rt), skip_status=rt.has_status)
            meta["managedFields"] = [fieldmanager.entry(field_manager, "Update", rt.api_version, paths, _timestamp())]
        self._validate(rt, obj, None)
        admission.admit(rt.group, rt.plural, admission.Write("CREATE", "", meta["name"], obj, None))
        self._check_namespace(rt, ns)
        if self.store.get(rt.storage, ns, meta["name"]) is not None:
            raise errors.already_exists(rt.group, rt.plural, meta["name"])
        if dry_run:
            meta["resourceVersion"] = str(self.store.rv)
            return WriteResult(obj, warnings, created=True)
        stored = self.store.create(rt.storage, self._to_storage(rt, copy.deepcopy(obj)))
        self._after_write(rt, stored)
        return WriteResult(self.present(rt, stored), warnings, created=True)

    def _generate_name(self, rt: ResourceType, namespace: str, prefix: str) -> str:
        for _ in range(20):
            name = prefix + "".join(random.choice(_NAME_CHARS) for _ in range(5))
            if self.store.get(rt.storage, namespace, name) is None:
                return name
        raise ApiError(409, "AlreadyExists", f"could not generate a unique name with prefix {prefix!r}")

    def _after_write(self, rt: ResourceType, stored: JSON) -> None:
        if rt.storage == CRDS:
            self.catalog.replace_crd(stored)
        if rt.storage == NAMESPACES and self.store.get(("", "serviceaccounts"), stored["metadata"]["name"],
                                                       "default") is None \
                and not stored["metadata"].get("deletionTimestamp"):
            sa = self.catalog.get("", "v1", "serviceaccounts")
            self.create(sa, stored["metadata"]["name"], {"metadata": {"name": "default"}})

    # update ---------------------------------------------------------------------------------
    def update(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        body: JSON,
        *,
        subresource: str = "",
        dry_run: bool = False,
        field_validation: str = "Warn",
        field_manager: str | None = None,
        managed_fields: list[JSON] | None = None,
    ) -> WriteResult:
        self._check_identity(rt, body)
        stored = self.get_stored(rt, namespace, name)
        old = self.present(rt, stored)
        body_meta = body.get("metadata") or {}
        if body_meta.get("name") and body_meta["name"] != name:
            raise errors.bad_request(f"the name of the object ({body_meta['name']}) does not match the name on "
                                     f"the URL ({name})")
        expected_rv = body_meta.get("resourceVersion")
        if not expected_rv and not rt.builtin:
            # custom resources forbid unconditional updates (AllowUnconditionalUpdate is false for them)
            raise errors.invalid(rt.group, rt.kind, name, [errors.cause(
                "metadata.resourceVersion", "FieldValueInvalid",
                "Invalid value: 0x0: must be specified for an update")])
        if expected_rv and str(expected_rv) != stored["metadata"]["resourceVersion"]:
            raise errors.stale(rt.group, rt.plural, name)
        if subresource == "status":
            new = copy.deepcopy(old)
            if "status" in body:
                new["status"] = copy.deepcopy(body["status"])
            else:
                new.pop("status", None)
            warnings = self._unknown(rt, new, field_validation)
        else:
            new = copy.deepcopy(body)
            new["apiVersion"], new["kind"] = rt.api_version, rt.kind
            new_meta = new.setdefault("metadata", {})
            for key in (*SYSTEM_META, "name", "namespace", "generateName"):
                if key in old["metadata"]:
                    new_meta[key] = old["metadata"][key]
                else:
                    new_meta.pop(key, None)
            if rt.has_status:
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
                else:
                    new.pop("status", None)
            if rt.kind == "Namespace":
                new["spec"] = copy.deepcopy(old.get("spec", {}))
            warnings = self._unknown(rt, new, field_validation)
            self._check_finalizers(rt, old, new)
            self._manage_fields(rt, old, new, field_manager, managed_fields)
        if rt.kind == "Secret" and "stringData" in new:
            builtin_kinds.prepare_for_create(rt, new)  # folds stringData into data
        ignored = ("metadata", "status") if rt.has_status else ("metadata",)
        if has_generation(rt) and _without(new, *ignored) != _without(old, *ignored):
            new["metadata"]["generation"] = int(old["metadata"].get("generation", 1)) + 1
        self._validate(rt, new, old)
        admission.admit(rt.group, rt.plural, admission.Write("UPDATE", subresource, name, new, old))
        if _comparable(new) == _comparable(old):
            return WriteResult(old, warnings)
        if dry_run:
            return WriteResult(new, warnings)
        return WriteResult(self._write(rt, new), warnings)

    @staticmethod
    def _patch_meta(rt: ResourceType) -> PatchMeta:
        return PatchMeta.for_definition(rt.definition) if rt.builtin else PatchMeta(None)

    def _manage_fields(self, rt: ResourceType, old: JSON, new: JSON, manager: str | None,
                       managed_fields: list[JSON] | None) -> None:
        """metadata.managedFields of an update: the server's, never the body's (see fieldmanager)."""
        meta = new["metadata"]
        if managed_fields is not None:
            meta["managedFields"] = managed_fields
            return
        current = fieldmanager.entries(old)
        manager = field_manager_of(manager, bool(current))
        if not manager:
            if current:
                meta["managedFields"] = current
            else:
                meta.pop("managedFields", None)
            return
        changed = fieldmanager.changed(old, new, self._patch_meta(rt), skip_status=rt.has_status)
        if not changed:
            meta["managedFields"] = current
            return
        kept: list[JSON] = []
        mine: set[fieldmanager.Path] = set()
        for item in current:
            if fieldmanager.is_entry_of(item, manager, "Update", ""):
                mine = fieldmanager.owned(item)
                continue
            left = fieldmanager.owned(item) - changed
            if left:
                item["fieldsV1"] = fieldmanager.to_fields_v1(left)
                kept.append(item)
        present = fieldmanager.field_set(new, self._patch_meta(rt), skip_status=rt.has_status)
        mine = (mine | changed) & present
        meta["managedFields"] = kept + ([fieldmanager.entry(manager, "Update", rt.api_version, mine, _timestamp())]
                                        if mine else [])

    def _apply(self, rt: ResourceType, current: JSON, config: JSON, manager: str,
               force: bool) -> tuple[JSON, list[JSON]]:
        """The object an apply leaves (before the merge) and its managedFields; 409 on conflicts."""
        pmeta = self._patch_meta(rt)
        applied = fieldmanager.field_set(config, pmeta, skip_status=rt.has_status)
        mine: set[fieldmanager.Path] = set()
        others: list[JSON] = []
        for item in fieldmanager.entries(current):
            if fieldmanager.is_entry_of(item, manager, "Apply", ""):
                mine = fieldmanager.owned(item)
            elif not item.get("subresource"):
                others.append(item)
        conflicts: list[tuple[JSON, fieldmanager.Path]] = []
        for item in others:
            for path in sorted(fieldmanager.owned(item) & applied):
                if fieldmanager.value_at(current, path) != fieldmanager.value_at(config, path):
                    conflicts.append((item, path))
        if conflicts and not force:
            causes = [{"reason": "FieldManagerConflict", "field": fieldmanager.dotted(path),
                       "message": f'conflict with "{item["manager"]}"'
                                  + (" using " + item["apiVersion"] if item.get("apiVersion") else "")}
                      for item, path in conflicts]
            listed = "\n".join(f"- {c['message']}: {c['field']}" for c in causes)
            raise ApiError(409, "Conflict", f"Apply failed with {len(causes)} conflict{'s' if len(causes) > 1 else ''}: "
                           + (f"{causes[0]['message']}: {causes[0]['field']}" if len(causes) == 1 else listed),
                           details={"causes": causes, "group": rt.group, "kind": rt.plural,
                                    "name": current["metadata"]["name"]})
        kept: list[JSON] = []
        others_owned: set[fieldmanager.Path] = set()
        for item in others:
            left = fieldmanager.owned(item) - (applied if force else set())
            if left:
                item["fieldsV1"] = fieldmanager.to_fields_v1(left)
                kept.append(item)
                others_owned |= left
        base = copy.deepcopy(current)
        for path in sorted(mine - applied - others_owned, key=len, reverse=True):
            fieldmanager.remove(base, path)
        entries = [e for e in fieldmanager.entries(current) if e.get("subresource")] + kept
        entries.append(fieldmanager.entry(manager, "Apply", rt.api_version, applied, _timestamp()))
        return base, entries

    def _check_finalizers(self, rt: ResourceType, old: JSON, new: JSON) -> None:
        if not old["metadata"].get("deletionTimestamp"):
            return
        added = set(new["metadata"].get("finalizers") or []) - set(old["metadata"].get("finalizers") or [])
        if added:
            raise errors.invalid(rt.group, rt.kind, old["metadata"]["name"], [errors.cause(
                "metadata.finalizers", "FieldValueForbidden",
                f"Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers "
                f"{sorted(added)}")])

    def _write(self, rt: ResourceType, new: JSON) -> JSON:
        """Store an updated object, completing its deletion when no finalizer is left."""
        meta = new["metadata"]
        if meta.get("deletionTimestamp") and not meta.get("finalizers") and not (
            rt.kind == "Namespace" and (new.get("spec") or {}).get("finalizers")
        ) and not (rt.kind == "Pod" and (meta.get("deletionGracePeriodSeconds") or 0) > 0):
            self.store.update(rt.storage, self._to_storage(rt, copy.deepcopy(new)))
            last = self.store.remove(rt.storage, meta.get("namespace") or "", meta["name"])
            return self.present(rt, last or new)
        stored = self.store.update(rt.storage, self._to_storage(rt, copy.deepcopy(new)))
        self._after_write(rt, stored)
        return self.present(rt, stored)

    # patch ----------------------------------------------------------------------------------
    def patch(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        content_type: str,
        raw: bytes,
        *,
        subresource: str = "",
        dry_run: bool = False,
        field_validation: str = "Warn",
        field_manager: str | None = None,
        force: bool = False,
    ) -> WriteResult:
        content_type = content_type.split(";")[0].strip()
        if content_type == patching.APPLY_PATCH and (not field_manager or field_manager.startswith("?")):
            raise errors.invalid("meta.k8s.io", "PatchOptions", "", [errors.cause(
                "fieldManager", "FieldValueRequired", "Required value: is required for apply patch")])
        if content_type != patching.APPLY_PATCH and force:
            raise errors.invalid("meta.k8s.io", "PatchOptions", "", [errors.cause(
                "force", "FieldValueForbidden", "Forbidden: may not be specified for non-apply patch")])
        if content_type not in patching.PATCH_TYPES or (
            content_type == patching.STRATEGIC_PATCH and not rt.builtin
        ):
            accepted = [patching.JSON_PATCH, patching.MERGE_PATCH, patching.APPLY_PATCH]
            if rt.builtin:
                accepted.append(patching.STRATEGIC_PATCH)
            raise ApiError(415, "UnsupportedMediaType",
                           f"the body of the request was in an unknown format - accepted media types include: "
                           f"{', '.join(accepted)}")
        try:
            patch = yaml.safe_load(raw) if content_type == patching.APPLY_PATCH else _json(raw)
        except (ValueError, yaml.YAMLError) as exc:
            raise errors.bad_request(f"error decoding patch: {exc}") from None
        try:
            current = self.get(rt, namespace, name)
        except ApiError:
            if content_type != patching.APPLY_PATCH:
                raise
            if not isinstance(patch, dict):
                raise errors.bad_request("an apply patch must be an object") from None
            applied = fieldmanager.field_set(patch, self._patch_meta(rt), skip_status=rt.has_status)
            entry = fieldmanager.entry(str(field_manager), "Apply", rt.api_version, applied, _timestamp())
            return self.create(rt, namespace, patch, dry_run=dry_run, field_validation=field_validation,
                               managed_fields=[entry])
        managed: list[JSON] | None = None
        if content_type == patching.APPLY_PATCH and isinstance(patch, dict) and not subresource:
            current, managed = self._apply(rt, current, patch, str(field_manager), force)
        if content_type == patching.JSON_PATCH:
            patched = patching.json_patch(current, patch)
        elif not isinstance(patch, dict):
            raise errors.bad_request("a merge patch must be a JSON object")
        elif content_type == patching.STRATEGIC_PATCH or (content_type == patching.APPLY_PATCH and rt.builtin):
            patched = patching.strategic_merge_patch(current, patch, PatchMeta.for_definition(rt.definition))
        else:
            patched = patching.merge_patch(current, patch)
        if not isinstance(patched, dict):
            raise patching.patch_error("the patch result is not an object")
        patched_meta = patched.get("metadata") or {}
        if patched_meta.get("resourceVersion") != current["metadata"].get("resourceVersion"):
            body_rv = patched_meta.get("resourceVersion")
            if body_rv and str(body_rv) != current["metadata"]["resourceVersion"]:
                raise errors.stale(rt.group, rt.plural, name)
        return self.update(rt, namespace, name, patched, subresource=subresource, dry_run=dry_run,
                           field_validation=field_validation, field_manager=field_manager,
                           managed_fields=managed)

    # delete ---------------------------------------------------------------------------------
    def default_propagation(self, rt: ResourceType) -> str:
        return "Orphan" if (rt.group, rt.version, rt.plural) == ("batch", "v1", "jobs") else "Background"

    def delete(self, rt: ResourceType, namespace: str | None, name: str,
               options: DeleteOptions | None = None) -> tuple[JSON, bool]:
        """Delete (or start deleting) an object; returns (last state, removed now)."""
        options = options or DeleteOptions()
        stored = self.get_stored(rt, namespace, name)
        obj = self.present(rt, stored)
        meta = obj["metadata"]
        if options.precondition_uid and options.precondition_uid != meta["uid"]:
            raise errors.conflict(rt.group, rt.plural, name,
                                  f"Precondition failed: UID in precondition: {options.precondition_uid}, "
                                  f"UID in object meta: {meta['uid']}")
        if options.precondition_rv and options.precondition_rv != meta["resourceVersion"]:
            raise errors.conflict(rt.group, rt.plural, name,
                                  f"Precondition failed: ResourceVersion in precondition: "
                                  f"{options.precondition_rv}, ResourceVersion in object meta: "
                                  f"{meta['resourceVersion']}")
        if options.dry_run:
            return obj, False
        new = copy.deepcopy(obj)
        new_meta = new["metadata"]
        finalizers = list(new_meta.get("finalizers") or [])
        policy = options.propagation or self.default_propagation(rt)
        if policy == "Foreground" and "foregroundDeletion" not in finalizers and not meta.get("deletionTimestamp"):
            finalizers.append("foregroundDeletion")
        if policy == "Orphan" and "orphan" not in finalizers and not meta.get("deletionTimestamp"):
            finalizers.append("orphan")
        if rt.kind == "Pod" and self._graceful(obj, options):
            grace = options.grace_seconds
            if grace is None:
                grace = int((obj.get("spec") or {}).get("terminationGracePeriodSeconds", 30))
            if meta.get("deletionTimestamp") and grace >= int(meta.get("deletionGracePeriodSeconds") or 0):
                return obj, False
            new_meta["deletionTimestamp"] = _timestamp(grace)
            new_meta["deletionGracePeriodSeconds"] = grace
            new_meta["finalizers"] = finalizers or None
            if not finalizers:
                new_meta.pop("finalizers")
            return self.store_update(rt, new), False
        if rt.kind == "Namespace":
            if meta.get("deletionTimestamp"):
                return obj, False
            new_meta["deletionTimestamp"] = _timestamp()
            new_meta["deletionGracePeriodSeconds"] = 0
            new.setdefault("status", {})["phase"] = "Terminating"
            if finalizers:
                new_meta["finalizers"] = finalizers
            return self.store_update(rt, new), False
        if finalizers:
            if meta.get("deletionTimestamp") and finalizers == list(meta.get("finalizers") or []):
                return obj, False
            new_meta["finalizers"] = finalizers
            new_meta.setdefault("deletionTimestamp", _timestamp())
            new_meta["deletionGracePeriodSeconds"] = 0
            return self.store_update(rt, new), False
        last = self.store.remove(rt.storage, meta.get("namespace") or "", name)
        if rt.storage == CRDS:
            self._drop_crd(stored)
        return self.present(rt, last or stored), True

    @staticmethod
    def _graceful(pod: JSON, options: DeleteOptions) -> bool:
        if options.grace_seconds == 0:
            return False
        phase = (pod.get("status") or {}).get("phase")
        return bool((pod.get("spec") or {}).get("nodeName")) and phase not in ("Succeeded", "Failed")

    def store_update(self, rt: ResourceType, new: JSON) -> JSON:
        stored = self.store.update(rt.storage, self._to_storage(rt, copy.deepcopy(new)))
        return self.present(rt, stored)

    def _drop_crd(self, crd: JSON) -> None:
        self.catalog.remove_crd(crd["metadata"]["name"])
        storage = (crd["spec"]["group"], crd["spec"]["names"]["plural"])
        for obj in list(self.store.items(storage)):
            self.store.remove(storage, obj["metadata"].get("namespace") or "", obj["metadata"]["name"])

    def finish_pod_deletion(self, namespace: str, name: str) -> None:
        """The kubelet has stopped the pod: remove it unless finalizers hold it."""
        rt = self.catalog.get("", "v1", "pods")
        stored = self.store.get(rt.storage, namespace, name)
        if stored is None:
            return
        if stored["metadata"].get("finalizers"):
            new = copy.deepcopy(stored)
            new["metadata"]["deletionGracePeriodSeconds"] = 0
            self.store.update(rt.storage, new)
            return
        self.store.remove(rt.storage, namespace, name)

    def remove_now(self, rt: ResourceType, namespace: str, name: str) -> None:
        stored = self.store.get(rt.storage, namespace, name)
        if stored is not None:
            self.store.remove(rt.storage, namespace, name)
            if rt.storage == CRDS:
                self._drop_crd(stored)

    # controller helper ----------------------------------------------------------------------
    def mutate(self, rt: ResourceType, namespace: str, name: str, fn: Any, *, subresource: str = "") -> JSON | None:
        """Read, change with ``fn(obj)`` and write back (atomic on the loop); None when absent."""
        stored = self.store.get(rt.storage, self._namespace_of(rt, namespace), name)
        if stored is None:
            return None
        obj = self.present(rt, stored)
        fn(obj)
        try:
            return self.update(rt, namespace, name, obj, subresource=subresource, field_validation="Ignore").obj
        except ApiError as exc:
            log.warning("Could not update %s %s/%s: %s", rt.kind, namespace, name, exc.message)
            return None


def _json(raw: bytes) -> Any:
    import json

    return json.loads(raw.decode("utf-8") or "null")
