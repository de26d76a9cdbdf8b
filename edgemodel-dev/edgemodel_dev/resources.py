"""Resource types (built-in kinds and custom resources) and the catalog discovery is served from."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from edgemodel_dev.errors import ApiError, not_found

JSON = dict[str, Any]

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


@dataclass(frozen=True)
class ResourceType:
    """One resource of one group version, as discovery lists it."""

    group: str
    version: str
    kind: str
    plural: str
    singular: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    subresources: frozenset[str] = frozenset()
    verbs: tuple[str, ...] = ALL_VERBS
    builtin: bool = True
    #: where objects live in the store; two group versions may share it (events).
    storage: tuple[str, str] = ("", "")
    #: openAPIV3Schema of a custom resource version.
    schema: JSON | None = None
    #: additionalPrinterColumns of a custom resource version.
    printer_columns: tuple[JSON, ...] = ()
    #: DELETE answers with the object (pods, namespaces, custom resources) instead of a Status.
    returns_deleted_object: bool = False
    #: name of the OpenAPI definition of a built-in kind, e.g. io.k8s.api.core.v1.Pod.
    definition: str = ""
    #: the CRD this custom resource comes from.
    crd_name: str = ""
    list_kind: str = field(default="")

    def __post_init__(self) -> None:
        if not self.list_kind:
            object.__setattr__(self, "list_kind", f"{self.kind}List")
        if self.storage == ("", ""):
            object.__setattr__(self, "storage", (self.group, self.plural))

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_version(self) -> str:
        return self.api_version

    @property
    def has_status(self) -> bool:
        return "status" in self.subresources

    @property
    def qualified(self) -> str:
        """``pods`` or ``jobs.batch``: the group-resource."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def base_path(self, namespace: str | None) -> str:
        prefix = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            return f"{prefix}/namespaces/{namespace}/{self.plural}"
        return f"{prefix}/{self.plural}"

    def discovery_entries(self) -> list[JSON]:
        entry: JSON = {
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": list(self.verbs),
        }
        if self.short_names:
            entry["shortNames"] = list(self.short_names)
        if self.categories:
            entry["categories"] = list(self.categories)
        entries = [entry]
        for sub in sorted(self.subresources):
            verbs = ["get"] if sub == "log" else ["get", "patch", "update"]
            entries.append(
                {"name": f"{self.plural}/{sub}", "singularName": "", "namespaced": self.namespaced,
                 "kind": self.kind, "verbs": verbs}
            )
        return entries


def _core(kind: str, plural: str, namespaced: bool = True, **kw: Any) -> ResourceType:
    return ResourceType("", "v1", kind, plural, kind.lower(), namespaced,
                        definition=f"io.k8s.api.core.v1.{kind}", **kw)


BUILTIN_TYPES: tuple[ResourceType, ...] = (
    _core("Namespace", "namespaces", False, short_names=("ns",), subresources=frozenset({"status"}),
          returns_deleted_object=True),
    _core("Pod", "pods", short_names=("po",), categories=("all",),
          subresources=frozenset({"status", "log"}), returns_deleted_object=True),
    _core("ConfigMap", "configmaps", short_names=("cm",)),
    _core("Secret", "secrets"),
    _core("Service", "services", short_names=("svc",), categories=("all",),
          subresources=frozenset({"status"}), returns_deleted_object=True),
    _core("Event", "events", short_names=("ev",)),
    _core("Node", "nodes", False, short_names=("no",), subresources=frozenset({"status"})),
    _core("ServiceAccount", "serviceaccounts", short_names=("sa",)),
    _core("PersistentVolumeClaim", "persistentvolumeclaims", short_names=("pvc",),
          subresources=frozenset({"status"})),
    ResourceType("batch", "v1", "Job", "jobs", "job", True, categories=("all",),
                 subresources=frozenset({"status"}), definition="io.k8s.api.batch.v1.Job"),
    ResourceType("coordination.k8s.io", "v1", "Lease", "leases", "lease", True,
                 definition="io.k8s.api.coordination.v1.Lease"),
    ResourceType("events.k8s.io", "v1", "Event", "events", "event", True,
                 storage=("", "events"), definition="io.k8s.api.events.v1.Event"),
    ResourceType("apiextensions.k8s.io", "v1", "CustomResourceDefinition", "customresourcedefinitions",
                  "customresourcedefinition", False, short_names=("crd", "crds"),
                  categories=("api-extensions",), subresources=frozenset({"status"}),
                  definition="io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.CustomResourceDefinition"),
    # apps/v1 workloads (their controller: edgemodel_dev.workloads) and what the Helm chart installs
    ResourceType("apps", "v1", "Deployment", "deployments", "deployment", True, short_names=("deploy",),
                 categories=("all",), subresources=frozenset({"status"}), definition="io.k8s.api.apps.v1.Deployment"),
    ResourceType("apps", "v1", "DaemonSet", "daemonsets", "daemonset", True, short_names=("ds",),
                 categories=("all",), subresources=frozenset({"status"}), definition="io.k8s.api.apps.v1.DaemonSet"),
    *(ResourceType("rbac.authorization.k8s.io", "v1", kind, kind.lower() + "s", kind.lower(), namespaced,
                   definition=f"io.k8s.api.rbac.v1.{kind}")
      for kind, namespaced in (("Role", True), ("RoleBinding", True), ("ClusterRole", False),
                               ("ClusterRoleBinding", False))),
    ResourceType("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies", "networkpolicy", True,
                 short_names=("netpol",), definition="io.k8s.api.networking.v1.NetworkPolicy"),
    ResourceType("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets", "poddisruptionbudget", True,
                 short_names=("pdb",), subresources=frozenset({"status"}),
                 definition="io.k8s.api.policy.v1.PodDisruptionBudget"),
    ResourceType("admissionregistration.k8s.io", "v1", "ValidatingAdmissionPolicy", "validatingadmissionpolicies",
                 "validatingadmissionpolicy", False, categories=("api-extensions",), subresources=frozenset({"status"}),
                 definition="io.k8s.api.admissionregistration.v1.ValidatingAdmissionPolicy"),
    ResourceType("admissionregistration.k8s.io", "v1", "ValidatingAdmissionPolicyBinding",
                 "validatingadmissionpolicybindings", "validatingadmissionpolicybinding", False,
                 categories=("api-extensions",),
                 definition="io.k8s.api.admissionregistration.v1.ValidatingAdmissionPolicyBinding"),
    ResourceType("authorization.k8s.io", "v1", "SelfSubjectAccessReview", "selfsubjectaccessreviews",
                 "selfsubjectaccessreview", False, verbs=("create",),
                 definition="io.k8s.api.authorization.v1.SelfSubjectAccessReview"),
)


