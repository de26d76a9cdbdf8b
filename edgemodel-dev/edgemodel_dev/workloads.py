"""The apps/v1 controllers: Deployments and DaemonSets create the Pods the kubelet runs.

Simplifications against kube-controller-manager, on purpose:

- A Deployment owns its Pods **directly** (no ReplicaSets): it keeps ``spec.replicas`` Pods of the
  current template (label ``pod-template-hash``, as ReplicaSet Pods carry), deletes Pods of an older
  template and surplus ones (a Recreate-like rollout whatever ``spec.strategy`` says), and reports
  ``replicas``/``updatedReplicas``/``readyReplicas``/``availableReplicas``, ``observedGeneration``
  and the ``Available``/``Progressing`` conditions.
- A DaemonSet runs one Pod per node that matches the template's ``nodeSelector`` and whose
  ``NoSchedule``/``NoExecute`` taints the template tolerates; the Pod is bound to its node
  directly (``spec.nodeName``). Template changes replace the Pods; status reports
  ``desiredNumberScheduled``/``currentNumberScheduled``/``numberReady``/``updatedNumberScheduled``/
  ``numberAvailable`` and ``observedGeneration``.

Pods carry a controller ``ownerReference``, so deleting the owner garbage-collects them.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from typing import Any

from edgemodel_dev.builtin_kinds import now
from edgemodel_dev.controllers import Controller
from edgemodel_dev.errors import ApiError
from edgemodel_dev.recorder import record_event
from edgemodel_dev.registry import DeleteOptions, Registry
from edgemodel_dev.selectors import Requirement, labels_match
from edgemodel_dev.store import Change

JSON = dict[str, Any]
log = logging.getLogger(__name__)
DEPLOYMENTS = ("apps", "deployments")
DAEMONSETS = ("apps", "daemonsets")
PODS = ("", "pods")
NODES = ("", "nodes")
KINDS = {DEPLOYMENTS: "Deployment", DAEMONSETS: "DaemonSet"}
HASH_LABEL = "pod-template-hash"
DS_HASH_LABEL = "controller-revision-hash"


def template_hash(template: JSON) -> str:
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


def _ready(pod: JSON) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def tolerates(pod_spec: JSON, node: JSON) -> bool:
    """Whether the pod tolerates every NoSchedule/NoExecute taint of the node."""
    tolerations = pod_spec.get("tolerations") or []
    for taint in (node.get("spec") or {}).get("taints") or []:
        if taint.get("effect") not in ("NoSchedule", "NoExecute"):
            continue
        if not any(
            (t.get("effect") in (None, "", taint.get("effect")))
            and (t.get("key") in (None, "") and t.get("operator") == "Exists"
                 or t.get("key") == taint.get("key")
                 and (t.get("operator") == "Exists" or t.get("value", "") == taint.get("value", "")))
            for t in tolerations
        ):
            return False
    return True


class WorkloadController(Controller):
    """Reconciles Deployments and DaemonSets when they, their Pods or the nodes change."""

    name = "workload-controller"

    def __init__(self, registry: Registry) -> None:
        super().__init__(registry)
        self.pod_rt = registry.catalog.get("", "v1", "pods")
        self.rts = {DEPLOYMENTS: registry.catalog.get("apps", "v1", "deployments"),
                    DAEMONSETS: registry.catalog.get("apps", "v1", "daemonsets")}

    def start(self) -> None:
        super().start()
        for storage in KINDS:
            for obj in self.registry.store.items(storage):
                self._queue.put_nowait(Change(0, "ADDED", storage, obj, None))

    def wants(self, change: Change) -> bool:
        if change.storage in KINDS or change.storage == NODES:
            return True
        return change.storage == PODS and any(
            r.get("controller") and r.get("kind") in ("Deployment", "DaemonSet")
            for r in change.obj["metadata"].get("ownerReferences") or [])

    def handle(self, change: Change) -> None:
        if change.storage in KINDS:
            if change.type != "DELETED":
                self.reconcile(change.storage, change.obj["metadata"]["namespace"], change.obj["metadata"]["name"])
        elif change.storage == NODES:
            for ds in list(self.registry.store.items(DAEMONSETS)):
                self.reconcile(DAEMONSETS, ds["metadata"]["namespace"], ds["metadata"]["name"])
        else:
            meta = change.obj["metadata"]
            for ref in meta.get("ownerReferences") or []:
                storage = DEPLOYMENTS if ref.get("kind") == "Deployment" else DAEMONSETS
                if ref.get("controller") and ref.get("kind") in ("Deployment", "DaemonSet"):
                    self.reconcile(storage, meta["namespace"], ref["name"])

    # reconcile -----------------------------------------------------------------------------
    def _pods(self, owner: JSON) -> list[JSON]:
        uid = owner["metadata"]["uid"]
        return [p for p in self.registry.store.items(PODS, owner["metadata"]["namespace"])
                if any(r.get("uid") == uid and r.get("controller") for r in p["metadata"].get("ownerReferences") or [])]

    def reconcile(self, storage: tuple[str, str], namespace: str, name: str) -> None:
        stored = self.registry.store.get(storage, namespace, name)
        if stored is None or stored["metadata"].get("deletionTimestamp"):
            return
        owner = self.registry.present(self.rts[storage], stored)
        if storage == DEPLOYMENTS:
            self._deployment(owner)
        else:
            self._daemonset(owner)

    def _deployment(self, deploy: JSON) -> None:
        spec = deploy.get("spec") or {}
        template = spec.get("template") or {}
        current = template_hash(template)
        replicas = int(spec.get("replicas", 1) if spec.get("replicas") is not None else 1)
        pods = [p for p in self._pods(deploy) if not p["metadata"].get("deletionTimestamp")]
        live = [p for p in pods if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]
        updated = [p for p in live if p["metadata"].get("labels", {}).get(HASH_LABEL) == current]
        for pod in [p for p in pods if p not in updated] + updated[replicas:]:
            self._delete_pod(deploy, pod)
        updated = updated[:replicas]
        for _ in range(replicas - len(updated)):
            created = self._create_pod(deploy, template, {HASH_LABEL: current}, f"{deploy['metadata']['name']}-{current}-")
            if created is not None:
                updated.append(created)
        ready = [p for p in updated if _ready(p)]
        available = len(ready) >= replicas
        stamp = now()
        status = {
            "observedGeneration": deploy["metadata"].get("generation", 1),
            "replicas": len(updated), "updatedReplicas": len(updated), "readyReplicas": len(ready),
            "availableReplicas": len(ready), "unavailableReplicas": max(replicas - len(ready), 0),
            "conditions": [
                {"type": "Available", "status": "True" if available else "False",
                 "reason": "MinimumReplicasAvailable" if available else "MinimumReplicasUnavailable",
                 "message": "Deployment has minimum availability." if available
                 else "Deployment does not have minimum availability."},
                {"type": "Progressing", "status": "True",
                 "reason": "NewReplicaSetAvailable" if available else "ReplicaSetUpdated",
                 "message": f'Pods of template "{current}" are {"available" if available else "progressing"}.'},
            ],
        }
        if not status["readyReplicas"]:
            del status["readyReplicas"]
            del status["availableReplicas"]
        self._write_status(DEPLOYMENTS, deploy, status, stamp)

    def _daemonset(self, ds: JSON) -> None:
        spec = ds.get("spec") or {}
        template = spec.get("template") or {}
        pod_spec = template.get("spec") or {}
        current = template_hash(template)
        selector = [Requirement(k, "=", (str(v),)) for k, v in (pod_spec.get("nodeSelector") or {}).items()]
        nodes = {n["metadata"]["name"]: n for n in self.registry.store.items(NODES)
                 if labels_match(selector, n) and tolerates(pod_spec, n)}
        pods = [p for p in self._pods(ds) if not p["metadata"].get("deletionTimestamp")]
        kept: dict[str, JSON] = {}
        for pod in pods:
            node = (pod.get("spec") or {}).get("nodeName", "")
            outdated = pod["metadata"].get("labels", {}).get(DS_HASH_LABEL) != current
            if node not in nodes or node in kept or outdated:
                self._delete_pod(ds, pod)
            else:
                kept[node] = pod
        for node in sorted(set(nodes) - set(kept)):
            created = self._create_pod(ds, template, {DS_HASH_LABEL: current}, f"{ds['metadata']['name']}-",
                                       node=node)
            if created is not None:
                kept[node] = created
        ready = sum(1 for p in kept.values() if _ready(p))
        status = {
            "observedGeneration": ds["metadata"].get("generation", 1),
            "desiredNumberScheduled": len(nodes), "currentNumberScheduled": len(kept),
            "updatedNumberScheduled": len(kept), "numberMisscheduled": 0, "numberReady": ready,
            "numberAvailable": ready, "numberUnavailable": len(nodes) - ready,
        }
        if not ready:
            del status["numberAvailable"]
        self._write_status(DAEMONSETS, ds, status, now())

    # writes --------------------------------------------------------------------------------
    def _write_status(self, storage: tuple[str, str], owner: JSON, status: JSON, stamp: str) -> None:
        old = owner.get("status") or {}
        for cond in status.get("conditions") or []:
            before = next((c for c in old.get("conditions") or [] if c.get("type") == cond["type"]), None)
            same = before is not None and before.get("status") == cond["status"]
            cond["lastTransitionTime"] = before.get("lastTransitionTime", stamp) if same and before else stamp
            cond["lastUpdateTime"] = before.get("lastUpdateTime", stamp) if same and before \
                and before.get("reason") == cond["reason"] else stamp
        if status == old:
            return

        def write(obj: JSON) -> None:
            obj["status"] = status

        meta = owner["metadata"]
        self.registry.mutate(self.rts[storage], meta["namespace"], meta["name"], write, subresource="status")

    def _create_pod(self, owner: JSON, template: JSON, labels: JSON, prefix: str,
                    node: str | None = None) -> JSON | None:
        meta = owner["metadata"]
        kind = owner["kind"]
        tmeta = template.get("metadata") or {}
        pod_spec = copy.deepcopy(template.get("spec") or {})
        if node is not None:
            pod_spec["nodeName"] = node
        pod = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "generateName": prefix, "namespace": meta["namespace"],
                "labels": {**(tmeta.get("labels") or {}), **labels},
                "annotations": dict(tmeta.get("annotations") or {}),
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": kind, "name": meta["name"], "uid": meta["uid"],
                                     "controller": True, "blockOwnerDeletion": True}],
            },
            "spec": pod_spec,
        }
        try:
            created = self.registry.create(self.pod_rt, meta["namespace"], pod, field_validation="Ignore").obj
        except ApiError as exc:
            log.warning("Could not create a pod for %s %s/%s: %s", kind, meta["namespace"], meta["name"], exc.message)
            record_event(self.registry, owner, "Warning", "FailedCreate", f"Error creating: {exc.message}",
                         f"{kind.lower()}-controller")
            return None
        log.info("Created pod %s for %s %s/%s", created["metadata"]["name"], kind, meta["namespace"], meta["name"])
        record_event(self.registry, owner, "Normal", "SuccessfulCreate", f"Created pod: {created['metadata']['name']}",
                     f"{kind.lower()}-controller")
        return created

    def _delete_pod(self, owner: JSON, pod: JSON) -> None:
        try:
            self.registry.delete(self.pod_rt, pod["metadata"]["namespace"], pod["metadata"]["name"],
                                 DeleteOptions(propagation="Background"))
        except ApiError as exc:
            if exc.code != 404:
                log.warning("Could not delete pod %s: %s", pod["metadata"]["name"], exc.message)
            return
        record_event(self.registry, owner, "Normal", "SuccessfulDelete", f"Deleted pod: {pod['metadata']['name']}",
                     f"{owner['kind'].lower()}-controller")
