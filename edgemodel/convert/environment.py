"""What the measurements ran on: library versions, provider, threads, CPU and load (for the manifest)."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

from edgemodel.api import ManifestEnvironment
from edgemodel.convert.runners import ort_session

INTERESTING_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16", "neon", "asimd", "asimddp")
GPU_PROVIDERS = ("CUDAExecutionProvider", "ROCMExecutionProvider", "DmlExecutionProvider")


def cpu_description() -> tuple[str, list[str]]:
    """CPU model name and the flags that matter for INT8/FP16 kernels (Linux /proc/cpuinfo)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and name in ("", platform.machine(), platform.processor()):
                name = value.strip()
            elif key.strip() in ("flags", "Features"):
                flags |= set(value.split())
    except OSError:
        pass
    return name, [f for f in INTERESTING_FLAGS if f in flags]


def gpu_provider(model: Path) -> str | None:
    """A GPU execution provider that really runs ``model`` here, or None (checked with a session)."""
    import onnxruntime as ort

    for provider in GPU_PROVIDERS:
        if provider not in ort.get_available_providers():
            continue
        try:
            session = ort_session(model, providers=[provider, "CPUExecutionProvider"])
        except Exception:
            continue
        if session.get_providers()[0] == provider:
            return provider
    return None


def describe(threads: int, providers: dict[str, str]) -> ManifestEnvironment:
    """The manifest's ``environment``: versions, CPU, threads, providers and load when measuring began."""
    import numpy
    import onnx
    import onnxruntime

    cpu, flags = cpu_description()
    return ManifestEnvironment(
        onnxruntime=onnxruntime.__version__, onnx=onnx.__version__, numpy=numpy.__version__,
        python=platform.python_version(), machine=platform.machine(), cpu=cpu, cpu_flags=flags,
        threads=threads, provider=", ".join(f"{k}: {v}" for k, v in providers.items()),
        available_providers=onnxruntime.get_available_providers(),
        load_average=[round(x, 2) for x in os.getloadavg()],
        torch=str(sys.modules["torch"].__version__) if "torch" in sys.modules else None,
    )  # fmt: skip
