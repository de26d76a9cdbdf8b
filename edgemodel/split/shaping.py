"""A TCP proxy that emulates a link: bandwidth per direction and a fixed round-trip time (asyncio, stdlib).

Used by the split benchmark where the kernel has no ``netem`` qdisc (``tc qdisc add ... netem``
answers "Specified qdisc kind is unknown" on these machines), and by the tests to capture the
bytes that travel (to prove they are encrypted).

Each direction is one store-and-forward link shared by every connection through the proxy:
a chunk that arrives at ``t`` starts serialising at ``max(t, link free)``, takes
``8 * bytes / rate`` and is delivered ``rtt / 2`` after its last bit left. Chunks are cut to
``piece_bytes`` so large messages stream instead of arriving in one lump. The proxy buffers
without limit (no TCP back-pressure from the emulated link, no loss) and TCP between the
endpoints and the proxy runs over loopback, so slow start and congestion control over the
emulated RTT are not modelled. Run ``python -m edgemodel.split.shaping --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


class LinkShaper:
    """Delivery times of one direction of a link (pure; no clock of its own)."""

    def __init__(self, bandwidth_mbit_s: float, one_way_delay_s: float) -> None:
        if bandwidth_mbit_s <= 0 or one_way_delay_s < 0:
            raise ValueError("bandwidth must be > 0 Mbit/s and the delay >= 0 s")
        self.bytes_per_s = bandwidth_mbit_s * 1e6 / 8.0
        self.delay_s = one_way_delay_s
        self.free_at = 0.0

    def schedule(self, now: float, nbytes: int) -> float:
        """When a chunk of ``nbytes`` that arrived at ``now`` reaches the other end."""
        start = max(now, self.free_at)
        self.free_at = start + nbytes / self.bytes_per_s
        return self.free_at + self.delay_s


@dataclass
class ProxyStats:
    """Bytes forwarded per direction (``up``: client -> upstream) and, if asked, the bytes themselves."""

    up: int = 0
    down: int = 0
    connections: int = 0
    closed: int = 0
    capture_limit: int = 0
    captured_up: bytearray = field(default_factory=bytearray)
    captured_down: bytearray = field(default_factory=bytearray)

    def to_dict(self) -> dict[str, int]:
        return {"up": self.up, "down": self.down, "connections": self.connections, "closed": self.closed}

    def record(self, direction: str, chunk: bytes) -> None:
        if direction == "up":
            self.up += len(chunk)
            room = self.capture_limit - len(self.captured_up)
            if room > 0:
                self.captured_up += chunk[:room]
        else:
            self.down += len(chunk)
            room = self.capture_limit - len(self.captured_down)
            if room > 0:
                self.captured_down += chunk[:room]


class ShapingProxy:
    """Forwards ``listen`` -> ``upstream`` through an emulated link (``async with`` or start/close)."""

    def __init__(self, upstream_host: str, upstream_port: int, bandwidth_mbit_s: float, rtt_ms: float,
                 listen_host: str = "127.0.0.1", listen_port: int = 0, piece_bytes: int = 4096,
                 capture_limit: int = 0, stats_file: Path | None = None) -> None:
        self.stats_file = stats_file
        self.upstream = (upstream_host, upstream_port)
        self.listen = (listen_host, listen_port)
        self.piece_bytes = piece_bytes
        self.up = LinkShaper(bandwidth_mbit_s, rtt_ms / 2e3)
        self.down = LinkShaper(bandwidth_mbit_s, rtt_ms / 2e3)
        self.stats = ProxyStats(capture_limit=capture_limit)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def __aenter__(self) -> ShapingProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, *self.listen)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.stats.connections += 1
        try:
            upstream_r, upstream_w = await asyncio.wait_for(asyncio.open_connection(*self.upstream), 10)
        except (OSError, TimeoutError) as exc:
            log.warning("Closed a proxied connection: upstream %s:%d unreachable (%s)", *self.upstream, exc)
            client_w.close()
            return
        pumps = [asyncio.ensure_future(self._pump(client_r, upstream_w, self.up, "up")),
                 asyncio.ensure_future(self._pump(upstream_r, client_w, self.down, "down"))]
        for task in pumps:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        await asyncio.gather(*pumps, return_exceptions=True)
        for writer in (client_w, upstream_w):
            writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await writer.wait_closed()
        self.stats.closed += 1
        self.write_stats()

    def write_stats(self) -> None:
        """Replace ``stats_file`` (if set) with the counters as JSON, atomically."""
        if self.stats_file is None:
            return
        tmp = self.stats_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.stats.to_dict()))
        os.replace(tmp, self.stats_file)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: LinkShaper,
                    direction: str) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()

        async def deliver() -> None:
            while (item := await queue.get()) is not None:
                due, piece = item
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                writer.write(piece)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()

        sender = asyncio.ensure_future(deliver())
        try:
            while chunk := await reader.read(65536):
                self.stats.record(direction, chunk)
                for offset in range(0, len(chunk), self.piece_bytes):
                    piece = chunk[offset:offset + self.piece_bytes]
                    queue.put_nowait((link.schedule(loop.time(), len(piece)), piece))
        except (OSError, ConnectionError):
            pass
        finally:
            queue.put_nowait(None)
            with contextlib.suppress(OSError, ConnectionError):
                await sender


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT, e.g. 127.0.0.1:8080")
    return host, int(port)


async def _serve(args: argparse.Namespace) -> None:
    proxy = ShapingProxy(args.upstream[0], args.upstream[1], args.mbit, args.rtt_ms, args.listen[0], args.listen[1],
                         stats_file=args.stats_file)
    port = await proxy.start()
    proxy.write_stats()
    print(f"listening 127.0.0.1:{port} -> {args.upstream[0]}:{args.upstream[1]} "
          f"at {args.mbit:g} Mbit/s, RTT {args.rtt_ms:g} ms", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await proxy.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgemodel.split.shaping", description=__doc__.split("\n")[0])
    parser.add_argument("--upstream", type=_host_port, required=True, help="HOST:PORT to forward to")
    parser.add_argument("--listen", type=_host_port, default=("127.0.0.1", 0), help="HOST:PORT (port 0: free)")
    parser.add_argument("--mbit", type=float, required=True, help="bandwidth per direction in Mbit/s, e.g. 10")
    parser.add_argument("--rtt-ms", type=float, default=20.0, help="round-trip time in ms (default 20)")
    parser.add_argument("--stats-file", type=Path, help="JSON counters rewritten whenever a connection closes")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
