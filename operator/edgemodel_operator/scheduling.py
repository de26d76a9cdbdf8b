"""Which edge nodes get a model, and which artifact variant each one gets.

An agent is selected when its EdgeAgent labels match ``spec.selector``, it meets
``spec.hardware`` and an artifact class exists for its hardware; it counts only while its
heartbeat is fresh. Stale agents are reported and keep what they have. Pure functions.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from edgemodel.api import ArtifactRef, EdgeModelSpec, HardwareClass, ModelRole
from edgemodel.api.continual import AgentContinualState
from edgemodel.api.edgeagent import Capabilities, EdgeAgentStatus, ModelState
from edgemodel.api.edgemodel import CLOUD_TIER_LABEL

MIB = 1024 * 1024
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "ROCMExecutionProvider", "DmlExecutionProvider")


def parse_time(value: str | None) -> dt.datetime | None:
    """An RFC 3339 timestamp as an aware datetime; None when empty or malformed."""
    if not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class ReportedModel:
    """What an agent reports about one model (a slim ModelState)."""

    name: str
    namespace: str
    revision: int
    state: str
    serving_revision: int | None = None
    reason: str = ""
    message: str = ""
    request_count: int = 0
    error_count: int = 0
    p95_ms: float | None = None
    role: str = ModelRole.FULL.value
    cloud_rtt_ms: float | None = None
    head_ms: float | None = None
    stage_ms: float | None = None

    @classmethod
    def from_state(cls, m: ModelState) -> ReportedModel:
        """From the agent's typed ``status.models[]`` entry."""
        return cls(name=m.name, namespace=m.namespace, revision=m.revision, state=m.state.value,
                   serving_revision=m.serving_revision, reason=m.reason, message=m.message,
                   request_count=m.request_count, error_count=m.error_count, p95_ms=m.p95_ms, role=m.role.value,
                   cloud_rtt_ms=m.cloud_rtt_ms, head_ms=m.head_ms, stage_ms=m.stage_ms)


def agent_status(raw: Any) -> EdgeAgentStatus:
    """An EdgeAgent's status as the typed model; parts that do not validate are dropped one by one."""
    if not isinstance(raw, Mapping):
        return EdgeAgentStatus()
    raw = {k: v for k, v in raw.items() if k not in _UNREAD}
    try:
        return EdgeAgentStatus.model_validate(raw)
    except ValidationError:
        pass
    models = []
    for entry in raw.get("models") or []:
        try:
            models.append(ModelState.model_validate(entry))
        except ValidationError:
            continue
    try:
        capabilities = Capabilities.model_validate(raw.get("capabilities") or {})
    except ValidationError:
        capabilities = Capabilities()
    continual = []
    for entry in raw.get("continual") or []:
        try:
            continual.append(AgentContinualState.model_validate(entry))
        except ValidationError:
            continue
    fields: dict[str, Any] = {}
    for key in ("heartbeatTime", "endpoint", "splitEndpoint"):
        try:
            fields.update(EdgeAgentStatus.model_validate({key: raw.get(key)}).model_dump(include=_FIELD[key]))
        except ValidationError:
            continue
    return EdgeAgentStatus(capabilities=capabilities, models=models, continual=continual, **fields)


_UNREAD = frozenset({"conditions"})
"""Status fields the operator never reads (not validated: their patterns cost time at every watch event)."""
_FIELD = {"heartbeatTime": {"heartbeat_time"}, "endpoint": {"endpoint"}, "splitEndpoint": {"split_endpoint"}}


def is_tail(entry: Mapping[str, Any]) -> bool:
    """Whether a spec.models entry is a split tail (cloud side; one entry per revision)."""
    return entry.get("role") == ModelRole.TAIL.value


