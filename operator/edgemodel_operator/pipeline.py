"""Pipelines (``spec.split.stages``): plan over the stage nodes, assign stages, gate the chain, check the plan.

Pure functions over the spec, node labels and what the agents report, so the reconciler only calls
them (docs/split-inference.md, "Pipelines"):

- :func:`stage_candidates`: which nodes may host stage 2, 3, ... (``pool`` ordered by the
  ``edgemodel.io/pipeline-order`` label, then by name; or one ``stageSelectors`` entry per stage);
- :func:`plan_for`: the planner's devices (the entry plus the candidates, each with its measured
  slowdown) and links (declared pairs, else ``spec.split.link`` with the measured RTT when the
  declared one is empty), then :func:`edgemodel.split.chain_planner.plan_chain`;
- :func:`chain_gate`: a revision's chain rolls out as one unit: entries move to revision R only when
  the stage of R is Ready on every stage node of R's plan, and a stage node keeps every revision an
  entry still serves (no chain mixes revisions);
- :func:`stage_assignments`: the spec.models entry of every node of a chain (head, middle tails with
  ``nextUrl``, last tail) from the revision's chain.json;
- :func:`check_plan`: the serving plan re-costed with each stage node's measured compute
  (measured / predicted per device) and the measured RTTs; condition ``PipelinePlanCurrent`` says
  whether another plan is now predicted at least ``MIN_GAIN`` better under the spec's objective.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from edgemodel.api import ArtifactRef, ModelAssignment, ModelRole, SplitAssignment
from edgemodel.api.base import LabelSelector
from edgemodel.api.edgemodel import DEFAULT_SPLIT_RTT_MS, PIPELINE_ORDER_LABEL, Split, SplitFallback
from edgemodel.split.chain_planner import (
    ChainCosts,
    ChainLinks,
    ChainObjective,
    ChainPlan,
    Device,
    cost_plan,
    plan_chain,
)
from edgemodel.split.planner import Link, PlanError
from edgemodel_operator.assignments import rebase_uri

CONDITION = "PipelinePlanCurrent"
MIN_GAIN = 0.10
"""Another plan must be predicted at least this much better before the serving one is called stale."""
MIN_REFERENCE_MS = 0.2
"""A stage whose segments take less on the reference cannot tell a node's speed (timer noise dominates)."""


def stage_reference_ms(costs: ChainCosts, first: int, last: int) -> float:
    """The reference ms of segments ``first..last`` (a stage's model compute on the conversion Job's CPU)."""
    return float(sum(costs.segment_ms[first : last + 1]))


def stage_segments(costs: ChainCosts, cut_in: str | None, cut_out: str | None) -> tuple[int, int]:
    """(first, last) segment of the stage between ``cut_in`` and ``cut_out`` (None: the model's input/output)."""
    cuts = list(costs.cuts)
    try:
        first = 0 if cut_in is None else cuts.index(cut_in) + 1
        last = len(cuts) if cut_out is None else cuts.index(cut_out)
    except ValueError as exc:
        raise PlanError(f"chain.json: cut {exc} is not among plan.costs.cuts; rebuild the revision") from exc
    if last < first:
        raise PlanError(f"chain.json: stage {cut_in} -> {cut_out} is empty in plan.costs; rebuild the revision")
    return first, last


@dataclass(frozen=True)
class NodeInfo:
    """A candidate node: its labels, measured slowdown (ms here / reference ms; None: unknown), memory and
    serving overhead per request (ms)."""

    name: str
    labels: Mapping[str, str]
    slowdown: float | None = None
    memory_bytes: int | None = None
    overhead_ms: float = 0.0


def _order_key(node: NodeInfo) -> tuple[float, str]:
    raw = node.labels.get(PIPELINE_ORDER_LABEL, "")
    try:
        return (float(raw), node.name)
    except ValueError:
        return (float("inf"), node.name)


def stage_candidates(split: Split, nodes: Sequence[NodeInfo], entry: str) -> list[NodeInfo]:
    """The ordered nodes that may host stages 2..N for ``entry`` (never the entry itself).

    With ``stageSelectors`` the first node matching each selector, in selector order (a selector
    nobody matches raises :class:`PlanError` naming it); with a ``pool`` every matching node in
    ``edgemodel.io/pipeline-order`` order.
    """
    stages = split.stages
    if stages is None:
        return []
    others = sorted((n for n in nodes if n.name != entry), key=_order_key)
    if stages.stage_selectors:
        chosen: list[NodeInfo] = []
        for k, selector in enumerate(stages.stage_selectors):
            match = next((n for n in others if selector.matches(dict(n.labels)) and n not in chosen), None)
            if match is None:
                raise PlanError(
                    f"spec.split.stages.stageSelectors[{k}]: no node (other than the entry {entry} and "
                    f"the earlier stages) matches {selector.to_k8s()}; label a node or change the selector"
                )
            chosen.append(match)
        return chosen
    pool = stages.pool or LabelSelector()
    return [n for n in others if pool.matches(dict(n.labels))]


