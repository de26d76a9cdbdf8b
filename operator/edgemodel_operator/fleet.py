"""The operator's view of the EdgeAgents: a list + watch of its own, plus the spec writes it has just made.

``Fleet.run`` follows the EdgeAgents with ``listwatch.ListWatch`` (kopf's per-object machinery and
its index pre-population cost too much at 10,000 nodes): each event is parsed once into an
``AgentView`` and wakes only the EdgeModels the change matters to (``woken_models``); handlers wait
for the first list (``synced``), so a restarted operator never plans against an empty fleet. A
patch response is newer than the watch for a moment: ``Fleet`` overlays the spec it wrote until the
watch catches up (``metadata.generation`` tells which is newer). Liveness comes from the agents'
Leases (``liveness.Liveness``): a view's ``heartbeat`` is the later of its Lease's renewTime and the
``status.heartbeatTime`` of its last status write. Memory: one view per EdgeAgent and one label set per Node.

The labels the operator selects on (``spec.selector``, the cloud tier) are the Node's, from a second
list + watch (of Nodes): an agent may write its own EdgeAgent, labels included, but never its Node,
so it cannot make itself a cloud node or join another team's selection. An EdgeAgent without a Node
has no labels; a change of a Node's labels wakes every EdgeModel.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from edgemodel_operator.kube import KubeClient, Paths
from edgemodel_operator.listwatch import ListWatch
from edgemodel_operator.scheduling import AgentView

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from edgemodel_operator.liveness import Liveness

ModelKey = tuple[str, str]
"""(namespace, name) of an EdgeModel."""
_NO_LABELS: Mapping[str, str] = {}


class Fleet:
    """Agent views by name, with the operator's own recent writes laid over them."""

    def __init__(self, wake: Callable[[Iterable[ModelKey] | None], None] = lambda keys: None,
                 heartbeat_timeout: float = 40.0) -> None:
        self._views: dict[str, AgentView] = {}
        self._nodes: dict[str, dict[str, str]] = {}
        """Node name -> its labels (what selection reads)."""
        self._written: dict[str, AgentView] = {}
        self._lived: dict[str, tuple[AgentView, float | None, AgentView, Mapping[str, str]]] = {}
        """name -> (view, Lease renewTime, the view with that heartbeat and its Node's labels, those labels)."""
        self.liveness: Liveness | None = None
        self.wake = wake
        self.heartbeat_timeout = heartbeat_timeout
        self.synced = asyncio.Event()
        self.events = 0

    # -- reading -------------------------------------------------------------------------------
    def node_labels(self, name: str) -> Mapping[str, str]:
        """The labels of Node ``name`` (empty when there is no such Node)."""
        return self._nodes.get(name, {})

    def get(self, name: str) -> AgentView | None:
        view = self._spec_view(name)
        if view is None:
            return None
        labels = self._nodes.get(name, _NO_LABELS)
        renewed = self.liveness.renewed.get(name) if self.liveness is not None else None
        cached = self._lived.get(name)
        if cached is not None and cached[0] is view and cached[1] == renewed and cached[3] is labels:
            return cached[2]  # a reconcile reads 10,000 views: copy one only when its view, Lease or Node changed
        lived = view.with_labels(labels)
        if renewed is not None:
            when = dt.datetime.fromtimestamp(renewed, dt.UTC)
            if lived.heartbeat is None or when > lived.heartbeat:
                lived = lived.with_heartbeat(when)
        self._lived[name] = (view, renewed, lived, labels)
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

    def load_nodes(self, bodies: Iterable[Mapping[str, Any]]) -> None:
        """A full list of Nodes: their labels are the new truth; a change wakes every EdgeModel."""
        nodes = {str((b.get("metadata") or {}).get("name", "")): _labels(b) for b in bodies}
        changed = nodes != self._nodes
        self._nodes = nodes
        if changed and self.synced.is_set():
            self.wake(None)

    def on_node_event(self, kind: str, body: dict[str, Any]) -> None:
        """One Node event: a change of its labels (or its coming or going) may change any EdgeModel's selection."""
        name = str((body.get("metadata") or {}).get("name", ""))
        previous = self._nodes.get(name)
        if kind == "DELETED":
            self._nodes.pop(name, None)
        else:
            labels = _labels(body)
            if previous == labels:
                return
            self._nodes[name] = labels
        log.info("Node %s %s; re-checking every EdgeModel's selection", name,
                 "is gone" if kind == "DELETED" else "changed its labels")
        self.wake(None)

    async def run(self, client: KubeClient) -> None:
        """Follow the EdgeAgents and the Nodes' labels until cancelled."""
        follows = [ListWatch(client, Paths.edgeagents(), "EdgeAgents", self.load, self.on_event),
                   ListWatch(client, Paths.nodes(), "Nodes", self.load_nodes, self.on_node_event)]
        tasks = [asyncio.create_task(f.run(), name=f"{f.what.lower()}-listwatch") for f in follows]
        try:
            for follow in follows:
                await follow.synced.wait()
            self.synced.set()
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def _labels(body: Mapping[str, Any]) -> dict[str, str]:
    return {str(k): str(v) for k, v in ((body.get("metadata") or {}).get("labels") or {}).items()}


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
