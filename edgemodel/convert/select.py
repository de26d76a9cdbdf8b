"""Accept or reject each candidate and choose one per hardware class.

Rules: a candidate is rejected when it failed, when its metric drop exceeds
``spec.validation.maxAccuracyDrop``, when its precision is not allowed for its class, or (when
latency was measured on the class's own execution provider) when it is slower than the FP32
baseline. The fastest accepted candidate wins; latencies within ``TIE_BAND`` (5 %) of the
fastest count as a tie (timing noise on a shared machine), and ties go to the better metric,
then the smaller file, so an equally fast but less accurate candidate never displaces a better
one. Without a GPU here, GPU latency is not measured: the GPU choice prefers fp16, then fp32,
among accurate candidates.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgemodel.api import CandidateResult, HardwareClass, Precision
from edgemodel.api.edgemodel import TargetHardware
from edgemodel.convert.candidates import BASELINE
from edgemodel.convert.errors import ConversionError, Reason

EPS = 1e-9
TIE_BAND = 1.05
GPU_PREFERENCE = [Precision.FP16, Precision.FP32, Precision.INT8]


@dataclass
class Choice:
    candidate: CandidateResult
    reason: str
    speedup: float | None


def latency_key(c: CandidateResult, batch: int) -> float:
    """p50 at the selection batch size (batch 1 when that was not measured); inf when unmeasured."""
    stats = {s.batch_size: s for s in c.latency}
    chosen = stats.get(batch) or stats.get(1) or (c.latency[0] if c.latency else None)
    return chosen.p50_ms if chosen else float("inf")


def _judge(c: CandidateResult, budget: float, allowed: list[Precision], baseline: CandidateResult | None,
           measured: bool, batch: int) -> str:
    """Why ``c`` is rejected, or "" when it is accepted."""
    if c.error:
        return f"failed: {c.error}"
    if c.metric_drop is None:
        return "not validated"
    if c.metric_drop > budget + EPS:
        return f"metric drop {c.metric_drop:.4f} is above the budget {budget:.4f}"
    if c.precision not in allowed:
        return f"precision {c.precision.value} is not allowed for {c.hardware_class.value} (targets[].precisions)"
    if measured and baseline is not None and c is not baseline and latency_key(c, batch) > latency_key(baseline, batch):
        return (f"slower than the FP32 baseline ({latency_key(c, batch):.3f} ms > {latency_key(baseline, batch):.3f} ms "
                f"p50 at batch {batch})")
    return ""


def choose(candidates: list[CandidateResult], targets: list[TargetHardware], budget: float, metric_name: str,
           measured_on_target: dict[HardwareClass, bool], batch: int) -> dict[HardwareClass, Choice]:
    """Mark ``accepted``/``reject_reason`` on every candidate and return the choice per class.

    Raises ConversionError(AccuracyBudgetNotMet) when no allowed candidate of a class is accurate
    enough, ConversionError(NoAcceptableCandidate) when accurate ones exist but none is allowed.
    """
    choices: dict[HardwareClass, Choice] = {}
    for target in targets:
        hw = target.hardware_class
        pool = [c for c in candidates if c.hardware_class == hw]
        baseline = next((c for c in pool if c.name == BASELINE and not c.error), None)
        measured = measured_on_target.get(hw, False)
        for c in pool:
            c.reject_reason = _judge(c, budget, target.precisions, baseline, measured, batch)
            c.accepted = not c.reject_reason
        accepted = [c for c in pool if c.accepted]
        if not accepted:
            allowed = [c for c in pool if c.precision in target.precisions and not c.error and c.metric_drop is not None]
            if not allowed or all(c.metric_drop is not None and c.metric_drop > budget + EPS for c in allowed):
                best = min(allowed, key=lambda c: c.metric_drop or 0.0, default=None)
                detail = (f"the best allowed candidate, {best.name}, drops {metric_name} by {best.metric_drop:.4f}"
                          if best and best.metric_drop is not None else "no allowed candidate could be validated")
                raise ConversionError(
                    Reason.ACCURACY_BUDGET_NOT_MET,
                    f"no {hw.value} candidate meets spec.validation.maxAccuracyDrop {budget:g}: {detail}; "
                    f"raise the budget or allow more precisions ({', '.join(p.value for p in target.precisions)} allowed)",
                )
            reasons = "; ".join(f"{c.name}: {c.reject_reason}" for c in pool)
            raise ConversionError(Reason.NO_ACCEPTABLE_CANDIDATE,
                                  f"no {hw.value} candidate can be shipped ({reasons}); allow fp32 for {hw.value}")
        if measured:
            fastest = min(latency_key(c, batch) for c in accepted)
            tied = [c for c in accepted if latency_key(c, batch) <= fastest * TIE_BAND]
            best = max(tied, key=lambda c: (c.metric or 0.0, -c.size_bytes, -latency_key(c, batch)))
            base_ms = latency_key(baseline, batch) if baseline else None
            speedup = base_ms / latency_key(best, batch) if base_ms and latency_key(best, batch) > 0 else None
            why = (f"fastest accepted {hw.value} candidate: p50 {latency_key(best, batch):.3f} ms at batch {batch}"
                   + (f", {speedup:.2f}x the FP32 baseline ({base_ms:.3f} ms)" if speedup and best is not baseline else "")
                   + f"; {metric_name} {best.metric:.4f} (drop {best.metric_drop:.4f} <= budget {budget:g})")
        else:
            best = min(accepted, key=lambda c: (GPU_PREFERENCE.index(c.precision), latency_key(c, batch)))
            speedup = None
            why = (f"GPU latency not measured (no GPU execution provider loads here); chose by precision "
                   f"(fp16 before fp32 on GPUs) among accurate candidates; {metric_name} {best.metric:.4f} "
                   f"measured on CPU (drop {best.metric_drop:.4f} <= budget {budget:g})")
        choices[hw] = Choice(best, why, speedup)
    return choices
