"""A tiny ONNX classifier for the continual tests: logits = input @ W, 4 features -> 3 classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

WEIGHTS = np.array([[4, 0, 0], [0, 4, 0], [0, 0, 4], [0, 0, 0]], dtype=np.float32)


def classifier(path: Path) -> Path:
    """input float32 [-1, 4] -> logits [-1, 3]; a one-hot input on the first 3 features is a confident class."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["logits"])],
        "classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(WEIGHTS, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path
