"""Dynamic batching: concurrent requests share runs, results stay per request, failures stay isolated."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from edge_agent.batching import DynamicBatcher
from edge_agent.errors import ModelNotReady
from edge_agent.pool import InferencePool
from edge_agent.server import AgentServer
from edge_agent.settings import AgentSettings, LocalModel


class Recorder:
    """A blocking 'model' (y = 2x) that records the batch sizes it ran and can be held back."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.gate.wait(10)
        x = feeds["x"]
        if (x < 0).any():
            raise RuntimeError("negative input")
        self.batches.append(int(x.shape[0]))
        return [x * 2]


MakeBatcher = Callable[[int, float], tuple[Recorder, DynamicBatcher]]


@pytest.fixture
async def make_batcher() -> AsyncIterator[MakeBatcher]:
    """``make(max_batch_size, max_queue_delay_s)``: a Recorder behind a DynamicBatcher on a one-thread pool.

    After the test the Recorder's gate opens, the batcher closes and the pool shuts down."""
    made: list[tuple[Recorder, DynamicBatcher, InferencePool]] = []

    def make(max_batch_size: int, max_queue_delay_s: float) -> tuple[Recorder, DynamicBatcher]:
        model, pool = Recorder(), InferencePool(1)
        batcher = DynamicBatcher(model, pool, max_batch_size=max_batch_size, max_queue_delay_s=max_queue_delay_s)
        made.append((model, batcher, pool))
        return model, batcher

    yield make
    for model, batcher, pool in made:
        model.gate.set()
        await batcher.close()
        pool.shutdown()


async def test_queued_requests_are_batched_up_to_the_limit(make_batcher: MakeBatcher) -> None:
    model, batcher = make_batcher(4, 0.05)
    model.gate.clear()  # hold the worker so that requests pile up
    blocker = asyncio.create_task(batcher.submit({"x": np.zeros((1, 3), np.float32)}))
    await asyncio.sleep(0.1)
    tasks = [asyncio.create_task(batcher.submit({"x": np.full((1, 3), i, np.float32)})) for i in range(10)]
    await asyncio.sleep(0.05)
    model.gate.set()
    results = await asyncio.gather(*tasks)
    await blocker
    for i, r in enumerate(results):
        np.testing.assert_array_equal(r.outputs[0], np.full((1, 3), 2 * i, np.float32))
    assert max(model.batches) == 4
    assert sum(model.batches) == 11
    assert any(r.batch_requests > 1 for r in results)


async def test_a_lone_request_waits_at_most_the_queue_delay(make_batcher: MakeBatcher) -> None:
    model, batcher = make_batcher(8, 0.02)
    result = await asyncio.wait_for(batcher.submit({"x": np.ones((2, 3), np.float32)}), timeout=5)
    assert result.batch_requests == 1
    assert result.outputs[0].shape == (2, 3)
    assert model.batches == [2]


async def test_shapes_that_differ_are_not_stacked(make_batcher: MakeBatcher) -> None:
    _, batcher = make_batcher(8, 0.05)
    results = await asyncio.gather(
        batcher.submit({"x": np.ones((1, 3), np.float32)}),
        batcher.submit({"x": np.ones((1, 5), np.float32)}),
        batcher.submit({"x": np.ones((1, 3), np.float32)}),
    )
    assert [r.outputs[0].shape for r in results] == [(1, 3), (1, 5), (1, 3)]


async def test_one_bad_request_does_not_fail_its_batch(make_batcher: MakeBatcher) -> None:
    _, batcher = make_batcher(8, 0.05)
    results = await asyncio.gather(
        batcher.submit({"x": np.ones((1, 3), np.float32)}),
        batcher.submit({"x": -np.ones((1, 3), np.float32)}),
        batcher.submit({"x": np.ones((1, 3), np.float32)}),
        return_exceptions=True,
    )
    assert isinstance(results[1], RuntimeError)
    assert not isinstance(results[0], BaseException)
    assert not isinstance(results[2], BaseException)


async def test_closing_fails_queued_requests_with_a_retryable_error(make_batcher: MakeBatcher) -> None:
    model, batcher = make_batcher(1, 0)
    model.gate.clear()
    tasks = [asyncio.create_task(batcher.submit({"x": np.ones((1, 3), np.float32)})) for _ in range(3)]
    await asyncio.sleep(0.05)
    closing = asyncio.create_task(batcher.close())
    await asyncio.sleep(0.05)
    model.gate.set()
    await closing
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert any(isinstance(o, ModelNotReady) for o in outcomes)
    with pytest.raises(ModelNotReady):
        await batcher.submit({"x": np.ones((1, 3), np.float32)})


async def test_batched_serving_matches_unbatched_and_isolates_bad_values(model_files: dict[str, Path]) -> None:
    server = AgentServer(AgentSettings(port=0, batching=True, max_batch_size=8, max_queue_delay_ms=5))
    await server.start()
    try:
        await server.load_local([LocalModel("gather", "1", model_files["gather"])])
        assert server.repository.resolve("gather").batcher is not None
        url = f"{server.url}/v2/models/gather/infer"
        async with aiohttp.ClientSession() as session:

            async def ask(index: int) -> tuple[int, object]:
                body = {"inputs": [{"name": "idx", "shape": [1, 1], "datatype": "INT64", "data": [index]}]}
                async with session.post(url, json=body) as resp:
                    return resp.status, await resp.json()

            answers = await asyncio.gather(*(ask(i % 10 if i != 7 else 42) for i in range(24)))
        for i, (status, payload) in enumerate(answers):
            if i == 7:
                assert status == 400
                assert "the model rejected the input" in payload["error"]
            else:
                assert status == 200
                assert payload["outputs"][0]["data"] == [float((i % 10) * 10)]
        text = server.metrics.exposition().decode()
        counts = {line.split("le=")[1].split('"')[1]: float(line.rsplit(" ", 1)[1])
                  for line in text.splitlines() if line.startswith("edgemodel_batch_size_bucket")}  # fmt: skip
        assert counts["1.0"] < counts["+Inf"], "some runs must have combined several requests"
    finally:
        await server.stop()


async def test_fixed_shape_models_are_served_unbatched(model_files: dict[str, Path]) -> None:
    server = AgentServer(AgentSettings(port=0, batching=True))
    try:
        await server.load_local([LocalModel("fixed", "1", model_files["fixed"])])
        assert server.repository.resolve("fixed").batcher is None
    finally:
        await server.stop()


async def test_without_queue_delay_a_lone_request_runs_at_once_and_queued_ones_still_batch(make_batcher: MakeBatcher) -> None:
    model, batcher = make_batcher(8, 0)
    lone = await asyncio.wait_for(batcher.submit({"x": np.ones((1, 3), np.float32)}), timeout=5)
    assert lone.batch_requests == 1
    assert model.batches == [1]
    assert batcher._loop_task is None, "a lone request needs no batching task"
    model.gate.clear()  # the one slot is busy: the next requests queue and share a run
    first = asyncio.create_task(batcher.submit({"x": np.zeros((1, 3), np.float32)}))
    await asyncio.sleep(0.05)
    queued = [asyncio.create_task(batcher.submit({"x": np.full((1, 3), i, np.float32)})) for i in range(4)]
    await asyncio.sleep(0.05)
    closing_would_wait = not first.done()
    model.gate.set()
    results = await asyncio.wait_for(asyncio.gather(*queued), timeout=5)
    await first
    assert closing_would_wait
    for i, r in enumerate(results):
        np.testing.assert_array_equal(r.outputs[0], np.full((1, 3), 2 * i, np.float32))
    assert model.batches == [1, 1, 4]
