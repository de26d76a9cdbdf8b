"""Agent test fixtures: tiny ONNX models and an agent running on its own event loop in a thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import pytest

from edge_agent.server import AgentServer
from edge_agent.settings import AgentSettings, LocalModel
from tests.agent import onnx_models

T = TypeVar("T")


@pytest.fixture(scope="session")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every test model, written once per session."""
    d = tmp_path_factory.mktemp("models")
    return {
        "affine1": onnx_models.affine(d / "affine1.onnx", 2.0),
        "affine2": onnx_models.affine(d / "affine2.onnx", 3.0),
        "affine3": onnx_models.affine(d / "affine3.onnx", 4.0),
        "identity": onnx_models.identity_all(d / "identity.onnx"),
        "gather": onnx_models.gather(d / "gather.onnx"),
        "fixed": onnx_models.fixed_shape(d / "fixed.onnx"),
        "slow": onnx_models.slow(d / "slow.onnx"),
    }


class AgentThread:
    """An AgentServer on its own event loop in a background thread, for synchronous clients."""

    def __init__(self, settings: AgentSettings, models: list[LocalModel], **server_kwargs: Any) -> None:
        self.settings = settings
        self.models = models
        self.server_kwargs = server_kwargs
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="agent-loop", daemon=True)
        self.server: AgentServer | None = None

    def call(self, make: Callable[[], Awaitable[T]], timeout: float = 60.0) -> T:
        """Run a coroutine on the agent's loop and wait for its result."""

        async def runner() -> T:
            return await make()

        future: Future[T] = asyncio.run_coroutine_threadsafe(runner(), self.loop)
        return future.result(timeout)

    def __enter__(self) -> AgentThread:
        self.thread.start()

        async def start() -> AgentServer:
            server = AgentServer(self.settings, **self.server_kwargs)
            await server.start()
            await server.load_local(self.models)
            server.dataplane.started = True
            return server

        self.server = self.call(start)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.server is not None:
            self.call(self.server.stop)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        self.loop.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url


def local(model_files: dict[str, Path], *specs: str) -> list[LocalModel]:
    """LocalModel list from "name[:version]=file-key" specs."""
    result = []
    for spec in specs:
        served, key = spec.split("=")
        name, _, version = served.partition(":")
        result.append(LocalModel(name, version or "1", model_files[key]))
    return result


@pytest.fixture(scope="module")
def agent(model_files: dict[str, Path]) -> Iterator[AgentThread]:
    """A shared agent serving affine (versions 1 and 2), identity, gather and fixed."""
    models = local(model_files, "affine:1=affine1", "affine:2=affine2", "identity=identity", "gather=gather", "fixed=fixed")
    with AgentThread(AgentSettings(port=0, max_body_bytes=256 * 1024), models) as running:
        yield running
