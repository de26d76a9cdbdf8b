"""Open Inference Protocol v2 REST bodies <-> numpy, including Triton's binary tensor extension.

Requests: a JSON object, optionally followed by raw tensor bytes when the
``Inference-Header-Content-Length`` header gives the JSON length (inputs with a
``binary_data_size`` parameter take their bytes in order). Responses: JSON, or JSON plus raw bytes
for outputs requested with ``binary_data`` (per output) or ``binary_data_output`` (request-wide).

Decoding is strict and names the problem: ``inputs[0] ('x'): shape [1, 8] needs 8 elements, data has 7``.
Conversions use numpy on whole arrays, never Python loops over elements (except BYTES).

Every element count a client claims is checked before anything is allocated for it
(:func:`check_claim`): against the model's input (:class:`TensorSpec`), the per-request element
limit (:class:`DecodeLimits`) and, for binary data, the bytes actually sent. The gRPC codec reuses
these checks.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import orjson

from edge_agent.datatypes import ACCEPTED_JSON_KINDS, FLOAT_DATATYPES, V2_TO_NUMPY, numpy_to_v2
from edge_agent.errors import InvalidInput, PayloadTooLarge

_NUMPY_OPTS = orjson.OPT_SERIALIZE_NUMPY
_LE = {name: dt.newbyteorder("<") for name, dt in V2_TO_NUMPY.items() if name not in ("BYTES", "BOOL")}
_SUPPORTED = ", ".join(V2_TO_NUMPY)


BYTES_ELEMENT_WEIGHT = 64
"""A BYTES element counts this many times against ``max_elements``: each is a Python string
(about 60 bytes in memory, and again in the model's output) where a number takes 1-8 bytes."""


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """Bounds on what one request may make the agent allocate."""

    max_elements: int = 4 << 20
    """Tensor elements per request, all inputs together (a BYTES element counts BYTES_ELEMENT_WEIGHT times)."""


DEFAULT_LIMITS = DecodeLimits()


class TensorSpec(Protocol):
    """What a model declares about an input (``edge_agent.model.TensorMeta`` satisfies it)."""

    @property
    def name(self) -> str: ...
    @property
    def datatype(self) -> str: ...
    @property
    def shape(self) -> tuple[int, ...]: ...


@dataclass(slots=True)
class InputTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray


@dataclass(slots=True)
class RequestedOutput:
    name: str
    binary: bool | None
    """Explicit ``binary_data`` of this output; None follows the request's ``binary_data_output``."""


@dataclass(slots=True)
class InferRequest:
    id: str | None
    inputs: list[InputTensor]
    outputs: list[RequestedOutput] | None
    binary_output: bool
    parameters: dict[str, Any]


class Where:
    """Names an input in error messages, e.g. ``inputs[0] ('x')``; formatted only when an error is raised."""

    __slots__ = ("index", "name")

    def __init__(self, index: int, name: object) -> None:
        self.index = index
        self.name = name

    def __str__(self) -> str:
        return f"inputs[{self.index}] ({self.name!r})" if isinstance(self.name, str) else f"inputs[{self.index}]"

    def __format__(self, spec: str) -> str:
        return str(self)


def _shape(value: object, where: Where) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(type(d) is int and d >= 0 for d in value):
        raise InvalidInput(f"{where}: shape must be a list of non-negative integers, e.g. [1, 3, 224, 224]; got {value!r:.80}")
    if len(value) > 32:
        raise InvalidInput(f"{where}: shape has {len(value)} dimensions; at most 32 are supported")
    return tuple(value)


class ElementBudget:
    """Elements a request may still claim; :meth:`take` raises once a claim exceeds what is left."""

    __slots__ = ("limit", "left")

    def __init__(self, limits: DecodeLimits) -> None:
        self.limit = limits.max_elements
        self.left = limits.max_elements

    def take(self, where: object, datatype: str, count: int) -> None:
        cost = count * BYTES_ELEMENT_WEIGHT if datatype == "BYTES" else count
        if cost > self.left:
            weight = f" (a BYTES element counts {BYTES_ELEMENT_WEIGHT})" if datatype == "BYTES" else ""
            raise PayloadTooLarge(
                f"{where}: {count} elements{weight} exceed the agent's limit of {self.limit} elements per request; "
                "send smaller batches or raise --max-elements"
            )
        self.left -= cost


def check_claim(
    where: object, datatype: str, shape: tuple[int, ...], budget: ElementBudget, expected: TensorSpec | None = None
) -> int:
    """The element count ``shape`` claims, once it fits the model's input and the budget (nothing allocated yet)."""
    if expected is not None:
        if datatype != expected.datatype:
            raise InvalidInput(f"{where}: datatype {datatype} does not match the model's {expected.datatype}")
        model_shape = expected.shape
        if len(shape) != len(model_shape) or any(e != -1 and e != g for e, g in zip(model_shape, shape, strict=True)):
            raise InvalidInput(f"{where}: shape {list(shape)} does not match the model's {list(model_shape)} (-1 = any)")
    count = math.prod(shape)
    budget.take(where, datatype, count)
    return count


def _from_json(data: object, datatype: str, shape: tuple[int, ...], count: int, where: Where) -> np.ndarray:
    if not isinstance(data, list):
        if count == 1 and isinstance(data, (int, float, str, bool)):
            data = [data]
        else:
            raise InvalidInput(f"{where}: data must be a JSON array of {count} values (flat or nested, row-major)")
    if data and isinstance(data[0], list):
        try:
            values: Any = np.asarray(data, dtype=object).reshape(-1)
        except ValueError as exc:
            raise InvalidInput(f"{where}: data is a ragged nested list; send a flat list of {count} values") from exc
    else:
        values = data
    kinds = set(map(type, values))
    if list in kinds:
        raise InvalidInput(f"{where}: data is a ragged nested list; send a flat list of {count} values")
    if len(values) != count:
        raise InvalidInput(f"{where}: shape {list(shape)} needs {count} elements, data has {len(values)}")
    if datatype == "BYTES":
        if kinds - {str}:
            raise InvalidInput(f"{where}: datatype BYTES needs strings in data (or binary data for raw bytes); data holds {_kinds(kinds - {str})}")
        return np.asarray(values, dtype=object).reshape(shape)
    accepted = _ACCEPTED_TYPES[datatype]
    if kinds - accepted:
        expected = {"b": "true/false values", "iu": "integers", "iuf": "numbers"}[ACCEPTED_JSON_KINDS[datatype]]
        raise InvalidInput(f"{where}: datatype {datatype} needs {expected}; data holds {_kinds(kinds - accepted)}")
    if datatype in FLOAT_DATATYPES:
        with np.errstate(over="ignore"):  # beyond FP16/FP32 range -> inf, rejected by the finite check
            try:
                return np.fromiter(values, V2_TO_NUMPY[datatype], count).reshape(shape)
            except OverflowError as exc:  # an integer beyond float64
                raise InvalidInput(f"{where}: a value is outside the {datatype} range") from exc
    if datatype == "BOOL":
        return np.fromiter(values, np.bool_, count).reshape(shape)
    info = np.iinfo(V2_TO_NUMPY[datatype])
    if count and (min(values) < info.min or max(values) > info.max):
        raise InvalidInput(f"{where}: a value is outside the {datatype} range [{info.min}, {info.max}]")
    return np.fromiter(values, V2_TO_NUMPY[datatype], count).reshape(shape)


_ACCEPTED_TYPES: dict[str, frozenset[type]] = {
    name: frozenset({bool} if kinds == "b" else {int} if kinds == "iu" else {int, float})
    for name, kinds in ACCEPTED_JSON_KINDS.items()
}
"""JSON value types per datatype: no booleans as numbers, no numeric strings (``"0.1"``), no null."""

_TYPE_NAMES = {bool: "true/false values", int: "integers", float: "floating-point numbers", str: "strings",
               list: "nested lists of uneven length (ragged)", dict: "objects", type(None): "nulls"}  # fmt: skip


def _kinds(types: set[type]) -> str:
    return " and ".join(sorted(_TYPE_NAMES.get(t, t.__name__) for t in types))


def _bytes_elements(buf: memoryview, count: int, where: Where) -> np.ndarray:
    if count > len(buf) // 4:
        raise InvalidInput(
            f"{where}: {count} BYTES elements need at least {4 * count} bytes (a 4-byte length each); "
            f"binary_data_size is {len(buf)}"
        )
    out = np.empty(count, dtype=object)
    pos, end = 0, len(buf)
    for i in range(count):
        if pos + 4 > end:
            raise InvalidInput(f"{where}: BYTES binary data ends inside element {i} (4-byte length prefix missing)")
        (length,) = struct.unpack_from("<I", buf, pos)
        pos += 4
        if pos + length > end:
            raise InvalidInput(f"{where}: BYTES element {i} claims {length} bytes but only {end - pos} remain")
        try:  # ONNX Runtime string tensors take text: bytes objects would arrive as "b'...'"
            out[i] = bytes(buf[pos : pos + length]).decode()
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"{where}: BYTES element {i} is not UTF-8 text, which ONNX Runtime string tensors need") from exc
        pos += length
    if pos != end:
        raise InvalidInput(f"{where}: BYTES binary data has {end - pos} bytes after the last of {count} elements")
    return out


