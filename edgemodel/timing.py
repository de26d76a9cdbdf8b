"""Latency measurements that drive a choice (a candidate, a cut): interleaved rounds and a noise-aware rule.

On a busy shared machine one slow second can make any option look best, so:

- :func:`time_rounds` times every job in ``rounds`` rounds; in each round every job runs one block
  (``warmup`` untimed runs, then ``block`` timed runs, or more until ``min_block_s``), in an order that
  rotates and reverses from round to round. Load changes between rounds then hit every job alike, and
  the per-round block medians of two jobs form *pairs* measured seconds apart.
- :func:`decide` is the rule (pure: no clock, no global random state). Given contenders with a
  *complexity* (lower is simpler) and per-round latencies, it takes the fastest by median, computes for
  every contender the speed-up of the fastest over it (median over rounds of the paired ratios) with a
  95% bootstrap confidence interval, and chooses the **simplest contender the fastest does not beat
  beyond the noise**: "beaten" means the CI's lower bound is at least ``min_speedup`` (e.g. 1.05).
  Ties in complexity go to the name. The bootstrap uses a fixed seed, so the same samples always give
  the same choice; real measurements differ between runs, and the choice can then only move between
  contenders that are within the noise and ``min_speedup`` of each other.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 2000
SEED = 20261202


@dataclass
class Timings:
    """One job's samples in seconds: ``rounds[r]`` holds the timed runs of round ``r``."""

    rounds: list[list[float]] = field(default_factory=list)

    def round_medians(self) -> list[float]:
        return [float(np.median(r)) for r in self.rounds if r]

    def pooled(self) -> list[float]:
        return [t for r in self.rounds for t in r]


def round_order(names: Sequence[str], index: int) -> list[str]:
    """Round ``index``'s order: rotated by the round number, reversed every other round."""
    if not names:
        return []
    shift = index % len(names)
    order = list(names[shift:]) + list(names[:shift])
    return order[::-1] if index % 2 else order


def time_rounds(jobs: Mapping[str, Callable[[], object]], rounds: int, block: int = 1, warmup: int = 1,
                min_block_s: float = 0.0, max_block: int = 1000, block_budget_s: float | None = None,
                after_round: Callable[[int, dict[str, Timings]], set[str]] | None = None,
                on_error: Callable[[str, Exception], None] | None = None) -> dict[str, Timings]:
    """Time ``jobs`` in interleaved rounds (see the module docstring); every job gets ``rounds`` blocks.

    A block makes at least ``block`` timed runs (at least one), more while it is shorter than
    ``min_block_s`` (up to ``max_block``), and stops after ``block_budget_s`` once it has one.
    ``after_round(r, timings)`` may return jobs to stop (e.g. hopelessly slow ones); a job that raises
    is stopped and reported to ``on_error``. Stopped jobs keep the rounds they completed.
    """
    timings = {name: Timings() for name in jobs}
    active = list(jobs)
    for index in range(rounds):
        for name in round_order(active, index):
            job = jobs[name]
            samples: list[float] = []
            try:
                for _ in range(warmup):
                    job()
                began = time.perf_counter()
                while True:
                    start = time.perf_counter()
                    job()
                    end = time.perf_counter()
                    samples.append(end - start)
                    spent = end - began
                    if len(samples) >= max_block or (block_budget_s is not None and spent >= block_budget_s):
                        break
                    if len(samples) >= max(1, block) and spent >= min_block_s:
                        break
            except Exception as exc:
                active.remove(name)
                if on_error:
                    on_error(name, exc)
                continue
            timings[name].rounds.append(samples)
        if after_round:
            stop = after_round(index, timings)
            active = [n for n in active if n not in stop]
        if not active:
            break
    return timings


@dataclass(frozen=True)
class Contender:
    """One option to choose from: ``complexity`` orders simplicity (lower is simpler; ties go to ``name``);
    ``rounds`` are its per-round latencies (any unit, the same for every contender), round ``r`` of one
    contender paired with round ``r`` of another."""

    name: str
    complexity: int
    rounds: Sequence[float]

    @property
    def median(self) -> float:
        return float(np.median(self.rounds)) if len(self.rounds) else math.inf


@dataclass(frozen=True)
class Speedup:
    """How many times faster ``faster`` is than ``slower``: the median of the paired per-round ratios and its
    95% bootstrap confidence interval over ``rounds`` paired rounds."""

    faster: str
    slower: str
    ratio: float
    low: float
    high: float
    rounds: int

    def beyond(self, min_speedup: float) -> bool:
        """Whether ``faster`` wins beyond the noise and by at least ``min_speedup``."""
        return self.low >= min_speedup

    def text(self) -> str:
        return f"{self.ratio:.2f}x (95% CI [{self.low:.2f}, {self.high:.2f}], {self.rounds} rounds)"


def speedup(faster: Contender, slower: Contender) -> Speedup:
    """The paired speed-up of ``faster`` over ``slower`` (ratios ``slower / faster`` round by round)."""
    n = min(len(faster.rounds), len(slower.rounds))
    a = np.asarray(slower.rounds[:n], dtype=np.float64)
    b = np.asarray(faster.rounds[:n], dtype=np.float64)
    ok = (a > 0) & (b > 0) & np.isfinite(a) & np.isfinite(b)
    logs = np.log(a[ok] / b[ok])
    if len(logs) == 0:
        return Speedup(faster.name, slower.name, math.nan, -math.inf, math.inf, 0)
    centre = float(np.median(logs))
    if len(logs) < 2 or float(np.ptp(logs)) == 0.0:
        low = high = centre
    else:
        from scipy.stats import bootstrap

        result = bootstrap((logs,), np.median, confidence_level=CONFIDENCE, n_resamples=RESAMPLES,
                           method="percentile", vectorized=True, random_state=np.random.default_rng(SEED))
        low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    return Speedup(faster.name, slower.name, math.exp(centre), math.exp(low), math.exp(high), len(logs))


@dataclass(frozen=True)
class Decision:
    """The choice: ``chosen`` is the simplest contender within the noise of ``fastest``; ``versus`` holds
    the speed-up of the fastest over every other contender."""

    chosen: Contender
    fastest: Contender
    within_noise: tuple[str, ...]
    versus: dict[str, Speedup]
    min_speedup: float


def simplicity_key(c: Contender) -> tuple[int, str]:
    return (c.complexity, c.name)


def decide(contenders: Sequence[Contender], min_speedup: float = 1.05) -> Decision:
    """The simplest contender that the fastest does not beat beyond the noise (see the module docstring)."""
    if min_speedup < 1.0:
        raise ValueError(f"decide: min_speedup {min_speedup} must be >= 1")
    ordered = sorted((c for c in contenders if len(c.rounds)), key=simplicity_key)  # unmeasured ones cannot win
    if not ordered:
        raise ValueError("decide: no contender has a measurement")
    fastest = min(ordered, key=lambda c: c.median)  # min keeps the first (simplest) of equal medians
    versus = {c.name: speedup(fastest, c) for c in ordered if c is not fastest}
    within = [c for c in ordered if c is fastest or not versus[c.name].beyond(min_speedup)]
    return Decision(within[0], fastest, tuple(c.name for c in within), versus, min_speedup)
