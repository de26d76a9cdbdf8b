"""Tiny ONNX models for the agent tests, built with onnx.helper (the agent itself never imports onnx)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

#: v2 datatype -> ONNX element type, for the identity model that echoes every datatype.
V2_TO_ONNX = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}


def _save(graph: onnx.GraphProto, path: Path, opset: int = 17) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="edgemodel-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def affine(path: Path, scale: float) -> Path:
    """y = x * scale + 1 for x float32 [-1, 4]; the scale tells versions apart."""
    w = numpy_helper.from_array(np.array(scale, dtype=np.float32), "scale")
    b = numpy_helper.from_array(np.array(1.0, dtype=np.float32), "bias")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "scale"], ["t"]), helper.make_node("Add", ["t", "bias"], ["y"])],
        "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [w, b],
    )
    return _save(graph, path)


def identity_all(path: Path) -> Path:
    """One Identity per Open Inference Protocol datatype: in_<DT> [-1, 2] -> out_<DT>."""
    nodes, inputs, outputs = [], [], []
    for name, elem in V2_TO_ONNX.items():
        nodes.append(helper.make_node("Identity", [f"in_{name}"], [f"out_{name}"]))
        inputs.append(helper.make_tensor_value_info(f"in_{name}", elem, ["N", 2]))
        outputs.append(helper.make_tensor_value_info(f"out_{name}", elem, ["N", 2]))
    return _save(helper.make_graph(nodes, "identity_all", inputs, outputs), path)


def gather(path: Path) -> Path:
    """out = table[idx] for idx int64 [-1, 1] and a 10-entry table: an index >= 10 makes ORT fail."""
    table = numpy_helper.from_array(np.arange(10, dtype=np.float32) * 10, "table")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "idx"], ["out"], axis=0)],
        "gather",
        [helper.make_tensor_value_info("idx", TensorProto.INT64, ["N", 1])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 1])],
        [table],
    )
    return _save(graph, path)


def fixed_shape(path: Path) -> Path:
    """A model with a fixed input shape [2, 3] (not batchable): y = x + x."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"])],
        "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
    )
    return _save(graph, path)


def slow(path: Path, size: int = 192, layers: int = 6, repeat: int = 512) -> Path:
    """MatMuls over ``repeat`` tiled copies of x float32 [-1, size], averaged back: a few ms per
    request, so that requests are really in flight in the thread pool."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(np.array([repeat, 1], dtype=np.int64), "reps"),
        numpy_helper.from_array(np.array([-1, repeat, size], dtype=np.int64), "shape3"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
    ]
    nodes = [helper.make_node("Tile", ["x", "reps"], ["h"])]
    current = "h"
    for i in range(layers):
        inits.append(numpy_helper.from_array((rng.standard_normal((size, size)) / size).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [current, f"w{i}"], [f"m{i}"]))
        current = f"m{i}"
    nodes.append(helper.make_node("Reshape", [current, "shape3"], ["r"]))
    nodes.append(helper.make_node("ReduceMean", ["r", "axis1"], ["y"], keepdims=0))
    graph = helper.make_graph(
        nodes, "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", size])],
        inits,
    )  # fmt: skip
    return _save(graph, path, opset=18)
