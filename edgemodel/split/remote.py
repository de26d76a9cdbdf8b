"""Send features to a cloud-side tail over HTTP(S) with optional mTLS; serve tails; fall back per policy.

aiohttp + numpy + :mod:`edgemodel.split.codec` only, so the edge agent can import it.

Protocol: ``POST /v1/split/{model}/{version}/infer`` with a codec message (the cut tensor) as the
body and the cut's tensor name in ``X-Edgemodel-Cut``; the answer is a codec message with the
tail's outputs in FP32 (exact), plus ``X-Edgemodel-Tail-Seconds`` (tail compute) and
``X-Edgemodel-Server-Seconds`` (everything the server did once the body had arrived), so the
client can separate transfer time from compute. ``GET /v1/split/healthz`` lists the tails a server holds.

Errors: anything that means the tail could not be reached or is overloaded (connection refused,
DNS, TLS handshake, timeouts, HTTP 502/503/504) raises :class:`CloudUnreachable`; a tail that
answers with another error raises :class:`TailRejected`. After a :class:`CloudUnreachable` the
client stops trying for ``cooldown_s`` seconds so requests fall back at once instead of each
waiting for a timeout. :func:`run_split` applies the fallback policy: run the whole model locally
(when one is assigned) or raise :class:`SplitUnavailable`, which the agent answers with 503.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from aiohttp import web

from edgemodel.split import codec

log = logging.getLogger(__name__)

INFER_PATH = "/v1/split/{model}/{version}/infer"
HEALTH_PATH = "/v1/split/healthz"
HEADER_CUT = "X-Edgemodel-Cut"
HEADER_TAIL_SECONDS = "X-Edgemodel-Tail-Seconds"
HEADER_SERVER_SECONDS = "X-Edgemodel-Server-Seconds"
DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024

Arrays = Mapping[str, np.ndarray]
PartRunner = Callable[[Arrays], Arrays]
"""A head, tail or full model: named input arrays -> named output arrays (e.g. ``runtime.OrtPart``)."""


class SplitRemoteError(Exception):
    """The cloud-side tail did not produce outputs."""


class CloudUnreachable(SplitRemoteError):
    """The tail could not be reached (network, TLS, timeout) or said it is unavailable (502/503/504)."""


class TailRejected(SplitRemoteError):
    """The tail answered with an error (e.g. 400 bad features, 404 unknown model, 409 wrong cut)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class SplitUnavailable(Exception):
    """No answer can be produced (the tail failed and the policy or the missing local model forbids fallback)."""

    http_status = 503


class FallbackPolicy(StrEnum):
    """What the edge does when the cloud tail fails."""

    LOCAL = "local"
    """Run the whole model on the edge (when a full model is assigned there), else fail with 503."""
    FAIL = "fail"
    """Answer 503 at once."""


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for HTTPS: ``ca_file`` verifies the peer; ``cert_file``/``key_file`` identify this side (mTLS)."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    def _check(self) -> None:
        for name, path in (("caFile", self.ca_file), ("certFile", self.cert_file), ("keyFile", self.key_file)):
            if path is not None and not Path(path).is_file():
                raise ValueError(f"tls.{name}: {path} does not exist; mount the secret or fix the path")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("tls: certFile and keyFile go together; set both or neither")

    def client_context(self) -> ssl.SSLContext:
        """Verifies the server against ``ca_file`` (system CAs when unset); presents the client cert if set."""
        self._check()
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH,
                                             cafile=str(self.ca_file) if self.ca_file else None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.cert_file and self.key_file:
            context.load_cert_chain(str(self.cert_file), str(self.key_file))
        return context

    def server_context(self, require_client_cert: bool = True) -> ssl.SSLContext:
        """Serves ``cert_file``; with ``require_client_cert`` only clients with a cert signed by ``ca_file`` get in."""
        self._check()
        if not (self.cert_file and self.key_file):
            raise ValueError("tls: a server needs certFile and keyFile")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(self.cert_file), str(self.key_file))
        if require_client_cert:
            if not self.ca_file:
                raise ValueError("tls.caFile: needed to verify client certificates (mTLS)")
            context.load_verify_locations(cafile=str(self.ca_file))
            context.verify_mode = ssl.CERT_REQUIRED
        return context