def from_binary(buf: memoryview, datatype: str, shape: tuple[int, ...], count: int, where: Where) -> np.ndarray:
    """A tensor from its raw little-endian bytes (BYTES: 4-byte length + bytes per element), checked against ``count``."""
    if datatype == "BYTES":
        return _bytes_elements(buf, count, where).reshape(shape)
    if datatype == "BOOL":
        raw = np.frombuffer(buf, dtype=np.uint8)
        if raw.size != count:
            raise InvalidInput(f"{where}: shape {list(shape)} needs {count} bytes of BOOL data, got {raw.size}")
        if raw.size and raw.max() > 1:
            raise InvalidInput(f"{where}: BOOL binary data must hold bytes 0 or 1")
        return raw.view(np.bool_).reshape(shape)
    dtype = _LE[datatype]
    expected = count * dtype.itemsize
    if len(buf) != expected:
        raise InvalidInput(f"{where}: shape {list(shape)} of {datatype} needs {expected} bytes, binary_data_size is {len(buf)}")
    arr = np.frombuffer(buf, dtype=dtype)
    if not arr.flags.aligned:
        arr = arr.copy()
    return arr.reshape(shape)


JSON_BYTES_PER_CONTAINER = 16
"""At most one JSON array or object per this many bytes of JSON (plus a few): ``[[],[],...]`` costs 56
bytes of memory per 3 bytes of text, so a JSON part that is all containers is refused before parsing.
Real requests hold far fewer (a nested 1x3x224x224 image: 677 arrays in 3 MB)."""
JSON_UNCOUNTED_BYTES = 1 << 20
"""JSON parts up to this size are parsed without counting (orjson peaks at 16-24x the text)."""
JSON_SPARE_STRINGS = 1024
"""Strings a JSON part may hold beyond the BYTES elements the limit allows (names, datatypes, ids)."""


