"""Execution provider selection: which ONNX Runtime provider a model is served with.

``onnxruntime.get_available_providers()`` lists the providers compiled into the wheel, not the
ones that work: with onnxruntime-gpu and no CUDA library, a session asked for CUDA silently runs
on CPU (or raises, depending on the version). So selection tries the candidates in order of
preference, creates a real session each time and keeps the first whose
``session.get_providers()[0]`` is the provider asked for.

The logic is a pure function over a provider list and a session factory, so it is tested with
fake lists and factories that fail the way a missing CUDA library does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from edge_agent.errors import LoadError

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
OPENVINO = "OpenVINOExecutionProvider"

#: ``auto`` preference, best first.
AUTO_ORDER: tuple[str, ...] = (TENSORRT, CUDA, OPENVINO, CPU)
#: Providers that count as a GPU for ``accelerator: gpu``.
GPU_PROVIDERS: tuple[str, ...] = (TENSORRT, CUDA)

ACCELERATORS = ("auto", "gpu", "cpu")


class SessionLike(Protocol):
    def get_providers(self) -> list[str]: ...


S = TypeVar("S", bound=SessionLike)


@dataclass
class Selection(Generic[S]):
    """The session that loaded and what was tried before it."""

    session: S
    provider: str
    tried: list[str] = field(default_factory=list)
    """One line per provider that did not load, e.g. "CUDAExecutionProvider: fell back to CPU"."""
    fell_back_to_cpu: bool = False
    """accelerator gpu was asked for and the model runs on CPU per gpuFallbackToCpu."""


def candidates(accelerator: str, available: Sequence[str], gpu_fallback_to_cpu: bool = True) -> list[str]:
    """Providers to try, best first, among those compiled into this onnxruntime."""
    if accelerator not in ACCELERATORS:
        raise ValueError(f"accelerator {accelerator!r}: use one of {', '.join(ACCELERATORS)}")
    present = set(available) | {CPU}
    if accelerator == "cpu":
        return [CPU]
    if accelerator == "gpu":
        gpus = [p for p in GPU_PROVIDERS if p in present]
        return [*gpus, CPU] if gpu_fallback_to_cpu else gpus
    return [p for p in AUTO_ORDER if p in present]


def select(
    accelerator: str,
    available: Sequence[str],
    factory: Callable[[list[str]], S],
    gpu_fallback_to_cpu: bool = True,
) -> Selection[S]:
    """Create a session on the best provider that really loads.

    ``factory(providers)`` creates a session with that provider list (raising on failure).
    Raises LoadError (GpuUnavailable) when ``gpu`` is required and none loads, or (LoadFailed)
    when not even the CPU provider can load the model.
    """
    tried: list[str] = []
    last_error: Exception | None = None
    for provider in candidates(accelerator, available, gpu_fallback_to_cpu):
        providers = [provider] if provider == CPU else [provider, CPU]
        try:
            session = factory(providers)
        except Exception as exc:  # provider or model failure; try the next provider
            tried.append(f"{provider}: {_one_line(exc)}")
            last_error = exc
            log.warning("Provider %s did not load the model: %s", provider, _one_line(exc))
            continue
        actual = session.get_providers()[0] if session.get_providers() else ""
        if actual != provider:
            tried.append(f"{provider}: session fell back to {actual or 'nothing'} (library missing?)")
            log.warning("Provider %s did not load (session runs on %s); trying the next one", provider, actual)
            continue
        fell_back = accelerator == "gpu" and provider == CPU
        if fell_back:
            log.warning("No GPU provider loaded (%s); serving on CPU per gpuFallbackToCpu", "; ".join(tried) or "none compiled in")
        return Selection(session=session, provider=provider, tried=tried, fell_back_to_cpu=fell_back)
    if accelerator == "gpu" and not gpu_fallback_to_cpu:
        detail = "; ".join(tried) if tried else f"none of {', '.join(GPU_PROVIDERS)} is in this onnxruntime build"
        raise LoadError(
            "GpuUnavailable",
            f"accelerator gpu: no GPU execution provider loads ({detail}); install onnxruntime-gpu with "
            "CUDA on a GPU node, or set gpuFallbackToCpu: true",
        )
    raise LoadError("LoadFailed", f"ONNX Runtime cannot load the model: {_one_line(last_error) if last_error else 'no provider'}")


def _one_line(exc: BaseException | None) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:500]
