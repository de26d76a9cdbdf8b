"""Process helpers for the operator's integration tests: bounded waits, HTTP probes; ``Proc`` is the shared
:class:`edgemodel.demo.processes.Process` (a child in its own session, output in ``<log_dir>/<name>.log``)."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from edgemodel.demo.processes import Process as Proc

__all__ = ["Proc", "http_ok", "wait_for"]
T = TypeVar("T")


def wait_for(what: str, check: Callable[[], T | None], timeout: float, interval: float = 0.2,
              log: Path | None = None) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` (and the log's tail)."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:
            last_error = exc
        time.sleep(interval)
    tail = ""
    if log is not None and log.exists():
        tail = "\n--- log tail ---\n" + "\n".join(log.read_text(errors="replace").splitlines()[-40:])
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last error: {last_error}){tail}")


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return 200 <= resp.status < 300
    except (urllib.error.URLError, OSError):
        return False
