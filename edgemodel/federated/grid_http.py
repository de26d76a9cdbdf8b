"""HTTPS front of :class:`~edgemodel.federated.grid.HttpGrid` (stdlib server, the plain server's TLS material).

Every request is network input and is bounded: bodies need a Content-Length below a limit (413 above), a poll waits
at most ``MAX_POLL_WAIT`` seconds, an unknown node id gets 404, garbage 400; none of them stops the server.

    POST /v1/register   {"node": NAME, "samples": N}   -> 200 {"nodeId": N, "runId": R}
    POST /v1/heartbeat  header X-Node-Id                -> 204
    POST /v1/pull       header X-Node-Id                -> 200 protobuf Message | 204 nothing yet | 410 run over
    POST /v1/push       header X-Node-Id, protobuf body -> as /v1/pull (a reply is also the next poll)
"""

from __future__ import annotations

import json
import logging
import re
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from edgemodel.federated.grid import GridError, HttpGrid

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 512 * 1024 * 1024
"""Largest reply a node may post (a model's update plus SecAgg+ records)."""
MAX_SMALL_BODY = 4096
"""Largest body of register / heartbeat / pull."""
MAX_POLL_WAIT = 5.0
"""Longest a pull waits for a message before answering 204 (the node polls again)."""
REQUEST_TIMEOUT = 60.0
"""Socket timeout of one connection (TLS handshake, reading a body)."""
MAX_SAMPLES = 2**31 - 1
"""Largest sample count a node may declare."""
NODE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
PROTOBUF = "application/x-protobuf"


def _handler(grid: HttpGrid, max_message_bytes: int, poll_wait: float) -> type[BaseHTTPRequestHandler]:
    class GridHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = REQUEST_TIMEOUT

        node_seen: int | None = None
        """The node id this connection carried (its close tells the grid the node may be gone)."""

        def setup(self) -> None:
            super().setup()
            if isinstance(self.connection, ssl.SSLSocket):
                self.connection.do_handshake()  # here, in the connection's thread, not in accept()

        def finish(self) -> None:
            try:
                super().finish()
            finally:
                if self.node_seen is not None:
                    grid.connection_closed(self.node_seen)

        def do_POST(self) -> None:
            try:
                status, body, ctype = self._route()
            except GridError as exc:
                status, body, ctype = exc.status, json.dumps({"error": exc.message}).encode(), "application/json"
                if exc.status not in (404, 410):
                    log.warning("Refused %s from %s: %s", self.path, self.client_address[0], exc.message)
            self.send_response(status)
            if status == 413:
                self.send_header("Connection", "close")  # the unread body stays on the socket
                self.close_connection = True
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if body:
                self.wfile.write(body)

        def do_GET(self) -> None:
            self.send_error(405, "POST only")

        def _route(self) -> tuple[int, bytes, str]:
            path = self.path.split("?")[0]
            if path == "/v1/register":
                return self._register()
            routes = {"/v1/heartbeat": self._heartbeat, "/v1/pull": self._pull, "/v1/push": self._push}
            if path not in routes:
                raise GridError(404, f"no such endpoint {path!r}")
            return routes[path]()

        def _body(self, limit: int) -> bytes:
            length = self.headers.get("Content-Length")
            if length is None or not length.isdigit():
                raise GridError(411, "Content-Length is required")
            if int(length) > limit:
                raise GridError(413, f"body of {length} bytes is over the limit of {limit}")
            return self.rfile.read(int(length))

        def _node_id(self) -> int:
            raw = self.headers.get("X-Node-Id", "")
            if not raw.isdigit():
                raise GridError(400, "X-Node-Id: must be the node id /v1/register returned")
            node_id = int(raw)
            if self.node_seen != node_id:
                if self.node_seen is not None:
                    grid.connection_closed(self.node_seen)
                grid.connection_opened(node_id)
                self.node_seen = node_id
            return node_id

        def _register(self) -> tuple[int, bytes, str]:
            try:
                request = json.loads(self._body(MAX_SMALL_BODY))
                name, samples = request["node"], request.get("samples", 0)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise GridError(400, 'the body must be {"node": NAME, "samples": COUNT}') from exc
            if not isinstance(name, str) or not NODE_NAME.match(name):
                raise GridError(400, "node: must be a Kubernetes node name")
            if not isinstance(samples, int) or isinstance(samples, bool) or not 0 <= samples <= MAX_SAMPLES:
                raise GridError(400, f"samples: must be the node's training sample count, 0..{MAX_SAMPLES}")
            node_id = grid.register(name, samples)
            body = json.dumps({"nodeId": node_id, "runId": grid.run.run_id}).encode()
            return 200, body, "application/json"

        def _heartbeat(self) -> tuple[int, bytes, str]:
            self._body(MAX_SMALL_BODY)
            grid.heartbeat(self._node_id())
            return 204, b"", "text/plain"

        def _pull(self) -> tuple[int, bytes, str]:
            self._body(MAX_SMALL_BODY)
            message = grid.next_message(self._node_id(), poll_wait)
            if message is None:
                return 204, b"", "text/plain"
            return 200, message, PROTOBUF

        def _push(self) -> tuple[int, bytes, str]:
            body = self._body(max_message_bytes)
            node_id = self._node_id()
            grid.post_reply(node_id, body)
            message = grid.next_message(node_id, poll_wait)  # the push is also the node's next poll
            if message is None:
                return 204, b"", "text/plain"
            return 200, message, PROTOBUF

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
            return

    return GridHandler


def server_tls(cert: Path, key: Path) -> ssl.SSLContext:
    """TLS of the grid: the server certificate and key the plain (gRPC) server uses."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx


@contextmanager
def serve_grid(
    grid: HttpGrid,
    host: str,
    port: int,
    tls: ssl.SSLContext | None,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    poll_wait: float = MAX_POLL_WAIT,
) -> Iterator[ThreadingHTTPServer]:
    """Serve the grid on ``host:port`` (HTTPS with ``tls``, else plain HTTP) in a background thread."""
    server = ThreadingHTTPServer((host, port), _handler(grid, max_message_bytes, min(poll_wait, MAX_POLL_WAIT)))
    server.daemon_threads = True
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    thread = threading.Thread(target=server.serve_forever, name="grid", daemon=True)
    thread.start()
    log.info("Serving the secure-aggregation grid on %s://%s:%d", "https" if tls else "http", host, port)
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
