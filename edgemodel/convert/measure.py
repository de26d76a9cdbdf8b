"""Measure candidates: the validation metric against the original model, and latency p50/p95.

Latency is measured in interleaved rounds (:mod:`edgemodel.timing`): per round, every candidate
runs one block of consecutive runs (as an agent serves one model), in an order that changes from
round to round, so load from other processes on a shared machine is spread over the candidates
and the per-round medians can be compared in pairs; loops are bounded by a run count and a time
budget.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgemodel.api import LatencyStats
from edgemodel.api.edgemodel import ValidationMetric
from edgemodel.convert.data import Dataset
from edgemodel.convert.errors import first_line
from edgemodel.convert.runners import Batch, all_finite, ort_runner, run_dataset
from edgemodel.timing import Timings, time_rounds

log = logging.getLogger(__name__)


def top1(outputs: np.ndarray, labels: np.ndarray) -> float:
    return float((outputs.reshape(len(outputs), -1).argmax(axis=1) == labels).mean())


def cosine(reference: np.ndarray, outputs: np.ndarray) -> tuple[float, float]:
    """Mean and minimum per-sample cosine similarity of flattened outputs."""
    a = reference.reshape(len(reference), -1).astype(np.float64)
    b = outputs.reshape(len(outputs), -1).astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    sims = np.where(norms > 0, (a * b).sum(axis=1) / np.maximum(norms, 1e-300), 1.0)
    return float(sims.mean()), float(sims.min())


def agreement(reference: np.ndarray, outputs: np.ndarray) -> float:
    """Fraction of samples whose arg-max (top-1) equals the original model's."""
    a = reference.reshape(len(reference), -1).argmax(axis=1)
    b = outputs.reshape(len(outputs), -1).argmax(axis=1)
    return float((a == b).mean())


@dataclass
class Evaluator:
    """Scores outputs on the evaluation set with the chosen metric; ``original`` is the original model's score."""

    metric: ValidationMetric
    dataset: Dataset
    reference: list[np.ndarray]
    batch_size: int
    original: float = 1.0

    def __post_init__(self) -> None:
        if self.metric == ValidationMetric.TOP1:
            assert self.dataset.labels is not None
            self.original = top1(self.reference[0], self.dataset.labels)

    def score(self, outputs: list[np.ndarray]) -> tuple[float, dict[str, Any]]:
        first = outputs[0]
        if self.metric == ValidationMetric.TOP1:
            assert self.dataset.labels is not None
            return top1(first, self.dataset.labels), {"agreement": agreement(self.reference[0], first)}
        if self.metric == ValidationMetric.COSINE:
            mean, worst = cosine(self.reference[0], first)
            return mean, {"minCosine": worst}
        return agreement(self.reference[0], first), {}


@dataclass
class Measured:
    metric: float | None = None
    drop: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    latency: list[LatencyStats] = field(default_factory=list)
    error: str = ""


def evaluate(session: Any, evaluator: Evaluator) -> Measured:
    """Run a candidate over the evaluation set and score it (NaN/Inf outputs are an error of the candidate)."""
    try:
        outputs = run_dataset(ort_runner(session), evaluator.dataset, evaluator.batch_size)
    except Exception as exc:
        return Measured(error=f"cannot run: {first_line(exc)}")
    if not all_finite(outputs):
        return Measured(error="produces NaN or Inf outputs")
    value, details = evaluator.score(outputs)
    return Measured(value, evaluator.original - value, details)


def _stats(timings: Timings, batch: int, provider: str) -> LatencyStats:
    arr = np.asarray(timings.pooled()) * 1000.0
    return LatencyStats(batch_size=batch, p50_ms=round(float(np.percentile(arr, 50)), 4),
                        p95_ms=round(float(np.percentile(arr, 95)), 4), runs=len(arr), provider=provider,
                        rounds_ms=[round(m * 1000.0, 5) for m in timings.round_medians()])


MIN_BLOCK_S = 0.001
"""A block of consecutive runs lasts at least this long (fast models get more runs per block)."""


def measure_latency(
    sessions: dict[str, Any], batches: dict[int, Batch], providers: dict[str, str], runs: int = 50,
    budget_s: float = 2.0, rounds: int = 10, warmup: int = 1, min_block_s: float = MIN_BLOCK_S,
    baseline: str | None = None, give_up_factor: float = 2.0,
) -> dict[str, list[LatencyStats]]:
    """p50/p95 and per-round medians per session and batch size, from ``rounds`` interleaved rounds.

    In every round each session runs one block: ``warmup`` untimed runs, then consecutive timed runs
    (``runs / rounds`` of them, more while the block is shorter than ``min_block_s``, fewer once it
    has spent ``budget_s / rounds``), the way an agent runs one model: single runs of several sessions
    back to back would make their thread pools and caches interfere. The order of the sessions
    rotates and reverses from round to round (:func:`edgemodel.timing.time_rounds`), so load from
    other processes on a shared machine hits all of them alike, and round r of two sessions can be
    compared as a pair. A session whose first-round median is more than ``give_up_factor`` times the
    ``baseline``'s skips the later rounds (it cannot be chosen anyway).
    """
    result: dict[str, list[LatencyStats]] = {name: [] for name in sessions}
    block = max(1, -(-runs // rounds))
    for batch_size, batch in batches.items():

        def give_up(index: int, timings: dict[str, Timings]) -> set[str]:
            if index != 0 or baseline not in timings or not timings[baseline].rounds:
                return set()
            reference = timings[baseline].round_medians()[0]
            return {n for n, t in timings.items() if t.rounds and t.round_medians()[0] > give_up_factor * reference}

        def failed(name: str, exc: Exception, size: int = batch_size) -> None:
            log.warning("Could not time %s at batch %d: %s", name, size, first_line(exc))

        jobs = {name: functools.partial(session.run, None, batch) for name, session in sessions.items()}
        timings = time_rounds(jobs, rounds, block=block, warmup=warmup, min_block_s=min_block_s,
                              block_budget_s=budget_s / rounds, after_round=give_up, on_error=failed)
        for name, t in timings.items():
            if t.rounds:
                result[name].append(_stats(t, batch_size, providers[name]))
    return result
