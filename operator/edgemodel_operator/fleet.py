"""The operator's view of the EdgeAgents: kopf's index plus the spec writes it has just made.

kopf keeps the index current from its watch (and pre-populates it before any handler runs, so a
restarted operator never plans against an empty fleet). A patch response is newer than the
watch for a moment: ``Fleet`` overlays the spec it wrote until the watch catches up
(``metadata.generation`` tells which is newer).

The labels the operator selects on (``spec.selector``, the cloud tier) are the Node's, from a
second index: an agent may write its own EdgeAgent, labels included, but never its Node, so it
cannot make itself a cloud node or join another team's selection. An EdgeAgent without a Node
has no labels.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

from edgemodel_operator.scheduling import AgentView

ModelKey = tuple[str, str]
"""(namespace, name) of an EdgeModel."""


class Fleet:
    """Agent views by name, with the operator's own recent writes laid over them."""

    def __init__(self) -> None:
        self._index: Mapping[str, Iterable[AgentView]] = {}
        self._nodes: Mapping[str, Iterable[Mapping[str, str]]] | None = None
        self._written: dict[str, AgentView] = {}

    def attach(self, index: Mapping[str, Iterable[AgentView]],
               nodes: Mapping[str, Iterable[Mapping[str, str]]] | None = None) -> None:
        """Use kopf's live indexes: agent name -> views, and node name -> Node labels."""
        self._index = index
        if nodes is not None:
            self._nodes = nodes

    def node_labels(self, name: str) -> Mapping[str, str]:
        """The labels of Node ``name`` (empty when there is no such Node)."""
        assert self._nodes is not None
        return next(iter(self._nodes.get(name, ())), {})

    def get(self, name: str) -> AgentView | None:
        view = self._newest(name)
        if view is None or self._nodes is None:
            return view
        return view.with_labels(self.node_labels(name))

    def _newest(self, name: str) -> AgentView | None:
        indexed = next(iter(self._index.get(name, ())), None)
        written = self._written.get(name)
        if written is None:
            return indexed
        if indexed is None:
            return None
        if indexed.generation >= written.generation:
            self._written.pop(name, None)
            return indexed
        return indexed.with_spec_models(written.spec_models, written.generation)

    def snapshot(self) -> list[AgentView]:
        """Every known agent, newest knowledge first."""
        views = []
        for name in list(self._index):
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
        return len(self._index)


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
