"""Control-plane controllers: garbage collection through ownerReferences and namespace deletion."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
from typing import Any

from edgemodel_dev.errors import ApiError
from edgemodel_dev.registry import NAMESPACES, DeleteOptions, Registry
from edgemodel_dev.resources import ResourceType
from edgemodel_dev.store import Change

JSON = dict[str, Any]
log = logging.getLogger(__name__)


class Controller:
    """Consumes the store changes it ``wants`` from a queue on the server's loop, one at a time."""

    name = "controller"

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._queue: asyncio.Queue[Change] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._unsubscribe: Any = None

    def start(self) -> None:
        self._unsubscribe = self.registry.store.subscribe(self._offer)
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._unsubscribe:
            self._unsubscribe()
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def wants(self, change: Change) -> bool:
        """Whether ``change`` is queued for ``handle`` (all of them unless a subclass says otherwise)."""
        return True

    def _offer(self, change: Change) -> None:
        if self.wants(change):
            self._queue.put_nowait(change)

    async def _run(self) -> None:
        while True:
            change = await self._queue.get()
            try:
                self.handle(change)
            except Exception:
                name = (change.obj.get("metadata") or {}).get("name")
                log.exception("The %s failed on %s of %s %s", self.name, change.type, change.storage, name)

    def handle(self, change: Change) -> None:
        raise NotImplementedError


def _refs(obj: JSON) -> list[JSON]:
    return list((obj.get("metadata") or {}).get("ownerReferences") or [])


class GarbageCollector(Controller):
    """Deletes dependents of deleted owners (background), before them (foreground) or orphans them."""

    name = "garbage-collector"

    def _rt(self, storage: tuple[str, str]) -> ResourceType | None:
        try:
            return self.registry.catalog.by_storage(storage)
        except ApiError:
            return None

    def _dependents(self, uid: str) -> list[tuple[ResourceType, JSON]]:
        found = []
        for storage, obj in self.registry.store.all_items():
            if any(ref.get("uid") == uid for ref in _refs(obj)):
                rt = self._rt(storage)
                if rt is not None:
                    found.append((rt, obj))
        return found

    def _owner_exists(self, ref: JSON, namespace: str) -> bool:
        rt = self.registry.catalog.by_kind(str(ref.get("apiVersion")), str(ref.get("kind")))
        if rt is None:
            return True  # unknown kind: never collect on a guess
        stored = self.registry.store.get(rt.storage, namespace if rt.namespaced else "", str(ref.get("name")))
        return stored is not None and stored["metadata"].get("uid") == ref.get("uid")

    def _delete(self, rt: ResourceType, obj: JSON, policy: str) -> None:
        meta = obj["metadata"]
        if meta.get("deletionTimestamp") and policy != "Foreground":
            return
        try:
            self.registry.delete(rt, meta.get("namespace"), meta["name"], DeleteOptions(propagation=policy))
            log.debug("Garbage-collected %s %s/%s", rt.kind, meta.get("namespace", ""), meta["name"])
        except ApiError as exc:
            if exc.code != 404:
                log.warning("Could not garbage-collect %s %s: %s", rt.kind, meta["name"], exc.message)

    def _drop_refs(self, rt: ResourceType, obj: JSON, uids: set[str]) -> None:
        meta = obj["metadata"]

        def drop(o: JSON) -> None:
            refs = [r for r in _refs(o) if r.get("uid") not in uids]
            if refs:
                o["metadata"]["ownerReferences"] = refs
            else:
                o["metadata"].pop("ownerReferences", None)

        self.registry.mutate(rt, meta.get("namespace") or "", meta["name"], drop)

    def _remove_finalizer(self, storage: tuple[str, str], obj: JSON, finalizer: str) -> None:
        rt = self._rt(storage)
        if rt is None:
            return
        meta = obj["metadata"]

        def drop(o: JSON) -> None:
            o["metadata"]["finalizers"] = [f for f in o["metadata"].get("finalizers") or [] if f != finalizer]

        self.registry.mutate(rt, meta.get("namespace") or "", meta["name"], drop)

    def handle(self, change: Change) -> None:
        obj = change.obj
        meta = obj["metadata"]
        if change.type == "DELETED":
            self._owner_gone(meta["uid"])
            for ref in _refs(obj):  # an owner waiting in the foreground may be free now
                self._recheck_owner(ref, meta.get("namespace") or "")
            return
        finalizers = meta.get("finalizers") or []
        if meta.get("deletionTimestamp") and "foregroundDeletion" in finalizers:
            self._foreground(change.storage, obj)
        if meta.get("deletionTimestamp") and "orphan" in finalizers:
            for rt, dep in self._dependents(meta["uid"]):
                self._drop_refs(rt, dep, {meta["uid"]})
            self._remove_finalizer(change.storage, obj, "orphan")
        refs = _refs(obj)
        old_refs = _refs(change.old) if change.old else []
        if refs and refs != old_refs and not meta.get("deletionTimestamp"):
            self._check_dangling(change.storage, obj)

    def _owner_gone(self, uid: str) -> None:
        for rt, dep in self._dependents(uid):
            namespace = dep["metadata"].get("namespace") or ""
            solid = [r for r in _refs(dep) if r.get("uid") != uid and self._owner_exists(r, namespace)]
            if solid:
                self._drop_refs(rt, dep, {r["uid"] for r in _refs(dep) if r not in solid})
            else:
                self._delete(rt, dep, "Background")

    def _foreground(self, storage: tuple[str, str], owner: JSON) -> None:
        blocking = 0
        for rt, dep in self._dependents(owner["metadata"]["uid"]):
            if not dep["metadata"].get("deletionTimestamp"):
                self._delete(rt, dep, "Foreground")
            still = self.registry.store.get(rt.storage, dep["metadata"].get("namespace") or "",
                                            dep["metadata"]["name"])
            if still is not None and any(r.get("uid") == owner["metadata"]["uid"] and r.get("blockOwnerDeletion")
                                         for r in _refs(still)):
                blocking += 1
        if blocking == 0:
            self._remove_finalizer(storage, owner, "foregroundDeletion")

    def _recheck_owner(self, ref: JSON, namespace: str) -> None:
        rt = self.registry.catalog.by_kind(str(ref.get("apiVersion")), str(ref.get("kind")))
        if rt is None:
            return
        owner = self.registry.store.get(rt.storage, namespace if rt.namespaced else "", str(ref.get("name")))
        if owner and owner["metadata"].get("uid") == ref.get("uid") and "foregroundDeletion" in (
                owner["metadata"].get("finalizers") or []):
            self._foreground(rt.storage, owner)

    def _check_dangling(self, storage: tuple[str, str], obj: JSON) -> None:
        namespace = obj["metadata"].get("namespace") or ""
        refs = _refs(obj)
        present = [r for r in refs if self._owner_exists(r, namespace)]
        rt = self._rt(storage)
        if rt is None or len(present) == len(refs):
            return
        if present:
            self._drop_refs(rt, obj, {r["uid"] for r in refs if r not in present})
        else:
            log.info("Garbage-collected %s %s/%s: its owners no longer exist", rt.kind, namespace,
                     obj["metadata"]["name"])
            self._delete(rt, obj, "Background")


