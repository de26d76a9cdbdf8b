"""The operator's API client against a small real HTTP server: retries, errors, request counting."""

from __future__ import annotations

import pytest
from aiohttp import web

from edgemodel.retry import Backoff
from edgemodel_dev.net import free_port
from edgemodel_operator.kube import ApiError, ApiUnavailable, Credentials, Paths, operator_client, resource_of
from edgemodel_operator.metrics import OperatorMetrics


def test_resource_names_for_metrics() -> None:
    assert resource_of("/apis/batch/v1/namespaces/ml/jobs/digits-r1-convert") == "jobs"
    assert resource_of(Paths.edgemodel_status("ml", "digits")) == "edgemodels/status"
    assert resource_of(Paths.edgeagent("edge-1")) == "edgeagents"
    assert resource_of("/api/v1/namespaces/ml/pods?labelSelector=a%3Db") == "pods"


async def test_transient_errors_are_retried_and_others_are_not() -> None:
    calls: dict[str, int] = {}

    async def flaky(request: web.Request) -> web.Response:
        calls["flaky"] = calls.get("flaky", 0) + 1
        if calls["flaky"] < 3:
            return web.json_response({"message": "etcd leader changed"}, status=503)
        return web.json_response({"metadata": {"name": "x"}})

    async def invalid(request: web.Request) -> web.Response:
        calls["invalid"] = calls.get("invalid", 0) + 1
        return web.json_response({"message": "testing value /metadata/generation failed"}, status=422)

    async def missing(request: web.Request) -> web.Response:
        return web.json_response({"message": "not found"}, status=404)

    app = web.Application()
    app.router.add_get("/flaky", flaky)
    app.router.add_patch("/invalid", invalid)
    app.router.add_get("/missing", missing)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    metrics = OperatorMetrics()
    client = operator_client(Credentials(server=f"http://127.0.0.1:{port}", token="t"), metrics, attempts=4,
                        backoff=Backoff(first=0.01, cap=0.05))
    try:
        assert (await client.request("GET", "/flaky"))["metadata"]["name"] == "x"
        assert calls["flaky"] == 3
        with pytest.raises(ApiError) as err:
            await client.patch("/invalid", [{"op": "test", "path": "/x", "value": 1}], "application/json-patch+json")
        assert err.value.status == 422
        assert "testing value" in err.value.message
        assert calls["invalid"] == 1, "a client error is not retried"
        assert await client.get("/missing", missing_ok=True) is None
        samples = {(s.labels["verb"], s.labels["code"]): s.value for s in metrics.api_requests.collect()[0].samples
                   if s.name.endswith("_total")}
        assert samples[("get", "503")] == 2
        assert samples[("get", "200")] == 1
        assert samples[("patch", "422")] == 1
    finally:
        await client.close()
        await runner.cleanup()
    down = operator_client(Credentials(server=f"http://127.0.0.1:{free_port()}"), attempts=2, backoff=Backoff(first=0.01))
    try:
        with pytest.raises(ApiUnavailable, match="unreachable"):
            await down.get("/anything")
    finally:
        await down.close()
