"""Helpers the agent tests share: polling the emulated cluster and reading /metrics samples."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from edge_agent.control.reconciler import Reconciler, TrackKey
from edgemodel.api import ModelPhase
from edgemodel_dev.polling import wait_until_async

MetricKey = tuple[str, tuple[tuple[str, str], ...]]


async def eventually(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    """Poll (in a thread, without blocking the agent's loop) until ``check()`` is truthy; fail after ``timeout``.
    Lookups into status that is not there yet (KeyError, TypeError, IndexError) count as "not yet"."""
    return await wait_until_async(what, check, timeout, tolerate=(KeyError, TypeError, IndexError), in_thread=True)


async def wait_state(reconciler: Reconciler, key: TrackKey, state: ModelPhase, revision: int | None = None,
                     timeout: float = 20.0) -> None:
    """Poll the reconciler's own tracking (on the test's loop, every 20 ms) until ``key`` is in ``state``
    (for ``revision``, when given); fail saying where it is instead."""
    def reached() -> bool:
        t = reconciler.tracked.get(key)
        return t is not None and t.state == state and (revision is None or t.assignment.revision == revision)

    def where() -> str:
        t = reconciler.tracked.get(key)
        return f"it is {t.state.value if t else None} {t.reason if t else ''} {t.message if t else ''}"

    await wait_until_async(f"{key} to reach {state.value}", reached, timeout, interval=0.02, explain=where)


def samples(text: str) -> dict[MetricKey, float]:
    """Every sample of a Prometheus text exposition by (name, sorted labels)."""
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found
