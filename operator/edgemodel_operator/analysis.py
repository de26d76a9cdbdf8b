"""Analysis of a rollout step: p95 latency, error rate and request count of the new revision.

Like Flagger, each check is one PromQL query when a Prometheus URL is configured; otherwise the
numbers come from what the agents report in their EdgeAgent status. ``judge`` turns the numbers
into a verdict with the numbers in its message: Pass, Fail, or Wait (not enough data yet).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import aiohttp

from edgemodel.api.edgemodel import Analysis
from edgemodel_operator.scheduling import ReportedModel

log = logging.getLogger(__name__)


class VerdictStatus(StrEnum):
    PASS = "Pass"
    FAIL = "Fail"
    WAIT = "Wait"


@dataclass(frozen=True)
class Measurements:
    """Numbers of the new revision over the analysis window."""

    source: str
    """"agents" or "prometheus"."""
    requests: float
    errors: float
    p95_ms: float | None
    nodes: int = 0

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests > 0 else None


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class Verdict:
    status: VerdictStatus
    checks: tuple[Check, ...]
    measurements: Measurements | None
    reason: str
    """CamelCase: AnalysisPassed, LatencyBudgetExceeded, ErrorRateExceeded, LoadFailed, WaitingForTraffic..."""

    @property
    def message(self) -> str:
        """One line with every number, e.g. "p95 12.3 ms > budget 5 ms; error rate 0.0% <= 1.0%"."""
        parts = [c.detail for c in self.checks]
        if self.measurements is not None:
            parts.append(f"{self.measurements.requests:.0f} requests on {self.measurements.nodes} node(s), "
                         f"source {self.measurements.source}")
        return "; ".join(parts)


def judge(m: Measurements, analysis: Analysis) -> Verdict:
    """Compare the numbers with the thresholds of ``spec.rollout.analysis``."""
    checks: list[Check] = []
    if m.requests < analysis.min_requests:
        check = Check("requests", False, f"{m.requests:.0f} requests < minRequests {analysis.min_requests}")
        return Verdict(VerdictStatus.WAIT, (check,), m, "WaitingForTraffic")
    rate = m.error_rate
    if rate is None:
        checks.append(Check("errorRate", True, "error rate n/a (no requests)"))
    else:
        ok = rate <= analysis.max_error_rate
        sign = "<=" if ok else ">"
        checks.append(Check("errorRate", ok, f"error rate {rate:.2%} {sign} maxErrorRate {analysis.max_error_rate:.2%}"))
    if analysis.max_p95_latency_ms is not None:
        budget = analysis.max_p95_latency_ms
        if m.p95_ms is None:
            if m.requests > 0:
                check = Check("p95", False, "p95 latency not reported yet")
                return Verdict(VerdictStatus.WAIT, (*checks, check), m, "WaitingForMetrics")
            checks.append(Check("p95", True, "p95 n/a (no requests)"))
        else:
            ok = m.p95_ms <= budget
            sign = "<=" if ok else ">"
            checks.append(Check("p95", ok, f"p95 {m.p95_ms:.2f} ms {sign} maxP95LatencyMs {budget:g} ms"))
    failed = [c for c in checks if not c.passed]
    if not failed:
        return Verdict(VerdictStatus.PASS, tuple(checks), m, "AnalysisPassed")
    reason = "LatencyBudgetExceeded" if failed[0].name == "p95" else "ErrorRateExceeded"
    return Verdict(VerdictStatus.FAIL, tuple(checks), m, reason)


def load_failure(reports: Sequence[tuple[str, ReportedModel]]) -> Verdict:
    """The verdict when nodes failed to load the revision (counts as a failed check)."""
    names = ", ".join(f"{node} ({r.reason or 'Failed'}: {r.message or 'no message'})" for node, r in reports[:5])
    more = f" and {len(reports) - 5} more" if len(reports) > 5 else ""
    check = Check("load", False, f"{len(reports)} node(s) failed to load the revision: {names}{more}")
    return Verdict(VerdictStatus.FAIL, (check,), None, "LoadFailed")


def measure_from_agents(reports: Sequence[ReportedModel]) -> Measurements:
    """Totals over the nodes' reported state of the revision; p95 is the worst node's."""
    p95s = [r.p95_ms for r in reports if r.p95_ms is not None]
    return Measurements(
        source="agents",
        requests=float(sum(r.request_count for r in reports)),
        errors=float(sum(r.error_count for r in reports)),
        p95_ms=max(p95s) if p95s else None,
        nodes=len(reports),
    )


def promql(namespace: str, model: str, revision: int, window_seconds: int) -> dict[str, str]:
    """One PromQL query per check over the agents' metrics of the revision of EdgeModel ``namespace/model``.

    The namespace is part of the selector: a same-named EdgeModel of another team never counts.
    """
    sel = f'namespace="{namespace}",model="{model}",version="{revision}"'
    window = f"{window_seconds}s"
    return {
        "requests": f"sum(increase(edgemodel_requests_total{{{sel}}}[{window}]))",
        "errors": f'sum(increase(edgemodel_requests_total{{{sel},code=~"[45].."}}[{window}]))',
        "p95": (
            "1000 * histogram_quantile(0.95, sum by (le) "
            f"(rate(edgemodel_request_duration_seconds_bucket{{{sel}}}[{window}])))"
        ),
    }


class PrometheusError(Exception):
    """Prometheus could not answer a query."""


async def query_scalar(session: aiohttp.ClientSession, base_url: str, query: str) -> float | None:
    """Value of an instant query returning at most one sample; None when it returns nothing (or NaN)."""
    url = base_url.rstrip("/") + "/api/v1/query"
    try:
        async with session.get(url, params={"query": query}, timeout=aiohttp.ClientTimeout(total=10)) as resp:
            payload = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise PrometheusError(f"Prometheus at {base_url} did not answer: {exc.__class__.__name__}: {exc}") from exc
    if payload.get("status") != "success":
        raise PrometheusError(f"Prometheus rejected {query!r}: {payload.get('error', payload)}")
    result = payload.get("data", {}).get("result", [])
    if not result:
        return None
    value = float(result[0]["value"][1])
    return None if value != value else value  # NaN: no samples in the window


async def measure_with_prometheus(
    session: aiohttp.ClientSession, base_url: str, namespace: str, model: str, revision: int, window_seconds: int,
    nodes: int,
) -> Measurements:
    """The three checks' numbers of EdgeModel ``namespace/model`` from Prometheus."""
    queries = promql(namespace, model, revision, window_seconds)
    requests = await query_scalar(session, base_url, queries["requests"])
    errors = await query_scalar(session, base_url, queries["errors"])
    p95 = await query_scalar(session, base_url, queries["p95"])
    return Measurements(source="prometheus", requests=requests or 0.0, errors=errors or 0.0, p95_ms=p95, nodes=nodes)
