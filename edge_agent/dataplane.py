"""The protocol-neutral data plane: health, metadata and inference against the repository.

The REST router only translates HTTP to these calls and ``AgentError`` subclasses to statuses.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from edge_agent.codec import InferRequest
from edge_agent.errors import InvalidInput, first_line
from edge_agent.metrics import AgentMetrics, CounterChild
from edge_agent.model import PLATFORM
from edge_agent.repository import ModelRepository, ModelVersion

log = logging.getLogger(__name__)

SERVER_NAME = "edgemodel-agent"
EXTENSIONS = ["binary_tensor_data", "model_repository", "model_configuration"]

_ORT_INPUT_ERRORS = ("InvalidArgument", "Fail", "RuntimeException", "NotImplemented", "InvalidProtobuf")


def _all_finite(arr: np.ndarray) -> bool:
    """No NaN or infinity: one float64 sum (NaN/inf propagate), the full check only if it overflowed."""
    if math.isfinite(np.add.reduce(arr, axis=None, dtype=np.float64)):
        return True
    return bool(np.isfinite(arr).all())


class DataPlane:
    """Health, metadata and inference; the REST layer is a thin shell around it."""

    def __init__(self, repository: ModelRepository, metrics: AgentMetrics, version: str) -> None:
        self.repository = repository
        self.metrics = metrics
        self.version = version
        self.live = True
        self.started = False
        """Set once the standalone models are loaded (or the control plane restored the cache)."""
        self._unattributed: dict[int, CounterChild] = {}

    # -- health and metadata -----------------------------------------------------------------
    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": self.version, "extensions": EXTENSIONS}

    def ready(self) -> bool:
        return self.started and self.repository.all_ready()

    def model_ready(self, name: str, version: str | None) -> bool:
        """True when the version is loaded and not being retired (raises when unknown)."""
        return not self.repository.resolve(name, version).retired

    def model_metadata(self, name: str, version: str | None) -> bytes:
        return self.repository.resolve(name, version).metadata_json

    def model_config(self, name: str, version: str | None) -> dict[str, Any]:
        """A Triton-style model configuration (``/config``), for clients that ask for it."""
        mv = self.repository.resolve(name, version)
        model = mv.model
        batching = mv.batcher is not None

        def tensor(t: Any) -> dict[str, Any]:
            dims = list(t.shape[1:]) if batching else list(t.shape)
            return {"name": t.name, "data_type": f"TYPE_{'STRING' if t.datatype == 'BYTES' else t.datatype}", "dims": dims}

        config: dict[str, Any] = {
            "name": name,
            "platform": PLATFORM,
            "backend": "onnxruntime",
            "version_policy": {"specific": {"versions": [v.version for v in self.repository.versions(name)]}},
            "max_batch_size": mv.batcher.max_batch_size if mv.batcher else 0,
            "input": [tensor(t) for t in model.inputs],
            "output": [tensor(t) for t in model.outputs],
            "parameters": {
                "provider": {"string_value": mv.provider},
                "sha256": {"string_value": mv.sha256},
                "concurrent_runs": {"string_value": str(mv.max_concurrent_runs)},
                "intra_op_threads": {"string_value": f"{model.intra_op_threads} alone, {model.run_threads} overlapping"},
                "run_plan": {"string_value": model.plan.describe() if model.options.plan_runs else "set by flags"},
            },
        }
        if mv.batcher is not None:
            config["dynamic_batching"] = {"max_queue_delay_microseconds": int(mv.batcher.max_queue_delay_s * 1e6)}
        return config

    # -- inference ---------------------------------------------------------------------------
    def _feeds(self, mv: ModelVersion, request: InferRequest) -> dict[str, np.ndarray]:
        model = mv.model
        feeds: dict[str, np.ndarray] = {}
        for index, tensor in enumerate(request.inputs):
            meta = model.input_by_name.get(tensor.name)
            if meta is None:
                expected = ", ".join(repr(t.name) for t in model.inputs)
                raise InvalidInput(f"inputs[{index}]: {tensor.name!r} is not an input of model {mv.name!r}; its inputs are {expected}")
            if tensor.name in feeds:
                raise InvalidInput(f"inputs[{index}]: input {tensor.name!r} is given twice")
            if tensor.datatype != meta.datatype:
                raise InvalidInput(f"input {tensor.name!r}: datatype {tensor.datatype} does not match the model's {meta.datatype}")
            shape = tensor.shape
            if len(shape) != len(meta.shape) or any(e != -1 and e != g for e, g in zip(meta.shape, shape, strict=True)):
                raise InvalidInput(f"input {tensor.name!r}: shape {list(shape)} does not match the model's {list(meta.shape)} (-1 = any)")
            if tensor.name in mv.float_inputs and not mv.allow_non_finite and not _all_finite(tensor.data):
                raise InvalidInput(
                    f"input {tensor.name!r} holds NaN or infinite values (or numbers beyond the {meta.datatype} range); "
                    "send finite numbers"
                )
            feeds[tensor.name] = tensor.data
        if len(feeds) != len(model.inputs):
            missing = [t.name for t in model.inputs if t.name not in feeds]
            raise InvalidInput(f"model {mv.name!r} also needs input(s) {', '.join(map(repr, missing))}")
        return feeds

    def _outputs(self, mv: ModelVersion, request: InferRequest) -> tuple[list[str] | None, list[bool]]:
        if request.outputs is None:
            return None, [request.binary_output] * len(mv.model.output_names)
        names: list[str] = []
        flags: list[bool] = []
        for index, out in enumerate(request.outputs):
            if out.name not in mv.output_index:
                known = ", ".join(map(repr, mv.model.output_names))
                raise InvalidInput(f"outputs[{index}]: {out.name!r} is not an output of model {mv.name!r}; its outputs are {known}")
            names.append(out.name)
            flags.append(request.binary_output if out.binary is None else out.binary)
        return names, flags

    async def infer(self, mv: ModelVersion, request: InferRequest) -> list[tuple[str, np.ndarray, bool]]:
        """Run a decoded request on a resolved version: (name, array, binary) per output."""
        feeds = self._feeds(mv, request)
        names, flags = self._outputs(mv, request)
        try:
            result = await mv.run(feeds, names)
        except Exception as exc:
            if type(exc).__name__ in _ORT_INPUT_ERRORS:
                raise InvalidInput(f"the model rejected the input: {first_line(exc)}") from exc
            raise
        out_names = names if names is not None else mv.model.output_names
        return list(zip(out_names, result.outputs, flags, strict=True))

    def record_unattributed(self, code: int) -> None:
        """Count a request that never reached a model (unknown model, auth failure...)."""
        child = self._unattributed.get(code)
        if child is None:
            child = self._unattributed[code] = self.metrics.requests.labels("", "", "", "", str(code))
        child.inc()
