"""The reconciler's side of pipelines (``spec.split.stages``): which nodes host a revision's stages, the
chain gate, the entries and stage tails to write, and ``PipelinePlanCurrent``. Pure, called by ``decide``.

- A revision's chain (its chain.json) has ``N`` stages: stage 1 runs on every entry (the nodes the
  EdgeModel selects), stages 2..N on the first ``N - 1`` **fresh** candidates of the pool (or of
  ``stageSelectors``, :func:`pipeline.stage_candidates`) that report a split endpoint; entries are
  never stage nodes. A stage node that goes stale drops out, so the next reconcile re-plans over the
  remaining nodes: the stage moves to the next candidate, or, when too few remain, every entry serves
  the whole model (one stage) until enough come back (:class:`ChainNodes`).
- :func:`gate`: entries move to a revision only when its stage is Ready on every stage node
  (``pipeline.chain_gate``); a stage that failed fails the revision.
- :func:`stage_tails`: every stage node serves exactly the stages of the revisions an entry serves or
  is moving to (``pipeline.revisions_to_keep``): no chain mixes revisions.
- :func:`plan_current`: ``pipeline.check_plan`` on the serving chain with every stage's measured
  compute (the entries' ``headMs``, the stage nodes' ``stageMs``) and the costs the conversion Job
  profiled (auto cuts only).
- :func:`job_devices`: the devices the conversion Job plans auto cuts for: the slowest entry, then the
  stage hosts in pool order, each with its slowdown measured by the serving chain
  (:func:`measured_slowdowns`) or labelled ``edgemodel.io/edge-slowdown``; none (identical devices)
  when a speed is unknown. A chain is placed on the nodes its plan names when they are fresh.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edgemodel.api import ArtifactRef, EdgeModelSpec, ModelPhase
from edgemodel.api.edgemodel import STAGE_OVERHEAD_LABEL, STAGE_SLOWDOWN_LABEL, Split
from edgemodel.split.chain_devices import (
    LABELLED,
    MEASURED,
    PlanDevices,
    device_from_dict,
    parse_overhead_ms,
    parse_slowdown,
)
from edgemodel.split.chain_planner import ChainCosts, ChainObjective, Device, cost_plan
from edgemodel.split.planner import PlanError
from edgemodel_operator.pipeline import (
    MIN_REFERENCE_MS,
    NodeInfo,
    PlanCheck,
    StageReport,
    chain_gate,
    chain_links,
    check_plan,
    stage_assignments,
    stage_candidates,
    stage_reference_ms,
    stage_segments,
)
from edgemodel_operator.scheduling import AgentView, choose_artifact, is_tail

CHAIN_FILE = "chain.json"
STAGE_NODES_LOST = "StageNodesLost"


def stage_count(chain: Mapping[str, Any]) -> int:
    return len(chain.get("stages") or [])


@dataclass(frozen=True)
class ChainNodes:
    """The stage nodes (2..N) of one revision's chain, or why it cannot be placed now."""

    nodes: tuple[AgentView, ...] = ()
    problem: str | None = None

    @property
    def endpoints(self) -> dict[str, str]:
        return {a.name: a.split_endpoint for a in self.nodes}


def stage_hosts(split: Split, candidates: Sequence[AgentView], entries: set[str]) -> list[AgentView]:
    """The ``candidates`` (fresh agents) that may host stages 2..N, in pool order, with a split endpoint.

    Raises :class:`PlanError` when a stageSelector matches nobody."""
    usable = {a.name: a for a in candidates if a.name not in entries and not a.is_cloud and not a.deleting}
    infos = [NodeInfo(a.name, dict(a.labels), split.edge_slowdown, a.memory_bytes or None) for a in usable.values()]
    return [usable[n.name] for n in stage_candidates(split, infos, entry="") if usable[n.name].split_endpoint]


