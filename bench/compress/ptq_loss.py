"""Search for the QAT target's precondition: a digits model that post-training static INT8 hurts by >= 1 pp.

Run on demand (never from pytest):

    .venv/bin/python bench/compress/ptq_loss.py "plain(32, bn=False, pool='max')" "mbv2(16, 4)" --seeds 2

Each model expression (classes below) is trained like the benchmark teacher (bench/compress/models.py,
Adam + cosine, 1-pixel shifts) on the 1,437 training images, exported to ONNX, and quantised with the
product's fastest static setting (QDQ, U8 activations, S8 per-channel weights, MinMax, after
``quant_pre_process``) on ``--calibration`` training images, as ``spec.optimization.int8`` does;
prints top-1 on the 360 held-out images for FP32 and INT8 per seed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from models import train

from edgemodel_dev.examples_models import load_digits_data


def plain(w: int = 32, bn: bool = True, act: type[nn.Module] = nn.ReLU, depth: int = 5, pool: str = "avg") -> nn.Module:
    """Plain 3x3 CNN (the benchmark teacher's shape), optionally without batch norm or with another activation."""
    layers: list[nn.Module] = []
    cin = 1
    for i in range(depth):
        cout = w * (1 if i < depth // 3 else 2 if i < 2 * depth // 3 else 4)
        layers += [nn.Conv2d(cin, cout, 3, 1, 1, bias=not bn), *([nn.BatchNorm2d(cout)] if bn else []), act()]
        if i == depth // 2:
            layers.append(nn.MaxPool2d(2))
        cin = cout
    head = nn.AdaptiveAvgPool2d(1) if pool == "avg" else nn.AdaptiveMaxPool2d(1)
    return nn.Sequential(*layers, head, nn.Flatten(), nn.Linear(cin, 10))


class _InvertedResidual(nn.Module):
    def __init__(self, c: int, expand: int = 4) -> None:
        super().__init__()
        h = c * expand
        self.f = nn.Sequential(nn.Conv2d(c, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU(),
                               nn.Conv2d(h, h, 3, 1, 1, groups=h, bias=False), nn.BatchNorm2d(h), nn.ReLU(),
                               nn.Conv2d(h, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.f(x)


def mbv2(w: int = 16, blocks: int = 4) -> nn.Module:
    """MobileNetV2-style: inverted residual blocks (depthwise, linear bottleneck, residual adds)."""
    return nn.Sequential(nn.Conv2d(1, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
                         *[_InvertedResidual(w) for _ in range(blocks)],
                         nn.Conv2d(w, 4 * w, 1, bias=False), nn.BatchNorm2d(4 * w), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, 10))


def dwsep(w: int = 32, bn: bool = True) -> nn.Module:
    """MobileNetV1-style depthwise-separable CNN, optionally without batch norm."""
    def norm(c: int) -> list[nn.Module]:
        return [nn.BatchNorm2d(c)] if bn else []

    def sep(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
        return [nn.Conv2d(cin, cin, 3, stride, 1, groups=cin), *norm(cin), nn.ReLU(),
                nn.Conv2d(cin, cout, 1), *norm(cout), nn.ReLU()]

    return nn.Sequential(nn.Conv2d(1, w, 3, 1, 1), *norm(w), nn.ReLU(), *sep(w, 2 * w), *sep(2 * w, 2 * w, 2),
                         *sep(2 * w, 4 * w), *sep(4 * w, 4 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4 * w, 10))


class _Reader:
    def __init__(self, x: np.ndarray) -> None:
        self.x, self.i = x, 0

    def get_next(self) -> dict[str, Any] | None:
        if self.i >= len(self.x):
            return None
        self.i += 32
        return {"input": self.x[self.i - 32:self.i]}

    def rewind(self) -> None:
        self.i = 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--calibration", type=int, default=128)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    d = load_digits_data()
    x, y = torch.from_numpy(d.x_train), torch.from_numpy(d.y_train)
    folder = Path(tempfile.mkdtemp(prefix="ptq-loss-"))

    def top1(path: Path) -> float:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return float((session.run(None, {"input": d.x_test})[0].argmax(1) == d.y_test).mean())

    for expression in args.models:
        for seed in range(args.seeds):
            torch.manual_seed(seed)
            model = eval(expression, {"plain": plain, "mbv2": mbv2, "dwsep": dwsep, "nn": nn})
            start = time.monotonic()
            model = train(model, x, y, args.epochs, seed=seed, lr=args.lr)
            fp32, pre, int8 = folder / "fp32.onnx", folder / "pre.onnx", folder / "int8.onnx"
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                torch.onnx.export(model, (x[:2],), str(fp32), input_names=["input"], dynamo=False,
                                  dynamic_axes={"input": {0: "n"}})
                quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
                quantize_static(str(pre), str(int8), _Reader(d.x_train[:args.calibration]),
                                quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                                weight_type=QuantType.QInt8, per_channel=True,
                                calibrate_method=CalibrationMethod.MinMax)
            a, b = top1(fp32), top1(int8)
            print(f"{expression} seed {seed}: FP32 {a:.4f}, INT8 QDQ U8S8 per-channel MinMax ({args.calibration} "
                  f"calibration images) {b:.4f}: drop {100 * (a - b):+.2f} pp ({time.monotonic() - start:.0f}s)",
                  flush=True)


if __name__ == "__main__":
    main()