@dataclass(frozen=True)
class AgentView:
    """The parts of one EdgeAgent the operator decides on, parsed once per watch event."""

    name: str
    generation: int = 0
    labels: Mapping[str, str] = field(default_factory=dict)
    hardware_class: str = HardwareClass.CPU.value
    arch: str = ""
    memory_bytes: int = 0
    providers: tuple[str, ...] = ()
    heartbeat: dt.datetime | None = None
    """Last sign of life: status.heartbeatTime, or the Lease's renewTime when later (see fleet.Fleet)."""
    endpoint: str = ""
    split_endpoint: str = ""
    spec_models: tuple[Mapping[str, Any], ...] = ()
    """spec.models exactly as stored (the JSON patches index into this list)."""
    reported: tuple[ReportedModel, ...] = ()
    continual: tuple[AgentContinualState, ...] = ()
    """status.continual: drift, feedback and capture per served model (read by the continual controller)."""
    deleting: bool = False
    has_spec: bool = True

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> AgentView:
        """Parse an EdgeAgent object (tolerant: a new agent may have no status yet, and a malformed part of a
        status, e.g. one model's entry, is left out rather than losing the whole agent)."""
        meta = body.get("metadata") or {}
        spec = body.get("spec") or {}
        status = agent_status(body.get("status"))
        caps = status.capabilities
        return cls(
            name=str(meta.get("name", "")),
            generation=int(meta.get("generation") or 0),
            labels=dict(meta.get("labels") or {}),
            hardware_class=caps.hardware_class.value,
            arch=caps.arch,
            memory_bytes=caps.memory_bytes,
            providers=tuple(caps.providers),
            heartbeat=parse_time(status.heartbeat_time),
            endpoint=status.endpoint,
            split_endpoint=status.split_endpoint,
            spec_models=tuple(spec.get("models") or ()),
            reported=tuple(ReportedModel.from_state(m) for m in status.models),
            continual=tuple(status.continual),
            deleting=bool(meta.get("deletionTimestamp")),
            has_spec=isinstance(body.get("spec"), Mapping),
        )

    @property
    def is_cloud(self) -> bool:
        """Whether this agent runs in the cloud (label edgemodel.io/tier=cloud): it serves split tails only."""
        return self.labels.get(CLOUD_TIER_LABEL) == "cloud"

    def assignment_index(self, namespace: str, name: str) -> int | None:
        """Position of the model's full or head entry in spec.models, or None (tails are not counted)."""
        for i, m in enumerate(self.spec_models):
            if m.get("name") == name and m.get("namespace") == namespace and not is_tail(m):
                return i
        return None

    def tail_revisions(self, namespace: str, name: str) -> set[int]:
        """Revisions of the model whose tail is assigned to this (cloud) agent."""
        return {int(m.get("revision") or 0) for m in self.spec_models
                if is_tail(m) and m.get("name") == name and m.get("namespace") == namespace}

    def tail_report(self, namespace: str, name: str, revision: int) -> ReportedModel | None:
        """What the agent reports about the tail of one revision, or None."""
        return next((r for r in self.reported if r.role == ModelRole.TAIL.value and r.name == name
                     and r.namespace in (namespace, "") and r.revision == revision), None)

    def assigned_revision(self, namespace: str, name: str) -> int | None:
        """Revision of the model assigned to this node, or None."""
        i = self.assignment_index(namespace, name)
        return int(self.spec_models[i].get("revision") or 0) if i is not None else None

    def report(self, namespace: str, name: str) -> ReportedModel | None:
        """What the agent reports about the model, or None."""
        return next((r for r in self.reported if r.name == name and r.namespace in (namespace, "")
                     and r.role != ModelRole.TAIL.value), None)

    def is_fresh(self, now: dt.datetime, timeout_seconds: float) -> bool:
        """Whether the agent reported within the heartbeat timeout."""
        return self.heartbeat is not None and (now - self.heartbeat).total_seconds() <= timeout_seconds

    def with_labels(self, labels: Mapping[str, str]) -> AgentView:
        """A copy that selects by ``labels`` (its Node's) instead of the EdgeAgent's own."""
        return self if labels == self.labels else dataclasses.replace(self, labels=dict(labels))
    def with_heartbeat(self, when: dt.datetime) -> AgentView:
        """A copy whose last sign of life is ``when`` (its Lease's renewTime)."""
        return dataclasses.replace(self, heartbeat=when)

    def with_spec_models(self, models: Sequence[Mapping[str, Any]], generation: int) -> AgentView:
        """A copy with spec.models as the operator just wrote them."""
        return dataclasses.replace(self, spec_models=tuple(models), generation=generation)


@dataclass(frozen=True)
class Selection:
    """The agents a model goes to: fresh ones take part, stale ones are reported."""

    fresh: list[AgentView]
    stale: list[AgentView]
    excluded: dict[str, str]
    """Agents that match the selector but cannot take the model, with the reason."""

    @property
    def total(self) -> int:
        return len(self.fresh) + len(self.stale)


def target_classes(spec: EdgeModelSpec) -> set[str]:
    """Hardware classes the conversion builds artifacts for."""
    return {t.hardware_class.value for t in spec.optimization.targets}


def variant_class(node_class: str, built: Iterable[str]) -> str | None:
    """The artifact class a node gets: its own; a GPU node falls back to the CPU artifact."""
    built = set(built)
    if node_class in built:
        return node_class
    if node_class == HardwareClass.GPU.value and HardwareClass.CPU.value in built:
        return HardwareClass.CPU.value
    return None


