"""Dynamic batching: requests that arrive close together run as one ONNX Runtime call.

A request waits at most ``max_queue_delay`` for others; a batch holds at most ``max_batch_size``
rows (first dimension). Requests are stacked only when every other dimension and dtype match.
While every worker is busy, requests keep queueing and the next batch is formed from them, so
under load batches grow without any added delay. Without queue delay, a request that finds nothing
queued and a run slot free runs at once from its own coroutine (no hand-off to the batching task). If a batched run fails, its requests are re-run
one by one so that one bad request cannot fail its neighbours.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edge_agent.errors import ModelNotReady
from edge_agent.pool import InferencePool

log = logging.getLogger(__name__)

Signature = tuple[tuple[str, str, tuple[int, ...]], ...]
RunFn = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


@dataclass(slots=True)
class RunResult:
    """Outputs of one request and how its run went."""

    outputs: list[np.ndarray]
    queue_wait: float
    compute: float
    batch_requests: int


@dataclass(slots=True)
class _Pending:
    feeds: dict[str, np.ndarray]
    rows: int
    signature: Signature
    enqueued: float
    future: asyncio.Future[RunResult]


def signature(feeds: dict[str, np.ndarray]) -> Signature:
    """What must match for two requests to share a batch: names, dtypes, non-batch dimensions."""
    return tuple(sorted((name, arr.dtype.str, arr.shape[1:]) for name, arr in feeds.items()))


def timed_run(run: RunFn, feeds: dict[str, np.ndarray], enqueued: float) -> tuple[list[np.ndarray], float, float]:
    """Run in a worker thread: (outputs, seconds queued before the run, seconds computing)."""
    start = time.perf_counter()
    outputs = run(feeds)
    return outputs, start - enqueued, time.perf_counter() - start


class DynamicBatcher:
    """Collects concurrent requests of one model version into batched runs on the pool."""

    def __init__(
        self, run: RunFn, pool: InferencePool, max_batch_size: int, max_queue_delay_s: float, concurrency: int | None = None
    ) -> None:
        self._run = run
        self._pool = pool
        self.max_batch_size = max(1, max_batch_size)
        self.max_queue_delay_s = max(0.0, max_queue_delay_s)
        self._pending: deque[_Pending] = deque()
        self._arrived = asyncio.Event()
        self._slots = asyncio.Semaphore(concurrency or pool.workers)
        """Batched runs at once (each may use several intra-op threads)."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._direct: set[asyncio.Future[tuple[list[np.ndarray], float, float]]] = set()
        """Lone runs started without the batching task (no queue delay, a slot free)."""
        self._loop_task: asyncio.Task[None] | None = None
        self._closed = False

    def start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.get_running_loop().create_task(self._loop(), name="dynamic-batcher")

    async def submit(self, feeds: dict[str, np.ndarray]) -> RunResult:
        """Queue one request and wait for its share of a batched run."""
        if self._closed:
            raise ModelNotReady("model version is being unloaded; retry (the new version answers)")
        first = next(iter(feeds.values()))
        rows = int(first.shape[0]) if first.ndim else 1
        if self.max_queue_delay_s == 0 and not self._pending and not self._slots.locked():
            # Nothing to batch with and a run slot free: run now, without the hand-off to the batching task.
            await self._slots.acquire()
            run = asyncio.get_running_loop().run_in_executor(self._pool.executor, timed_run, self._run, feeds, time.perf_counter())
            self._direct.add(run)
            try:
                outputs, waited, compute = await run
            finally:
                self._direct.discard(run)
                self._slots.release()
            return RunResult(outputs, waited, compute, 1)
        self.start()
        future: asyncio.Future[RunResult] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(feeds, rows, signature(feeds), time.perf_counter(), future))
        self._arrived.set()
        return await future

    async def _wait_for_arrival(self, timeout: float | None) -> bool:
        self._arrived.clear()
        if self._pending:
            return True
        try:
            async with asyncio.timeout(timeout):
                await self._arrived.wait()
        except TimeoutError:
            return False
        return True

    async def _loop(self) -> None:
        held: list[_Pending] = []  # taken from the queue, not yet handed to a run
        try:
            while True:
                if not held:
                    while not self._pending:
                        await self._wait_for_arrival(None)
                    held.append(self._pending.popleft())
                first = held[0]
                await self._slots.acquire()
                rows = first.rows
                carry: _Pending | None = None
                deadline = first.enqueued + self.max_queue_delay_s
                while rows < self.max_batch_size:  # bounded: each pass adds a request or leaves
                    if not self._pending:
                        remaining = deadline - time.perf_counter()
                        if remaining <= 0 or not await self._wait_for_arrival(remaining):
                            break
                        continue
                    item = self._pending.popleft()
                    if item.signature != first.signature or rows + item.rows > self.max_batch_size:
                        carry = item
                        break
                    held.append(item)
                    rows += item.rows
                batch, held = held, ([carry] if carry is not None else [])
                task = asyncio.get_running_loop().create_task(self._execute(batch))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        except asyncio.CancelledError:
            for p in held:
                if not p.future.done():
                    p.future.set_exception(ModelNotReady("model version was unloaded before the request ran; retry"))
            raise

    async def _execute(self, batch: list[_Pending]) -> None:
        try:
            if len(batch) == 1:
                await self._run_single(batch[0])
                return
            names = list(batch[0].feeds)
            stacked = {n: np.concatenate([p.feeds[n] for p in batch]) for n in names}
            earliest = min(p.enqueued for p in batch)
            try:
                outputs, _, compute = await self._pool.run(timed_run, self._run, stacked, earliest)
            except Exception as exc:
                log.warning("Batched run of %d requests failed (%s); running them one by one", len(batch), exc)
                await asyncio.gather(*(self._run_single(p) for p in batch))
                return
            total = sum(p.rows for p in batch)
            if any(o.ndim == 0 or o.shape[0] != total for o in outputs):
                log.warning("Model outputs are not batch-major; running %d requests one by one", len(batch))
                await asyncio.gather(*(self._run_single(p) for p in batch))
                return
            start_of_run = time.perf_counter() - compute
            offset = 0
            for p in batch:
                part = [o[offset : offset + p.rows] for o in outputs]
                offset += p.rows
                if not p.future.done():
                    p.future.set_result(RunResult(part, max(0.0, start_of_run - p.enqueued), compute, len(batch)))
        finally:
            self._slots.release()

    async def _run_single(self, pending: _Pending) -> None:
        try:
            outputs, waited, compute = await self._pool.run(timed_run, self._run, pending.feeds, pending.enqueued)
        except Exception as exc:
            if not pending.future.done():
                pending.future.set_exception(exc)
            return
        if not pending.future.done():
            pending.future.set_result(RunResult(outputs, waited, compute, 1))

    async def close(self) -> None:
        """Finish batches already running, fail requests still queued, stop the loop."""
        self._closed = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        while self._pending:
            p = self._pending.popleft()
            if not p.future.done():
                p.future.set_exception(ModelNotReady("model version was unloaded before the request ran; retry"))
        if self._tasks or self._direct:
            await asyncio.gather(*self._tasks, *self._direct, return_exceptions=True)
