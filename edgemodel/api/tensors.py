"""Tensor descriptions shared by EdgeModel inputs, artifact manifests and the agent."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from edgemodel.api.base import ApiModel


class DType(StrEnum):
    """Element types a model input or output may have (ONNX / numpy names)."""

    FLOAT32 = "float32"
    FLOAT16 = "float16"
    FLOAT64 = "float64"
    INT8 = "int8"
    INT16 = "int16"
    INT32 = "int32"
    INT64 = "int64"
    UINT8 = "uint8"
    BOOL = "bool"


TENSOR_NAME = r"^[A-Za-z_][A-Za-z0-9_.:/-]*$"


class OutputSpec(ApiModel):
    """A name for one model output, in the order the model returns its outputs."""

    name: str = Field(min_length=1, max_length=253, pattern=TENSOR_NAME)
    """Output name served on the Open Inference Protocol (and in the ONNX graph), e.g. "logits"."""


class TensorSpec(ApiModel):
    """A named tensor with an element type and a shape; -1 marks a dynamic dimension."""

    name: str = Field(min_length=1, max_length=253, pattern=TENSOR_NAME)
    """Tensor name as the model sees it (the ONNX input name), e.g. "input"."""
    dtype: DType = DType.FLOAT32
    """Element type, e.g. float32."""
    shape: list[int] = Field(min_length=1, max_length=8)
    """Dimensions; -1 for a dynamic one (the batch dimension is usually -1), e.g. [-1, 1, 8, 8]."""
