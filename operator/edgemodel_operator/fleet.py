"""The operator's view of the EdgeAgents: a list + watch of its own, plus the spec writes it has just made.

``Fleet.run`` follows the EdgeAgents with ``listwatch.ListWatch`` (kopf's per-object machinery and
its index pre-population cost too much at 10,000 nodes): each event is parsed once into an
``AgentView`` and wakes only the EdgeModels the change matters to (``woken_models``); handlers wait
for the first list (``synced``), so a restarted operator never plans against an empty fleet. A
patch response is newer than the watch for a moment: ``Fleet`` overlays the spec it wrote until the
watch catches up (``metadata.generation`` tells which is newer). Liveness comes from the agents'
Leases (``liveness.Liveness``): a view's ``heartbeat`` is the later of its Lease's renewTime and the
``status.heartbeatTime`` of its last status write. Memory: one view per EdgeAgent.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from edgemodel_operator.kube import KubeClient, Paths
from edgemodel_operator.listwatch import ListWatch
from edgemodel_operator.scheduling import AgentView

if TYPE_CHECKING:
    from edgemodel_operator.liveness import Liveness

ModelKey = tuple[str, str]
"""(namespace, name) of an EdgeModel."""


class Fleet:
    """Agent views by name, with the operator's own recent writes laid over them."""

    def __init__(self, wake: Callable[[Iterable[ModelKey] | None], None] = lambda keys: None,
                 heartbeat_timeout: float = 40.0) -> None:
        self._views: dict[str, AgentView] = {}
        self._written: dict[str, AgentView] = {}
        self._lived: dict[str, tuple[AgentView, float, AgentView]] = {}
        """name -> (view, Lease renewTime, the view with that heartbeat)."""
        self.liveness: Liveness | None = None
        self.wake = wake
        self.heartbeat_timeout = heartbeat_timeout
        self.synced = asyncio.Event()
        self.events = 0

    # -- reading -------------------------------------------------------------------------------
    def get(self, name: str) -> AgentView | None:
        view = self._spec_view(name)
        if view is None or self.liveness is None:
            return view
        renewed = self.liveness.renewed.get(name)
        if renewed is None:
            return view
        cached = self._lived.get(name)
        if cached is not None and cached[0] is view and cached[1] == renewed:
            return cached[2]  # a reconcile reads 10,000 views: copy one only when its view or Lease changed
        when = dt.datetime.fromtimestamp(renewed, dt.UTC)
        lived = view.with_heartbeat(when) if view.heartbeat is None or when > view.heartbeat else view
        self._lived[name] = (view, renewed, lived)
        return lived

    def _spec_view(self, name: str) -> AgentView | None:
        indexed = self._views.get(name)
        written = self._written.get(name)
        if written is None:
            return indexed
        if indexed is None:
            self._written.pop(name, None)
            return None
        if indexed.generation >= written.generation:
            self._written.pop(name, None)
            return indexed
        return indexed.with_spec_models(written.spec_models, written.generation)

    def snapshot(self) -> list[AgentView]:
        """Every known agent, newest knowledge first."""
        views = []
        for name in list(self._views):
            view = self.get(name)
            if view is not None:
                views.append(view)
        return views

    def record_write(self, body: Mapping[str, Any]) -> AgentView:
        """Remember the agent as a successful patch returned it."""
        view = AgentView.from_body(body)
        self._written[view.name] = view
        return view

    def __len__(self) -> int:
        return len(self._views)

    # -- following the API ---------------------------------------------------------------------
    def load(self, bodies: Iterable[Mapping[str, Any]]) -> None:
        """A full list: the new truth; after the first one, every EdgeModel is woken (anything may have changed)."""
        views = {v.name: v for v in (AgentView.from_body(b) for b in bodies)}
        first = not self.synced.is_set()
        self._views = views
        self._lived.clear()
        for name in [n for n in self._written if n not in views]:
            self._written.pop(name, None)
        if not first:
            self.wake(None)

    def on_event(self, kind: str, body: dict[str, Any]) -> None:
        """One watch event: update the view and wake the EdgeModels this change matters to."""
        self.events += 1
        name = str((body.get("metadata") or {}).get("name", ""))
        previous = self._views.get(name)
        if kind == "DELETED":
            self._views.pop(name, None)
            self._written.pop(name, None)
            self._lived.pop(name, None)
            self.wake(None)
            return
        view = AgentView.from_body(body)
        self._views[name] = view
        self.wake(woken_models(previous, view, dt.datetime.now(dt.UTC), self.heartbeat_timeout))

    async def run(self, client: KubeClient) -> None:
        """Follow the EdgeAgents until cancelled."""
        follow = ListWatch(client, Paths.edgeagents(), "EdgeAgents", self.load, self.on_event)
        task = asyncio.create_task(follow.run(), name="edgeagents-listwatch")
        try:
            await follow.synced.wait()
            self.synced.set()
            await task
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def model_signature(view: AgentView) -> dict[ModelKey, tuple[tuple[str, int, str, int | None], ...]]:
    """Per model: the reported (role, revision, state, serving revision) of each entry; what the rollout reacts to."""
    signature: dict[ModelKey, list[tuple[str, int, str, int | None]]] = {}
    for r in view.reported:
        signature.setdefault((r.namespace, r.name), []).append((r.role, r.revision, r.state, r.serving_revision))
    return {key: tuple(sorted(value, key=repr)) for key, value in signature.items()}


def woken_models(
    previous: AgentView | None, current: AgentView, now: dt.datetime, heartbeat_timeout: float
) -> set[ModelKey] | None:
    """Models whose reconcile should run now because of this agent event; None means all of them."""
    if previous is None:
        return None
    if previous.labels != current.labels or previous.hardware_class != current.hardware_class:
        return None
    if previous.arch != current.arch or previous.memory_bytes != current.memory_bytes:
        return None
    if previous.split_endpoint != current.split_endpoint:
        return None
    if not previous.is_fresh(now, heartbeat_timeout) and current.is_fresh(now, heartbeat_timeout):
        return None
    before, after = model_signature(previous), model_signature(current)
    return {key for key in before.keys() | after.keys() if before.get(key) != after.get(key)}
