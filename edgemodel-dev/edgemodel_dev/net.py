"""Loopback networking helpers shared by the local control plane, the demo, tests and benchmarks.

A port handed to a server that starts later must not be taken in between. ``bind(0)`` picks from the
kernel's ephemeral range, which is also where every outgoing connection gets its local port: with many
HTTP clients running, one of them can take the port before the server binds it ("address already in
use"). So ``free_port`` picks from a window just *below* the ephemeral range, which the kernel never
hands out on its own, starting at a random offset per process and never returning the same port twice.
"""

from __future__ import annotations

import random
import socket
import threading
from pathlib import Path

PORT_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
DEFAULT_EPHEMERAL = (32768, 60999)
WINDOW = 12000
LOWEST = 10000

_lock = threading.Lock()
_given: set[int] = set()
_cursor: int | None = None


def ephemeral_range(path: Path = PORT_RANGE_FILE) -> tuple[int, int]:
    """The kernel's range for automatically chosen local ports (Linux default when unknown)."""
    try:
        low, high = (int(part) for part in path.read_text().split())
    except (OSError, ValueError):
        return DEFAULT_EPHEMERAL
    return low, high


def port_window(ephemeral: tuple[int, int]) -> range:
    """The ports ``free_port`` chooses from: up to WINDOW ports below the ephemeral range, or above it."""
    low, high = ephemeral
    if low - LOWEST >= 1000:
        return range(max(LOWEST, low - WINDOW), low)
    return range(high + 1, min(65536, high + 1 + WINDOW))


def is_free(port: int) -> bool:
    """Whether a server could bind 127.0.0.1:``port`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on and no outgoing connection can take."""
    global _cursor
    window = port_window(ephemeral_range())
    with _lock:
        if _cursor is None:
            _cursor = random.randrange(len(window))
        for _ in range(len(window)):
            port = window[_cursor % len(window)]
            _cursor += 1
            if port not in _given and is_free(port):
                _given.add(port)
                return port
    return _kernel_port()


def _kernel_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
