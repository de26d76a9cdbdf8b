"""Inference never blocks the event loop: health and other requests are answered while a slow model runs."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import onnxruntime as ort

from edge_agent.server import AgentServer
from edge_agent.settings import AgentSettings, LocalModel


class GatedSession:
    """A real session whose run() takes a millisecond and can be held until the test releases it."""

    def __init__(self, path: Path) -> None:
        self.inner = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.gate = threading.Event()
        self.gate.set()
        self.running = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def run(self, names: Any, feeds: Any) -> Any:
        self.running.set()
        time.sleep(0.001)
        self.gate.wait(30)
        return self.inner.run(names, feeds)


async def test_health_and_metadata_answer_while_an_inference_runs(model_files: dict[str, Path]) -> None:
    session = GatedSession(model_files["affine1"])
    server = AgentServer(AgentSettings(port=0), session_factory=lambda providers: session, available_providers=["CPUExecutionProvider"])
    await server.start()
    try:
        await server.load_local([LocalModel("affine", "1", model_files["affine1"])])
        server.dataplane.started = True
        assert server.repository.resolve("affine").inline_max_elements == 0  # a millisecond is not "tiny"
        session.gate.clear()
        session.running.clear()
        body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
        async with aiohttp.ClientSession() as client:
            pending = asyncio.create_task(client.post(f"{server.url}/v2/models/affine/infer", json=body))
            await asyncio.to_thread(session.running.wait, 10)
            async with client.get(f"{server.url}/v2/health/live") as live:
                assert live.status == 200
            async with client.get(f"{server.url}/v2/models/affine") as meta:
                assert meta.status == 200
            assert not pending.done(), "the inference is still held in the thread pool"
            session.gate.set()
            response = await pending
            assert response.status == 200
            assert (await response.json())["outputs"][0]["data"] == [3.0, 5.0, 7.0, 9.0]
            response.release()
    finally:
        session.gate.set()
        await server.stop()


async def test_stopping_waits_for_an_inference_in_progress_on_the_hot_path(model_files: dict[str, Path]) -> None:
    session = GatedSession(model_files["affine1"])
    server = AgentServer(AgentSettings(port=0, drain_timeout_s=10), session_factory=lambda providers: session,
                         available_providers=["CPUExecutionProvider"])  # fmt: skip
    await server.start()
    stopping: asyncio.Task[None] | None = None
    try:
        await server.load_local([LocalModel("affine", "1", model_files["affine1"])])
        server.dataplane.started = True
        session.gate.clear()
        session.running.clear()
        body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
        async with aiohttp.ClientSession() as client:
            pending = asyncio.create_task(client.post(f"{server.url}/v2/models/affine/infer", json=body))
            await asyncio.to_thread(session.running.wait, 10)
            stopping = asyncio.create_task(server.stop())
            await asyncio.sleep(0.3)
            assert not stopping.done(), "stop() waits for the request in progress"
            session.gate.set()
            response = await asyncio.wait_for(pending, 10)
            assert response.status == 200
            assert (await response.json())["outputs"][0]["data"] == [3.0, 5.0, 7.0, 9.0]
            response.release()
            await asyncio.wait_for(stopping, 15)
    finally:
        session.gate.set()
        if stopping is None:
            await server.stop()
