"""Accept or reject each candidate and choose one per hardware class.

Rules: a candidate is rejected when it failed, when its metric drop exceeds
``spec.validation.maxAccuracyDrop``, when its precision is not allowed for its class, or (when
latency was measured on the class's own execution provider) when it is slower than the FP32
baseline beyond the noise (the upper bound of its paired speed-up's 95% CI is below 1).
Among the accepted candidates :func:`edgemodel.timing.decide` chooses the simplest (lowest
``complexity``: fp32-opt < INT8 dynamic < INT8 static, see ``candidates.complexity``) that the
fastest does not beat by ``spec.optimization.measurement.minSpeedup`` at the lower bound of the
CI: a more complex candidate must win beyond the noise. Without a GPU here, GPU latency is not
measured: the GPU choice prefers fp16, then fp32, among accurate candidates.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgemodel.api import CandidateResult, HardwareClass, LatencyStats, Precision
from edgemodel.api.edgemodel import TargetHardware
from edgemodel.convert.candidates import BASELINE
from edgemodel.convert.errors import ConversionError, Reason
from edgemodel.timing import Contender, Decision, Speedup, decide, speedup

EPS = 1e-9
MIN_SPEEDUP = 1.05
GPU_PREFERENCE = [Precision.FP16, Precision.FP32, Precision.INT8]


@dataclass
class Choice:
    candidate: CandidateResult
    reason: str
    speedup: float | None
    ci95: tuple[float, float] | None = None
    """95% CI of ``speedup`` (paired over the measurement rounds)."""


def _stats_at(c: CandidateResult, batch: int) -> LatencyStats | None:
    stats = {s.batch_size: s for s in c.latency}
    return stats.get(batch) or stats.get(1) or (c.latency[0] if c.latency else None)


def contender(c: CandidateResult, batch: int) -> Contender:
    """``c`` as :func:`edgemodel.timing.decide` sees it: its per-round medians at ``batch`` (its p50 alone
    when rounds were not recorded) and its complexity."""
    s = _stats_at(c, batch)
    rounds = (s.rounds_ms or [s.p50_ms]) if s else []
    return Contender(c.name, c.complexity, rounds)


def latency_key(c: CandidateResult, batch: int) -> float:
    """p50 at the selection batch size (batch 1 when that was not measured); inf when unmeasured."""
    chosen = _stats_at(c, batch)
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
    if measured and not c.latency:
        return "could not be timed"
    if measured and baseline is not None and c is not baseline and c.latency and baseline.latency:
        versus = speedup(contender(c, batch), contender(baseline, batch))
        if versus.high < 1.0:
            return (f"slower than the FP32 baseline beyond the noise ({latency_key(c, batch):.3f} ms vs "
                    f"{latency_key(baseline, batch):.3f} ms p50 at batch {batch}; speed-up {versus.text()})")
    return ""


def _why(decision: Decision, best: CandidateResult, baseline_kept: bool, vs_base: Speedup | None,
         hw: HardwareClass) -> str:
    """Why ``best`` was chosen: its paired speed-up over fp32-opt, or why the simpler one was kept."""
    fastest = decision.fastest
    if baseline_kept:
        if fastest.name == best.name:
            return f"{best.name} kept: no accepted {hw.value} candidate is faster"
        return (f"{best.name} kept: the fastest, {fastest.name}, is {decision.versus[best.name].text()} faster: "
                f"within the noise (a more complex candidate must be >= {decision.min_speedup:g}x faster at the "
                f"CI's lower bound)")
    if vs_base is not None:
        why = (f"{best.name} {vs_base.ratio:.2f}x faster than {vs_base.slower}, 95% CI [{vs_base.low:.2f}, "
               f"{vs_base.high:.2f}] over {vs_base.rounds} rounds")
    else:
        why = f"{best.name}: the simplest accepted {hw.value} candidate within the noise of the fastest"
    if fastest.name != best.name:
        why += (f"; kept over the fastest, {fastest.name} ({decision.versus[best.name].text()} faster: within "
                f"the noise), as the simpler")
    return why


def choose(candidates: list[CandidateResult], targets: list[TargetHardware], budget: float, metric_name: str,
           measured_on_target: dict[HardwareClass, bool], batch: int,
           min_speedup: float = MIN_SPEEDUP) -> dict[HardwareClass, Choice]:
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
        if not measured:
            best = min(accepted, key=lambda c: (GPU_PREFERENCE.index(c.precision), latency_key(c, batch)))
            why = (f"GPU latency not measured (no GPU execution provider loads here); chose by precision "
                   f"(fp16 before fp32 on GPUs) among accurate candidates; {metric_name} {best.metric:.4f} "
                   f"measured on CPU (drop {best.metric_drop:.4f} <= budget {budget:g})")
            choices[hw] = Choice(best, why, None)
            continue
        by_name = {c.name: c for c in accepted}
        decision = decide([contender(c, batch) for c in accepted], min_speedup)
        best = by_name[decision.chosen.name]
        ci: tuple[float, float] | None = None
        vs_base = (speedup(decision.chosen, contender(baseline, batch))
                   if baseline is not None and baseline.latency and best is not baseline else None)
        gain: float | None = 1.0 if best is baseline else None
        if vs_base is not None:
            gain, ci = vs_base.ratio, (round(vs_base.low, 3), round(vs_base.high, 3))
        why = (_why(decision, best, best is baseline, vs_base, hw)
               + f"; p50 {latency_key(best, batch):.3f} ms at batch {batch}; {metric_name} {best.metric:.4f} "
               f"(drop {best.metric_drop:.4f} <= budget {budget:g})")
        choices[hw] = Choice(best, why, gain, ci)
    return choices
