"""Large request buffers go back to the OS once freed (glibc keeps them otherwise)."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import sys
from edge_agent.heap import return_large_buffers
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
if sys.argv[1] == "tuned":
    assert return_large_buffers()
base = rss()
keep = []
for i in range(12):  # bodies of 8 MiB, freed one after the other, with small objects allocated between them
    body = bytearray(8 << 20)
    keep.append(bytes(64))
    del body
print((rss() - base) >> 20)
"""


def grown_mib(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=60, check=True)
    return int(out.stdout.strip())


def test_freed_large_bodies_do_not_stay_resident() -> None:
    """Without the fixed threshold, glibc 2.36 keeps the last 8 MiB body resident here (7 MiB grown)."""
    assert grown_mib("tuned") < 2
