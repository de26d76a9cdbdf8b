"""The HTTP/1.1 hot path: plain inference requests answered straight from the connection's bytes.

aiohttp's per-connection protocol (``HotPathHandler`` subclasses it) still owns every connection.
Before its parser sees the bytes, a request that is exactly the common case - ``POST
/v2/models/NAME[/versions/V]/infer``, HTTP/1.1, a ``Content-Length`` body of at most
``MAX_BODY`` bytes, no ``Expect``, ``Transfer-Encoding`` or ``Upgrade``, nothing unusual in its
head - is parsed here and answered through ``RestApi.infer_bytes`` (the same auth, limits, codec,
metrics and errors as through aiohttp), without aiohttp's request, response and writer objects.
Anything else, and everything after it on that connection, goes to aiohttp with the bytes as they
came: its parser, its errors and its limits answer as before. Keep-alive, pipelining (answers in
order), the keep-alive timeout and graceful shutdown (waits for the request in progress) are kept.
Measured in docs/benchmarks.md (issue 19).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Coroutine, Generator
from email.utils import formatdate
from http import HTTPStatus
from typing import Any

from aiohttp.http import SERVER_SOFTWARE

from edge_agent.rest import HEADER_LENGTH, RequestHead, RestApi
from edgemodel.http_runner import JsonErrorHandler

PREFIX = b"POST /v2/models/"
MAX_HEAD = 8190
"""A longer head (aiohttp's line limit) goes to aiohttp."""
MAX_BODY = 256 * 1024
"""A longer body goes to aiohttp, which reads it under the body timeouts."""
MAX_PIPELINED = 1 << 20
"""Bytes buffered while a request is in progress; past this, reading pauses until it is answered."""
_PATH_CHARS = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~/")
_TOKEN_CHARS = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~")
_ODD_VALUE = re.compile(rb"[^\x20-\x7e\t]").search
"""A header value byte that is a control character or not ASCII: aiohttp's parser decides about it."""
_HANDOVER = object()
_INCOMPLETE = object()
_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}


class HotRequest:
    """One parsed hot request: where it goes, its head and body, whether the connection stays open."""

    __slots__ = ("body", "head", "keep_alive", "name", "size", "version")

    def __init__(self, name: str, version: str | None, head: RequestHead, body: bytes, size: int, keep_alive: bool) -> None:
        self.name, self.version, self.head, self.body, self.size, self.keep_alive = name, version, head, body, size, keep_alive


def parse(buf: bytes, max_body: int = MAX_BODY) -> HotRequest | object:
    """A hot request at the start of ``buf``, ``_INCOMPLETE`` (wait for more) or ``_HANDOVER`` (aiohttp's).

    ``max_body``: a longer body goes to aiohttp (the lower of ``MAX_BODY`` and the body limit: the 413 is aiohttp's)."""
    if not buf.startswith(PREFIX):
        return _INCOMPLETE if PREFIX.startswith(buf) else _HANDOVER
    end = buf.find(b"\r\n\r\n", 0, MAX_HEAD)
    if end < 0:
        return _INCOMPLETE if len(buf) < MAX_HEAD else _HANDOVER
    lines = buf[:end].split(b"\r\n")
    request_line = lines[0].split(b" ")
    if len(request_line) != 3 or request_line[2] != b"HTTP/1.1":
        return _HANDOVER
    target = request_line[1]
    if not target.endswith(b"/infer") or not _PATH_CHARS.issuperset(target) or b"//" in target or b"/." in target:
        return _HANDOVER  # a query, escapes or dot segments: aiohttp normalises the path first
    parts = target[11:-6].split(b"/")  # after /v2/models/, before /infer
    if len(parts) == 1 and parts[0]:
        name, version = parts[0].decode(), None
    elif len(parts) == 3 and parts[1] == b"versions" and parts[0] and parts[2]:
        name, version = parts[0].decode(), parts[2].decode()
    else:
        return _HANDOVER  # the router's 404
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        key, sep, value = line.partition(b":")
        if not sep or not key or not _TOKEN_CHARS.issuperset(key) or _ODD_VALUE(value):
            return _HANDOVER  # malformed or folded: aiohttp's parser answers
        key = key.lower()
        if key in headers:
            return _HANDOVER
        headers[key] = value.strip(b" \t")
    length = headers.get(b"content-length")
    if (
        length is None or not length.isdigit() or len(length) > 9
        or b"transfer-encoding" in headers or b"expect" in headers or b"upgrade" in headers
    ):  # fmt: skip
        return _HANDOVER
    size = int(length)
    if size > max_body:
        return _HANDOVER
    connection = headers.get(b"connection", b"").lower()
    if connection not in (b"", b"close", b"keep-alive"):
        return _HANDOVER
    keep_alive = connection != b"close"
    total = end + 4 + size
    if len(buf) < total:
        return _INCOMPLETE
    header_length = headers.get(HEADER_LENGTH.lower().encode())
    head = RequestHead(
        target.decode(), headers.get(b"authorization", b"").decode("latin-1"),
        None if header_length is None else header_length.decode("latin-1"),
        headers.get(b"content-encoding", b"").decode("latin-1"),
    )  # fmt: skip
    return HotRequest(name, version, head, buf[end + 4 : total], total, keep_alive)