def choose_artifact(node_class: str, artifacts: Sequence[ArtifactRef]) -> ArtifactRef | None:
    """The artifact of a revision for a node of ``node_class`` (see ``variant_class``)."""
    by_class = {a.hardware_class.value: a for a in artifacts}
    chosen = variant_class(node_class, by_class)
    return by_class[chosen] if chosen else None


def hardware_mismatch(spec: EdgeModelSpec, agent: AgentView) -> str | None:
    """Why the agent's hardware does not fit the spec, or None."""
    hw = spec.hardware
    if hw.require_gpu and agent.hardware_class != HardwareClass.GPU.value:
        return "hardware.requireGpu: the agent reports no GPU execution provider"
    if hw.architectures and agent.arch not in hw.architectures:
        return f"hardware.architectures: arch {agent.arch or 'unknown'} is not in {hw.architectures}"
    if hw.min_memory_mi_b is not None and agent.memory_bytes < hw.min_memory_mi_b * MIB:
        return f"hardware.minMemoryMiB: {agent.memory_bytes // MIB} MiB < {hw.min_memory_mi_b} MiB"
    if variant_class(agent.hardware_class, target_classes(spec)) is None:
        return f"optimization.targets: no artifact is built for hardware class {agent.hardware_class}"
    return None


def select(
    spec: EdgeModelSpec,
    namespace: str,
    name: str,
    agents: Iterable[AgentView],
    now: dt.datetime,
    heartbeat_timeout_seconds: float,
) -> Selection:
    """Split the agents matching the selector into fresh, stale and excluded (with reasons)."""
    fresh: list[AgentView] = []
    stale: list[AgentView] = []
    excluded: dict[str, str] = {}
    for agent in agents:
        if agent.deleting or agent.is_cloud or not spec.selector.matches(dict(agent.labels)):
            continue
        reason = hardware_mismatch(spec, agent)
        if reason is None:
            clash = next(
                (m for m in agent.spec_models if m.get("name") == name and m.get("namespace") != namespace
                 and not is_tail(m)), None
            )
            if clash is not None:
                reason = (
                    f"the node already serves a model named {name!r} from namespace {clash.get('namespace')!r}; "
                    "rename one of the EdgeModels or narrow spec.selector"
                )
        if reason is not None:
            excluded[agent.name] = reason
        elif agent.is_fresh(now, heartbeat_timeout_seconds):
            fresh.append(agent)
        else:
            stale.append(agent)
    fresh.sort(key=lambda a: a.name)
    stale.sort(key=lambda a: a.name)
    return Selection(fresh=fresh, stale=stale, excluded=excluded)


def select_cloud(spec: EdgeModelSpec, agents: Iterable[AgentView], now: dt.datetime,
                 heartbeat_timeout_seconds: float) -> Selection:
    """The cloud agents that serve the model's split tail (spec.split.cloud.selector); empty without a split."""
    fresh: list[AgentView] = []
    stale: list[AgentView] = []
    if spec.split.enabled:
        for agent in agents:
            if agent.deleting or not agent.is_cloud or not spec.split.cloud.selector.matches(dict(agent.labels)):
                continue
            (fresh if agent.is_fresh(now, heartbeat_timeout_seconds) else stale).append(agent)
    fresh.sort(key=lambda a: a.name)
    stale.sort(key=lambda a: a.name)
    return Selection(fresh=fresh, stale=stale, excluded={})


def measured_rtt_ms(namespace: str, name: str, agents: Iterable[AgentView]) -> tuple[float, int] | None:
    """(median, count) of the cloud RTTs the model's heads report, or None when no head measured one."""
    return _median_of_heads(namespace, name, agents, lambda r: r.cloud_rtt_ms)


def measured_head_ms(namespace: str, name: str, agents: Iterable[AgentView], revision: int) -> tuple[float, int] | None:
    """(median, count) of the head compute times the heads serving ``revision`` report, or None."""
    return _median_of_heads(namespace, name, agents, lambda r: r.head_ms if r.serving_revision == revision else None)


def _median_of_heads(namespace: str, name: str, agents: Iterable[AgentView],
                     value: Callable[[ReportedModel], float | None]) -> tuple[float, int] | None:
    values = [v for a in agents if not a.is_cloud and (r := a.report(namespace, name)) is not None
              and r.role == ModelRole.HEAD.value and (v := value(r)) is not None]
    if not values:
        return None
    return round(statistics.median(values), 3), len(values)
