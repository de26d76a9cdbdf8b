"""The rule that turns noisy latency samples into a choice (edgemodel.timing, convert.select, split.artifacts).

Pure: synthetic per-round samples with a shared per-round load and independent noise, no clock. The
rule must keep the simpler candidate when the gain is within the noise (whatever the noise draws),
take the faster one when it is clearly faster, and give the same answer for the same samples.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from edgemodel.api import CandidateResult, HardwareClass, LatencyStats, Precision
from edgemodel.api.edgemodel import TargetHardware
from edgemodel.convert.candidates import AUTO_STATIC, AUTO_STATIC_EXTRA, BASELINE, _dynamic_plan, _static_plan
from edgemodel.convert.select import choose
from edgemodel.split.artifacts import SplitSettings, plan_auto
from edgemodel.split.planner import Link
from edgemodel.split.profile import CutProfile, SplitProfile
from edgemodel.timing import Contender, decide, round_order, speedup, time_rounds

CPU = HardwareClass.CPU
ROUNDS = 10


def noisy(true_ms: dict[str, float], seed: int, noise: float = 0.06, burst: float = 3.0) -> dict[str, list[float]]:
    """Per-round medians: a load factor shared by the round (one round a burst), times independent noise."""
    rng = np.random.default_rng(seed)
    load = rng.uniform(1.0, 2.0, ROUNDS)
    load[rng.integers(ROUNDS)] *= burst
    return {name: list(ms * load * rng.lognormal(0.0, noise, ROUNDS)) for name, ms in true_ms.items()}


def contenders(samples: dict[str, list[float]], complexity: dict[str, int]) -> list[Contender]:
    return [Contender(name, complexity[name], rounds) for name, rounds in samples.items()]


RANK = {"fp32-opt": 0, "int8-dynamic": 20, "int8-qdq-u8s8": 30, "int8-qdq-s8s8": 31, "int8-qop-u8s8": 31}


@pytest.mark.parametrize("seed", range(40))
def test_the_simpler_candidate_is_kept_when_the_gain_is_within_the_noise(seed: int) -> None:
    # The digits CNN: INT8 variants within a few percent of FP32 (the demo's flipping choice).
    true = {"fp32-opt": 0.020, "int8-dynamic": 0.0205, "int8-qdq-u8s8": 0.0196, "int8-qdq-s8s8": 0.0199,
            "int8-qop-u8s8": 0.0194}
    assert decide(contenders(noisy(true, seed), RANK)).chosen.name == "fp32-opt"


@pytest.mark.parametrize("seed", range(40))
def test_a_clearly_faster_candidate_wins_and_the_simpler_of_two_equal_ones(seed: int) -> None:
    # ResNet-18: static U8S8 2.8x faster than FP32; QDQ and QOperator within a percent of each other.
    true = {"fp32-opt": 12.0, "int8-dynamic": 100.0, "int8-qdq-u8s8": 4.30, "int8-qdq-s8s8": 17.0,
            "int8-qop-u8s8": 4.28}
    decision = decide(contenders(noisy(true, seed), RANK))
    assert decision.chosen.name == "int8-qdq-u8s8"
    assert set(decision.within_noise) == {"int8-qdq-u8s8", "int8-qop-u8s8"}
    gain = speedup(decision.chosen, next(c for c in contenders(noisy(true, seed), RANK) if c.name == "fp32-opt"))
    assert 2.2 < gain.low <= 12.0 / 4.3 <= gain.high < 3.5  # the true 2.79x, and far beyond 1.05x
    assert gain.low <= gain.ratio <= gain.high


def test_a_gain_below_the_minimum_never_wins_however_tight_the_interval() -> None:
    steady = {"fp32-opt": [1.0] * ROUNDS, "int8-qdq-u8s8": [0.97] * ROUNDS}
    assert decide(contenders(steady, RANK), min_speedup=1.05).chosen.name == "fp32-opt"
    assert decide(contenders(steady, RANK), min_speedup=1.02).chosen.name == "int8-qdq-u8s8"
    faster = {"fp32-opt": [1.0] * ROUNDS, "int8-qdq-u8s8": [0.90] * ROUNDS}
    assert decide(contenders(faster, RANK), min_speedup=1.05).chosen.name == "int8-qdq-u8s8"


def test_pairing_by_round_sees_through_shared_load() -> None:
    # Load swings 1x..4x between rounds, the same for both: unpaired intervals would overlap, pairs do not.
    load = [1.0, 4.0, 1.5, 3.0, 1.2, 2.5, 1.0, 3.5, 2.0, 1.1]
    samples = {"fp32-opt": [1.0 * x for x in load], "int8-qdq-u8s8": [0.8 * x for x in load]}
    decision = decide(contenders(samples, RANK))
    assert decision.chosen.name == "int8-qdq-u8s8"
    assert decision.versus["fp32-opt"].low == pytest.approx(1.25)


def test_the_same_samples_give_the_same_choice_in_any_order() -> None:
    true = {"fp32-opt": 1.0, "int8-dynamic": 0.96, "int8-qdq-u8s8": 0.93, "int8-qdq-s8s8": 0.95,
            "int8-qop-u8s8": 0.94}
    pool = contenders(noisy(true, 7, noise=0.08), RANK)
    first = decide(pool)
    for seed in range(20):
        shuffled = list(pool)
        random.Random(seed).shuffle(shuffled)
        again = decide(shuffled)
        assert (again.chosen.name, again.within_noise, again.versus) == (first.chosen.name, first.within_noise,
                                                                       first.versus)


def test_unmeasured_contenders_cannot_win_and_bad_arguments_are_refused() -> None:
    pool = [Contender("fp32-opt", 0, []), Contender("int8", 30, [1.0, 1.1, 0.9])]
    assert decide(pool).chosen.name == "int8"
    with pytest.raises(ValueError, match="no contender has a measurement"):
        decide([Contender("fp32-opt", 0, [])])
    with pytest.raises(ValueError, match="min_speedup"):
        decide(pool, min_speedup=0.9)


def test_simplicity_order_of_the_built_in_candidates() -> None:
    statics = {s.name: _static_plan(s, 64).complexity for s in AUTO_STATIC + AUTO_STATIC_EXTRA}
    dynamic = {p.name: p.complexity for p in (_dynamic_plan(True), _dynamic_plan(False))}
    assert dynamic == {"int8-dynamic-perchannel": 20, "int8-dynamic-pertensor": 21}
    assert statics["int8-static-qdq-u8s8-perchannel-minmax"] == 30  # the spec's defaults
    assert statics["int8-static-qop-u8s8-perchannel-minmax"] == 31
    assert statics["int8-static-qdq-s8s8-perchannel-minmax"] == 31
    assert statics["int8-static-qdq-u8s8-pertensor-minmax"] == 31
    assert statics["int8-static-qdq-u8s8-perchannel-percentile"] == 31
    assert statics["int8-static-qdq-u8s8-perchannel-entropy"] == 32
    assert max(dynamic.values()) < min(statics.values())


def result(name: str, complexity: int, rounds: list[float], drop: float = 0.0) -> CandidateResult:
    precision = Precision.FP32 if name == BASELINE else Precision.INT8
    return CandidateResult(name=name, hardware_class=CPU, precision=precision, metric=0.98 - drop, metric_drop=drop,
                           complexity=complexity, size_bytes=1000,
                           latency=[LatencyStats(batch_size=1, p50_ms=float(np.median(rounds)), p95_ms=max(rounds),
                                                 runs=len(rounds) * 5, rounds_ms=rounds)])


def test_choose_says_why_in_the_status() -> None:
    samples = noisy({"fp32-opt": 0.020, "int8-qdq-u8s8": 0.0194}, 3)
    pool = [result("fp32-opt", 0, samples["fp32-opt"]), result("int8-qdq-u8s8", 30, samples["int8-qdq-u8s8"])]
    kept = choose(pool, [TargetHardware(hardware_class=CPU)], 0.01, "top1", {CPU: True}, 1)[CPU]
    assert kept.candidate.name == "fp32-opt"
    assert kept.reason.startswith("fp32-opt kept: ")
    assert "within the noise" in kept.reason or "no accepted cpu candidate is faster" in kept.reason
    assert all(c.accepted for c in pool)  # near-equal is not "slower beyond the noise"

    samples = noisy({"fp32-opt": 12.0, "int8-qdq-u8s8": 4.3, "int8-qop-u8s8": 4.28}, 3)
    pool = [result(n, RANK[n], r) for n, r in samples.items()]
    won = choose(pool, [TargetHardware(hardware_class=CPU)], 0.01, "top1", {CPU: True}, 1)[CPU]
    assert won.candidate.name == "int8-qdq-u8s8"
    assert won.reason.startswith("int8-qdq-u8s8 2.")
    assert "x faster than fp32-opt, 95% CI [" in won.reason
    assert won.ci95 is not None
    assert won.ci95[0] <= (won.speedup or 0) <= won.ci95[1]


def test_time_rounds_rotates_the_order_and_keeps_what_a_stopped_job_measured() -> None:
    calls: list[str] = []

    def job(name: str) -> None:
        calls.append(name)
        if name == "c" and calls.count("c") > 2:
            raise RuntimeError("broken")

    errors: list[str] = []
    timings = time_rounds({n: (lambda n=n: job(n)) for n in "abc"}, rounds=4, block=2, warmup=1,
                          after_round=lambda r, t: {"b"} if r == 1 else set(),
                          on_error=lambda name, exc: errors.append(f"{name}: {exc}"))
    assert [len(t.rounds) for t in timings.values()] == [4, 2, 0]
    assert all(len(r) == 2 for t in timings.values() for r in t.rounds)
    assert errors == ["c: broken"]
    assert [round_order(["a", "b", "c"], r) for r in range(3)] == [["a", "b", "c"], ["a", "c", "b"], ["c", "a", "b"]]
    # over 6 rounds every job is first, middle and last twice
    for position in range(3):
        assert sorted(round_order(["a", "b", "c"], r)[position] for r in range(6)) == ["a", "a", "b", "b", "c", "c"]


def cut_profile(rounds_per_cut: dict[str, tuple[list[float], int]]) -> SplitProfile:
    cuts = []
    for index, (name, (heads, size)) in enumerate(rounds_per_cut.items()):
        tails = [0.01] * len(heads)
        cuts.append(CutProfile(name, index, [1, 8], float(np.median(heads)), 0.01, {"int8": size}, {"int8": 0.0},
                               {"int8": 0.0}, {"head": heads, "tail": tails}))
    return SplitProfile("CPUExecutionProvider", 1, 30, 1.0, {"fp32": 4096}, 40, cuts, {"fp32": 0.0}, {},
                        len(next(iter(rounds_per_cut.values()))[0]))


@pytest.mark.parametrize("seed", range(20))
def test_the_auto_cut_sends_the_fewest_bytes_unless_another_is_clearly_faster(seed: int) -> None:
    settings = SplitSettings(cut="auto", wire="int8", link=Link(10, 20), edge_slowdown=4)
    # Head compute within a percent and 20-50 bytes apart (0.02-0.04 ms of 21 ms): near-equal cuts, whichever
    # is fastest in this draw; the one sending the fewest bytes is kept.
    rng = np.random.default_rng(seed)
    load = rng.uniform(1.0, 3.0, ROUNDS)
    heads = {name: list(ms * load * rng.lognormal(0, 0.05, ROUNDS)) for name, ms in
             (("a", 0.300), ("b", 0.298), ("c", 0.297))}
    plan, comparison = plan_auto(cut_profile({"a": (heads["a"], 150), "b": (heads["b"], 100),
                                              "c": (heads["c"], 120)}), settings)
    assert plan.chosen.cut == "b"
    assert comparison is not None
    assert "b" in comparison["withinNoise"]
    # A cut sending 20 kB less (16 ms at 10 Mbit/s) is clearly faster and wins whatever it sends.
    plan, _ = plan_auto(cut_profile({"a": (heads["a"], 20100), "b": (heads["b"], 20100),
                                     "c": (heads["c"], 100)}), settings)
    assert plan.chosen.cut == "c"
    # Clearly faster compute (here 10x less head time) beats fewer bytes too.
    quick = [h / 10 for h in heads["a"]]
    fast_link = SplitSettings(cut="auto", wire="int8", link=Link(1000, 1), edge_slowdown=4)
    plan, _ = plan_auto(cut_profile({"a": (quick, 2100), "b": (heads["b"], 100), "c": (heads["c"], 120)}), fast_link)
    assert plan.chosen.cut == "a"


def test_real_measurement_twice_on_equal_candidates_keeps_the_simplest(digits_onnx: Path) -> None:
    """Three sessions of the same model under candidate names: timed for real twice on this busy machine,
    the choice must be the simplest both times (any other answer would be noise deciding)."""
    from edgemodel.convert.measure import measure_latency
    from edgemodel.convert.runners import ort_session

    names = {"fp32-opt": 0, "int8-dynamic-perchannel": 20, "int8-static-qdq-u8s8-perchannel-minmax": 30}
    batch = {"input": np.zeros((1, 1, 8, 8), np.float32)}
    chosen = []
    for _ in range(2):
        sessions = {name: ort_session(digits_onnx, "all", 1) for name in names}
        stats = measure_latency(sessions, {1: batch}, dict.fromkeys(names, "CPUExecutionProvider"), runs=20,
                                budget_s=1.0, rounds=10, baseline="fp32-opt")
        pool = [CandidateResult(name=n, hardware_class=CPU, precision=Precision.FP32 if n == BASELINE else
                                Precision.INT8, metric=0.98, metric_drop=0.0, complexity=c, latency=stats[n])
                for n, c in names.items()]
        assert all(len(c.latency[0].rounds_ms) == 10 for c in pool)
        choice = choose(pool, [TargetHardware(hardware_class=CPU)], 0.01, "top1", {CPU: True}, 1)[CPU]
        chosen.append(choice.candidate.name)
    assert chosen == ["fp32-opt", "fp32-opt"]