def chain_nodes(split: Split, chain: Mapping[str, Any], candidates: Sequence[AgentView],
                entries: set[str]) -> ChainNodes:
    """Place stages 2..N of ``chain`` on the fresh ``candidates`` (entries excluded), in pool order."""
    need = stage_count(chain) - 1
    if need < 1:
        return ChainNodes(problem="chain.json lists fewer than 2 stages; rebuild the revision")
    try:
        with_port = stage_hosts(split, candidates, entries)
    except PlanError as exc:
        return ChainNodes(problem=str(exc))
    if len(with_port) < need:
        return ChainNodes(problem=(
            f"the chain has {need + 1} stages but only {len(with_port)} fresh node(s) of spec.split.stages.pool/"
            f"stageSelectors (other than the entries) report a split endpoint ({', '.join(a.name for a in with_port) or 'none'}); "
            "start more stage agents with --split-port, label more nodes, or lower spec.split.stages.count"))
    return ChainNodes(planned_nodes(chain, with_port, need) or tuple(with_port[:need]))


def planned_nodes(chain: Mapping[str, Any], hosts: Sequence[AgentView], need: int) -> tuple[AgentView, ...]:
    """Stages 2..N on the nodes chain.json's plan names (planned for their speeds), a lost one replaced by
    the next free host in pool order; () when the plan names none of ``hosts`` (identical devices)."""
    planned = [str(n) for n in ((chain.get("plan") or {}).get("devices") or [])[1:]]
    by_name = {a.name: a for a in hosts}
    if len(planned) != need or not any(n in by_name for n in planned):
        return ()
    spare = iter([a for a in hosts if a.name not in planned])
    nodes = [by_name.get(n) or next(spare, None) for n in planned]
    return tuple(a for a in nodes if a is not None) if all(nodes) else ()


def job_spec(spec: EdgeModelSpec, candidates: Sequence[AgentView], entries: set[str]) -> tuple[EdgeModelSpec, str]:
    """The spec the conversion Job plans with: ``count: auto`` may use at most 1 + the fresh stage hosts
    (a plan over the nodes there are; ``maxStages`` otherwise). Returns (spec, why it changed or '')."""
    stages = spec.split.stages
    if stages is None or stages.cuts or stages.fixed_count() is not None:
        return spec, ""
    try:
        hosts = stage_hosts(spec.split, candidates, entries)
    except PlanError:
        return spec, ""
    limit = max(2, 1 + len(hosts))
    if limit >= stages.max_stages:
        return spec, ""
    split = spec.split.model_copy(update={"stages": stages.model_copy(update={"max_stages": limit})})
    return spec.model_copy(update={"split": split}), (
        f"plans at most {limit} stages: {len(hosts)} fresh pool node(s) can host stages 2..N "
        f"({', '.join(a.name for a in hosts) or 'none'}; spec.split.stages.maxStages is {stages.max_stages})")


def gate(namespace: str, name: str, revision: int, placed: ChainNodes) -> tuple[str | None, str | None]:
    """(why entries must wait, why the revision failed) before entries move to ``revision``; (None, None): go."""
    if placed.problem is not None:
        return f"revision {revision}: {placed.problem}", None
    reports: dict[str, list[StageReport]] = {}
    for agent in placed.nodes:
        report = agent.tail_report(namespace, name, revision)
        if report is None:
            continue
        if report.state == ModelPhase.FAILED.value:
            return None, (f"stage of revision {revision} failed on node {agent.name}: {report.reason}: "
                          f"{report.message}")
        reports[agent.name] = [StageReport(revision, report.state == ModelPhase.READY.value)]
    verdict = chain_gate(revision, [a.name for a in placed.nodes], reports)
    return (None if verdict.open else verdict.message), None


def _artifact(artifacts: Sequence[ArtifactRef], hardware_class: str) -> ArtifactRef | None:
    return choose_artifact(hardware_class, artifacts) or next(iter(artifacts), None)


def entry_assignment(namespace: str, name: str, revision: int, entry: AgentView, artifacts: Sequence[ArtifactRef],
                     chain: Mapping[str, Any], placed: ChainNodes, store_url: str,
                     agent_base_url: str) -> dict[str, Any] | None:
    """The entry's head (stage 1, the next stage's URL, the whole model as its fallback); None without an artifact."""
    artifact = choose_artifact(entry.hardware_class, artifacts)
    if artifact is None:
        return None
    names = [entry.name, *(a.name for a in placed.nodes)]
    entries = stage_assignments(chain, artifact, namespace, name, revision, names, placed.endpoints, store_url,
                                agent_base_url)
    return entries[entry.name].to_k8s()


