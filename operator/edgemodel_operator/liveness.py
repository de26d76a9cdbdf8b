"""Node liveness from the agents' Leases: one list + watch, no kopf handler per renewal.

Each agent renews ``Lease <lease namespace>/<node>`` (label ``edgemodel.io/heartbeat=true``)
every few seconds; at 10,000 nodes that is 1,000 renewals a second, far too many to route
through kopf. ``Liveness`` keeps one watch of those Leases (``listwatch.ListWatch``: one JSON line
parsed into ``(name, renewTime)`` per event, nothing else), and a sweep every ``sweep_seconds``
turns renewals older than the stale timeout into a "stale" mark. Only a node changing between
fresh and stale wakes the EdgeModels (``on_flip``), so renewals cost the operator almost nothing.
Memory is one timestamp per Lease; a deleted Lease is forgotten.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable

from edgemodel_operator.kube import KubeClient, Paths
from edgemodel_operator.listwatch import ListWatch
from edgemodel_operator.metrics import OperatorMetrics
from edgemodel_operator.scheduling import parse_time

log = logging.getLogger(__name__)

HEARTBEAT_LABEL = "edgemodel.io/heartbeat"
"""Label of the agents' Leases (the operator lists and watches by it)."""


def renewed_at(lease: dict[str, object]) -> tuple[str, float | None]:
    """(node name, renewTime as epoch seconds) of an agent's Lease; None when it was never renewed."""
    meta = lease.get("metadata") or {}
    spec = lease.get("spec") or {}
    name = str(meta.get("name", "")) if isinstance(meta, dict) else ""
    when = parse_time(str(spec.get("renewTime") or spec.get("acquireTime") or "")) if isinstance(spec, dict) else None
    return name, when.timestamp() if when is not None else None


class Liveness:
    """Last renewal per node, and which nodes are stale (renewal older than ``timeout_seconds``)."""

    def __init__(self, timeout_seconds: float, on_flip: Callable[[set[str]], None] = lambda names: None,
                 metrics: OperatorMetrics | None = None, clock: Callable[[], float] = time.time) -> None:
        self.timeout_seconds = timeout_seconds
        self.on_flip = on_flip
        self.metrics = metrics
        self.clock = clock
        self.renewed: dict[str, float] = {}
        """Node -> renewTime of its Lease (epoch seconds)."""
        self.stale: set[str] = set()
        self.synced = asyncio.Event()
        """Set once the first list was attempted (handlers wait for it, so no node looks stale at start)."""
        self.events = 0
        self.newest = 0.0
        """The latest renewTime seen: the stream's own clock."""
        self._last_event: float | None = None
        """When (our clock) the last renewal arrived."""

    def reference(self) -> float:
        """The time renewals are judged against: the latest renewal seen while renewals keep arriving, else now.

        A starved operator or an API server that falls behind delivers renewals late; judged against the
        wall clock every node would turn stale at once (and the rollout would stop for nothing). Against the
        stream's own clock a node is stale only when the others renewed for ``timeout_seconds`` after it did;
        when no renewal arrives at all for that long, the wall clock decides (all of them went quiet).
        """
        now = self.clock()
        if self._last_event is not None and now - self._last_event <= self.timeout_seconds:
            return min(now, self.newest)
        return now

    def now(self) -> dt.datetime:
        """``reference()`` as a datetime, for judging freshness elsewhere (the scheduling)."""
        return dt.datetime.fromtimestamp(self.reference(), dt.UTC)

    # -- what the reconciler asks --------------------------------------------------------------
    def last_seen(self, name: str) -> dt.datetime | None:
        """When the node's Lease was last renewed, or None without a Lease."""
        when = self.renewed.get(name)
        return None if when is None else dt.datetime.fromtimestamp(when, dt.UTC)

    def __len__(self) -> int:
        return len(self.renewed)

    # -- updates -----------------------------------------------------------------------------
    def observe(self, name: str, renew: float | None, live: bool = True) -> None:
        """A Lease was seen (``live``: from the watch, else listed); a stale node coming back flips at once."""
        if not name or renew is None:
            return
        self.renewed[name] = renew
        self.events += 1
        self.newest = max(self.newest, renew)
        self._last_event = self.clock()
        if live and self.metrics is not None:
            self.metrics.lease_lag.observe(max(0.0, self.clock() - renew))
        if name in self.stale and self.reference() - renew <= self.timeout_seconds:
            self.stale.discard(name)
            log.info("Found the Lease of EdgeAgent %s renewed again; the node counts as fresh", name)
            self.on_flip({name})

    def forget(self, name: str) -> None:
        self.renewed.pop(name, None)
        self.stale.discard(name)

    def sweep(self) -> set[str]:
        """Mark nodes whose renewal is older than the timeout stale; returns the newly stale ones."""
        limit = self.reference() - self.timeout_seconds
        newly = {name for name, renew in self.renewed.items() if renew < limit and name not in self.stale}
        if newly:
            self.stale |= newly
            shown = ", ".join(sorted(newly)[:10]) + (f" and {len(newly) - 10} more" if len(newly) > 10 else "")
            log.warning("Found %d EdgeAgent(s) whose Lease was not renewed for %.0f s: %s; marked stale, they keep "
                        "their models and are not counted as ready until their agent renews again", len(newly),
                        self.timeout_seconds, shown)
            self.on_flip(newly)
        if self.metrics is not None:
            self.metrics.agents.labels(liveness="fresh").set(len(self.renewed) - len(self.stale))
            self.metrics.agents.labels(liveness="stale").set(len(self.stale))
        return newly

    def replace(self, leases: list[dict[str, object]]) -> None:
        """A full list: the new truth (Leases gone since are forgotten)."""
        seen = set()
        for lease in leases:
            name, renew = renewed_at(lease)
            seen.add(name)
            self.observe(name, renew, live=False)
        for name in set(self.renewed) - seen:
            self.forget(name)

    # -- the loops ---------------------------------------------------------------------------
    def on_event(self, kind: str, obj: dict[str, object]) -> None:
        """One watch event of a Lease."""
        if kind == "DELETED":
            self.forget(renewed_at(obj)[0])
        else:
            self.observe(*renewed_at(obj))

    async def run(self, client: KubeClient, namespace: str, sweep_seconds: float = 1.0) -> None:
        """List + watch the Leases and sweep until cancelled; reconnects after failures."""
        follow = ListWatch(client, Paths.leases(namespace), f"agent Leases in namespace {namespace}", self.replace,
                           self.on_event, label_selector=f"{HEARTBEAT_LABEL}=true")
        tasks = [asyncio.create_task(follow.run(), name="lease-listwatch"),
                 asyncio.create_task(self._sweep_loop(sweep_seconds), name="lease-sweep"),
                 asyncio.create_task(_set_when(follow.attempted, self.synced))]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _sweep_loop(self, seconds: float) -> None:
        while True:  # runs until cancelled
            await asyncio.sleep(seconds)
            try:
                self.sweep()
            except Exception:  # never let a bug stop staleness marking
                log.exception("Sweeping the agents' Leases failed unexpectedly")


async def _set_when(first: asyncio.Event, then: asyncio.Event) -> None:
    await first.wait()
    then.set()