def chain_links(split: Split, measured_rtt_ms: Mapping[tuple[str, str], float] | None = None) -> ChainLinks:
    """Declared links (``stages.links``), the default ``spec.split.link``; empty RTTs from measurements or 20 ms."""
    measured = measured_rtt_ms or {}

    def rtt(declared: float | None, a: str = "", b: str = "") -> float:
        if declared is not None:
            return declared
        return measured.get((a, b), measured.get((b, a), DEFAULT_SPLIT_RTT_MS))

    default = None
    if split.link is not None:
        values = list(measured.values())
        fallback = statistics.median(values) if values else DEFAULT_SPLIT_RTT_MS
        default = Link(
            split.link.bandwidth_mbit_s, split.link.rtt_ms if split.link.rtt_ms is not None else fallback
        )
    between = {}
    for link in split.stages.links if split.stages else []:
        between[(link.from_node, link.to_node)] = Link(
            link.bandwidth_mbit_s, rtt(link.rtt_ms, link.from_node, link.to_node)
        )
    if default is not None and measured:
        for (a, b), value in measured.items():
            between.setdefault(
                (a, b),
                Link(
                    default.bandwidth_mbit_s,
                    value if split.link and split.link.rtt_ms is None else default.rtt_ms,
                ),
            )
    return ChainLinks(default, between)


def plan_for(
    split: Split,
    costs: ChainCosts,
    entry: NodeInfo,
    candidates: Sequence[NodeInfo],
    measured_rtt_ms: Mapping[tuple[str, str], float] | None = None,
    default_slowdown: float = 1.0,
) -> ChainPlan:
    """The plan for one entry node over ``candidates`` (unknown slowdowns count as ``default_slowdown``)."""
    stages = split.stages
    if stages is None:
        raise PlanError("spec.split.stages: not a pipeline")
    devices = [Device(n.name, n.slowdown or default_slowdown, n.memory_bytes, n.overhead_ms)
               for n in (entry, *candidates)]
    count = stages.fixed_count()
    allowed = None
    if stages.stage_selectors:  # stage k+2 on the node its selector picked
        allowed = [None, *(frozenset({n.name}) for n in candidates)]
    objective = ChainObjective(stages.objective.value)
    return plan_chain(
        costs,
        devices,
        chain_links(split, measured_rtt_ms),
        objective,
        stages=count,
        max_stages=stages.max_stages,
        allowed=allowed,
    )


@dataclass(frozen=True)
class StageReport:
    """What a stage node reports for one revision: Ready or not, and its median compute per request (ms)."""

    revision: int
    ready: bool
    compute_ms: float | None = None


@dataclass(frozen=True)
class Gate:
    open: bool
    message: str


def chain_gate(
    revision: int, plan_nodes: Sequence[str], reports: Mapping[str, Sequence[StageReport]]
) -> Gate:
    """Whether entries may move to ``revision``: its stage is Ready on every stage node of its plan."""
    waiting = []
    for node in plan_nodes:
        if not any(r.revision == revision and r.ready for r in reports.get(node, ())):
            waiting.append(node)
    if waiting:
        return Gate(
            False,
            f"waiting for the stages of revision {revision} to be Ready on {', '.join(waiting)}; "
            "entries keep the previous revision's chain",
        )
    return Gate(True, f"every stage of revision {revision} is Ready on {', '.join(plan_nodes)}")


def revisions_to_keep(entry_revisions: Mapping[str, int], target: int | None) -> set[int]:
    """The revisions every stage node must keep serving: those an entry serves, plus the one rolling out."""
    keep = set(entry_revisions.values())
    if target is not None:
        keep.add(target)
    return keep


@dataclass(frozen=True)
class PlanCheck:
    current: bool
    reason: str
    message: str
    better: ChainPlan | None = None