def stage_tails(namespace: str, name: str, keep: Mapping[int, tuple[Mapping[str, Any], ChainNodes]],
                artifacts: Mapping[int, Sequence[ArtifactRef]], store_url: str,
                agent_base_url: str) -> dict[str, dict[int, dict[str, Any]]]:
    """Stage node -> revision -> its tail entry, for every revision in ``keep`` (revision -> chain, placement)."""
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for revision, (chain, placed) in sorted(keep.items()):
        artifact = _artifact(artifacts.get(revision, []), "cpu")
        if placed.problem is not None or artifact is None:
            continue
        names = ["entry", *(a.name for a in placed.nodes)]
        entries = stage_assignments(chain, artifact, namespace, name, revision, names, placed.endpoints, store_url,
                                    agent_base_url)
        for node in names[1:]:
            out.setdefault(node, {})[revision] = entries[node].to_k8s()
    return out


def plan_current(split: Split, chain: Mapping[str, Any], placed: ChainNodes, entries: Sequence[AgentView],
                 head_ms: Sequence[float], stage_ms: Mapping[str, float] | None = None) -> PlanCheck:
    """``PipelinePlanCurrent`` for the serving chain (entries: the fresh entries serving it; ``head_ms``: their
    stage-1 compute; ``stage_ms``: stage node -> its stage's compute, both medians the agents report)."""
    if placed.problem is not None:
        return PlanCheck(False, STAGE_NODES_LOST, f"the serving chain cannot run: {placed.problem}; every entry "
                                                  "answers with the whole model until enough stage nodes are back")
    plan = chain.get("plan") or {}
    if not plan.get("costs") or not entries:
        cuts = chain.get("cuts")
        return PlanCheck(True, "ManualCuts" if not plan else "NotMeasured",
                         f"stages at cuts {cuts} on {[a.name for a in placed.nodes]}: "
                         + ("cuts given in spec.split.stages.cuts, no plan to check" if not plan
                            else "no entry serves the chain yet"))
    try:
        costs = ChainCosts.from_dict(plan["costs"])
        starts = [int(s["segments"][0]) for s in plan["stages"][1:]]
        entry = entries[0]
        hosts = [entry, *placed.nodes]
        if len(starts) != len(hosts) - 1:
            raise PlanError(f"chain.json plan has {len(starts) + 1} stages, the chain {len(hosts)}")
        planned = _planned_devices(split, plan)
        nodes = []
        for agent, stage in zip(hosts, plan["stages"], strict=True):
            spec = planned.get(str(stage.get("device")))
            nodes.append(NodeInfo(agent.name, dict(agent.labels), spec.slowdown if spec else split.edge_slowdown,
                                  spec.memory_bytes if spec else None, spec.overhead_ms if spec else 0.0))
        on = [n.name for n in nodes]
        objective = ChainObjective(split.stages.objective.value if split.stages else "latency")
        devices = [Device(n.name, n.slowdown or split.edge_slowdown, n.memory_bytes, n.overhead_ms) for n in nodes]
        serving = cost_plan(costs, devices, chain_links(split), on, starts, objective)
        measured = {entry.name: statistics.median(head_ms)} if head_ms else {}
        measured.update({n: ms for n, ms in (stage_ms or {}).items() if n in on[1:]})
        return check_plan(split, costs, serving, nodes, measured)
    except (PlanError, KeyError, TypeError, ValueError, IndexError) as exc:
        return PlanCheck(True, "NotPlannable", f"the serving chain's plan cannot be re-costed: {exc}")


def _planned_devices(split: Split, plan: Mapping[str, Any]) -> dict[str, Device]:
    """The devices the Job planned for (chain.json ``plan.deviceSpecs``) by name; {} for older chains."""
    return {d.name: d for d in (device_from_dict(doc) for doc in plan.get("deviceSpecs") or [])}


