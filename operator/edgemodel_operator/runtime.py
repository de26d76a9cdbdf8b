"""What one operator process shares between its handlers: settings, clients, metrics, wake-ups, caches.

The reconciler itself is stateless (observe -> decide -> act per call); what outlives a call lives here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import aiohttp

from edgemodel.store.client import HttpStore
from edgemodel_operator.fleet import Fleet, ModelKey
from edgemodel_operator.kube import KubeClient
from edgemodel_operator.liveness import Liveness
from edgemodel_operator.metrics import OperatorMetrics
from edgemodel_operator.settings import OperatorSettings
from edgemodel_operator.split_check import PlannedCuts

PLAN_CACHE_SIZE = 256
"""Split plans (split.json) kept in memory, oldest dropped first."""
STORE_TIMEOUT_SECONDS = 15.0
STORE_RETRIES = 1


T = TypeVar("T")


class PlanCache(Generic[T]):
    """Per-revision documents read from the store (immutable per revision: split plans, chain.json), at most
    ``size``."""

    def __init__(self, size: int = PLAN_CACHE_SIZE) -> None:
        self.size = size
        self._plans: dict[tuple[str, str, int], T | None] = {}

    def has(self, namespace: str, name: str, revision: int) -> bool:
        return (namespace, name, revision) in self._plans

    def get(self, namespace: str, name: str, revision: int) -> T | None:
        return self._plans.get((namespace, name, revision))

    def put(self, namespace: str, name: str, revision: int, plan: T | None) -> None:
        while len(self._plans) >= self.size:
            self._plans.pop(next(iter(self._plans)))
        self._plans[(namespace, name, revision)] = plan

    def of(self, namespace: str, name: str) -> dict[int, T | None]:
        """The cached plans of one EdgeModel, by revision."""
        return {rev: plan for (ns, nm, rev), plan in self._plans.items() if ns == namespace and nm == name}

    def __len__(self) -> int:
        return len(self._plans)


class Wakeups:
    """One event per EdgeModel: set when something it waits for changed (an agent, its Job, its spec)."""

    def __init__(self) -> None:
        self._events: dict[ModelKey, asyncio.Event] = {}

    def event(self, key: ModelKey) -> asyncio.Event:
        return self._events.setdefault(key, asyncio.Event())

    def forget(self, key: ModelKey) -> None:
        self._events.pop(key, None)

    def wake(self, keys: Iterable[ModelKey] | None) -> None:
        """Wake these models (a namespace of "" matches any namespace); None wakes all."""
        if keys is None:
            for event in self._events.values():
                event.set()
            return
        for namespace, name in keys:
            for (ns, nm), event in self._events.items():
                if nm == name and namespace in ("", ns):
                    event.set()


@dataclass
class Runtime:
    settings: OperatorSettings
    client: KubeClient
    metrics: OperatorMetrics
    fleet: Fleet = field(default_factory=Fleet)
    wakeups: Wakeups = field(default_factory=Wakeups)
    locks: dict[ModelKey, asyncio.Lock] = field(default_factory=dict)
    http: aiohttp.ClientSession | None = None
    """For Prometheus and the artifact store (opened on startup)."""
    plans: PlanCache[PlannedCuts] = field(default_factory=PlanCache)
    """Split plans of revisions (what the SplitCutCurrent check compares against)."""
    chains: PlanCache[dict[str, Any]] = field(default_factory=PlanCache)
    """chain.json of pipeline revisions (their stages, what the operator assigns)."""
    store: HttpStore = field(init=False)
    """The artifact store's client (reads are open; retention deletes add the token)."""
    liveness: Liveness = field(init=False)
    """Node liveness from the agents' Leases (started on startup)."""
    _followers: list[asyncio.Task[None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.store = HttpStore(self.settings.store_url, timeout_s=STORE_TIMEOUT_SECONDS, retries=STORE_RETRIES,
                               backoff_s=0.2)
        self.liveness = Liveness(self.settings.heartbeat_timeout_seconds, on_flip=lambda names: self.wakeups.wake(None),
                                 metrics=self.metrics)
        self.fleet.liveness = self.liveness
        self.fleet.wake = self.wakeups.wake
        self.fleet.heartbeat_timeout = self.settings.heartbeat_timeout_seconds

    def start_followers(self) -> None:
        """Follow the EdgeAgents and the agents' Leases in the background (idempotent)."""
        if any(not t.done() for t in self._followers):
            return
        loop = asyncio.get_running_loop()
        self._followers = [
            loop.create_task(self.fleet.run(self.client), name="fleet"),
            loop.create_task(self.liveness.run(self.client, self.settings.lease_namespace), name="lease-liveness"),
        ]

    def lock(self, key: ModelKey) -> asyncio.Lock:
        return self.locks.setdefault(key, asyncio.Lock())

    def session(self) -> aiohttp.ClientSession:
        if self.http is None or self.http.closed:
            self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
        return self.http

    async def close(self) -> None:
        for task in self._followers:
            task.cancel()
        await asyncio.gather(*self._followers, return_exceptions=True)
        await self.client.close()
        if self.http is not None:
            await self.http.close()