def check_plan(
    split: Split,
    costs: ChainCosts,
    serving: ChainPlan,
    nodes: Sequence[NodeInfo],
    measured_compute_ms: Mapping[str, float],
    measured_rtt_ms: Mapping[tuple[str, str], float] | None = None,
) -> PlanCheck:
    """Re-plan with each stage node's measured speed and say whether the serving plan still holds.

    ``measured_compute_ms``: per node, the median model compute of its stage per request (the entry's
    ``headMs``, a stage node's ``stageMs``). A node's new slowdown = measured / the reference ms of its
    stage's segments (:func:`stage_reference_ms`; for a stage too small to measure, planned slowdown x
    measured / predicted compute); nodes that host no stage keep theirs. Advice only: a new plan means
    new stage artifacts (a revision).
    """
    if not measured_compute_ms:
        return PlanCheck(
            True,
            "NotMeasured",
            f"plan {serving.devices} at cuts {serving.cuts}: no stage has reported its compute yet",
        )
    by_name = {n.name: n for n in nodes}
    updated = []
    for node in nodes:
        stage = next((s for s in serving.stages if s.device == node.name), None)
        measured = measured_compute_ms.get(node.name)
        slowdown = node.slowdown or 1.0
        reference = stage_reference_ms(costs, stage.first, stage.last) if stage is not None else 0.0
        if stage is not None and measured is not None and reference >= MIN_REFERENCE_MS:
            slowdown = measured / reference
        elif stage is not None and measured is not None and stage.compute_ms > 0:
            slowdown *= measured / stage.compute_ms
        updated.append(replace(node, slowdown=slowdown))
    entry = by_name[serving.devices[0]]
    entry_updated = next(n for n in updated if n.name == entry.name)
    rest = [n for n in updated if n.name != entry.name]
    try:
        best = plan_for(split, costs, entry_updated, rest, measured_rtt_ms)
    except PlanError as exc:
        return PlanCheck(True, "NotPlannable", str(exc))
    # the serving plan costed with the same measured speeds
    devices = [Device(n.name, n.slowdown or 1.0, n.memory_bytes, n.overhead_ms) for n in (entry_updated, *rest)]
    now = cost_plan(
        costs,
        devices,
        chain_links(split, measured_rtt_ms),
        serving.devices,
        [s.first for s in serving.stages[1:]],
        serving.objective,
    )
    what = "latency" if serving.objective is ChainObjective.LATENCY else "period"
    now_value, best_value = now.score()[0], best.score()[0]
    if best_value < now_value * (1 - MIN_GAIN):
        return PlanCheck(
            False,
            "BetterPlanMeasured",
            f"with the measured stage speeds, stages on {best.devices} cut at {best.cuts} are predicted at "
            f"{best_value:.2f} ms {what}, the serving plan ({serving.devices} at {serving.cuts}) at "
            f"{now_value:.2f} ms; a new revision (any change that opens one) re-plans",
            best,
        )
    return PlanCheck(
        True,
        "PlanHolds",
        f"plan {serving.devices} at cuts {serving.cuts} is still within "
        f"{MIN_GAIN:.0%} of the best for the measured stage speeds ({now_value:.2f} ms {what})",
    )


def stage_assignments(
    chain_doc: Mapping[str, Any],
    artifact: ArtifactRef,
    namespace: str,
    name: str,
    revision: int,
    nodes: Sequence[str],
    endpoints: Mapping[str, str],
    store_url: str = "",
    agent_base_url: str = "",
) -> dict[str, ModelAssignment]:
    """The spec.models entry of every node of one chain (``nodes``: the entry first, then stage 2..N).

    ``chain_doc`` is the revision's chain.json (stage files and their sha256, next to manifest.json in
    the store); ``artifact`` the entry's hardware class artifact (its whole model is the fallback);
    ``endpoints`` the split endpoints stage nodes report. The entry gets a ``head`` (stage 1, the next
    stage's URL, fallback local with the whole model), a middle node a ``tail`` with ``nextUrl``, the last
    node a plain ``tail``. Raises :class:`PlanError` when the chain and the nodes do not fit.
    """
    stages = list(chain_doc.get("stages") or [])
    if len(stages) != len(nodes) or len(nodes) < 2:
        raise PlanError(f"chain.json has {len(stages)} stages for {len(nodes)} nodes {list(nodes)}; re-plan")
    missing = [n for n in nodes[1:] if not endpoints.get(n)]
    if missing:
        raise PlanError(
            f"stage nodes {missing} report no split endpoint: start their agents with --split-port"
        )
    if not artifact.manifest_uri or not artifact.signature:
        raise PlanError(f"revision {revision} has no signed manifest yet")
    base = artifact.manifest_uri.rsplit("/", 1)[0]
    wire = str(chain_doc.get("wire") or "int8")

    def uri(path: str) -> str:
        return rebase_uri(path, store_url, agent_base_url) if store_url else path

    out: dict[str, ModelAssignment] = {}
    for k, (node, stage) in enumerate(zip(nodes, stages, strict=True)):
        common = {
            "name": name,
            "namespace": namespace,
            "revision": revision,
            "artifact_uri": uri(f"{base}/{stage['file']}"),
            "sha256": stage["sha256"],
            "manifest_uri": uri(artifact.manifest_uri),
            "signature": artifact.signature,
        }
        if k == 0:
            split = SplitAssignment(
                cut=stage["cutOut"],
                wire=wire,
                cloud_url=endpoints[nodes[1]],
                fallback=SplitFallback.LOCAL,
                full_artifact_uri=uri(artifact.uri),
                full_sha256=artifact.sha256,
            )
            out[node] = ModelAssignment(**common, role=ModelRole.HEAD, split=split)
        else:
            last = k == len(nodes) - 1
            split = SplitAssignment(
                cut=stage["cutIn"],
                wire=wire,
                next_url=None if last else endpoints[nodes[k + 1]],
                next_cut=None if last else stage["cutOut"],
            )
            out[node] = ModelAssignment(**common, role=ModelRole.TAIL, split=split)
    return out