def measured_slowdowns(namespace: str, name: str, revision: int, chain: Mapping[str, Any] | None,
                       agents: Sequence[AgentView]) -> dict[str, float]:
    """Node -> slowdown measured by the chain of ``revision`` (auto cuts): the stage compute the node reports
    (an entry's ``headMs``, a stage node's ``stageMs``) / the reference ms of that stage's segments."""
    plan = (chain or {}).get("plan") or {}
    if not plan.get("costs") or chain is None:
        return {}
    try:
        costs = ChainCosts.from_dict(plan["costs"])
        stages = list(chain.get("stages") or [])
        out: dict[str, float] = {}
        for agent in agents:
            cut_in: str | None = None
            cut_out: str | None = stages[0].get("cutOut") if stages else None
            report = agent.report(namespace, name)
            ms = report.head_ms if report is not None and report.serving_revision == revision else None
            if ms is None:
                tail = agent.tail_report(namespace, name, revision)
                cut_in = _tail_cut(agent, namespace, name, revision)
                stage = next((s for s in stages if cut_in is not None and s.get("cutIn") == cut_in), None)
                if tail is None or tail.stage_ms is None or stage is None:
                    continue
                ms, cut_out = tail.stage_ms, stage.get("cutOut")
            reference = stage_reference_ms(costs, *stage_segments(costs, cut_in, cut_out))
            if reference >= MIN_REFERENCE_MS and ms > 0:
                out[agent.name] = ms / reference
        return out
    except (PlanError, KeyError, TypeError, ValueError, IndexError):
        return {}


def _tail_cut(agent: AgentView, namespace: str, name: str, revision: int) -> str | None:
    entry = next((m for m in agent.spec_models if is_tail(m) and m.get("name") == name
                  and m.get("namespace") in (namespace, None, "") and int(m.get("revision") or 0) == revision), None)
    cut = ((entry or {}).get("split") or {}).get("cut")
    return str(cut) if cut else None


def _overhead(agent: AgentView) -> float:
    return parse_overhead_ms(agent.labels.get(STAGE_OVERHEAD_LABEL))


def job_devices(split: Split, entries: Sequence[AgentView], hosts: Sequence[AgentView],
                measured: Mapping[str, float], revision: int | None = None) -> PlanDevices:
    """The devices the conversion Job plans auto cuts for: the slowest entry, then ``hosts`` (the stage hosts in
    pool order), each slowdown measured (``measured``, by ``revision``'s chain) or labelled; none, with the
    reason, when an entry or host has neither (the Job then plans for identical devices)."""
    stages = split.stages
    if stages is None:
        return PlanDevices(reason="not a pipeline")
    if not entries or not hosts:
        return PlanDevices(reason=f"no fresh {'entry' if not entries else 'stage'} node to plan for yet")
    speeds: dict[str, tuple[float, str]] = {}
    unknown = []
    for agent in (*entries, *hosts):
        labelled = parse_slowdown(agent.labels.get(STAGE_SLOWDOWN_LABEL))
        if agent.name in measured:
            speeds[agent.name] = (measured[agent.name], MEASURED)
        elif labelled is not None:
            speeds[agent.name] = (labelled, LABELLED)
        else:
            unknown.append(agent.name)
    if unknown:
        return PlanDevices(reason=(
            f"no speed known for node(s) {', '.join(sorted(unknown))}: label them {STAGE_SLOWDOWN_LABEL}=<ms there / "
            "ms on the conversion Job's CPU>, or let a chain serve on them (a new revision then plans with the "
            "speeds they measured)"))
    entry = max(entries, key=lambda a: (speeds[a.name][0], a.name))  # one chain for every entry: the slowest
    memories = [a.memory_bytes for a in entries if a.memory_bytes]
    devices = [Device(entry.name, speeds[entry.name][0], min(memories) if memories else None, _overhead(entry))]
    devices += [Device(a.name, speeds[a.name][0], a.memory_bytes or None, _overhead(a)) for a in hosts]
    sources = tuple(speeds[d.name][1] for d in devices)
    by = f" (measured by revision {revision})" if MEASURED in sources and revision is not None else ""
    return PlanDevices(tuple(devices), sources, pinned=bool(stages.stage_selectors), reason=(
        f"the nodes {', '.join(f'{d.name} x{d.slowdown:.2f} ({src})' for d, src in zip(devices, sources, strict=True))}"
        f"{by}; the entry is the slowest of {len(entries)} entry node(s)"))
