"""The transport of secure aggregation: a Flower ``Grid`` backed by an in-memory mailbox that edge nodes reach over
HTTPS (``grid_http``). Flower's SecAgg+ workflow runs on the server against this Grid; each node runs its ClientApp
in one long-lived process (``grid_client``). Messages travel as Flower's own protobuf (``message_to_proto``).

A node registers (name -> a fresh int node id), long-polls for its messages, posts its replies and sends a heartbeat;
``get_node_ids`` lists the nodes heard from within ``heartbeat_window`` seconds whose connections are not all closed:
a killed node's connections close at once (its kernel resets them), so it disappears immediately (a hung one within
the window), and ``send_and_receive`` stops waiting for a node as soon as it is no longer live.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from flwr.app import Message, RecordDict
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.proto.message_pb2 import Message as ProtoMessage
from flwr.serverapp import Grid
from flwr.supercore.run import Run

log = logging.getLogger(__name__)

HEARTBEAT_WINDOW = 3.0
"""Seconds after its last request a node still counts as live."""
MAX_NODES = 10000
"""Registered node processes at most (live or not yet forgotten); registration answers 429 above."""
FORGET_AFTER = 60.0
"""A node silent this long (or replaced by a newer process of the same node) is forgotten at the next registration."""
LIVENESS_CHECK = 0.2
"""How often a waiting send_and_receive re-checks liveness (replies themselves wake it at once)."""


class GridError(Exception):
    """A request the grid refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class _Node:
    node_id: int
    name: str
    last_seen: float
    samples: int = 0
    """Training samples the node declared at registration (sizes SecAgg+'s ``max_weight``)."""
    inbox: deque[bytes] = field(default_factory=deque)
    replaced: bool = False
    told_over: bool = False
    connections: int = 0
    """Open HTTPS connections of this node; when the last one closes (the process died) it is gone at once."""
    closed: bool = False


