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
- :func:`plan_current`: ``pipeline.check_plan`` on the serving chain with the entries' measured
  stage-1 compute (``headMs``) and the costs the conversion Job profiled (auto cuts only).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edgemodel.api import ArtifactRef, EdgeModelSpec, ModelPhase
from edgemodel.api.edgemodel import Split
from edgemodel.split.chain_planner import ChainCosts, ChainObjective, Device, cost_plan
from edgemodel.split.planner import PlanError
from edgemodel_operator.pipeline import (
    NodeInfo,
    PlanCheck,
    StageReport,
    chain_gate,
    chain_links,
    check_plan,
    stage_assignments,
    stage_candidates,
)
from edgemodel_operator.scheduling import AgentView, choose_artifact

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
    return ChainNodes(tuple(with_port[:need]))


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
                 head_ms: Sequence[float]) -> PlanCheck:
    """``PipelinePlanCurrent`` for the serving chain (entries: the fresh entries serving it)."""
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
        nodes = [NodeInfo(entry.name, dict(entry.labels), split.edge_slowdown),
                 *(NodeInfo(a.name, dict(a.labels), split.edge_slowdown) for a in placed.nodes)]
        on = [n.name for n in nodes]
        if len(starts) != len(on) - 1:
            raise PlanError(f"chain.json plan has {len(starts) + 1} stages, the chain {len(on)}")
        objective = ChainObjective(split.stages.objective.value if split.stages else "latency")
        devices = [Device(n.name, split.edge_slowdown) for n in nodes]
        serving = cost_plan(costs, devices, chain_links(split), on, starts, objective)
        measured = {entry.name: statistics.median(head_ms)} if head_ms else {}
        return check_plan(split, costs, serving, nodes, measured)
    except (PlanError, KeyError, TypeError, ValueError, IndexError) as exc:
        return PlanCheck(True, "NotPlannable", f"the serving chain's plan cannot be re-costed: {exc}")