def _check_json_shape(head: bytes | bytearray | memoryview, limits: DecodeLimits) -> bytes | bytearray:
    """The JSON text (as bytes), once a count of brackets and quotes shows that parsing it cannot cost
    much more than the limits allow (a parsed short string costs ~60 bytes, an empty array 56)."""
    text = head if isinstance(head, (bytes, bytearray)) else head.tobytes()
    if len(text) <= JSON_UNCOUNTED_BYTES:  # parsed whole, it costs at most ~24 MB: not worth two scans
        return text
    containers = text.count(b"[") + text.count(b"{")
    allowed = 64 + len(text) // JSON_BYTES_PER_CONTAINER
    if containers > allowed:
        raise InvalidInput(
            f"the JSON part holds {containers} '[' or '{{' for {len(text)} bytes, more than the {allowed} allowed "
            f"(one per {JSON_BYTES_PER_CONTAINER} bytes); send flat data lists, or BYTES text with brackets as binary data"
        )
    strings = text.count(b'"') // 2
    allowed = limits.max_elements // BYTES_ELEMENT_WEIGHT + JSON_SPARE_STRINGS
    if strings > allowed:
        raise PayloadTooLarge(
            f"the JSON part holds about {strings} strings, more than the {allowed} the element limit allows "
            f"(a BYTES element counts {BYTES_ELEMENT_WEIGHT}; --max-elements); send fewer or raise the limit"
        )
    return text


