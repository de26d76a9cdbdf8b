"""Helpers the agent tests share: polling the emulated cluster and reading /metrics samples."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

MetricKey = tuple[str, tuple[tuple[str, str], ...]]


async def eventually(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    """Poll (in a thread, without blocking the agent's loop) until ``check()`` is truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # bounded
        try:
            value = await asyncio.to_thread(check)
        except (KeyError, TypeError, IndexError):
            value = None
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def samples(text: str) -> dict[MetricKey, float]:
    """Every sample of a Prometheus text exposition by (name, sorted labels)."""
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found
