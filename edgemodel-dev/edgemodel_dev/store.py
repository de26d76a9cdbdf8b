"""The in-memory object store: one global resourceVersion counter and a bounded change history per
kind (as the API server's watch cache keeps a window per resource: a watch, or a ``continue`` of a
paged list, from before the window of its kind is answered 410 Expired).

Everything runs on one asyncio loop, so each operation is atomic. Subscribers (watch streams and
the built-in controllers) are called synchronously for each change and must only enqueue work.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgemodel_dev import fastcopy as copy

JSON = dict[str, Any]
StorageKey = tuple[str, str]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Change:
    """One stored change; ``obj`` is the new state (for DELETED: the last state) and never mutated."""

    rv: int
    type: str
    storage: StorageKey
    obj: JSON
    old: JSON | None


Subscriber = Callable[[Change], None]


def _key(obj: JSON) -> tuple[str, str]:
    meta = obj["metadata"]
    return (meta.get("namespace") or "", meta["name"])


class Store:
    """Objects by storage key (group, plural) and (namespace, name)."""

    def __init__(self, history_size: int = 10_000) -> None:
        self._objects: dict[StorageKey, dict[tuple[str, str], JSON]] = {}
        self._history: deque[Change] = deque(maxlen=history_size)
        self._compacted_rv = 0
        # per kind: the last ``history_size`` changes and the newest resourceVersion dropped from them
        self._history_size = history_size
        self._kind_history: dict[StorageKey, deque[Change]] = {}
        self._kind_compacted: dict[StorageKey, int] = {}
        self._restored_rv = 0  # nothing before a restore is known
        self._subscribers: list[Subscriber] = []
        self._by_storage: dict[StorageKey, list[Subscriber]] = {}
        self._by_name: dict[tuple[StorageKey, str, str], list[Subscriber]] = {}
        self.rv = 1

    # reads ---------------------------------------------------------------------------------
    def get(self, storage: StorageKey, namespace: str, name: str) -> JSON | None:
        """The stored object itself: copy it before changing anything."""
        return self._objects.get(storage, {}).get((namespace, name))

    def items(self, storage: StorageKey, namespace: str | None = None) -> list[JSON]:
        bucket = self._objects.get(storage, {})
        keys = sorted(k for k in bucket if k[0] == namespace) if namespace else sorted(bucket)
        return [bucket[k] for k in keys]

    def all_items(self) -> list[tuple[StorageKey, JSON]]:
        return [(storage, obj) for storage, bucket in self._objects.items() for obj in bucket.values()]

    def count(self, storage: StorageKey, namespace: str | None = None) -> int:
        return len(self.items(storage, namespace))

    # writes --------------------------------------------------------------------------------
    def _next_rv(self) -> int:
        self.rv += 1
        return self.rv

    def _emit(self, change: Change) -> None:
        if len(self._history) == self._history.maxlen:
            self._compacted_rv = self._history[0].rv
        self._history.append(change)
        kind = self._kind_history.setdefault(change.storage, deque(maxlen=self._history_size))
        if len(kind) == kind.maxlen:
            self._kind_compacted[change.storage] = kind[0].rv
        kind.append(change)
        for subscriber in self._interested(change):
            try:
                subscriber(change)
            except Exception:  # a broken subscriber must not break the write
                log.exception("Watch subscriber failed on %s %s", change.type, change.storage)

    def _interested(self, change: Change) -> list[Subscriber]:
        """Subscribers of everything, of this resource, and of this one object: a change costs O(its
        watchers), not O(all watchers) (10,000 agents each watching their own EdgeAgent)."""
        found = list(self._subscribers)
        found += self._by_storage.get(change.storage, ())
        if self._by_name:
            found += self._by_name.get((change.storage, *_key(change.obj)), ())
        return found

    def create(self, storage: StorageKey, obj: JSON) -> JSON:
        rv = self._next_rv()
        stored = copy.deepcopy(obj)
        stored["metadata"]["resourceVersion"] = str(rv)
        self._objects.setdefault(storage, {})[_key(stored)] = stored
        self._emit(Change(rv, "ADDED", storage, stored, None))
        return stored

    def update(self, storage: StorageKey, obj: JSON) -> JSON:
        key = _key(obj)
        old = self._objects.get(storage, {}).get(key)
        rv = self._next_rv()
        stored = copy.deepcopy(obj)
        stored["metadata"]["resourceVersion"] = str(rv)
        self._objects.setdefault(storage, {})[key] = stored
        self._emit(Change(rv, "MODIFIED", storage, stored, old))
        return stored

    def remove(self, storage: StorageKey, namespace: str, name: str) -> JSON | None:
        old = self._objects.get(storage, {}).pop((namespace, name), None)
        if old is None:
            return None
        rv = self._next_rv()
        last = copy.deepcopy(old)
        last["metadata"]["resourceVersion"] = str(rv)
        self._emit(Change(rv, "DELETED", storage, last, old))
        return last

    # watching ------------------------------------------------------------------------------
    def subscribe(self, subscriber: Subscriber, storage: StorageKey | None = None,
                  name: tuple[str, str] | None = None) -> Callable[[], None]:
        """Call ``subscriber`` for every change, or only for changes of ``storage`` (and of the object
        ``(namespace, name)`` in it); returns the function that unsubscribes."""
        if storage is None:
            bucket = self._subscribers
        elif name is None:
            bucket = self._by_storage.setdefault(storage, [])
        else:
            bucket = self._by_name.setdefault((storage, *name), [])
        bucket.append(subscriber)

        def unsubscribe() -> None:
            if subscriber in bucket:
                bucket.remove(subscriber)
            if not bucket and storage is not None:
                if name is None and self._by_storage.get(storage) is bucket:
                    del self._by_storage[storage]
                elif name is not None and self._by_name.get((storage, *name)) is bucket:
                    del self._by_name[(storage, *name)]

        return unsubscribe

    def changes_since(self, rv: int, storage: StorageKey | None = None) -> list[Change] | None:
        """Changes (of one kind when ``storage`` is given) newer than ``rv``, or None when that
        history no longer reaches back that far."""
        if rv >= self.rv:
            return []
        if storage is not None:
            if rv < max(self._kind_compacted.get(storage, 0), self._restored_rv):
                return None
            return [c for c in self._kind_history.get(storage, ()) if c.rv > rv]
        if rv < self._compacted_rv:
            return None
        return [c for c in self._history if c.rv > rv]

    def oldest_rv_of(self, storage: StorageKey) -> int:
        """The oldest resourceVersion a watch of this kind can still start from."""
        return max(self._kind_compacted.get(storage, 0), self._restored_rv)

    def items_at(self, storage: StorageKey, rv: int, namespace: str | None = None) -> list[JSON] | None:
        """The objects of one kind as they were at ``rv`` (sorted like :meth:`items`), rebuilt from the
        current state and the kind's history; None when the history no longer reaches back that far."""
        changes = self.changes_since(rv, storage)
        if changes is None:
            return None
        bucket = dict(self._objects.get(storage, {}))
        for change in reversed(changes):
            key = _key(change.obj)
            if change.type == "ADDED":
                bucket.pop(key, None)
            elif change.old is not None:
                bucket[key] = change.old
        keys = sorted(k for k in bucket if not namespace or k[0] == namespace)
        return [bucket[k] for k in keys]

    @property
    def oldest_rv(self) -> int:
        return self._compacted_rv

    # persistence ---------------------------------------------------------------------------
    def snapshot(self) -> JSON:
        return {
            "resourceVersion": self.rv,
            "objects": [{"storage": list(s), "object": o} for s, o in self.all_items()],
        }

    def restore(self, data: JSON) -> None:
        self._objects.clear()
        self._history.clear()
        self._kind_history.clear()
        self._kind_compacted.clear()
        for item in data.get("objects", []):
            storage = (item["storage"][0], item["storage"][1])
            self._objects.setdefault(storage, {})[_key(item["object"])] = item["object"]
        self.rv = int(data.get("resourceVersion", 1))
        self._compacted_rv = self.rv
        self._restored_rv = self.rv
