"""Benchmark models built with onnx.helper (no torch, no download): the digits CNN and ResNet-18.

Weights are random (seeded): these models measure latency and throughput, never accuracy.
The digits CNN has the shape of the project's demo model (1x8x8 input, two 3x3 convolutions,
a max-pool and a linear layer); ResNet-18 is the torchvision architecture (3x224x224, 1000 classes)
with batch normalisation folded into the convolutions, as ONNX export produces it.

    .venv/bin/python -m bench.agent.models --out /tmp/edgemodel-bench
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class _Builder:
    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def weight(self, *shape: int, scale: float | None = None) -> str:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
        std = scale if scale is not None else (2.0 / max(1, fan_in)) ** 0.5
        name = self.name("w")
        self.inits.append(numpy_helper.from_array((self.rng.standard_normal(shape) * std).astype(np.float32), name))
        return name

    def op(self, op_type: str, inputs: list[str], **attrs: object) -> str:
        out = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def conv(self, x: str, cin: int, cout: int, k: int, stride: int = 1, relu: bool = True) -> str:
        y = self.op(
            "Conv", [x, self.weight(cout, cin, k, k), self.weight(cout, scale=0.01)],
            kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4,
        )  # fmt: skip
        return self.op("Relu", [y]) if relu else y

    def model(self, name: str, x: onnx.ValueInfoProto, y_name: str, y_shape: list[object]) -> onnx.ModelProto:
        out = helper.make_tensor_value_info(y_name, TensorProto.FLOAT, y_shape)
        graph = helper.make_graph(self.nodes, name, [x], [out], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgemodel-bench")
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model


def digits_cnn() -> onnx.ModelProto:
    b = _Builder(seed=1)
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])
    h = b.conv("input", 1, 16, 3)
    h = b.conv(h, 16, 32, 3)
    h = b.op("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])
    h = b.op("Flatten", [h])
    logits = b.op("Gemm", [h, b.weight(10, 32 * 4 * 4), b.weight(10, scale=0.01)], transB=1)
    b.nodes.append(helper.make_node("Identity", [logits], ["logits"]))
    return b.model("digits_cnn", x, "logits", ["N", 10])


def resnet18() -> onnx.ModelProto:
    b = _Builder(seed=2)
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 224, 224])
    h = b.conv("input", 3, 64, 7, stride=2)
    h = b.op("MaxPool", [h], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        for block in range(2):
            s = stride if block == 0 else 1
            y = b.conv(h, cin, cout, 3, stride=s)
            y = b.conv(y, cout, cout, 3, relu=False)
            shortcut = b.conv(h, cin, cout, 1, stride=s, relu=False) if (s != 1 or cin != cout) else h
            h = b.op("Relu", [b.op("Add", [y, shortcut])])
            cin = cout
    h = b.op("GlobalAveragePool", [h])
    h = b.op("Flatten", [h])
    logits = b.op("Gemm", [h, b.weight(1000, 512), b.weight(1000, scale=0.01)], transB=1)
    b.nodes.append(helper.make_node("Identity", [logits], ["logits"]))
    return b.model("resnet18", x, "logits", ["N", 1000])


MODELS = {"digits": (digits_cnn, (1, 1, 8, 8)), "resnet18": (resnet18, (1, 3, 224, 224))}


def build(out: Path) -> dict[str, Path]:
    """Write every benchmark model to ``out`` (skipping ones already there); name -> path."""
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name, (make, _) in MODELS.items():
        path = out / f"{name}.onnx"
        if not path.exists():
            onnx.save(make(), path)
        paths[name] = path
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("/tmp/edgemodel-bench"))
    for name, path in build(parser.parse_args().out).items():
        print(f"{name}: {path} ({path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
