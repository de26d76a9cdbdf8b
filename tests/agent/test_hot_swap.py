"""Hot swap under concurrent load: no request fails, the old version drains and is unloaded."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from edge_agent.server import AgentServer
from edge_agent.settings import AgentSettings, LocalModel

CLIENTS = 16


async def load_generator(url: str, stop: asyncio.Event, statuses: Counter[int], versions: Counter[str], errors: list[str]) -> None:
    x = np.full((1, 192), 0.5, dtype=np.float32)
    body = {"inputs": [{"name": "x", "shape": [1, 192], "datatype": "FP32", "data": x.ravel().tolist()}]}
    async with aiohttp.ClientSession() as session:
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:  # bounded in time
            async with session.post(url, json=body) as resp:
                statuses[resp.status] += 1
                payload = await resp.json()
                if resp.status == 200:
                    versions[payload["model_version"]] += 1
                else:
                    errors.append(payload.get("error", ""))


@pytest.mark.parametrize("batching", [False, True], ids=["unbatched", "batched"])
async def test_swaps_under_load_fail_no_request(model_files: dict[str, Path], batching: bool) -> None:
    settings = AgentSettings(port=0, batching=batching, max_batch_size=4, max_queue_delay_ms=1.0, drain_timeout_s=20,
                             inline_max_ms=0)  # every inference goes through the thread pool
    server = AgentServer(settings)
    await server.start()
    try:
        await server.load_local([LocalModel("slow", "1", model_files["slow"])])
        server.dataplane.started = True
        first = server.repository.resolve("slow")
        assert first.inline_max_elements == 0, "the slow model must run in the thread pool for this test"
        stop = asyncio.Event()
        statuses: Counter[int] = Counter()
        versions: Counter[str] = Counter()
        errors: list[str] = []
        url = f"{server.url}/v2/models/slow/infer"
        clients = [asyncio.create_task(load_generator(url, stop, statuses, versions, errors)) for _ in range(CLIENTS)]
        retired = []
        for version in ("2", "3"):
            await asyncio.sleep(0.4)
            before = server.repository.resolve("slow")
            new = await server.load_version("slow", version, model_files["slow"])  # loads beside the old one
            assert server.repository.resolve("slow") is before, "the old version serves while the new one loads"
            old = server.repository.swap(new)
            assert old == [before]
            assert server.repository.resolve("slow") is new
            retired.append(before)
        await asyncio.sleep(0.4)
        stop.set()
        await asyncio.gather(*clients)
        await server.repository.wait_retired()

        assert errors == [], errors[:3]
        assert set(statuses) == {200}, statuses
        assert set(versions) == {"1", "2", "3"}, versions
        assert sum(statuses.values()) > 3 * CLIENTS
        for old_version in retired:
            assert old_version.retired
            assert old_version.inflight == 0
            assert old_version.model.session is None  # unloaded after draining
        assert server.repository.resolve("slow").version == "3"
        assert [v.version for v in server.repository.versions("slow")] == ["3"]
        text = server.metrics.exposition().decode()
        assert 'edgemodel_model_info{model="slow",namespace="",provider="CPUExecutionProvider",sha256="",version="3"} 1.0' in text
        assert 'version="1"} 1.0' not in text.split("edgemodel_model_info")[-1]
        if batching:
            assert "edgemodel_batch_size_bucket" in text
    finally:
        await server.stop()


async def test_a_version_pinned_request_after_its_swap_gets_404(model_files: dict[str, Path]) -> None:
    server = AgentServer(AgentSettings(port=0))
    await server.start()
    try:
        await server.load_local([LocalModel("affine", "1", model_files["affine1"])])
        server.repository.swap(await server.load_version("affine", "2", model_files["affine2"]))
        body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 1, 1, 1]}]}
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{server.url}/v2/models/affine/versions/1/infer", json=body) as resp:
                assert resp.status == 404
                assert "no version '1' loaded; loaded versions: 2" in (await resp.json())["error"]
            async with session.post(f"{server.url}/v2/models/affine/infer", json=body) as resp:
                assert (await resp.json())["outputs"][0]["data"] == [4.0, 4.0, 4.0, 4.0]
    finally:
        await server.stop()
