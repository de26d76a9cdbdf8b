"""Calibration and validation data: .npz files checked against spec.inputs, or generated inputs."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgemodel.api import TensorSpec
from edgemodel.convert.errors import ConversionError, Reason

LABELS = "labels"
GENERATED_DYNAMIC_DIM = 16
"""Size used for a dynamic non-batch dimension (e.g. sequence length) when inputs are generated."""


@dataclass
class Dataset:
    """Inputs (one array per model input, first axis = samples) and optional labels."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    origin: str
    """Where the samples come from, said in the report, e.g. "validation data file:///v.npz"."""

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def slice(self, start: int, stop: int) -> dict[str, np.ndarray]:
        return {k: v[start:stop] for k, v in self.inputs.items()}

    def batches(self, size: int) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(self), size):
            yield self.slice(start, start + size)

    def take(self, n: int) -> Dataset:
        labels = None if self.labels is None else self.labels[:n]
        return Dataset({k: v[:n] for k, v in self.inputs.items()}, labels, self.origin)

    def repeat_to(self, n: int) -> dict[str, np.ndarray]:
        """The first ``n`` samples, repeating the data when it has fewer (for batch latency)."""
        reps = -(-n // len(self))
        return {k: np.concatenate([v] * reps)[:n] if reps > 1 else v[:n] for k, v in self.inputs.items()}


def _describe(shape: tuple[int, ...] | list[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def check_array(spec: TensorSpec, index: int, array: np.ndarray, where: str) -> np.ndarray:
    """Return ``array`` in the spec's dtype, or raise InputMismatch naming the input and the file."""
    field = f"spec.inputs[{index}] ({spec.name})"
    # The first axis of a data array is the sample axis, whatever the model's batch dimension is.
    if array.ndim != len(spec.shape) or any(d not in (-1, a) for d, a in zip(spec.shape[1:], array.shape[1:], strict=True)):
        raise ConversionError(
            Reason.INPUT_MISMATCH,
            f"{field} has shape {_describe(spec.shape)} but {where} has {_describe(array.shape)}; "
            "fix spec.inputs or the data (-1 marks a dynamic dimension)",
        )
    want = np.dtype(spec.dtype.value)
    if array.dtype != want:
        if array.dtype.kind != want.kind and not (array.dtype.kind in "iu" and want.kind in "iu"):
            raise ConversionError(
                Reason.INPUT_MISMATCH,
                f"{field} is {spec.dtype.value} but {where} holds {array.dtype}; fix spec.inputs[{index}].dtype or the data",
            )
        array = array.astype(want)
    return array


def load_npz(path: Path, uri: str, specs: list[TensorSpec], kind: str, limit: int,
             need_labels: bool = False, labels_name: str = LABELS) -> Dataset:
    """Read an .npz with one array per input name (and labels, named ``labels_name``), checked against ``specs``."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ConversionError(Reason.INVALID_DATA, f"{kind} data {uri} is not a readable .npz file ({exc}); "
                              "write it with numpy.savez(path, <input name>=array, ...)") from exc
    inputs: dict[str, np.ndarray] = {}
    for index, spec in enumerate(specs):
        if spec.name not in arrays:
            raise ConversionError(
                Reason.INPUT_MISMATCH,
                f"{kind} data {uri} has no array named {spec.name!r} (it has: {', '.join(sorted(arrays)) or 'none'}); "
                "name the arrays after spec.inputs[].name",
            )
        inputs[spec.name] = check_array(spec, index, arrays[spec.name], f"{kind} data {uri}")
    counts = {name: len(a) for name, a in inputs.items()}
    if len(set(counts.values())) != 1 or 0 in counts.values():
        raise ConversionError(Reason.INVALID_DATA, f"{kind} data {uri}: every input needs the same, non-zero "
                              f"number of samples along the first axis, got {counts}")
    labels = arrays.get(labels_name)
    if labels is not None and (labels.ndim != 1 or len(labels) != len(next(iter(inputs.values())))
                               or labels.dtype.kind not in "iu"):
        raise ConversionError(Reason.INVALID_DATA, f"{kind} data {uri}: {labels_name!r} must be a 1-D integer array "
                              f"with one label per sample, got {labels.dtype} {_describe(labels.shape)}")
    if need_labels and labels is None:
        others = ", ".join(sorted(set(arrays) - {s.name for s in specs})) or "none"
        raise ConversionError(Reason.INVALID_DATA, f"{kind} data {uri} has no {labels_name!r} array, which "
                              f"spec.validation.metric top1 needs (other arrays: {others}); add it, name yours in "
                              "spec.validation.labelsArray, or use metric: agreement")
    return Dataset(inputs, labels, f"{kind} data {uri}").take(limit)


def generate(specs: list[TensorSpec], n: int, seed: int = 0) -> Dataset:
    """Random inputs of the spec's shapes: floats ~ N(0, 1); integers 0/1 (masks all ones, type ids zero).

    Used only when there is neither validation nor calibration data; the report says so.
    """
    rng = np.random.default_rng(seed)
    inputs: dict[str, np.ndarray] = {}
    for spec in specs:
        shape = [n, *(GENERATED_DYNAMIC_DIM if d == -1 else d for d in spec.shape[1:])]
        dtype = np.dtype(spec.dtype.value)
        if dtype.kind == "f":
            array = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b" or "mask" in spec.name.lower():
            array = np.ones(shape, dtype=dtype)
        elif "type" in spec.name.lower():
            array = np.zeros(shape, dtype=dtype)
        else:
            array = rng.integers(0, 2, size=shape).astype(dtype)
        inputs[spec.name] = array
    return Dataset(inputs, None, f"{n} generated inputs (random normal floats; no calibration or validation data)")
