"""Is the serving revision's auto cut still the right one for what the edge heads measure?

The conversion Job plans an auto cut for a link (declared, or the RTT the heads measured then) and
for an edge predicted as the Job's machine times ``spec.split.edgeSlowdown``. The heads keep
measuring both: the cloud RTT and their own head compute. This re-costs every candidate cut the Job
profiled (the ``plan`` in the revision's split.json) with the measured RTT and with every cut's edge
compute scaled by measured / predicted head compute at the serving cut (one factor for the whole
model, as Neurosurgeon's per-device profiles), and says whether another cut would be clearly better.

Among cuts the RTT is the same for every option, so under the latency objective only a wrong edge
(or cloud) prediction can move the cut; with ``objective: edgeCompute`` the RTT also decides which
cuts fit ``budgetMs``. It only advises (condition ``SplitCutCurrent`` and an event): a new cut means
new head and tail artifacts, i.e. a new revision, which the user opens by correcting
``spec.split.edgeSlowdown`` or ``spec.split.link.rttMs`` as the message says.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

from pydantic import ValidationError

from edgemodel.api import Condition, ConditionStatus, Split, SplitPlanRecord
from edgemodel.api.edgemodel import SplitObjective
from edgemodel.errors import describe_validation_error
from edgemodel.split.planner import Link, Objective, Option, OptionKind, PlanError, on_link, pick

log = logging.getLogger(__name__)

CONDITION = "SplitCutCurrent"
MIN_GAIN = 0.10
"""Another cut must be predicted at least this much better (fraction) before the serving cut is called stale."""
MIN_PREDICTED_HEAD_MS = 0.001
"""Below this a predicted head time is too small to scale from."""
_BETTER = "cut {} is predicted at"
"""How a stale verdict names the better cut (:func:`restates` looks for it)."""


@dataclass(frozen=True)
class PlannedCuts:
    """What the conversion Job planned (the ``plan`` of split.json): every cut costed on the planned link."""

    options: tuple[Option, ...]
    planned_rtt_ms: float

    @classmethod
    def from_split_json(cls, doc: Any) -> PlannedCuts | None:
        """From split.json; None for a manual cut (no plan) or a plan this operator cannot read."""
        plan = doc.get("plan") if isinstance(doc, dict) else None
        if not plan:
            return None
        try:
            record = SplitPlanRecord.model_validate(plan)
            options = tuple(
                Option(OptionKind.SPLIT, o.cut, o.cut_index, o.edge_ms, o.transfer_ms, o.cloud_ms, o.codec_ms,
                       o.bytes_up, o.bytes_down)
                for o in record.options if o.kind == OptionKind.SPLIT.value
            )  # fmt: skip
        except ValidationError as exc:
            log.debug("Ignored the plan of a split.json: %s", describe_validation_error(exc, "plan"))
            return None
        return cls(options, record.link.rtt_ms)


@dataclass(frozen=True)
class Measured:
    """What the heads serving the revision report: medians and how many heads reported."""

    rtt_ms: float | None = None
    head_ms: float | None = None
    heads: int = 0


@dataclass(frozen=True)
class CutCheck:
    """The verdict: ``current`` False means another cut is clearly better for what the heads measure."""

    current: bool
    reason: str
    message: str
    better_cut: str | None = None


def check_cut(split: Split, serving_cut: str, planned: PlannedCuts | None, measured: Measured) -> CutCheck | None:
    """The check of the serving auto cut against the Job's plan; None when there is nothing to check."""
    if planned is None or not planned.options or split.link is None:
        return None
    planned_serving = next((o for o in planned.options if o.cut == serving_cut), None)
    if planned_serving is None:
        return None
    if measured.rtt_ms is None and measured.head_ms is None:
        return CutCheck(True, "NotMeasured", f"cut {serving_cut} was planned for a {planned.planned_rtt_ms:g} ms "
                        "RTT; no edge head has measured the link or its compute yet")
    link = Link(split.link.bandwidth_mbit_s, planned.planned_rtt_ms if measured.rtt_ms is None else measured.rtt_ms)
    factor = 1.0
    if measured.head_ms is not None and planned_serving.edge_ms >= MIN_PREDICTED_HEAD_MS:
        factor = measured.head_ms / planned_serving.edge_ms
    options = [on_link(replace(o, edge_ms=o.edge_ms * factor), link) for o in planned.options]
    serving = options[planned.options.index(planned_serving)]
    objective = Objective.EDGE_COMPUTE if split.objective == SplitObjective.EDGE_COMPUTE else Objective.LATENCY
    try:
        plan = pick(options, link, objective, split.budget_ms)
    except PlanError:
        return None
    best = plan.chosen
    facts = [f"{measured.heads} edge head(s) measure"]
    if measured.rtt_ms is not None:
        facts.append(f"a {measured.rtt_ms:.1f} ms RTT (planned: {planned.planned_rtt_ms:g} ms)")
    if measured.head_ms is not None:
        facts.append(f"{measured.head_ms:.3f} ms of head compute (predicted: {planned_serving.edge_ms:.3f} ms, "
                     f"{factor:.2f}x)")
    where = facts[0] + " " + " and ".join(facts[1:])
    if best.cut == serving.cut or not _clearly_better(best, serving, objective, split.budget_ms, plan.budget_met):
        # No measured numbers here: a verdict that holds is not rewritten while they wiggle (see status.split_cut).
        kinds = [k for k, v in (("cloud RTT", measured.rtt_ms), ("head compute", measured.head_ms)) if v is not None]
        return CutCheck(True, "CutHolds", f"cut {serving.cut} is still the best of {len(options)} cuts for the "
                        f"{' and '.join(kinds)} that {measured.heads} edge head(s) measure (planned for a "
                        f"{planned.planned_rtt_ms:g} ms RTT and {planned_serving.edge_ms:.3f} ms of head compute)")
    edge = "" if objective is Objective.LATENCY else (
        f", edge compute {best.edge_ms + best.codec_ms:.2f} ms vs {serving.edge_ms + serving.codec_ms:.2f} ms")
    fixes = []
    if abs(factor - 1.0) > MIN_GAIN:
        fixes.append(f"spec.split.edgeSlowdown: {split.edge_slowdown * factor:.3g}")
    if measured.rtt_ms is not None and split.link.rtt_ms is not None and abs(measured.rtt_ms - split.link.rtt_ms) > 1:
        fixes.append(f"spec.split.link.rttMs: {measured.rtt_ms:.0f}")
    fix = " and ".join(fixes) if fixes else "any change to spec.split.link or spec.split.edgeSlowdown"
    return CutCheck(False, "BetterCutMeasured",
                    f"{where}; with these, {_BETTER.format(best.cut)} {best.total_ms:.2f} ms end to end, the "
                    f"serving cut {serving.cut} at {serving.total_ms:.2f} ms{edge}. To convert a revision cut there, "
                    f"set {fix}", better_cut=best.cut)


def restates(check: CutCheck, condition: Condition | None) -> bool:
    """Whether ``condition`` already says what ``check`` says: for a holding cut the same message (it has no
    measured numbers), for a stale one the same better cut (its message has them), so measurements that
    wiggle between heartbeats do not rewrite the status every reconcile."""
    if condition is None or condition.reason != check.reason:
        return False
    if condition.status != (ConditionStatus.TRUE if check.current else ConditionStatus.FALSE):
        return False
    return condition.message == check.message if check.current else _BETTER.format(check.better_cut) in condition.message


def _clearly_better(best: Option, serving: Option, objective: Objective, budget_ms: float | None,
                    budget_met: bool) -> bool:
    if objective is Objective.LATENCY or not budget_met:  # no cut meets the budget: the fastest is the choice
        return best.total_ms < serving.total_ms * (1 - MIN_GAIN)
    if budget_ms is not None and serving.total_ms > budget_ms >= best.total_ms:
        return True  # the serving cut misses the budget now, the best one meets it
    return best.edge_ms + best.codec_ms < (serving.edge_ms + serving.codec_ms) * (1 - MIN_GAIN)
