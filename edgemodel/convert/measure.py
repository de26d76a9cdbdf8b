"""Measure candidates: the validation metric against the original model, and latency p50/p95.

Latency is measured per candidate in consecutive runs (as an agent serves one model), in two
passes of alternating order so that load from other processes on a shared machine is spread
over the candidates; loops are bounded by a run count and a time budget.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgemodel.api import LatencyStats
from edgemodel.api.edgemodel import ValidationMetric
from edgemodel.convert.data import Dataset
from edgemodel.convert.errors import first_line
from edgemodel.convert.runners import Batch, all_finite, ort_runner, run_dataset

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


def _stats(samples: list[float], batch: int, provider: str) -> LatencyStats:
    arr = np.asarray(samples) * 1000.0
    return LatencyStats(batch_size=batch, p50_ms=round(float(np.percentile(arr, 50)), 4),
                        p95_ms=round(float(np.percentile(arr, 95)), 4), runs=len(samples), provider=provider)


def measure_latency(
    sessions: dict[str, Any], batches: dict[int, Batch], providers: dict[str, str], runs: int = 50,
    budget_s: float = 2.0, warmup: int = 2, min_runs: int = 5, passes: int = 2,
    on_round: Callable[[], None] | None = None, baseline: str | None = None, give_up_factor: float = 2.0,
) -> dict[str, list[LatencyStats]]:
    """p50/p95 per session and batch size from up to ``runs`` timed runs within ``budget_s`` each.

    Each session is timed alone, in consecutive runs after ``warmup`` untimed ones, the way an
    agent runs one model: interleaving single runs of several sessions makes their thread pools
    and caches interfere and inflates every number. Load from other processes is spread by
    ``passes`` passes in alternating order (forward, backward, ...), whose samples are pooled.
    A session whose first-pass median is more than ``give_up_factor`` times the ``baseline``'s
    skips the later passes (it cannot be chosen anyway).
    """
    result: dict[str, list[LatencyStats]] = {name: [] for name in sessions}
    per_pass_runs = max(1, -(-runs // passes))
    per_pass_budget = budget_s / passes
    for batch_size, batch in batches.items():
        timings: dict[str, list[float]] = {name: [] for name in sessions}
        failed: set[str] = set()
        stopped: set[str] = set()
        order = list(sessions)
        for index in range(passes):
            for name in order if index % 2 == 0 else reversed(order):
                if name in failed or name in stopped or len(timings[name]) >= runs:
                    continue
                session = sessions[name]
                try:
                    for _ in range(warmup):
                        session.run(None, batch)
                except Exception as exc:
                    log.warning("Could not time %s at batch %d: %s", name, batch_size, first_line(exc))
                    failed.add(name)
                    continue
                want = min(per_pass_runs, runs - len(timings[name]))
                floor = max(1, min(want, -(-min_runs // passes)))
                deadline = time.perf_counter() + per_pass_budget
                for i in range(want):
                    if i >= floor and time.perf_counter() > deadline:
                        break
                    start = time.perf_counter()
                    session.run(None, batch)
                    timings[name].append(time.perf_counter() - start)
            if index == 0 and baseline in timings and timings[baseline]:
                reference = float(np.median(timings[baseline]))
                stopped |= {n for n, t in timings.items() if t and float(np.median(t)) > give_up_factor * reference}
            if on_round:
                on_round()
        for name in sessions:
            if name not in failed and timings[name]:
                result[name].append(_stats(timings[name], batch_size, providers[name]))
    return result
