"""The analysis PromQL against a real Prometheus scraping the agent's real metric definitions."""

from __future__ import annotations

import asyncio
import shutil
import textwrap
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from edge_agent.metrics import AgentMetrics
from edgemodel.api.edgemodel import Analysis
from edgemodel_dev.demo.processes import Process
from edgemodel_dev.net import free_port
from edgemodel_dev.polling import http_ok, log_tail, wait_until
from edgemodel_operator.analysis import VerdictStatus, judge, measure_with_prometheus, query_scalar
from tests.conftest import require_tool

pytestmark = pytest.mark.slow


@pytest.fixture
def prometheus_and_target(tmp_path: Path) -> Iterator[tuple[str, AgentMetrics, int]]:
    prometheus = require_tool("prometheus")
    metrics = AgentMetrics(process_metrics=False)
    target_port, prom_port = free_port(), free_port()
    (tmp_path / "prometheus.yml").write_text(textwrap.dedent(f"""
        global: {{scrape_interval: 1s, evaluation_interval: 1s}}
        scrape_configs:
          - job_name: agent
            static_configs: [{{targets: ["127.0.0.1:{target_port}"]}}]
    """))
    proc = Process("prometheus", [str(prometheus), f"--config.file={tmp_path / 'prometheus.yml'}",
                                  f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                  f"--web.listen-address=127.0.0.1:{prom_port}"], tmp_path)
    try:
        url = f"http://127.0.0.1:{prom_port}"
        wait_until("Prometheus to be ready", lambda: http_ok(url + "/-/ready"), 30, process=proc.popen,
                   explain=lambda: log_tail(proc.log))
        yield url, metrics, target_port
    finally:
        proc.stop()
        shutil.rmtree(tmp_path / "tsdb", ignore_errors=True)


async def test_each_namespace_canary_sees_only_its_own_traffic(prometheus_and_target: tuple[str, AgentMetrics, int]) -> None:
    url, metrics, port = prometheus_and_target

    async def exposition(_: web.Request) -> web.Response:
        return web.Response(body=metrics.exposition(), content_type="text/plain")

    app = web.Application()
    app.router.add_get("/metrics", exposition)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(100):  # bounded: Prometheus scrapes every second
                if await query_scalar(session, url, 'up{job="agent"}') == 1:
                    break
                await asyncio.sleep(0.2)
            else:
                pytest.fail("Prometheus never scraped the metrics endpoint")
        # Two teams' EdgeModels named digits, both at revision 3: team-a's fast and clean, team-b's slow with
        # 5 % server errors; on the same scrape target, as when one node serves both.
        for _ in range(8):
            for i in range(20):
                metrics.request_duration.labels("team-a", "digits", "3", "CPUExecutionProvider").observe(0.002)
                metrics.requests.labels("team-a", "digits", "3", "CPUExecutionProvider", "200").inc()
                metrics.request_duration.labels("team-b", "digits", "3", "CPUExecutionProvider").observe(0.040)
                code = "500" if i == 0 else "200"
                metrics.requests.labels("team-b", "digits", "3", "CPUExecutionProvider", code).inc()
            await asyncio.sleep(0.5)
        await asyncio.sleep(1.5)  # one more scrape after the last observation
        budget = Analysis(max_p95_latency_ms=20, max_error_rate=0.01, min_requests=20, window_seconds=10)
        async with aiohttp.ClientSession() as session:
            good = await measure_with_prometheus(session, url, "team-a", "digits", 3, 10, 2)
            bad = await measure_with_prometheus(session, url, "team-b", "digits", 3, 10, 1)
            missing = await measure_with_prometheus(session, url, "team-a", "digits", 9, 10, 1)
            other = await measure_with_prometheus(session, url, "team-c", "digits", 3, 10, 1)
            total = await query_scalar(session, url, 'sum(increase(edgemodel_requests_total{model="digits"}[10s]))')
    finally:
        await runner.cleanup()

    assert good.requests >= 20
    assert total is not None
    assert good.requests < 0.75 * total, "team-a's canary counts only team-a's requests, not team-b's"
    assert good.errors == 0, "team-b's errors are not team-a's"
    assert good.p95_ms is not None
    assert good.p95_ms <= 2.5, "p95 falls in the 1-2.5 ms bucket: team-b's slow requests are not mixed in"
    assert judge(good, budget).status == VerdictStatus.PASS
    assert bad.p95_ms is not None
    assert 25 <= bad.p95_ms <= 50, "p95 falls in the 25-50 ms bucket"
    assert bad.error_rate is not None
    assert 0.03 <= bad.error_rate <= 0.07
    verdict = judge(bad, budget)
    assert verdict.status == VerdictStatus.FAIL
    assert "maxP95LatencyMs 20 ms" in verdict.message
    assert "source prometheus" in verdict.message
    assert (other.requests, other.p95_ms) == (0, None), "a namespace without traffic sees none"
    assert missing.requests == 0
    assert missing.p95_ms is None
    assert judge(missing, budget).status == VerdictStatus.WAIT
