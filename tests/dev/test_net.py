"""free_port: ports for servers that start later, safe from outgoing connections taking them first."""

from __future__ import annotations

import socket
from pathlib import Path

from edgemodel_dev import net


def test_ports_come_from_below_the_ephemeral_range_and_are_never_repeated() -> None:
    low, _ = net.ephemeral_range()
    ports = [net.free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    assert all(net.LOWEST <= port < low for port in ports), ports
    for port in ports:
        assert net.is_free(port)


def test_a_port_someone_listens_on_is_skipped() -> None:
    window = net.port_window(net.ephemeral_range())
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        port = net.free_port()
        taken.bind(("127.0.0.1", port))
        taken.listen()
        assert not net.is_free(port)
        net._given.discard(port)  # even if the module forgot it handed this port out, it is busy
        net._cursor = window.index(port)
        assert net.free_port() != port


def test_outgoing_connections_cannot_take_a_handed_out_port() -> None:
    """Local ports of client connections come from the ephemeral range, which free_port never uses."""
    low, high = net.ephemeral_range()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        clients = [socket.create_connection(server.getsockname()) for _ in range(20)]
        try:
            assert all(low <= client.getsockname()[1] <= high for client in clients)
        finally:
            for client in clients:
                client.close()


def test_the_range_file_is_read_and_a_missing_one_means_the_linux_default(tmp_path: Path) -> None:
    custom = tmp_path / "range"
    custom.write_text("40000\t50000\n")
    assert net.ephemeral_range(custom) == (40000, 50000)
    assert net.port_window((40000, 50000)) == range(28000, 40000)
    assert net.ephemeral_range(tmp_path / "missing") == net.DEFAULT_EPHEMERAL
    # an ephemeral range that starts low leaves no room below it: use the ports above it
    assert net.port_window((1024, 50000)) == range(50001, 62001)
