"""The link-emulating proxy: its schedule (pure) and that it forwards and counts bytes intact."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from edgemodel.split.shaping import LinkShaper, ShapingProxy


def test_schedule_serialises_then_adds_the_one_way_delay() -> None:
    link = LinkShaper(bandwidth_mbit_s=1.0, one_way_delay_s=0.010)  # 125,000 bytes per second
    assert link.schedule(0.0, 125_000) == pytest.approx(1.010)
    assert link.schedule(0.0, 125_000) == pytest.approx(2.010)  # queued behind the first
    assert link.schedule(5.0, 1_250) == pytest.approx(5.020)  # an idle link starts at once
    with pytest.raises(ValueError, match="bandwidth must be > 0"):
        LinkShaper(0, 0.01)


async def test_proxy_forwards_both_directions_byte_for_byte(tmp_path: Path) -> None:
    received = bytearray()

    async def echo_reversed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.readexactly(200_000)
        received.extend(data)
        writer.write(data[::-1])
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo_reversed, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    payload = os.urandom(200_000)
    try:
        async with ShapingProxy("127.0.0.1", port, bandwidth_mbit_s=1000, rtt_ms=2, piece_bytes=1000,
                                capture_limit=100, stats_file=tmp_path / "stats.json") as proxy:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            writer.write(payload)
            await writer.drain()
            answer = await asyncio.wait_for(reader.readexactly(200_000), 30)
            writer.close()
            await writer.wait_closed()
            assert bytes(received) == payload
            assert answer == payload[::-1]
            assert proxy.stats.up == 200_000
            assert proxy.stats.down == 200_000
            assert proxy.stats.connections == 1
            assert bytes(proxy.stats.captured_up) == payload[:100]
            for _ in range(500):  # the proxy notices the close asynchronously; bounded wait
                if proxy.stats.closed:
                    break
                await asyncio.sleep(0.01)
            assert json.loads((tmp_path / "stats.json").read_text()) == {
                "up": 200_000, "down": 200_000, "connections": 1, "closed": 1}
    finally:
        server.close()
        await server.wait_closed()


async def test_proxy_closes_clients_when_the_upstream_is_down() -> None:
    listener = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    listener.close()
    await listener.wait_closed()
    async with ShapingProxy("127.0.0.1", port, bandwidth_mbit_s=10, rtt_ms=0) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        assert await asyncio.wait_for(reader.read(10), 10) == b""
        writer.close()
