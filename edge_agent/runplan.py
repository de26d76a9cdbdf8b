"""How a heavy model runs by default, chosen at load time from interleaved measurements.

Two choices, each taken only when it wins beyond the noise (else the simpler option stays):

- **narrow runs**: besides the session with N intra-op threads (which a lone request uses, so its
  latency is unchanged), a second session with one thread; while a run is in flight, further runs use
  it, so N one-thread runs overlap on N CPUs. Adopted when one one-thread run costs clearly less than
  N times a wide run (intra-op parallelism below 100% efficiency; ResNet-18 on 2 CPUs: 24.8 ms vs
  2 x 13.7 ms). Costs the weights' memory a second time.
- **batching without queue delay**: requests that queue while the runs are busy share the next run
  (a lone request never waits). Adopted when a batched run costs clearly less per row than single runs.

Timings are taken interleaved (A, B, A, B...) so that a load change on a shared machine hits both,
and compared by their medians.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

MARGIN = 0.05
"""A choice is adopted only if it is at least this much (relative) better than the simpler option."""
REPEATS = 5
"""Interleaved timing pairs per comparison."""
BUDGET_S = 3.0
"""Most time a comparison may take at load (estimated from the warm-up); a slower model keeps the simple option."""


@dataclass(frozen=True)
class RunPlan:
    """What the load-time measurements chose, and on what numbers (reported in the log and /config)."""

    narrow_runs: bool = False
    """Overlapping runs use a one-thread session (the wide session serves a lone run)."""
    batching: bool = False
    """Dynamic batching without queue delay is recommended (applied unless batching was set explicitly)."""
    wide_ms: float | None = None
    narrow_ms: float | None = None
    batch_row_ms: float | None = None
    """Median time per row of a batched run on the session that concurrent runs use."""
    single_ms: float | None = None
    """Median time of a one-row run on that session."""
    note: str = ""

    def describe(self) -> str:
        runs = "one-thread session for overlapping runs" if self.narrow_runs else "no one-thread session"
        numbers = []
        if self.wide_ms is not None and self.narrow_ms is not None:
            numbers.append(f"run {self.wide_ms:.3g} ms wide, {self.narrow_ms:.3g} ms on one thread")
        if self.single_ms is not None and self.batch_row_ms is not None:
            numbers.append(f"{self.single_ms:.3g} ms alone, {self.batch_row_ms:.3g} ms per batched row")
        if self.note:
            numbers.append(self.note)
        detail = f" ({'; '.join(numbers)})" if numbers else ""
        return f"{runs}, batching {'recommended' if self.batching else 'not recommended'}{detail}"


def interleaved(a: Callable[[], object], b: Callable[[], object], repeats: int = REPEATS) -> tuple[list[float], list[float]]:
    """Time ``a`` and ``b`` alternately ``repeats`` times each: (a's seconds, b's seconds)."""
    times_a: list[float] = []
    times_b: list[float] = []
    for _ in range(repeats):
        for fn, out in ((a, times_a), (b, times_b)):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return times_a, times_b


def prefer_narrow(wide_s: list[float], narrow_s: list[float], threads: int, margin: float = MARGIN) -> bool:
    """Whether ``threads`` one-thread runs at once beat one ``threads``-thread run by more than ``margin``.

    Throughput per CPU: wide = 1 / (threads x wide), narrow = 1 / narrow.
    """
    if threads <= 1 or not wide_s or not narrow_s:
        return False
    return statistics.median(narrow_s) * (1 + margin) <= threads * statistics.median(wide_s)


def prefer_batching(single_s: list[float], batch_s: list[float], rows: int, margin: float = MARGIN) -> bool:
    """Whether a run of ``rows`` rows costs more than ``margin`` less per row than one-row runs."""
    if rows <= 1 or not single_s or not batch_s:
        return False
    return statistics.median(batch_s) / rows * (1 + margin) <= statistics.median(single_s)


def fits_budget(run_s: float, runs: float, budget_s: float = BUDGET_S) -> bool:
    """Whether ``runs`` runs of ``run_s`` seconds fit the load-time budget."""
    return run_s * runs <= budget_s
