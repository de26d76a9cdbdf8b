"""Run the original model (torch or ONNX) and candidates (ONNX Runtime) over a data set."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgemodel.convert.data import Dataset

Batch = dict[str, np.ndarray]
Runner = Callable[[Batch], list[np.ndarray]]

LEVELS = {"disabled": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
          "all": "ORT_ENABLE_ALL"}


def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The container's CPU limit in CPUs (cgroup v2 ``cpu.max`` or v1 CFS quota), or None when unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def available_threads() -> int:
    """CPUs this process may use: CPU affinity, capped by the cgroup limit (a pod's CPU limit)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    if limit is not None:
        cpus = min(cpus, max(1, int(limit + 0.5)))
    return max(1, cpus)


def ort_session(path: Path, level: str = "all", threads: int | None = None, providers: list[str] | None = None,
                optimized_path: Path | None = None) -> Any:
    """An ONNX Runtime session with the given graph optimisation level and thread count."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, LEVELS[level])
    options.intra_op_num_threads = threads or available_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    unique = list(dict.fromkeys(providers or ["CPUExecutionProvider"]))
    return ort.InferenceSession(str(path), options, providers=unique)


def ort_runner(session: Any) -> Runner:
    def run(batch: Batch) -> list[np.ndarray]:
        return [np.asarray(o) for o in session.run(None, batch)]

    return run


def flatten_outputs(value: Any) -> list[Any]:
    """Tensors of a model output in order: a tensor, a tuple/list, or a dict (e.g. a ModelOutput)."""
    if isinstance(value, dict):
        return [t for v in value.values() for t in flatten_outputs(v)]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in flatten_outputs(v)]
    return [value] if value is not None else []


def torch_runner(module: Any, input_names: list[str]) -> Runner:
    import torch

    def run(batch: Batch) -> list[np.ndarray]:
        args = [torch.from_numpy(np.ascontiguousarray(batch[name])) for name in input_names]
        with torch.inference_mode():
            out = module(*args)
        return [t.detach().cpu().numpy() for t in flatten_outputs(out)]

    return run


def run_dataset(runner: Runner, dataset: Dataset, batch_size: int) -> list[np.ndarray]:
    """Outputs over the whole data set in batches, concatenated along the first axis per output."""
    parts: list[list[np.ndarray]] = []
    for batch in dataset.batches(batch_size):
        outputs = runner(batch)
        if not parts:
            parts = [[] for _ in outputs]
        for acc, out in zip(parts, outputs, strict=True):
            acc.append(out)
    return [np.concatenate(p) if p[0].ndim else np.stack(p) for p in parts]


def all_finite(outputs: list[np.ndarray]) -> bool:
    return all(bool(np.isfinite(o).all()) for o in outputs if o.dtype.kind in "fc")
