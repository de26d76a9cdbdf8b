"""The inference thread pool: ONNX Runtime runs here, never on the event loop.

ONNX Runtime releases the GIL while it computes, so ``workers`` inferences (the container's CPU
limit by default) run truly in parallel while the event loop keeps parsing requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class InferencePool:
    """A fixed-size thread pool with an awaitable ``run``."""

    def __init__(self, workers: int) -> None:
        self.workers = max(1, workers)
        self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="ort")

    @property
    def executor(self) -> ThreadPoolExecutor:
        """The threads themselves, for code that takes an executor (split inference)."""
        return self._executor

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn`` in the pool and await its result."""
        loop = asyncio.get_running_loop()
        if kwargs:
            return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))
        return await loop.run_in_executor(self._executor, fn, *args)

    def shutdown(self) -> None:
        """Stop the threads once running work finished."""
        self._executor.shutdown(wait=True, cancel_futures=True)
