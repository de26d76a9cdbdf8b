"""CPU and memory available to this container, from cgroup v2 or v1 files (not the host's).

``os.cpu_count()`` reports the host's cores; a pod limited to 1.5 CPUs that sizes ONNX Runtime's
thread pool to 16 host cores thrashes. These helpers read the limit the way the kernel enforces
it: cgroup v2 ``cpu.max`` (``"max 100000"`` or ``"150000 100000"``), cgroup v1
``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``; the smallest limit on the path to the root wins.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _own_paths(proc_self_cgroup: str) -> tuple[str | None, str | None]:
    """(cgroup v2 path, cgroup v1 cpu controller path) of this process."""
    v2: str | None = None
    v1: str | None = None
    for line in proc_self_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            v2 = path
        elif "cpu" in controllers.split(","):
            v1 = path
    return v2, v1


def _ancestors(base: Path, own: str | None) -> list[Path]:
    """``base/own``, its parents up to ``base``; just ``base`` when the path is unknown or absent."""
    dirs: list[Path] = []
    if own and own != "/":
        current = base / own.lstrip("/")
        while current != base and base in current.parents:
            if current.is_dir():
                dirs.append(current)
            current = current.parent
    dirs.append(base)
    return dirs


def _v2_limit(directory: Path) -> float | None:
    text = _read(directory / "cpu.max")
    if not text:
        return None
    fields = text.split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _v1_limit(directory: Path) -> float | None:
    quota_text = _read(directory / "cpu.cfs_quota_us")
    period_text = _read(directory / "cpu.cfs_period_us")
    if quota_text is None or period_text is None:
        return None
    try:
        quota, period = int(quota_text), int(period_text)
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def cpu_limit(root: Path = CGROUP_ROOT, proc_self_cgroup: str | None = None) -> float | None:
    """CPUs allowed by the cgroup quota (e.g. 1.5), or None when unlimited or unknown."""
    if proc_self_cgroup is None:
        proc_self_cgroup = _read(PROC_SELF_CGROUP) or ""
    v2_path, v1_path = _own_paths(proc_self_cgroup)
    limits: list[float] = []
    if (root / "cgroup.controllers").exists():  # pure cgroup v2 mount
        limits += [lim for d in _ancestors(root, v2_path) if (lim := _v2_limit(d)) is not None]
    for v1_dir in (root / "cpu", root / "cpu,cpuacct", root / "cpuacct,cpu"):
        if v1_dir.is_dir():
            limits += [lim for d in _ancestors(v1_dir, v1_path) if (lim := _v1_limit(d)) is not None]
            break
    return min(limits) if limits else None


def memory_limit(root: Path = CGROUP_ROOT) -> int | None:
    """Bytes allowed by the cgroup (v2 memory.max or v1 memory.limit_in_bytes), None when unlimited."""
    for path in (root / "memory.max", root / "memory" / "memory.limit_in_bytes"):
        text = _read(path)
        if text is None or text == "max":
            continue
        try:
            value = int(text)
        except ValueError:
            continue
        if 0 < value < (1 << 60):  # v1 reports "unlimited" as a huge page-aligned number
            return value
    return None


def available_cpus(root: Path = CGROUP_ROOT, proc_self_cgroup: str | None = None) -> float:
    """CPUs this process may use: the cgroup quota capped by the CPU affinity mask."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        affinity = os.cpu_count() or 1
    limit = cpu_limit(root, proc_self_cgroup)
    return min(float(affinity), limit) if limit is not None else float(affinity)


def thread_count(cpus: float) -> int:
    """Threads worth running for ``cpus`` CPUs: the quota rounded up (1.5 -> 2), at least 1."""
    return max(1, math.ceil(cpus - 1e-9))
