"""A small ONNX Runtime wrapper for heads, tails and full models (onnxruntime + numpy; agent-safe)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

DEFAULT_PROVIDERS = ("CPUExecutionProvider",)


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """Session options with a bounded thread pool (``threads=None`` lets ORT decide)."""
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return options


class OrtPart:
    """One ONNX model (head, tail or full) in an ONNX Runtime session; call it with named arrays."""

    def __init__(self, model: bytes | str | Path, providers: Sequence[str] = DEFAULT_PROVIDERS,
                 threads: int | None = None) -> None:
        source = str(model) if isinstance(model, Path) else model
        self.session = ort.InferenceSession(source, sess_options=session_options(threads), providers=list(providers))
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.provider = self.session.get_providers()[0]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model; ``feeds`` must hold every input (extra entries are an error)."""
        missing = [n for n in self.input_names if n not in feeds]
        extra = [n for n in feeds if n not in self.input_names]
        if missing or extra:
            raise KeyError(f"inputs do not match the model: missing {missing}, unexpected {extra}; "
                           f"expected exactly {self.input_names}")
        results = self.session.run(self.output_names, {n: feeds[n] for n in self.input_names})
        return {name: np.asarray(value) for name, value in zip(self.output_names, results, strict=True)}

    __call__ = run
