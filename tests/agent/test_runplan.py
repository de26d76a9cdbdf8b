"""The load-time run plan of heavy models: a one-thread session for overlapping runs, batching without delay.

Timings are simulated (a fake clock advanced by fake sessions), so the choices are tested, never speed.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import onnxruntime as ort
import pytest

import edge_agent.model as model_mod
import edge_agent.runplan as runplan
import edge_agent.server as server_mod
from edge_agent.model import ModelOptions, OnnxModel
from edge_agent.runplan import interleaved, prefer_batching, prefer_narrow
from edge_agent.server import AgentServer
from edge_agent.settings import AgentSettings, LocalModel
from edgemodel.cli import build_parser

CPU = "CPUExecutionProvider"


class Clock:
    """Stands in for the ``time`` module of the model and the run plan: only ``perf_counter``."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


class FakeSession:
    """The real affine model's session; each run advances the clock by ``fixed + per_row x rows`` ms."""

    def __init__(self, path: Path, clock: Clock, fixed_ms: float, per_row_ms: float) -> None:
        self.inner = ort.InferenceSession(str(path), providers=[CPU])
        self.clock, self.fixed_ms, self.per_row_ms = clock, fixed_ms, per_row_ms
        self.runs = 0
        self.rows: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.running = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def run(self, names: Any, feeds: dict[str, np.ndarray]) -> Any:
        rows = next(iter(feeds.values())).shape[0]
        self.clock.now += (self.fixed_ms + self.per_row_ms * rows) / 1e3
        self.runs += 1
        self.rows.append(int(rows))
        self.running.set()
        self.gate.wait(30)
        return self.inner.run(names, feeds)


class Sessions:
    """A session factory handing out the wide session first, then the narrow one."""

    def __init__(self, path: Path, clock: Clock, wide: tuple[float, float], narrow: tuple[float, float]) -> None:
        self.wide = FakeSession(path, clock, *wide)
        self.narrow = FakeSession(path, clock, *narrow)
        self.made: list[FakeSession] = []

    def __call__(self, providers: list[str]) -> FakeSession:
        session = self.wide if not self.made else self.narrow
        self.made.append(session)
        return session


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(model_mod, "time", fake)
    monkeypatch.setattr(runplan, "time", fake)
    monkeypatch.setattr(server_mod, "thread_count", lambda cpus: 2)  # two CPUs wherever the test runs
    return fake


def load(path: Path, sessions: Sessions, plan: bool = True) -> OnnxModel:
    model = OnnxModel("affine", "1", path, ModelOptions(intra_op_threads=2, plan_runs=plan), session_factory=sessions,
                      available_providers=[CPU])  # fmt: skip
    model.load()
    return model


# -- the decisions --------------------------------------------------------------------------
def test_narrow_runs_are_preferred_only_beyond_the_margin() -> None:
    assert prefer_narrow([0.010] * 5, [0.015] * 5, threads=2)  # 2 runs of 15 ms beat 2 x 10 ms one at a time
    assert not prefer_narrow([0.010] * 5, [0.020] * 5, threads=2)  # equal throughput: the simpler option
    assert not prefer_narrow([0.010] * 5, [0.0195] * 5, threads=2)  # 2.5% better: within the margin
    assert not prefer_narrow([0.010] * 5, [0.001] * 5, threads=1)  # nothing to overlap on one CPU


def test_batching_is_preferred_only_beyond_the_margin() -> None:
    assert prefer_batching([0.010] * 5, [0.060] * 5, rows=8)  # 7.5 ms per row vs 10 ms
    assert not prefer_batching([0.010] * 5, [0.080] * 5, rows=8)  # the same per row: no batching
    assert not prefer_batching([0.010] * 5, [0.078] * 5, rows=8)  # 2.5% cheaper: within the margin
    assert not prefer_batching([0.010] * 5, [0.001] * 5, rows=1)


def test_timings_are_interleaved_and_the_median_ignores_one_disturbed_run() -> None:
    calls: list[str] = []
    a, b = interleaved(lambda: calls.append("a"), lambda: calls.append("b"), repeats=3)
    assert calls == ["a", "b", "a", "b", "a", "b"]
    assert len(a) == len(b) == 3
    assert prefer_narrow([0.010, 0.010, 0.500, 0.010, 0.010], [0.015] * 5, threads=2)


