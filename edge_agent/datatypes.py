"""Open Inference Protocol datatypes and their numpy / ONNX Runtime equivalents."""

from __future__ import annotations

from typing import Final

import numpy as np

#: v2 datatype -> numpy dtype (BYTES is an object array of ``bytes``/``str``).
V2_TO_NUMPY: Final[dict[str, np.dtype]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}

#: ONNX Runtime type string -> v2 datatype.
ORT_TO_V2: Final[dict[str, str]] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}

#: numpy dtype kinds a JSON value list may arrive as, per target datatype (no lossy coercion).
ACCEPTED_JSON_KINDS: Final[dict[str, str]] = {
    "BOOL": "b",
    "UINT8": "iu",
    "UINT16": "iu",
    "UINT32": "iu",
    "UINT64": "iu",
    "INT8": "iu",
    "INT16": "iu",
    "INT32": "iu",
    "INT64": "iu",
    "FP16": "iuf",
    "FP32": "iuf",
    "FP64": "iuf",
}

FLOAT_DATATYPES: Final[frozenset[str]] = frozenset({"FP16", "FP32", "FP64"})


_NUMPY_TO_V2: Final[dict[np.dtype, str]] = {dt: name for name, dt in V2_TO_NUMPY.items() if name != "BYTES"}


def numpy_to_v2(dtype: np.dtype) -> str:
    """The v2 datatype of a numpy dtype (str/bytes/object arrays are BYTES)."""
    found = _NUMPY_TO_V2.get(dtype)
    if found is not None:
        return found
    if dtype.kind in "OSU":
        return "BYTES"
    raise ValueError(f"numpy dtype {dtype} has no Open Inference Protocol datatype")
