"""Open Inference Protocol traffic with live latency and accuracy, as a real client would send it."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
import numpy as np


@dataclass
class TrafficStats:
    """Running numbers of one traffic run (per endpoint and overall)."""

    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=2000))
    sent: int = 0
    ok: int = 0
    errors: int = 0
    correct: int = 0
    by_endpoint: dict[str, int] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    last_error: str = ""

    def percentile(self, q: float) -> float | None:
        if not self.latencies_ms:
            return None
        return float(np.percentile(np.fromiter(self.latencies_ms, dtype=np.float64), q))

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.ok if self.ok else None


def infer_body(name: str, sample: np.ndarray) -> dict[str, object]:
    """A v2 infer request body for one float32 sample (batch of 1)."""
    batch = sample[np.newaxis].astype(np.float32)
    return {"inputs": [{"name": name, "shape": list(batch.shape), "datatype": "FP32", "data": batch.ravel().tolist()}]}


async def run_traffic(
    endpoints: Callable[[], list[str]],
    model: str,
    input_name: str,
    x: np.ndarray,
    y: np.ndarray,
    stats: TrafficStats,
    duration_s: float,
    concurrency: int = 4,
    max_requests: int = 1_000_000,
    stop: threading.Event | None = None,
) -> TrafficStats:
    """Send requests round-robin over ``endpoints()`` for ``duration_s`` (bounded by ``max_requests``).

    ``endpoints`` is asked again every second so nodes that come and go are followed; ``stop``
    (when given) ends the run early.
    """
    deadline = time.monotonic() + duration_s
    counter = 0
    current: list[str] = []
    refreshed = 0.0
    timeout = aiohttp.ClientTimeout(total=10)

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal counter
        nonlocal current, refreshed
        while time.monotonic() < deadline and counter < max_requests and not (stop and stop.is_set()):
            if time.monotonic() - refreshed > 1.0:
                refreshed = time.monotonic()
                with contextlib.suppress(Exception):  # the API may be unreachable: keep the last list
                    current = await asyncio.to_thread(endpoints) or current
            if not current:
                await asyncio.sleep(0.2)
                continue
            i = counter
            counter += 1
            endpoint = current[i % len(current)]
            idx = i % len(x)
            body = infer_body(input_name, x[idx])
            start = time.perf_counter()
            stats.sent += 1
            try:
                async with session.post(f"{endpoint}/v2/models/{model}/infer", json=body) as resp:
                    payload = await resp.json(content_type=None)
                    if resp.status != 200:
                        stats.errors += 1
                        stats.last_error = f"{resp.status}: {payload.get('error', payload)}"
                        continue
            except (aiohttp.ClientError, TimeoutError) as exc:
                stats.errors += 1
                stats.last_error = f"{endpoint}: {exc.__class__.__name__}"
                await asyncio.sleep(0.05)
                continue
            stats.latencies_ms.append((time.perf_counter() - start) * 1000.0)
            stats.ok += 1
            stats.by_endpoint[endpoint] = stats.by_endpoint.get(endpoint, 0) + 1
            version = str(payload.get("model_version", ""))
            stats.versions[version] = stats.versions.get(version, 0) + 1
            logits = np.asarray(payload["outputs"][0]["data"], dtype=np.float32)
            if int(np.argmax(logits)) == int(y[idx]):
                stats.correct += 1

    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return stats
