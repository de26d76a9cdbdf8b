"""Open Inference Protocol gRPC messages <-> the data plane's ``InferRequest`` and numpy outputs.

Holds a gRPC request to the same rules as a REST body (``edge_agent.codec``): every claimed shape
passes :func:`~edge_agent.codec.check_claim` (the model's input, the per-request element budget)
before anything is converted, raw contents go through the REST codec's binary decoder, and typed
contents must hold exactly the claimed number of values in the datatype's own field, within the
datatype's range. Refusals are ``InvalidInput`` / ``PayloadTooLarge`` naming the input and the fix;
the gRPC server maps them to INVALID_ARGUMENT / RESOURCE_EXHAUSTED.

Responses always carry ``raw_output_contents`` (as Triton does): no per-element conversion.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edge_agent.codec import (
    DecodeLimits,
    ElementBudget,
    InferRequest,
    InputTensor,
    RequestedOutput,
    TensorSpec,
    Where,
    bytes_payload,
    check_claim,
    from_binary,
)
from edge_agent.datatypes import V2_TO_NUMPY, numpy_to_v2
from edge_agent.errors import InvalidInput
from edge_agent.grpc_proto import predict_v2_pb2 as pb

MAX_DIMS = 32
_SUPPORTED = ", ".join(V2_TO_NUMPY)

CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
"""The typed-contents field of each datatype (FP16 has none: it travels as raw contents)."""
_ALL_FIELDS = sorted(set(CONTENTS_FIELD.values()))


def _parameter(value: pb.InferParameter) -> object:
    choice = value.WhichOneof("parameter_choice")
    return getattr(value, choice) if choice else None


def _shape(dims: Sequence[int], where: Where) -> tuple[int, ...]:
    if len(dims) > MAX_DIMS:
        raise InvalidInput(f"{where}: shape has {len(dims)} dimensions; at most {MAX_DIMS} are supported")
    shape = tuple(dims)
    if shape and min(shape) < 0:
        raise InvalidInput(
            f"{where}: shape must hold non-negative sizes, e.g. [1, 3, 224, 224]; got {list(shape)[:8]}"
        )
    return shape


def _from_contents(
    contents: pb.InferTensorContents, datatype: str, shape: tuple[int, ...], count: int, where: Where
) -> np.ndarray:
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidInput(
            f"{where}: datatype {datatype} has no typed contents field; send it in raw_input_contents"
        )
    others = [f for f in _ALL_FIELDS if f != field and len(getattr(contents, f))]
    if others:
        raise InvalidInput(
            f"{where}: datatype {datatype} takes its values in contents.{field}, not contents.{others[0]}"
        )
    values: Any = getattr(contents, field)
    if len(values) != count:
        raise InvalidInput(
            f"{where}: shape {list(shape)} needs {count} elements, contents.{field} has {len(values)}"
        )
    if datatype == "BYTES":
        out = np.empty(count, dtype=object)
        for i, raw in enumerate(values):
            try:  # ONNX Runtime string tensors take text
                out[i] = raw.decode()
            except UnicodeDecodeError as exc:
                raise InvalidInput(
                    f"{where}: BYTES element {i} is not UTF-8 text, which ONNX Runtime string tensors need"
                ) from exc
        return out.reshape(shape)
    dtype = V2_TO_NUMPY[datatype]
    if dtype.kind in "iu" and dtype.itemsize < 4 and count:
        wide = np.fromiter(values, np.int64 if dtype.kind == "i" else np.uint64, count)
        info = np.iinfo(dtype)
        if wide.min() < info.min or wide.max() > info.max:
            raise InvalidInput(f"{where}: a value is outside the {datatype} range [{info.min}, {info.max}]")
        return wide.astype(dtype).reshape(shape)
    return np.fromiter(values, dtype, count).reshape(shape)


def decode_infer_request(
    request: pb.ModelInferRequest, limits: DecodeLimits, model_inputs: Mapping[str, TensorSpec] | None = None
) -> InferRequest:
    """Check and convert a ModelInferRequest; InvalidInput / PayloadTooLarge name the first problem."""
    inputs = request.inputs
    if not inputs:
        raise InvalidInput(
            "inputs must hold at least one tensor (name, datatype, shape, and contents or raw_input_contents)"
        )
    raw = request.raw_input_contents
    if raw and len(raw) != len(inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries for {len(inputs)} inputs; give one per input, in the order of inputs"
        )
    params = (
        {key: _parameter(value) for key, value in request.parameters.items()} if request.parameters else {}
    )
    if "classification" in params:
        raise InvalidInput("parameter classification is not supported by this server")
    budget = ElementBudget(limits)
    decoded: list[InputTensor] = []
    for index, tensor in enumerate(inputs):
        name = tensor.name
        where = Where(index, name)
        if not name:
            raise InvalidInput(f"{where}: name must be a non-empty string")
        datatype = tensor.datatype
        if datatype not in V2_TO_NUMPY:
            raise InvalidInput(f"{where}: datatype {datatype!r:.40} is not one of {_SUPPORTED}")
        shape = _shape(tensor.shape, where)
        count = check_claim(
            where, datatype, shape, budget, model_inputs.get(name) if model_inputs is not None else None
        )
        if raw:
            if tensor.HasField("contents"):
                raise InvalidInput(f"{where}: give raw_input_contents or contents for every input, not both")
            data = from_binary(memoryview(raw[index]), datatype, shape, count, where)
        else:
            data = _from_contents(tensor.contents, datatype, shape, count, where)
        decoded.append(InputTensor(name, datatype, shape, data))
    outputs = [RequestedOutput(out.name, None) for out in request.outputs] if request.outputs else None
    return InferRequest(request.id or None, decoded, outputs, True, params)


def encode_infer_response(
    model_name: str, model_version: str, request_id: str | None, outputs: list[tuple[str, np.ndarray, bool]]
) -> pb.ModelInferResponse:
    """A ModelInferResponse with every output in raw_output_contents, in the order of outputs."""
    response = pb.ModelInferResponse(model_name=model_name, model_version=model_version, id=request_id or "")
    tensors = response.outputs
    raw = response.raw_output_contents
    for name, arr, _binary in outputs:
        datatype = numpy_to_v2(arr.dtype)
        tensors.add(name=name, datatype=datatype, shape=arr.shape)
        raw.append(bytes_payload(arr) if datatype == "BYTES" else np.ascontiguousarray(arr).tobytes())
    return response