@dataclass(frozen=True)
class RemoteResult:
    """Outputs of one remote tail call and where the time went (seconds)."""

    outputs: dict[str, np.ndarray]
    bytes_up: int
    bytes_down: int
    round_trip_s: float
    server_s: float
    tail_s: float

    @property
    def transfer_s(self) -> float:
        """Round trip minus the server's own time: the network (and HTTP) share."""
        return max(0.0, self.round_trip_s - self.server_s)


class RemoteTail:
    """Async client of one model's cloud-side tail (use as ``async with``; one pooled connection set)."""

    def __init__(self, url: str, model: str, version: str, cut: str,
                 wire: codec.WireFormat | None = None, tls: TlsFiles | None = None, timeout_s: float = 10.0,
                 connect_timeout_s: float = 2.0, cooldown_s: float = 5.0,
                 max_response_bytes: int = codec.DEFAULT_MAX_DECODED_BYTES) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"split.cloudUrl: {url!r} must start with http:// or https://")
        if tls is not None and url.startswith("http://"):
            raise ValueError(f"split.cloudUrl: {url!r} is plain http but TLS files are configured; use https://")
        if timeout_s <= 0 or connect_timeout_s <= 0 or cooldown_s < 0:
            raise ValueError("split: timeouts must be > 0 and the cool-down >= 0 seconds")
        self.url = url.rstrip("/") + INFER_PATH.format(model=model, version=version)
        self.health_url = url.rstrip("/") + HEALTH_PATH
        self.cut = cut
        self.wire = wire or codec.WireFormat(codec.Precision.INT8)
        self._ssl: ssl.SSLContext | bool = (tls or TlsFiles()).client_context() if url.startswith("https://") else False
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=connect_timeout_s)
        self.cooldown_s = cooldown_s
        self.max_response_bytes = max_response_bytes
        self._session: aiohttp.ClientSession | None = None
        self._down_until = 0.0
        self._down_reason = ""

    async def __aenter__(self) -> RemoteTail:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self._ssl, limit=64)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        return self._session

    def available(self) -> bool:
        """False while in the cool-down after the tail was unreachable."""
        return time.monotonic() >= self._down_until

    @property
    def down_reason(self) -> str:
        """Why the tail was last marked unreachable ('' if never)."""
        return self._down_reason

    def mark_down(self, reason: str) -> None:
        if self.cooldown_s > 0:
            self._down_until = time.monotonic() + self.cooldown_s
            self._down_reason = reason

    def encode(self, features: Arrays) -> bytes:
        """The request body for ``features`` in this client's wire format."""
        return codec.encode(features, self.wire)

    async def infer(self, features: Arrays) -> RemoteResult:
        """Encode ``features`` and run the remote tail on them."""
        return await self.send(self.encode(features))

    async def send(self, body: bytes) -> RemoteResult:
        """Send an encoded body; raise :class:`CloudUnreachable` or :class:`TailRejected` on failure."""
        if not self.available():
            raise CloudUnreachable(f"cloud tail {self.url} is in a {self.cooldown_s:g} s cool-down after: "
                                   f"{self._down_reason}")
        headers = {HEADER_CUT: self.cut, "Content-Type": codec.MEDIA_TYPE}
        start = time.perf_counter()
        try:
            async with self._client().post(self.url, data=body, headers=headers) as response:
                payload = await response.read()
                status = response.status
                server_s = float(response.headers.get(HEADER_SERVER_SECONDS, "0") or 0)
                tail_s = float(response.headers.get(HEADER_TAIL_SECONDS, "0") or 0)
        except (aiohttp.ClientError, TimeoutError, OSError, ssl.SSLError) as exc:
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            self.mark_down(reason)
            raise CloudUnreachable(f"cloud tail {self.url} unreachable: {reason}") from exc
        round_trip = time.perf_counter() - start
        if status in (502, 503, 504):
            reason = f"HTTP {status}: {payload[:200].decode('utf-8', 'replace')}"
            self.mark_down(reason)
            raise CloudUnreachable(f"cloud tail {self.url} unavailable: {reason}")
        if status != 200:
            raise TailRejected(f"cloud tail {self.url} answered HTTP {status}: "
                               f"{payload[:300].decode('utf-8', 'replace')}", status)
        try:
            outputs = codec.decode(payload, self.max_response_bytes)
        except codec.CodecError as exc:
            raise TailRejected(f"cloud tail {self.url} sent an undecodable answer: {exc}", 502) from exc
        return RemoteResult(outputs, len(body), len(payload), round_trip, server_s, tail_s)

    async def ping(self, count: int = 5) -> float:
        """Median seconds of ``count`` health round trips on a warm connection (after one warm-up).

        This is the RTT the planner should use: it includes what HTTP(S) and this host's CPU add
        to the network's round trip.
        """
        if not 1 <= count <= 100:
            raise ValueError(f"count: {count} must be between 1 and 100")
        await self.health()
        times = []
        for _ in range(count):
            start = time.perf_counter()
            await self.health()
            times.append(time.perf_counter() - start)
        return sorted(times)[len(times) // 2]

    async def health(self) -> dict[str, Any]:
        """The server's health document; raises :class:`CloudUnreachable` when it cannot be fetched."""
        try:
            async with self._client().get(self.health_url) as response:
                response.raise_for_status()
                data: dict[str, Any] = await response.json()
                return data
        except (aiohttp.ClientError, TimeoutError, OSError, ssl.SSLError) as exc:
            raise CloudUnreachable(f"cloud tail health {self.health_url} failed: {exc}") from exc


@dataclass(frozen=True)
class SplitOutcome:
    """The answer of one request and its per-stage costs (seconds, bytes); ``path`` is split or local."""

    outputs: dict[str, np.ndarray]
    path: str
    head_s: float = 0.0
    encode_s: float = 0.0
    transfer_s: float = 0.0
    tail_s: float = 0.0
    local_s: float = 0.0
    bytes_up: int = 0
    bytes_down: int = 0
    fallback_reason: str | None = None


def _timed(fn: PartRunner, feeds: Arrays) -> tuple[dict[str, np.ndarray], float]:
    start = time.perf_counter()
    out = dict(fn(feeds))
    return out, time.perf_counter() - start


async def run_split(head: PartRunner, remote: RemoteTail, fallback_full_model: PartRunner | None,
                    policy: FallbackPolicy, inputs: Arrays, executor: Executor | None = None) -> SplitOutcome:
    """Run the head here, the tail in the cloud; on a remote failure fall back per ``policy``.

    ``LOCAL`` runs ``fallback_full_model`` on ``inputs`` (if given); otherwise, and with ``FAIL``,
    :class:`SplitUnavailable` is raised. Compute runs in ``executor`` (default: the loop's) so
    the event loop stays free. Errors of the head itself propagate unchanged.
    """
    loop = asyncio.get_running_loop()

    async def fall_back(reason: str, head_s: float = 0.0, encode_s: float = 0.0) -> SplitOutcome:
        if policy is FallbackPolicy.LOCAL and fallback_full_model is not None:
            log.warning("Fell back to the local full model: %s", reason)
            outputs, local_s = await loop.run_in_executor(executor, _timed, fallback_full_model, inputs)
            return SplitOutcome(outputs, "local", head_s, encode_s, local_s=local_s, fallback_reason=reason)
        why = ("policy is fail" if policy is FallbackPolicy.FAIL
               else "no full model is assigned to this node for a local fallback")
        log.error("Refused a split request (%s): %s", why, reason)
        raise SplitUnavailable(f"split inference unavailable ({why}): {reason}")

    if not remote.available():
        return await fall_back(f"cloud tail {remote.url} in cool-down after: {remote.down_reason}")

    def head_and_encode() -> tuple[bytes, float, float]:
        features, head_s = _timed(head, inputs)
        start = time.perf_counter()
        body = remote.encode(features)
        return body, head_s, time.perf_counter() - start

    body, head_s, encode_s = await loop.run_in_executor(executor, head_and_encode)
    try:
        result = await remote.send(body)
    except SplitRemoteError as exc:
        return await fall_back(str(exc), head_s, encode_s)
    return SplitOutcome(result.outputs, "split", head_s, encode_s, result.transfer_s, result.tail_s,
                        bytes_up=result.bytes_up, bytes_down=result.bytes_down)


class TailRegistry:
    """Tails a cloud-side server holds, by (model, version) and cut tensor (``None``: any cut)."""

    def __init__(self) -> None:
        self._tails: dict[tuple[str, str], dict[str | None, PartRunner]] = {}

    def add(self, model: str, version: str, runner: PartRunner, cut: str | None = None) -> None:
        self._tails.setdefault((model, version), {})[cut] = runner

    def remove(self, model: str, version: str | None = None) -> None:
        for key in [k for k in self._tails if k[0] == model and (version is None or k[1] == version)]:
            del self._tails[key]

    def lookup(self, model: str, version: str, cut: str | None) -> PartRunner:
        """The runner for a request; raises ``LookupError`` with a message for the client."""
        entry = self._tails.get((model, version))
        if entry is None:
            raise LookupError(f"no tail for model {model!r} version {version!r} on this server")
        if cut in entry:
            return entry[cut]
        if None in entry:
            return entry[None]
        if cut is None and len(entry) == 1:
            return next(iter(entry.values()))
        raise LookupError(f"model {model!r} version {version!r} has no tail for cut {cut!r}; "
                          f"this server holds cuts {sorted(c for c in entry if c)}")

    def describe(self) -> list[dict[str, Any]]:
        return [{"model": m, "version": v, "cuts": sorted(c or "*" for c in cuts)}
                for (m, v), cuts in sorted(self._tails.items())]


def make_tail_app(session_runner: PartRunner | TailRegistry, *, model: str = "model", version: str = "1",
                  cut: str | None = None, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
                  max_inflight: int = 32, executor: Executor | None = None) -> web.Application:
    """An aiohttp app serving tails: one ``session_runner`` (registered as model/version/cut) or a registry.

    Serve it with TLS via :func:`start_tail_server` (``TlsFiles.server_context()`` requires client
    certs). More than ``max_inflight`` concurrent requests get 503 (the edge then falls back).
    """
    registry = session_runner if isinstance(session_runner, TailRegistry) else TailRegistry()
    if not isinstance(session_runner, TailRegistry):
        registry.add(model, version, session_runner, cut)
    inflight = asyncio.Semaphore(max_inflight)

    async def infer(request: web.Request) -> web.Response:
        name, ver = request.match_info["model"], request.match_info["version"]
        try:
            runner = registry.lookup(name, ver, request.headers.get(HEADER_CUT))
        except LookupError as exc:
            status = 404 if "no tail for model" in str(exc) else 409
            return web.Response(status=status, text=str(exc))
        if inflight.locked():
            log.warning("Rejected a split request for %s/%s: %d requests in flight", name, ver, max_inflight)
            return web.Response(status=503, text=f"tail overloaded ({max_inflight} requests in flight); retry later")
        async with inflight:
            body = await request.read()
            start = time.perf_counter()  # after the upload: the client attributes the upload to transfer
            try:
                features = codec.decode(body)
            except codec.CodecError as exc:
                return web.Response(status=400, text=f"bad feature message: {exc}")
            cut_name = request.headers.get(HEADER_CUT)
            if cut_name is not None and cut_name not in features:
                return web.Response(status=400, text=f"the body holds {sorted(features)}, not the cut {cut_name!r}")
            loop = asyncio.get_running_loop()
            handle = getattr(runner, "handle", None)  # a pipeline stage that forwards (edgemodel.split.stages)
            try:
                if handle is not None:
                    outputs, tail_s = await handle(features, executor)
                else:
                    outputs, tail_s = await loop.run_in_executor(executor, _timed, runner, features)
            except SplitUnavailable as exc:
                return web.Response(status=503, text=str(exc))
            except KeyError as exc:
                return web.Response(status=400, text=f"features do not fit the tail: {exc.args[0] if exc.args else exc}")
            except Exception:
                log.exception("Failed to run the tail of %s/%s", name, ver)
                return web.Response(status=500, text="the tail failed; see the cloud agent's log")
            payload = codec.encode(outputs)
        headers = {HEADER_TAIL_SECONDS: f"{tail_s:.6f}", HEADER_SERVER_SECONDS: f"{time.perf_counter() - start:.6f}"}
        return web.Response(body=payload, content_type=codec.MEDIA_TYPE, headers=headers)

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "tails": registry.describe()})

    app = web.Application(client_max_size=max_request_bytes)
    app.router.add_post(INFER_PATH, infer)
    app.router.add_get(HEALTH_PATH, health)
    return app


@dataclass
class RunningServer:
    """A started aiohttp server; ``await close()`` stops it."""

    runner: web.AppRunner
    url: str
    port: int

    async def close(self) -> None:
        await self.runner.cleanup()


async def start_tail_server(app: web.Application, host: str = "127.0.0.1", port: int = 0,
                            ssl_context: ssl.SSLContext | None = None) -> RunningServer:
    """Serve ``app`` on ``host:port`` (0 picks a free port), over TLS when ``ssl_context`` is given."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    await site.start()
    server = site._server
    sockets = getattr(server, "sockets", None) or []
    bound = int(sockets[0].getsockname()[1]) if sockets else port
    scheme = "https" if ssl_context else "http"
    return RunningServer(runner, f"{scheme}://{host}:{bound}", bound)
