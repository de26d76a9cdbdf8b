"""Request bodies from untrusted clients: bounded in size, in waiting time and after decompression.

``RequestLimits`` holds every bound a request is held to (docs/architecture.md, "Limits");
``read_body`` reads an aiohttp body under them and ``decompress`` undoes a Content-Encoding
without ever producing more than the limit (a gzip bomb stops at the bound, not in memory).
"""

from __future__ import annotations

import asyncio
import zlib
from dataclasses import dataclass

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from edge_agent.codec import DecodeLimits
from edge_agent.errors import InvalidInput, PayloadTooLarge, RequestTimeout, UnsupportedMediaType

MiB = 1024 * 1024
ENCODINGS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
"""zlib ``wbits`` per Content-Encoding (deflate is the zlib format, RFC 9110; raw deflate is tried too)."""
_CHUNK = 256 * 1024


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """What one inference request may cost; defaults sized for an edge device (all configurable)."""

    max_body_bytes: int = 8 * MiB
    """The body as sent (compressed or not); larger gets 413."""
    max_decompressed_bytes: int = 8 * MiB
    """The body after undoing Content-Encoding; larger gets 413."""
    max_json_bytes: int = 3 * MiB
    """The JSON part of a request (parsing costs up to ~24x its size in memory, at its peak)."""
    max_elements: int = 4 << 20
    """Tensor elements per request, all inputs together."""
    body_read_timeout_s: float = 10.0
    """Longest wait for the next bytes of a body; a stalled upload gets 408."""

    @property
    def decode(self) -> DecodeLimits:
        return DecodeLimits(max_elements=self.max_elements)


async def read_body(request: web.BaseRequest, limits: RequestLimits) -> bytes | bytearray:
    """The raw body (still encoded), refused with 413 past ``max_body_bytes`` and 408 when it stalls."""
    limit = limits.max_body_bytes
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge(f"request body of {length} bytes exceeds the limit of {limit} bytes (--max-body-bytes)")
    if length is not None:  # one buffer of the announced size: no re-allocations while it fills
        return await _read_exactly(request, length, limits)
    body = bytearray()
    while chunk := await _next_chunk(request, limits, len(body)):
        if len(body) + len(chunk) > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes (--max-body-bytes)")
        body += chunk
    return body


async def _read_exactly(request: web.BaseRequest, length: int, limits: RequestLimits) -> bytes | bytearray:
    try:  # what has already arrived: a small body usually came with its headers, and needs no wait at all
        first = request.content.read_nowait(length)
    except (ConnectionError, HttpProcessingError) as exc:
        raise InvalidInput(f"the request body ended after 0 bytes: {exc}") from None
    if len(first) == length:
        return first
    body = bytearray(length)
    body[: len(first)] = first
    pos = len(first)
    while pos < length:
        chunk = await _next_chunk(request, limits, pos)
        if not chunk:
            raise InvalidInput(f"the request body ended after {pos} of the {length} bytes Content-Length announced")
        body[pos : pos + len(chunk)] = chunk  # aiohttp never hands over more than Content-Length
        pos += len(chunk)
    return body


async def _next_chunk(request: web.BaseRequest, limits: RequestLimits, received: int) -> bytes:
    """The next piece of the body (b"" at its end); 408 when none comes within the read timeout."""
    try:
        async with asyncio.timeout(limits.body_read_timeout_s):
            return await request.content.readany()
    except (ConnectionError, HttpProcessingError) as exc:  # the client went away, or broke the chunked framing
        raise InvalidInput(f"the request body ended after {received} bytes: {exc}") from None
    except TimeoutError:
        raise RequestTimeout(
            f"the request body stalled: no bytes for {limits.body_read_timeout_s:g} s after {received} bytes "
            "(--body-read-timeout); send the whole body without pauses"
        ) from None


def encoding_of(header: str) -> str:
    """A Content-Encoding header's value as ``decompress`` takes it ("" for none); 415 unless the agent decodes it."""
    encoding = header.strip().lower()
    if encoding in ("", "identity"):
        return ""
    if encoding not in ENCODINGS:
        raise UnsupportedMediaType(f"Content-Encoding {encoding[:40]} is not supported; use gzip, deflate or none")
    return encoding


def decompress(body: bytes | bytearray, encoding: str, limit: int) -> bytes | bytearray:
    """Undo ``encoding`` ("" returns ``body``); 413 past ``limit`` bytes, 400 for corrupt or truncated data."""
    if not encoding:
        return body
    try:
        return _inflate(body, ENCODINGS[encoding], limit, encoding)
    except zlib.error as first:
        if encoding != "deflate":
            raise InvalidInput(f"Content-Encoding {encoding}: the body is not valid {encoding} data ({first})") from None
        try:  # some clients send raw deflate (no zlib header) as "deflate"
            return _inflate(body, -zlib.MAX_WBITS, limit, encoding)
        except zlib.error:
            raise InvalidInput(f"Content-Encoding deflate: the body is not valid deflate data ({first})") from None


def _inflate(body: bytes | bytearray, wbits: int, limit: int, encoding: str) -> bytearray:
    inflater = zlib.decompressobj(wbits)
    out = bytearray()
    view = memoryview(body)
    pos = 0
    while not inflater.eof:
        # feed the input piece by piece; never ask for more output than the limit allows (+1 detects excess)
        if inflater.unconsumed_tail:
            data: bytes | memoryview = inflater.unconsumed_tail
        else:
            data, pos = view[pos : pos + _CHUNK], min(pos + _CHUNK, len(view))
        produced = inflater.decompress(data, min(_CHUNK, limit + 1 - len(out)))
        out += produced
        if len(out) > limit:
            raise PayloadTooLarge(
                f"the {encoding} body decompresses to more than the limit of {limit} bytes (--max-decompressed-bytes)"
            )
        if not data and not produced:
            break
    if not inflater.eof:
        raise InvalidInput(f"Content-Encoding {encoding}: the body ends before the end of the {encoding} stream (truncated)")
    if inflater.unused_data:
        raise InvalidInput(f"Content-Encoding {encoding}: {len(inflater.unused_data)} bytes follow the end of the {encoding} stream")
    return out
