"""Tiny ONNX models for the split tests, built with onnx.helper (and one exported from torch)."""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8  # what opset 17 needs; onnx 1.19 would write 11+, newer than some ORT builds read


def _conv(name: str, inp: str, out: str, cin: int, cout: int, rng: np.random.Generator, k: int = 3,
          stride: int = 1) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
    w = numpy_helper.from_array((rng.standard_normal((cout, cin, k, k)) * 0.3).astype(np.float32), f"{name}.w")
    b = numpy_helper.from_array((rng.standard_normal(cout) * 0.1).astype(np.float32), f"{name}.b")
    node = helper.make_node("Conv", [inp, w.name, b.name], [out], name=name, pads=[k // 2] * 4,
                            strides=[stride, stride])
    return node, [w, b]


def _head_and_classifier(rng: np.random.Generator, last: str, channels: int,
                         classes: int = 5) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    w = numpy_helper.from_array((rng.standard_normal((classes, channels)) * 0.3).astype(np.float32), "fc.w")
    b = numpy_helper.from_array(np.zeros(classes, np.float32), "fc.b")
    nodes = [
        helper.make_node("GlobalAveragePool", [last], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="fc", transB=1),
    ]
    return nodes, [w, b]


def _model(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], inputs: list[onnx.ValueInfoProto],
           name: str, classes: int = 5) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs,
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgemodel-tests",
                              ir_version=IR_VERSION)
    helper.set_model_props(model, {"owner": "split-tests"})
    onnx.checker.check_model(model, full_check=True)
    return model


def chain_model(seed: int = 0) -> onnx.ModelProto:
    """x[N,3,8,8] -> conv1 -> relu1 -> conv2 -> relu2 -> gap -> flatten -> fc -> logits[N,5]."""
    rng = np.random.default_rng(seed)
    n1, i1 = _conv("conv1", "x", "c1", 3, 4, rng)
    n2, i2 = _conv("conv2", "r1", "c2", 4, 6, rng)
    tail, i3 = _head_and_classifier(rng, "r2", 6)
    nodes = [n1, helper.make_node("Relu", ["c1"], ["r1"], name="relu1"), n2,
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"), *tail]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])
    return _model(nodes, [*i1, *i2, *i3], [x], "chain")


def residual_model(seed: int = 0) -> onnx.ModelProto:
    """A stem, one residual block (convA -> reluA -> convB, added to the stem output), then a classifier.

    Valid cuts: stem, stem_relu, block_add, block_relu, gap, flat. Inside the block (a, ra, b) the
    skip connection from stem_relu would have to cross too.
    """
    rng = np.random.default_rng(seed)
    s, i0 = _conv("stem", "x", "stem", 3, 4, rng)
    a, i1 = _conv("convA", "stem_relu", "a", 4, 4, rng)
    b, i2 = _conv("convB", "ra", "b", 4, 4, rng)
    tail, i3 = _head_and_classifier(rng, "block_relu", 4)
    nodes = [s, helper.make_node("Relu", ["stem"], ["stem_relu"], name="stem_relu"),
             a, helper.make_node("Relu", ["a"], ["ra"], name="reluA"), b,
             helper.make_node("Add", ["b", "stem_relu"], ["block_add"], name="block_add"),
             helper.make_node("Relu", ["block_add"], ["block_relu"], name="block_relu"), *tail]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])
    return _model(nodes, [*i0, *i1, *i2, *i3], [x], "residual")


def two_input_model(seed: int = 0) -> onnx.ModelProto:
    """Two inputs, each through its own conv, concatenated; only tensors after the Concat dominate both."""
    rng = np.random.default_rng(seed)
    ca, ia = _conv("convX", "x", "cx", 3, 2, rng)
    cb, ib = _conv("convY", "y", "cy", 3, 2, rng)
    shape = numpy_helper.from_array(np.array([1.0], np.float32), "one")
    tail, ic = _head_and_classifier(rng, "cat_scaled", 4)
    nodes = [ca, cb, helper.make_node("Concat", ["cx", "cy"], ["cat"], name="concat", axis=1),
             helper.make_node("Mul", ["cat", "one"], ["cat_scaled"], name="scale"), *tail]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 8, 8])
    return _model(nodes, [*ia, *ib, shape, *ic], [x, y], "two_inputs")


def shrinking_model(seed: int = 0) -> onnx.ModelProto:
    """A big input [N,3,96,96] shrunk 16x by a cheap strided conv, then heavier convs: a split-friendly shape."""
    rng = np.random.default_rng(seed)
    n0, i0 = _conv("shrink", "x", "s", 3, 3, rng, k=4, stride=4)
    nodes: list[onnx.NodeProto] = [n0, helper.make_node("Relu", ["s"], ["sr"], name="shrink_relu")]
    inits = list(i0)
    last, cin = "sr", 3
    for i in range(4):
        n, w = _conv(f"heavy{i}", last, f"h{i}", cin, 64, rng)
        nodes += [n, helper.make_node("Relu", [f"h{i}"], [f"hr{i}"], name=f"heavy_relu{i}")]
        inits += w
        last, cin = f"hr{i}", 64
    tail, it = _head_and_classifier(rng, last, 64)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 96, 96])
    return _model([*nodes, *tail], [*inits, *it], [x], "shrinking")


def export_torch_residual(path: Path) -> Path:
    """A small torch ResNet-style model (two basic blocks, one with a strided 1x1 downsample) exported with dynamo."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
            self.down: nn.Module = nn.Identity() if stride == 1 and cin == cout else nn.Conv2d(cin, cout, 1, stride)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.conv2(torch.relu(self.conv1(x))) + self.down(x))

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.ReLU(), Block(8, 8, 1), Block(8, 16, 2),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()
    example = torch.randn(2, 3, 16, 16)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # torch.onnx's own deprecation noise; not what these tests check
        torch.onnx.export(model, (example,), str(path), input_names=["input"], output_names=["logits"],
                          dynamo=True, dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},),
                          verbose=False)
    return path


def feeds(model: onnx.ModelProto, n: int = 3, batch: int = 1, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``n`` random input dicts for ``model`` (symbolic dimensions become ``batch``)."""
    from edgemodel.split.graph import random_inputs

    return [random_inputs(model, batch=batch, seed=seed + i) for i in range(n)]