class _Date:
    """The Date header, formatted once a second."""

    second = -1
    value = b""

    @classmethod
    def get(cls) -> bytes:
        now = int(time.time())
        if now != cls.second:
            cls.second, cls.value = now, formatdate(now, usegmt=True).encode()
        return cls.value


def response_bytes(status: int, body: bytes, headers: dict[str, str], keep_alive: bool) -> bytes:
    """The whole HTTP/1.1 answer: status line, headers, body."""
    lines = [b"HTTP/1.1 %d %s" % (status, _REASONS.get(status, b"Unknown")), b"Date: " + _Date.get(), SERVER]
    lines += [f"{k}: {v}".encode("latin-1") for k, v in headers.items()]
    lines.append(b"Content-Length: %d" % len(body))
    if not keep_alive:
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


SERVER = b"Server: " + SERVER_SOFTWARE.encode()


def run_eagerly(coro: Coroutine[Any, Any, None], loop: asyncio.AbstractEventLoop) -> None:
    """Run ``coro`` now, up to its first real wait; only then does it become a task (the rest runs there).

    A tiny model's request never waits (it runs inline), so it is answered within ``data_received``:
    no task and no extra trip through the event loop (Python 3.12's eager tasks, on 3.11).
    """
    try:
        first = coro.send(None)
    except StopIteration:
        return
    task = loop.create_task(_Resumed(coro, first).wait())
    task.add_done_callback(lambda _: coro.close())  # cancelled before its first step: still run coro's finally


class _Resumed:
    """The rest of a coroutine that already yielded ``first`` (a future to wait on), as an awaitable."""

    __slots__ = ("coro", "first")

    def __init__(self, coro: Coroutine[Any, Any, None], first: Any) -> None:
        self.coro, self.first = coro, first

    def __await__(self) -> Generator[Any, Any, None]:
        value = self.first
        while True:
            try:
                sent = yield value
            except BaseException as exc:  # cancellation (or any throw) goes into the coroutine
                try:
                    value = self.coro.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    value = self.coro.send(sent)
                except StopIteration:
                    return

    async def wait(self) -> None:
        await self


class HotPathHandler(JsonErrorHandler):
    """aiohttp's per-connection protocol with the hot path in front of its parser."""

    __slots__ = ("_api", "_hot_buffer", "_hot_busy", "_hot_off", "_hot_timer", "_max_body")

    def __init__(self, *args: Any, api: RestApi, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._api = api
        self._max_body = min(MAX_BODY, api.limits.max_body_bytes)
        self._hot_buffer = b""
        self._hot_busy = False
        self._hot_off = False
        self._hot_timer: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        if self._hot_off:
            super().data_received(data)
            return
        if self._force_close or self._close:
            return
        buf = self._hot_buffer + data if self._hot_buffer else data
        self._hot_buffer = b""
        if self._hot_busy:  # pipelined behind a request in progress: answered after it, in order
            self._hot_buffer = buf
            if len(buf) > MAX_PIPELINED and self.transport is not None:
                self.transport.pause_reading()
            return
        self._consume(buf)

    def _consume(self, buf: bytes) -> None:
        if self._hot_timer is not None:
            self._hot_timer.cancel()
            self._hot_timer = None
        if not buf:
            return
        if self._request_in_progress or self._messages:
            self._handover(buf)
            return
        request = parse(buf, self._max_body)
        if request is _INCOMPLETE:  # the rest is on its way; a stalled one goes to aiohttp's body timeouts
            self._hot_buffer = buf
            self._hot_timer = self._loop.call_later(self._api.limits.body_read_timeout_s, self._handover_buffer)
            return
        if not isinstance(request, HotRequest):
            self._handover(buf)
            return
        self._hot_buffer = buf[request.size :]
        self._hot_busy = True
        self._request_in_progress = True
        if self._api.needs_no_task(request.name, request.version):
            run_eagerly(self._answer(request), self._loop)
        else:  # split heads (an HTTP client with timeouts) and batching need a task from the start
            self._loop.create_task(self._answer(request))

    def _handover_buffer(self) -> None:
        self._hot_timer = None
        buf, self._hot_buffer = self._hot_buffer, b""
        self._handover(buf)

    def _handover(self, buf: bytes) -> None:
        """aiohttp takes this connection from here on, starting with ``buf``."""
        self._hot_off = True
        super().data_received(buf)

    async def _answer(self, request: HotRequest) -> None:
        keep_alive = request.keep_alive
        try:
            assert self._manager is not None
            self._manager.requests_count += 1
            status, body, headers = await self._api.infer_bytes(request.head, request.body, request.name, request.version)
            keep_alive = keep_alive and not (self._force_close or self._close)
            transport = self.transport
            if transport is not None and not transport.is_closing():
                transport.write(response_bytes(status, body, headers, keep_alive))
                if not keep_alive:
                    transport.close()
        finally:
            self._request_in_progress = False
            self._hot_busy = False
            if self._handler_waiter is not None and not self._handler_waiter.done():
                self._handler_waiter.set_result(None)
        if not keep_alive or self.transport is None:
            self._hot_buffer = b""
            return
        self._next_keepalive_close_time = self._loop.time() + self._keepalive_timeout
        buf, self._hot_buffer = self._hot_buffer, b""
        if len(buf) > MAX_PIPELINED:
            self.transport.resume_reading()
        self._consume(buf)