class NamespaceController(Controller):
    """Empties a terminating namespace, then removes it."""

    name = "namespace-controller"

    def handle(self, change: Change) -> None:
        meta = change.obj["metadata"]
        if change.storage == NAMESPACES:
            if change.type != "DELETED" and meta.get("deletionTimestamp"):
                self._sweep(meta["name"])
        elif change.type == "DELETED" and meta.get("namespace"):
            ns = self.registry.store.get(NAMESPACES, "", meta["namespace"])
            if ns is not None and ns["metadata"].get("deletionTimestamp"):
                self._sweep(meta["namespace"])

    def _sweep(self, namespace: str) -> None:
        remaining = 0
        seen: set[tuple[str, str]] = set()
        for rt in self.registry.catalog:
            if not rt.namespaced or rt.storage in seen:
                continue
            seen.add(rt.storage)
            for obj in list(self.registry.store.items(rt.storage, namespace)):
                remaining += 1
                if not obj["metadata"].get("deletionTimestamp"):
                    try:
                        self.registry.delete(rt, namespace, obj["metadata"]["name"],
                                             DeleteOptions(propagation="Background"))
                    except ApiError as exc:
                        log.warning("Could not delete %s %s/%s with its namespace: %s", rt.kind, namespace,
                                    obj["metadata"]["name"], exc.message)
        left = sum(self.registry.store.count(s, namespace) for s in seen)
        if left == 0:
            ns_rt = self.registry.catalog.get("", "v1", "namespaces")
            stored = self.registry.store.get(NAMESPACES, "", namespace)
            if stored is None:
                return
            new = copy.deepcopy(stored)
            new.setdefault("spec", {})["finalizers"] = [
                f for f in new["spec"].get("finalizers") or [] if f != "kubernetes"]
            if new["metadata"].get("finalizers"):
                self.registry.store_update(ns_rt, new)
            else:
                self.registry.remove_now(ns_rt, "", namespace)
                log.info("Deleted namespace %s after emptying it", namespace)
