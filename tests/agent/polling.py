"""Helpers the agent tests share: polling the emulated cluster and reading /metrics samples."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from edgemodel.dev.polling import wait_until_async

MetricKey = tuple[str, tuple[tuple[str, str], ...]]


async def eventually(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    """Poll (in a thread, without blocking the agent's loop) until ``check()`` is truthy; fail after ``timeout``.
    Lookups into status that is not there yet (KeyError, TypeError, IndexError) count as "not yet"."""
    return await wait_until_async(what, check, timeout, tolerate=(KeyError, TypeError, IndexError), in_thread=True)


def samples(text: str) -> dict[MetricKey, float]:
    """Every sample of a Prometheus text exposition by (name, sorted labels)."""
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found
