"""The node side of secure aggregation: one long-lived process registers with the server's grid (``grid_http``),
long-polls for messages (posting a reply is also the next poll), runs Flower's ``ClientApp(client_fn, mods=[secaggplus_mod])`` in-process with one
persistent Context (the SecAgg+ keys live in it across the four stages of a round) and posts each reply.

It exits when the server says the run is over (410) or has been unreachable for ``GONE_AFTER`` seconds; a 404 (the
server no longer knows this node, e.g. after a long pause) makes it register again with a fresh Context.
"""

from __future__ import annotations

import http.client
import json
import logging
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path

from flwr.app import Context, Error, Message, RecordDict
from flwr.client import Client, ClientApp
from flwr.client.mod import secaggplus_mod
from flwr.common.constant import ErrorCode
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.proto.message_pb2 import Message as ProtoMessage

from edgemodel.federated.errors import FederatedError, Reason

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL = 1.0
"""Seconds between heartbeats (the server's liveness window is 3 of them; a killed node's closed connections
remove it at once, the heartbeat only catches hung ones)."""
GONE_AFTER = 10.0
"""A registered node stops once the server has been unreachable this long (the run ended or the server died)."""
RETRY_PAUSE = 0.5
HTTP_TIMEOUT = 60.0


class GridConnection:
    """One keep-alive HTTPS (or HTTP) connection to the grid; reconnects once on a broken connection."""

    def __init__(self, server: str, ca: Path | None) -> None:
        host, _, port = server.rpartition(":")
        if not host or not port.isdigit():
            raise FederatedError(Reason.INVALID_SPEC, f"--server: {server!r} must be HOST:PORT")
        self.host, self.port = host.strip("[]"), int(port)
        self.tls = ssl.create_default_context(cafile=str(ca)) if ca is not None else None
        self._conn: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        if self.tls is not None:
            return http.client.HTTPSConnection(self.host, self.port, timeout=HTTP_TIMEOUT, context=self.tls)
        return http.client.HTTPConnection(self.host, self.port, timeout=HTTP_TIMEOUT)

    def post(self, path: str, body: bytes = b"", node_id: int | None = None) -> tuple[int, bytes]:
        headers = {"Content-Length": str(len(body))}
        if node_id is not None:
            headers["X-Node-Id"] = str(node_id)
        for attempt in (1, 2):
            conn = self._conn or self._connect()
            self._conn = conn
            try:
                conn.request("POST", path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException):
                self.close()
                if attempt == 2:
                    raise
                continue
            if resp.will_close:
                self.close()
            return resp.status, data
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class _Heartbeat(threading.Thread):
    def __init__(self, server: str, ca: Path | None, node_id: int) -> None:
        super().__init__(name="heartbeat", daemon=True)
        self.conn = GridConnection(server, ca)
        self.node_id = node_id
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(HEARTBEAT_INTERVAL):
            try:
                self.conn.post("/v1/heartbeat", node_id=self.node_id)
            except (OSError, http.client.HTTPException):
                continue  # the main loop decides when the server is gone
        self.conn.close()


def register(conn: GridConnection, node: str, wait: float, samples: int) -> tuple[int, int]:
    """(node id, run id) from the server; retries while it cannot be reached, for at most ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while True:
        try:
            status, body = conn.post("/v1/register", json.dumps({"node": node, "samples": samples}).encode())
        except (OSError, http.client.HTTPException) as exc:
            if time.monotonic() >= deadline:
                raise FederatedError(
                    Reason.TRAINING_FAILED,
                    f"--server: {conn.host}:{conn.port} unreachable for {wait:.0f} s ({exc})",
                ) from exc
            time.sleep(RETRY_PAUSE)
            continue
        if status != 200:
            raise FederatedError(Reason.INVALID_SPEC, f"the server refused node {node}: {body[:200]!r}")
        answer = json.loads(body)
        return int(answer["nodeId"]), int(answer["runId"])


def handle(app: ClientApp, msg: Message, context: Context) -> Message:
    """The ClientApp's reply; an exception becomes an Error reply, as Flower's own runtime sends it."""
    try:
        return app(message=msg, context=context)
    except Exception as exc:
        log.warning("The ClientApp failed on a %s message: %r", msg.metadata.message_type, exc)
        return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, repr(exc)), reply_to=msg)


def run_grid_client(
    server: str,
    ca: Path | None,
    node: str,
    client_fn: Callable[[Context], Client],
    connect_wait: float,
    samples: int = 0,
) -> None:
    """Serve the node's ClientApp (with secaggplus_mod) until the run is over or the server is gone.

    ``samples`` (the node's training set size) is declared at registration: the server sizes SecAgg+'s
    ``max_weight`` from it, so that a node's sample-weighted update is never clipped.
    """
    app = ClientApp(client_fn=client_fn, mods=[secaggplus_mod])
    conn = GridConnection(server, ca)
    node_id, run_id = register(conn, node, connect_wait, samples)
    context = Context(run_id=run_id, node_id=node_id, node_config={}, state=RecordDict(), run_config={})
    heartbeat = _Heartbeat(server, ca, node_id)
    heartbeat.start()
    log.info("Node %s joined the secure-aggregation run as %d", node, node_id)
    unreachable_since: float | None = None
    answer: tuple[int, bytes] | None = None
    """What the last push answered: the next message already (the push long-polls too), or nothing yet."""
    try:
        while True:
            try:
                status, body = answer if answer is not None else conn.post("/v1/pull", node_id=node_id)
            except (OSError, http.client.HTTPException) as exc:
                unreachable_since = unreachable_since or time.monotonic()
                if time.monotonic() - unreachable_since > GONE_AFTER:
                    log.info("The server is gone (%s); stopping", exc)
                    return
                time.sleep(RETRY_PAUSE)
                continue
            answer, unreachable_since = None, None
            if status == 410:
                log.info("The server says the run is over")
                return
            if status == 404:  # forgotten (replaced or expired): start over as a new node
                node_id, run_id = register(conn, node, connect_wait, samples)
                context = Context(run_id=run_id, node_id=node_id, node_config={}, state=RecordDict(), run_config={})
                heartbeat.node_id = node_id
                log.info("Node %s registered again as %d", node, node_id)
                continue
            if status in (204, 409, 400):  # nothing yet; or our last reply was refused (logged below)
                continue
            if status != 200:
                raise FederatedError(Reason.TRAINING_FAILED, f"the server answered a poll with {status}: {body[:200]!r}")
            proto = ProtoMessage()
            proto.ParseFromString(body)
            reply = handle(app, message_from_proto(proto), context)
            try:
                answer = conn.post("/v1/push", message_to_proto(reply).SerializeToString(), node_id)
            except (OSError, http.client.HTTPException) as exc:
                log.warning("Could not post a reply (%s); the server counts this node as dropped", exc)
                continue
            if answer[0] in (400, 409, 413):
                log.warning("The server refused a reply (%d): %r", answer[0], answer[1][:200])
    finally:
        heartbeat.stopped.set()
        conn.close()