def crd_resource_types(crd: JSON) -> list[ResourceType]:
    """The served versions of a CustomResourceDefinition as resource types."""
    spec = crd["spec"]
    names = spec["names"]
    storage = (spec["group"], names["plural"])
    result = []
    for version in spec.get("versions") or []:
        if not version.get("served", True):
            continue
        subresources = set((version.get("subresources") or {}).keys())
        result.append(
            ResourceType(
                group=spec["group"],
                version=version["name"],
                kind=names["kind"],
                plural=names["plural"],
                singular=names.get("singular") or names["kind"].lower(),
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                short_names=tuple(names.get("shortNames") or ()),
                categories=tuple(names.get("categories") or ()),
                subresources=frozenset(subresources & {"status", "scale"}),
                builtin=False,
                storage=storage,
                schema=((version.get("schema") or {}).get("openAPIV3Schema")),
                printer_columns=tuple(version.get("additionalPrinterColumns") or ()),
                returns_deleted_object=True,
                crd_name=crd["metadata"]["name"],
                list_kind=names.get("listKind") or f"{names['kind']}List",
            )
        )
    return result


def storage_version(crd: JSON) -> str:
    for version in crd["spec"].get("versions") or []:
        if version.get("storage"):
            return str(version["name"])
    return str(crd["spec"]["versions"][0]["name"])


class Catalog:
    """All resource types the server currently serves, for routing and discovery."""

    def __init__(self, types: Iterable[ResourceType] = BUILTIN_TYPES) -> None:
        self._types: dict[tuple[str, str, str], ResourceType] = {}
        #: bumped on every change, so cached discovery and OpenAPI documents know when to refresh.
        self.generation = 0
        for rt in types:
            self.add(rt)

    def add(self, rt: ResourceType) -> None:
        self._types[(rt.group, rt.version, rt.plural)] = rt
        self.generation += 1

    def remove_crd(self, crd_name: str) -> None:
        for key in [k for k, rt in self._types.items() if rt.crd_name == crd_name]:
            del self._types[key]
            self.generation += 1

    def replace_crd(self, crd: JSON) -> None:
        self.remove_crd(crd["metadata"]["name"])
        for rt in crd_resource_types(crd):
            self.add(rt)

    def __iter__(self) -> Iterator[ResourceType]:
        return iter(list(self._types.values()))

    def get(self, group: str, version: str, plural: str) -> ResourceType:
        try:
            return self._types[(group, version, plural)]
        except KeyError:
            raise ApiError(404, "NotFound", "the server could not find the requested resource",
                           details={}) from None

    def find(self, group: str, version: str, plural: str) -> ResourceType | None:
        return self._types.get((group, version, plural))

    def by_kind(self, api_version: str, kind: str) -> ResourceType | None:
        for rt in self._types.values():
            if rt.api_version == api_version and rt.kind == kind:
                return rt
        return None

    def by_storage(self, storage: tuple[str, str]) -> ResourceType:
        """The canonical type of a storage key (for events: core v1)."""
        candidates = [rt for rt in self._types.values() if rt.storage == storage]
        if not candidates:
            raise not_found(storage[0], storage[1], "")
        candidates.sort(key=lambda rt: (rt.group != storage[0], rt.version))
        return candidates[0]

    def group_versions(self) -> dict[str, list[str]]:
        """group -> served versions (preferred first)."""
        result: dict[str, list[str]] = {}
        for rt in self._types.values():
            versions = result.setdefault(rt.group, [])
            if rt.version not in versions:
                versions.append(rt.version)
        for versions in result.values():
            versions.sort(key=_version_priority)
        return result

    def in_group_version(self, group: str, version: str) -> list[ResourceType]:
        return [rt for rt in self._types.values() if rt.group == group and rt.version == version]


def _version_priority(version: str) -> tuple[int, int, int]:
    """Kubernetes version ordering: GA > beta > alpha, higher numbers first."""
    match = re.match(r"^v(\d+)(?:(alpha|beta)(\d+))?$", version)
    if not match:
        return (3, 0, 0)
    major, stage, minor = match.groups()
    stage_rank = {None: 0, "beta": 1, "alpha": 2}[stage]
    return (stage_rank, -int(major), -int(minor or 0))
