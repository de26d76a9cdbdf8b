"""What this node can do, as reported in ``EdgeAgent.status.capabilities``."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from edge_agent.cgroup import available_cpus, memory_limit
from edge_agent.probe import working_providers
from edge_agent.providers import GPU_PROVIDERS
from edgemodel import __version__
from edgemodel.api import Capabilities
from edgemodel.api.edgeagent import GpuInfo
from edgemodel.api.edgemodel import HardwareClass

_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16", "fma", "f16c", "neon", "asimd", "asimddp")
_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "arm", "armv6l": "arm"}


def cpu_flags(cpuinfo: str) -> list[str]:
    """Relevant CPU features from /proc/cpuinfo text."""
    found: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            found.update(f for f in value.split() if f in _FLAGS)
    return sorted(found)


def nvidia_gpus(root: Path = Path("/proc/driver/nvidia/gpus")) -> list[GpuInfo]:
    """GPUs the NVIDIA driver exposes (no nvidia-smi needed)."""
    gpus: list[GpuInfo] = []
    if not root.is_dir():
        return gpus
    for info in sorted(root.glob("*/information")):
        model = next((line.split(":", 1)[1].strip() for line in info.read_text().splitlines() if line.startswith("Model:")), "")
        gpus.append(GpuInfo(name=model or "NVIDIA GPU"))
    return gpus


def _host_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0


def probe(session_factory: Any = None, available: list[str] | None = None) -> Capabilities:
    """Probe the node: CPUs (cgroup limit), flags, memory, providers that really load, GPUs."""
    import onnxruntime as ort

    if available is None:
        available = list(ort.get_available_providers())
    if session_factory is None:

        def session_factory(model: bytes, providers: list[str]) -> Any:
            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            return ort.InferenceSession(model, sess_options=opts, providers=providers)

    providers = working_providers(available, session_factory)
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    gpu_loaded = any(p in GPU_PROVIDERS for p in providers)
    return Capabilities(
        arch=_ARCH.get(platform.machine().lower(), platform.machine().lower()),
        cpu_count=round(available_cpus(), 3),
        cpu_flags=cpu_flags(cpuinfo),
        memory_bytes=memory_limit() or _host_memory(),
        providers=providers,
        gpus=nvidia_gpus(),
        hardware_class=HardwareClass.GPU if gpu_loaded else HardwareClass.CPU,
        onnxruntime_version=ort.__version__,
        agent_version=__version__,
    )