# -- the plan at load -------------------------------------------------------------------------
def test_a_model_that_gains_gets_a_narrow_session_and_batching(model_files: dict[str, Path], clock: Clock) -> None:
    sessions = Sessions(model_files["affine1"], clock, wide=(10, 0), narrow=(2, 10))
    model = load(model_files["affine1"], sessions)
    assert model.narrow_session is sessions.narrow
    assert model.run_threads == 1
    assert model.intra_op_threads == 2
    assert model.plan.narrow_runs
    assert model.plan.batching
    assert model.plan.wide_ms == pytest.approx(10)
    assert model.plan.narrow_ms == pytest.approx(12)
    assert "one-thread session for overlapping runs, batching recommended" in model.plan.describe()


def test_the_simpler_configuration_stays_when_the_other_does_not_win(model_files: dict[str, Path], clock: Clock) -> None:
    sessions = Sessions(model_files["affine1"], clock, wide=(0, 10), narrow=(0, 20))  # perfect scaling, cost per row
    model = load(model_files["affine1"], sessions)
    assert model.narrow_session is None
    assert model.run_threads == 2
    assert not model.plan.narrow_runs
    assert not model.plan.batching
    assert model.plan.narrow_ms == pytest.approx(20)
    assert model.plan.batch_row_ms == pytest.approx(10)


def test_small_models_and_disabled_plans_are_not_measured(model_files: dict[str, Path], clock: Clock) -> None:
    tiny = Sessions(model_files["affine1"], clock, wide=(0.1, 0), narrow=(0.01, 0))
    assert load(model_files["affine1"], tiny).narrow_session is None
    assert len(tiny.made) == 1
    assert "nothing to gain" in load(model_files["affine1"], tiny).plan.note
    off = Sessions(model_files["affine1"], clock, wide=(10, 0), narrow=(2, 10))
    model = load(model_files["affine1"], off, plan=False)
    assert model.narrow_session is None
    assert len(off.made) == 1
    assert not model.plan.batching


def test_a_one_thread_session_that_fails_to_load_leaves_the_wide_one_serving(model_files: dict[str, Path], clock: Clock) -> None:
    sessions = Sessions(model_files["affine1"], clock, wide=(10, 0), narrow=(2, 10))

    def second_fails(providers: list[str]) -> FakeSession:
        if sessions.made:
            raise MemoryError("no memory for a second copy of the weights")
        return sessions(providers)

    model = OnnxModel("affine", "1", model_files["affine1"], ModelOptions(intra_op_threads=2, plan_runs=True),
                      session_factory=second_fails, available_providers=[CPU])  # fmt: skip
    model.load()
    assert model.narrow_session is None
    assert model.run_threads == 2
    assert "a one-thread session failed to load" in model.plan.note
    np.testing.assert_allclose(model.predict(feeds(1.0))[0], np.full((1, 4), 3.0))


# -- serving with the plan --------------------------------------------------------------------
async def serve(path: Path, sessions: Sessions, **settings: Any) -> AgentServer:
    server = AgentServer(AgentSettings(port=0, **settings), session_factory=sessions, available_providers=[CPU])
    await server.start()
    await server.load_local([LocalModel("affine", "1", path)])
    server.dataplane.started = True
    return server


def feeds(value: float) -> dict[str, np.ndarray]:
    return {"x": np.full((1, 4), value, np.float32)}


async def test_a_lone_run_uses_the_wide_session_and_overlapping_runs_the_narrow_one(
    model_files: dict[str, Path], clock: Clock
) -> None:
    sessions = Sessions(model_files["affine1"], clock, wide=(10, 0), narrow=(2, 10))
    server = await serve(model_files["affine1"], sessions, batching=False)
    try:
        mv = server.repository.resolve("affine")
        assert mv.max_concurrent_runs == 2
        assert mv.batcher is None
        wide_runs, narrow_runs = sessions.wide.runs, sessions.narrow.runs
        result = await mv.run(feeds(1.0), None)
        np.testing.assert_allclose(result.outputs[0], np.full((1, 4), 3.0))  # y = 2x + 1
        assert (sessions.wide.runs, sessions.narrow.runs) == (wide_runs + 1, narrow_runs)

        sessions.wide.gate.clear()
        sessions.wide.running.clear()
        held = asyncio.create_task(mv.run(feeds(2.0), None))
        await asyncio.to_thread(sessions.wide.running.wait, 10)
        second = await asyncio.wait_for(mv.run(feeds(3.0), None), 10)  # runs while the first is still in flight
        assert not held.done()
        np.testing.assert_allclose(second.outputs[0], np.full((1, 4), 7.0))
        assert sessions.narrow.runs == narrow_runs + 1
        sessions.wide.gate.set()
        np.testing.assert_allclose((await asyncio.wait_for(held, 10)).outputs[0], np.full((1, 4), 5.0))
        config = server.dataplane.model_config("affine", None)
        assert config["parameters"]["concurrent_runs"]["string_value"] == "2"
        assert "one-thread session" in config["parameters"]["run_plan"]["string_value"]
        assert server.metrics.concurrent_runs.labels("", "affine", "1")._value.get() == 2
    finally:
        sessions.wide.gate.set()
        await server.stop()