def decode_request(
    body: bytes | bytearray | memoryview,
    header_length: int | None = None,
    limits: DecodeLimits = DEFAULT_LIMITS,
    model_inputs: Mapping[str, TensorSpec] | None = None,
) -> InferRequest:
    """Parse and check an inference request body; InvalidInput names the first problem.

    ``model_inputs`` (the model's inputs by name) lets shapes and datatypes be checked before any
    tensor is allocated; without it only the limits and the data sent bound a claim.
    """
    if header_length is not None:
        if not 0 < header_length <= len(body):
            raise InvalidInput(
                f"Inference-Header-Content-Length is {header_length} but the body has {len(body)} bytes; "
                "it must give the length of the JSON part"
            )
        view = memoryview(body)
        head: bytes | bytearray | memoryview = view[:header_length]
        binary = view[header_length:]
    else:
        head, binary = body, memoryview(b"")
    text = _check_json_shape(head, limits)
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"request body is not valid JSON ({exc}); send an inference request object") from exc
    if not isinstance(obj, dict):
        raise InvalidInput("request body must be a JSON object with an \"inputs\" array")
    request_id = obj.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput("id must be a string")
    params = _parameters(obj, "parameters")
    if "classification" in params:
        raise InvalidInput("parameter classification is not supported by this server")
    binary_output = params.get("binary_data_output", False)
    if not isinstance(binary_output, bool):
        raise InvalidInput("parameters.binary_data_output must be true or false")
    raw_inputs = obj.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("inputs must be a non-empty array of {name, shape, datatype, data} objects")
    inputs: list[InputTensor] = []
    budget = ElementBudget(limits)
    offset = 0
    for index, item in enumerate(raw_inputs):
        if not isinstance(item, dict):
            raise InvalidInput(f"inputs[{index}] must be an object with name, shape, datatype and data")
        name = item.get("name")
        where = Where(index, name)
        if not isinstance(name, str) or not name:
            raise InvalidInput(f"{where}: name must be a non-empty string")
        datatype = item.get("datatype")
        if not isinstance(datatype, str) or datatype not in V2_TO_NUMPY:
            raise InvalidInput(f"{where}: datatype {datatype!r:.40} is not one of {_SUPPORTED}")
        shape = _shape(item.get("shape"), where)
        count = check_claim(where, datatype, shape, budget, model_inputs.get(name) if model_inputs is not None else None)
        in_params = _parameters(item, f"{where}: parameters")
        size = in_params.get("binary_data_size")
        if size is not None:
            if type(size) is not int or size < 0:
                raise InvalidInput(f"{where}: binary_data_size must be a non-negative integer")
            if "data" in item:
                raise InvalidInput(f"{where}: give either data or binary_data_size, not both")
            if offset + size > len(binary):
                raise InvalidInput(
                    f"{where}: binary_data_size {size} exceeds the {len(binary) - offset} bytes of binary data left "
                    "(check Inference-Header-Content-Length)"
                )
            data = from_binary(binary[offset : offset + size], datatype, shape, count, where)
            offset += size
        else:
            if "data" not in item:
                raise InvalidInput(f"{where}: data is missing (or set parameters.binary_data_size for binary data)")
            data = _from_json(item["data"], datatype, shape, count, where)
        inputs.append(InputTensor(name, datatype, shape, data))
    if offset != len(binary):
        raise InvalidInput(f"the body has {len(binary) - offset} bytes of binary data that no input's binary_data_size claims")
    outputs = _requested_outputs(obj.get("outputs"))
    return InferRequest(request_id, inputs, outputs, binary_output, params)


def _parameters(obj: dict[str, Any], what: str) -> dict[str, Any]:
    """An optional ``parameters`` object: absent or null is empty; anything but an object is refused."""
    params = obj.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise InvalidInput(f"{what} must be a JSON object, e.g. {{\"binary_data_output\": true}}; got {type(params).__name__}")
    return params


def _requested_outputs(raw: object) -> list[RequestedOutput] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise InvalidInput("outputs must be an array of {name} objects")
    result: list[RequestedOutput] = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInput(f"outputs[{index}] must be an object with a string name")
        params = _parameters(item, f"outputs[{index}].parameters")
        if "classification" in params:
            raise InvalidInput(f"outputs[{index}]: parameter classification is not supported by this server")
        binary = params.get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise InvalidInput(f"outputs[{index}].parameters.binary_data must be true or false")
        result.append(RequestedOutput(item["name"], binary))
    return result


def bytes_payload(arr: np.ndarray) -> bytes:
    """A BYTES tensor as raw bytes: each element's 4-byte little-endian length, then its bytes."""
    parts: list[bytes] = []
    for value in arr.reshape(-1):
        raw = value if isinstance(value, bytes) else str(value).encode()
        parts.append(struct.pack("<I", len(raw)))
        parts.append(raw)
    return b"".join(parts)


def _json_data(arr: np.ndarray, name: str) -> Any:
    flat = arr.reshape(-1)
    if flat.dtype.kind in "OSU":
        try:
            return [v.decode() if isinstance(v, bytes) else str(v) for v in flat]
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"output {name!r} holds bytes that are not UTF-8; request it with binary_data: true") from exc
    if not flat.flags.c_contiguous:
        flat = np.ascontiguousarray(flat)
    return flat


def encode_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: list[tuple[str, np.ndarray, bool]],
) -> tuple[bytes, int | None]:
    """The response body and, when any output is binary, the JSON length for the header."""
    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, arr, binary in outputs:
        datatype = numpy_to_v2(arr.dtype)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(arr.shape)}
        if binary:
            blob = bytes_payload(arr) if datatype == "BYTES" else np.ascontiguousarray(arr).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = _json_data(arr, name)
        entries.append(entry)
    response: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        response["id"] = request_id
    response["outputs"] = entries
    head = orjson.dumps(response, option=_NUMPY_OPTS)
    if not blobs:
        return head, None
    return b"".join([head, *blobs]), len(head)