class HttpGrid(Grid):
    """A Grid whose nodes are the processes that registered over HTTPS (see ``grid_http``)."""

    def __init__(self, run_id: int = 1, heartbeat_window: float = HEARTBEAT_WINDOW) -> None:
        self._run = Run.create_empty(run_id=run_id)
        self.heartbeat_window = heartbeat_window
        self._cv = threading.Condition()
        self._nodes: dict[int, _Node] = {}
        self._pending: dict[str, int] = {}
        """Message id -> the node it went to, until its reply arrives."""
        self._replies: dict[str, Message] = {}
        self.finished = False
        self.on_register: Callable[[int, str], None] | None = None
        """Called (outside the lock) with (node id, node name) after each registration."""

    # --- Grid (server side) ---

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        now = time.monotonic()
        with self._cv:
            return [n.node_id for n in self._nodes.values() if self._live(n, now)]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids: list[str] = []
        now = time.monotonic()
        with self._cv:
            for msg in messages:
                node = self._nodes.get(msg.metadata.dst_node_id)
                if node is None or not self._live(node, now):
                    continue  # gone: no reply will come; the workflow counts it as dropped
                msg_id = str(uuid.uuid4())
                msg.metadata.__dict__["_message_id"] = msg_id
                msg.metadata.__dict__["_run_id"] = self._run.run_id
                # Serialised now: the workflow reuses one RecordDict across messages.
                node.inbox.append(message_to_proto(msg).SerializeToString())
                self._pending[msg_id] = node.node_id
                ids.append(msg_id)
            self._cv.notify_all()
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        with self._cv:
            return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Push, then wait until every reply arrived, every node still owing one is gone, or ``timeout``."""
        waiting = set(self.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        with self._cv:
            while waiting:
                got = [self._replies.pop(i) for i in list(waiting) if i in self._replies]
                replies.extend(got)
                waiting -= {m.metadata.reply_to_message_id for m in got}
                now = time.monotonic()
                owed = [self._nodes.get(self._pending.get(i, -1)) for i in waiting]
                if not any(n is not None and self._live(n, now) for n in owed):
                    break
                if deadline is not None and now >= deadline:
                    break
                left = LIVENESS_CHECK if deadline is None else min(LIVENESS_CHECK, deadline - now)
                self._cv.wait(left)
            for i in waiting:  # never answered: forget them (a late reply is refused)
                self._pending.pop(i, None)
        return replies

    def finish(self) -> None:
        """The run is over: nodes polling from now on are told so (HTTP 410) and exit."""
        with self._cv:
            self.finished = True
            self._cv.notify_all()

    def not_told(self) -> list[str]:
        """Live nodes that have not yet been told that the run is over."""
        now = time.monotonic()
        with self._cv:
            return sorted(n.name for n in self._nodes.values() if self._live(n, now) and not n.told_over)

    # --- node side (called by the HTTPS handlers) ---

    def register(self, name: str, samples: int = 0) -> int:
        """A fresh node id for a (re)starting node process; an older process of the same node is dropped."""
        with self._cv:
            self._forget_stale(time.monotonic())
            if len(self._nodes) >= MAX_NODES:
                raise GridError(429, f"{MAX_NODES} nodes are registered already")
            for old in self._nodes.values():
                if old.name == name:
                    old.replaced = True
            node_id = secrets.randbits(53) + 1  # fits Flower's sint64 records and a JSON number
            while node_id in self._nodes:
                node_id = secrets.randbits(53) + 1
            self._nodes[node_id] = _Node(node_id, name, time.monotonic(), samples)
            self._cv.notify_all()
        log.info("Node %s registered as %d", name, node_id)
        if self.on_register is not None:
            self.on_register(node_id, name)
        return node_id

    def largest_samples(self) -> int:
        """The largest sample count a live node declared (0 when none did)."""
        now = time.monotonic()
        with self._cv:
            return max((n.samples for n in self._nodes.values() if self._live(n, now)), default=0)

    def heartbeat(self, node_id: int) -> None:
        with self._cv:
            self._node(node_id).last_seen = time.monotonic()

    def connection_opened(self, node_id: int) -> None:
        with self._cv:
            node = self._nodes.get(node_id)
            if node is not None:
                node.connections += 1
                node.closed = False

    def connection_closed(self, node_id: int) -> None:
        """A node's connection ended; with none left (a killed process) waiting rounds stop waiting for it now."""
        with self._cv:
            node = self._nodes.get(node_id)
            if node is not None:
                node.connections -= 1
                node.closed = node.connections <= 0
                self._cv.notify_all()

    def next_message(self, node_id: int, wait: float) -> bytes | None:
        """The node's next message (protobuf), or None after ``wait`` seconds; GridError 410 once the run is over."""
        deadline = time.monotonic() + wait
        with self._cv:
            while True:
                node = self._node(node_id)
                node.last_seen = time.monotonic()
                if node.inbox:
                    return node.inbox.popleft()
                if self.finished:
                    node.told_over = True
                    raise GridError(410, "the training is over")
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cv.wait(left)

    def post_reply(self, node_id: int, body: bytes) -> None:
        """Store a node's reply (protobuf); refuses garbage and replies to messages the node was not sent."""
        proto = ProtoMessage()
        try:
            proto.ParseFromString(body)
            reply = message_from_proto(proto)
        except Exception as exc:  # protobuf's DecodeError or a message Flower cannot rebuild
            raise GridError(400, f"the body is not a Flower message ({type(exc).__name__})") from exc
        reply_to = reply.metadata.reply_to_message_id
        with self._cv:
            node = self._node(node_id)
            node.last_seen = time.monotonic()
            if self._pending.get(reply_to) != node_id:
                raise GridError(409, f"node {node_id} has no pending message {reply_to!r}")
            reply.metadata.__dict__["_src_node_id"] = node_id
            del self._pending[reply_to]
            self._replies[reply_to] = reply
            self._cv.notify_all()

    def _forget_stale(self, now: float) -> None:
        """Drop nodes replaced or silent for ``FORGET_AFTER`` seconds that owe no reply (bounds memory)."""
        owing = set(self._pending.values())
        for node_id, node in list(self._nodes.items()):
            stale = node.replaced or now - node.last_seen > FORGET_AFTER
            if stale and node_id not in owing:
                del self._nodes[node_id]

    def _node(self, node_id: int) -> _Node:
        node = self._nodes.get(node_id)
        if node is None or node.replaced:
            raise GridError(404, f"unknown node id {node_id}: register again")
        return node

    def _live(self, node: _Node, now: float) -> bool:
        return not node.replaced and not node.closed and now - node.last_seen <= self.heartbeat_window
