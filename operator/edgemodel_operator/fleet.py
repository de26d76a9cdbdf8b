"""The operator's view of the EdgeAgents: kopf's index plus the spec writes it has just made.

kopf keeps the index current from its watch (and pre-populates it before any handler runs, so a
restarted operator never plans against an empty fleet). A patch response is newer than the
watch for a moment: ``Fleet`` overlays the spec it wrote until the watch catches up
(``metadata.generation`` tells which is newer). Liveness comes from the agents' Leases
(``liveness.Liveness``): a view's ``heartbeat`` is the later of its Lease's renewTime and the
``status.heartbeatTime`` of its last status write.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from edgemodel_operator.scheduling import AgentView

if TYPE_CHECKING:
    from edgemodel_operator.liveness import Liveness

ModelKey = tuple[str, str]
"""(namespace, name) of an EdgeModel."""


class Fleet:
    """Agent views by name, with the operator's own recent writes laid over them."""

    def __init__(self) -> None:
        self._index: Mapping[str, Iterable[AgentView]] = {}
        self._written: dict[str, AgentView] = {}
        self.liveness: Liveness | None = None

    def attach(self, index: Mapping[str, Iterable[AgentView]]) -> None:
        """Use kopf's live index (a mapping of agent name to a store of views)."""
        self._index = index

    def get(self, name: str) -> AgentView | None:
        view = self._spec_view(name)
        if view is None or self.liveness is None:
            return view
        renewed = self.liveness.last_seen(name)
        if renewed is not None and (view.heartbeat is None or renewed > view.heartbeat):
            return view.with_heartbeat(renewed)
        return view

    def _spec_view(self, name: str) -> AgentView | None:
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
