"""Bounded waits for the demo, the end-to-end tests and the benchmarks: poll a check until it holds, or fail
naming what was awaited, the last error seen and whatever else explains it (a process that exited, log tails)."""

from __future__ import annotations

import asyncio
import inspect
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
Errors = tuple[type[BaseException], ...]


def wait_until(what: str, check: Callable[[], T | None], timeout: float, *, interval: float = 0.2,
               tolerate: Errors = (), process: subprocess.Popen[Any] | None = None,
               explain: Callable[[], str] | None = None) -> T:
    """Call ``check`` every ``interval`` s until it returns something truthy and return that.

    Errors in ``tolerate`` count as "not yet". Raises RuntimeError at once when ``process`` exits and
    TimeoutError after ``timeout`` s; both name ``what`` and add ``explain()``.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the process exited with code {process.returncode} while waiting for {what}"
                               f"{_explained(explain)}")
        try:
            value = check()
            if value:
                return value
        except tolerate as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(_timed_out(what, timeout, last_error, explain))
        time.sleep(interval)


async def wait_until_async(what: str, check: Callable[[], T | None | Awaitable[T | None]], timeout: float, *,
                           interval: float = 0.05, tolerate: Errors = (), in_thread: bool = False,
                           explain: Callable[[], str] | None = None) -> T:
    """:func:`wait_until` on an event loop: ``check`` may be a coroutine function; ``in_thread`` runs a blocking
    ``check`` in a worker thread so the loop (e.g. an agent under test) keeps running."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            outcome = await asyncio.to_thread(check) if in_thread else check()
            value = await outcome if inspect.isawaitable(outcome) else outcome
            if value:
                return value
        except tolerate as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(_timed_out(what, timeout, last_error, explain))
        await asyncio.sleep(interval)


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """Whether ``url`` answers a GET with 2xx (False when it refuses, fails or errs)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return 200 <= resp.status < 300
    except (urllib.error.URLError, OSError):
        return False


def log_tail(path: Path | None, lines: int = 40) -> str:
    """The last ``lines`` of a log file under a header naming it ("" when there is no such file)."""
    if path is None or not path.is_file():
        return ""
    text = path.read_text(errors="replace").splitlines()[-lines:]
    return f"\n--- last lines of {path}:\n" + "\n".join(text)


def _timed_out(what: str, timeout: float, last_error: BaseException | None,
               explain: Callable[[], str] | None) -> str:
    error = f" (last error: {last_error})" if last_error is not None else ""
    return f"timed out after {timeout:g} s waiting for {what}{error}{_explained(explain)}"


def _explained(explain: Callable[[], str] | None) -> str:
    text = explain() if explain is not None else ""
    return f"\n{text}" if text else ""
