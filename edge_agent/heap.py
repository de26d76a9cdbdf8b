"""Give large freed buffers back to the operating system (glibc).

glibc serves big allocations with ``mmap`` and unmaps them on ``free``, but after the first such
free it raises its mmap threshold (up to 32 MiB) and later request bodies come from the heap,
where freed memory stays resident: twelve 8 MiB bodies then cost ~100 MB of RSS long after they
were answered. A fixed threshold turns that dynamic behaviour off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3
LARGE_BUFFER_BYTES = 1 << 20


def return_large_buffers(threshold: int = LARGE_BUFFER_BYTES) -> bool:
    """Serve allocations of ``threshold`` bytes or more with mmap for good; False where not glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
        return False
    done = bool(mallopt(M_MMAP_THRESHOLD, threshold))
    if not done:
        log.debug("mallopt(M_MMAP_THRESHOLD, %d) was refused", threshold)
    return done
