"""Round-by-round progress of the aggregation server: kept in memory, logged, served as JSON on ``/status`` (the
operator reads it) and optionally written to a file (benchmarks)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from edgemodel.api.federated import MAX_ROUND_RECORDS, RoundRecord

log = logging.getLogger(__name__)


class Progress:
    """Thread-safe progress of one run: state, the per-round records and the final result."""

    def __init__(self, nodes_expected: int, rounds: int, status_file: Path | None = None) -> None:
        self._lock = threading.Lock()
        self.state = "Starting"
        self.nodes_expected = nodes_expected
        self.rounds_planned = rounds
        self.records: list[RoundRecord] = []
        self.initial_accuracy: float | None = None
        self.result: dict[str, Any] | None = None
        self.error: dict[str, str] | None = None
        self.status_file = status_file
        self.started = time.monotonic()
        self.final_reads = 0
        """How often /status was served after the end (the server lingers until the operator read it once)."""

    def set_state(self, state: str) -> None:
        with self._lock:
            self.state = state
        self._write()

    def add_round(self, record: RoundRecord) -> None:
        with self._lock:
            self.records = [*self.records, record][-MAX_ROUND_RECORDS:]
        acc = f"{record.accuracy:.4f}" if record.accuracy is not None else "-"
        log.info(
            "Finished round %d: %d clients aggregated, %d dropped%s, accuracy %s, %s bytes, %.2f s",
            record.round,
            len(record.participating),
            len(record.dropped),
            "" if record.aggregated else " (too many dropped: not aggregated)",
            acc,
            f"{record.bytes_exchanged:,}",
            record.seconds,
        )
        self._write()

    def finish(self, result: dict[str, Any] | None = None, error: dict[str, str] | None = None) -> None:
        with self._lock:
            self.state = "Failed" if error else "Succeeded"
            self.result, self.error = result, error
        self._write()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "state": self.state,
                "roundsPlanned": self.rounds_planned,
                "initialAccuracy": self.initial_accuracy,
                "elapsedSeconds": round(time.monotonic() - self.started, 3),
                "rounds": [r.to_k8s() for r in self.records],
                "result": self.result,
                "error": self.error,
            }

    def _write(self) -> None:
        if self.status_file is None:
            return
        tmp = self.status_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.snapshot()))
        tmp.replace(self.status_file)


def _handler(progress: Progress) -> type[BaseHTTPRequestHandler]:
    class StatusHandler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] != "/status":
                self.send_error(404, "only /status")
                return
            snapshot = progress.snapshot()
            body = json.dumps(snapshot).encode()
            if snapshot["state"] in ("Succeeded", "Failed"):
                progress.final_reads += 1
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
            return

    return StatusHandler


@contextmanager
def serve_status(progress: Progress, host: str, port: int) -> Iterator[ThreadingHTTPServer]:
    """Serve ``GET /status`` (JSON) on ``host:port`` in a background thread while the block runs."""
    server = ThreadingHTTPServer((host, port), _handler(progress))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="status", daemon=True)
    thread.start()
    log.info("Serving round progress on http://%s:%d/status", host, port)
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