async def test_batching_by_default_follows_the_plan_without_queue_delay(model_files: dict[str, Path], clock: Clock) -> None:
    sessions = Sessions(model_files["affine1"], clock, wide=(10, 0), narrow=(2, 10))
    server = await serve(model_files["affine1"], sessions)
    try:
        mv = server.repository.resolve("affine")
        assert mv.batcher is not None
        assert mv.batcher.max_queue_delay_s == 0.0
        assert mv.batching_chosen
        assert server.metrics.batching.labels("", "affine", "1")._value.get() == 1
        result = await asyncio.wait_for(mv.run(feeds(1.0), None), 10)
        np.testing.assert_allclose(result.outputs[0], np.full((1, 4), 3.0))
        assert result.batch_requests == 1
    finally:
        await server.stop()


async def test_over_http_two_runs_overlap_and_requests_queued_behind_them_share_a_run(
    model_files: dict[str, Path], clock: Clock
) -> None:
    sessions = Sessions(model_files["affine1"], clock, wide=(10, 0), narrow=(2, 10))
    server = await serve(model_files["affine1"], sessions)
    url = f"{server.url}/v2/models/affine/infer"
    try:
        async with aiohttp.ClientSession() as client:

            async def ask(value: float) -> list[float]:
                body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [value] * 4}]}
                async with client.post(url, json=body) as resp:
                    assert resp.status == 200
                    return list((await resp.json())["outputs"][0]["data"])

            assert await ask(1.0) == [3.0] * 4  # a lone request: the fast path, on the wide session
            for s in (sessions.wide, sessions.narrow):
                s.gate.clear()
                s.running.clear()
                s.rows.clear()
            first = asyncio.create_task(ask(2.0))
            await asyncio.to_thread(sessions.wide.running.wait, 10)
            second = asyncio.create_task(ask(3.0))
            await asyncio.to_thread(sessions.narrow.running.wait, 10)  # two runs in flight at once
            queued = [asyncio.create_task(ask(float(v))) for v in (4, 5, 6)]
            await asyncio.sleep(0.2)
            assert not any(t.done() for t in (first, second, *queued))
            sessions.wide.gate.set()
            sessions.narrow.gate.set()
            answers = await asyncio.wait_for(asyncio.gather(first, second, *queued), 10)
        assert answers == [[2.0 * v + 1] * 4 for v in (2, 3, 4, 5, 6)]
        assert sorted(sessions.wide.rows + sessions.narrow.rows) == [1, 1, 3], "the three queued requests share one run"
    finally:
        sessions.wide.gate.set()
        sessions.narrow.gate.set()
        await server.stop()


@pytest.mark.parametrize(
    ("settings", "narrow", "batching", "delay"),
    [
        ({"batching": False}, True, False, None),  # --no-batching
        ({"batching": True, "max_queue_delay_ms": 3.0}, True, True, 0.003),  # --batching keeps its queue delay
        ({"intra_op_threads": 2}, False, False, None),  # --threads: no plan, one run at a time
        ({"inference_workers": 4}, False, False, None),  # --workers: no plan
    ],
)
async def test_flags_override_the_plan(
    model_files: dict[str, Path], clock: Clock, settings: dict[str, Any], narrow: bool, batching: bool, delay: float | None
) -> None:
    sessions = Sessions(model_files["affine1"], clock, wide=(10, 0), narrow=(2, 10))
    server = await serve(model_files["affine1"], sessions, **settings)
    try:
        mv = server.repository.resolve("affine")
        assert (mv.model.narrow_session is not None) == narrow
        assert (mv.batcher is not None) == batching
        if mv.batcher is not None:
            assert mv.batcher.max_queue_delay_s == pytest.approx(delay)
        assert mv.batching_chosen == ("batching" not in settings)  # left to the plan, which did not run
    finally:
        await server.stop()


def test_cli_batching_flags() -> None:
    parser = build_parser()
    assert parser.parse_args(["agent"]).batching is None
    assert parser.parse_args(["agent", "--batching"]).batching is True
    assert parser.parse_args(["agent", "--no-batching"]).batching is False
