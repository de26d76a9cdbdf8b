"""One list, then one watch from its resourceVersion (again after an ERROR or a failure): a minimal informer.

kopf routes every event of a resource through its per-object machinery; for the EdgeAgents and
their Leases (10,000 of each, a Lease renewal per node every 10 s) that costs far more than the
work itself, and kopf's index pre-population grows quadratically with the object count. The
fleet and the liveness follow those two resources with this loop instead: each event is one JSON
line handed to ``on_event``, nothing else.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import orjson

from edgemodel.retry import Backoff
from edgemodel_operator.kube import ApiError, ApiUnavailable, KubeClient

log = logging.getLogger(__name__)

WATCH_TIMEOUT_SECONDS = 300
RECONNECT_BACKOFF = Backoff(first=1.0, cap=30.0)
"""Wait before listing again after consecutive failures (the one retry policy, ``edgemodel.retry``)."""


class ListWatch:
    """Calls ``on_list(items)`` with every full list and ``on_event(type, object)`` for each change after it."""

    def __init__(self, client: KubeClient, path: str, what: str, on_list: Callable[[list[dict[str, Any]]], None],
                 on_event: Callable[[str, dict[str, Any]], None], label_selector: str | None = None) -> None:
        self.client = client
        self.path = path
        self.what = what
        self.on_list = on_list
        self.on_event = on_event
        self.label_selector = label_selector
        self.synced = asyncio.Event()
        """Set after the first successful list."""
        self.attempted = asyncio.Event()
        """Set after the first list attempt, successful or not."""

    async def run(self) -> None:
        """List and watch until cancelled; reconnects with backoff after failures."""
        failures = 0
        while True:  # runs until cancelled
            try:
                listed = await self.client.list_object(self.path, label_selector=self.label_selector)
                self.on_list(list(listed.get("items") or []))
                if not self.synced.is_set():
                    log.info("Listed %d %s", len(listed.get("items") or []), self.what)
                self.synced.set()
                self.attempted.set()
                failures = 0
                await self._watch(str((listed.get("metadata") or {}).get("resourceVersion") or ""))
            except asyncio.CancelledError:
                raise
            except (ApiError, ApiUnavailable, OSError, ValueError) as exc:
                failures += 1
                self.attempted.set()
                delay = RECONNECT_BACKOFF.delay(failures)
                log.warning("Could not list or watch the %s: %s; retrying in %.0f s", self.what, exc, delay)
                await asyncio.sleep(delay)

    async def _watch(self, version: str) -> None:
        params = {"watch": "true", "resourceVersion": version, "allowWatchBookmarks": "true",
                  "timeoutSeconds": str(WATCH_TIMEOUT_SECONDS)}
        if self.label_selector:
            params["labelSelector"] = self.label_selector
        async for line in self.client.stream(self.path, params):
            event = orjson.loads(line)
            kind, obj = str(event.get("type", "")), event.get("object") or {}
            if kind == "ERROR":  # e.g. 410 Expired: the watch cannot continue from here; list again
                log.info("The watch of the %s ended: %s; listing again", self.what, obj.get("message", obj))
                return
            if kind in ("ADDED", "MODIFIED", "DELETED"):
                self.on_event(kind, obj)
