"""Recent request latencies of one model version, for the p50/p95 the heartbeat reports."""

from __future__ import annotations

import time
from collections import deque

import numpy as np


class RecentLatencies:
    """Latencies of the last ``window_s`` seconds (at most ``max_samples`` of them)."""

    def __init__(self, window_s: float = 60.0, max_samples: int = 4096) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, float]] = deque(maxlen=max_samples)

    def add(self, seconds: float, now: float | None = None) -> None:
        self._samples.append((time.monotonic() if now is None else now, seconds))

    def percentiles_ms(self, now: float | None = None) -> tuple[float | None, float | None]:
        """(p50, p95) in milliseconds over the window, or (None, None) without recent requests."""
        cutoff = (time.monotonic() if now is None else now) - self.window_s
        while self._samples and self._samples[0][0] < cutoff:
            self._samples.popleft()
        if not self._samples:
            return None, None
        values = np.fromiter((v for _, v in self._samples), dtype=np.float64, count=len(self._samples))
        p50, p95 = np.percentile(values, [50, 95]) * 1e3
        return round(float(p50), 3), round(float(p95), 3)
