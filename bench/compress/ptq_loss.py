"""Search for the QAT target's precondition: a digits model that post-training static INT8 hurts by >= 1 pp.

Run on demand (never from pytest):

    .venv/bin/python bench/compress/ptq_loss.py "plain(32, bn=False, pool='max')" "mbv2(16, 4)" --seeds 2

Each model expression (classes below) is trained like the benchmark teacher (bench/compress/models.py,
Adam + cosine, 1-pixel shifts) on the 1,437 training images, exported to ONNX, and quantised with the
product's fastest static setting (QDQ, U8 activations, S8 per-channel weights, MinMax, after
``quant_pre_process``) on ``--calibration`` training images, as ``spec.optimization.int8`` does;
prints per seed top-1 on the 360 held-out images for FP32 and INT8, the INT8 logits' SNR against FP32
and how many predictions changed. Model families: ``MODELS`` below (results: docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
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


class _SE(nn.Module):
    """Squeeze-excitation: a per-channel gate from the global average (MobileNetV3 / EfficientNet)."""

    def __init__(self, c: int, gate: type[nn.Module] = nn.Hardsigmoid) -> None:
        super().__init__()
        self.f = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, max(8, c // 4), 1), nn.ReLU(),
                               nn.Conv2d(max(8, c // 4), c, 1), gate())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.f(x)


class _MBv3Block(nn.Module):
    def __init__(self, cin: int, cout: int, expand: int, stride: int, se: bool, act: type[nn.Module],
                 gate: type[nn.Module]) -> None:
        super().__init__()
        h = cin * expand
        self.res = stride == 1 and cin == cout
        self.f = nn.Sequential(nn.Conv2d(cin, h, 1, bias=False), nn.BatchNorm2d(h), act(),
                               nn.Conv2d(h, h, 3, stride, 1, groups=h, bias=False), nn.BatchNorm2d(h), act(),
                               *([_SE(h, gate)] if se else []),
                               nn.Conv2d(h, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.f(x) if self.res else self.f(x)


def mbv3(w: int = 16, up: int = 1, se: bool = True, act: type[nn.Module] = nn.Hardswish,
         gate: type[nn.Module] = nn.Hardsigmoid, expand: int = 4) -> nn.Module:
    """MobileNetV3 / EfficientNet-style: hard-swish (or SiLU), squeeze-excitation, inverted residuals."""
    stem: list[nn.Module] = [nn.Upsample(scale_factor=up)] if up > 1 else []
    s = 2 if up > 1 else 1
    return nn.Sequential(*stem, nn.Conv2d(1, w, 3, s, 1, bias=False), nn.BatchNorm2d(w), act(),
                         _MBv3Block(w, w, expand, 1, se, act, gate),
                         _MBv3Block(w, 2 * w, expand, 2 if up > 1 else 1, se, act, gate),
                         _MBv3Block(2 * w, 2 * w, expand, 1, se, act, gate),
                         _MBv3Block(2 * w, 4 * w, expand, 2, se, act, gate),
                         _MBv3Block(4 * w, 4 * w, expand, 1, se, act, gate),
                         nn.Conv2d(4 * w, 8 * w, 1, bias=False), nn.BatchNorm2d(8 * w), act(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8 * w, 10))


def _separable_net(
    w: int, up: int, act: type[nn.Module], sep: Callable[[int, int, int], list[nn.Module]]
) -> nn.Module:
    """The MobileNetV1 trunk (stem, six separable blocks ``sep(cin, cout, stride)``, pooled linear head),
    optionally on the image upsampled ``up`` times."""
    stem: list[nn.Module] = [nn.Upsample(scale_factor=up)] if up > 1 else []
    s = 2 if up > 1 else 1
    return nn.Sequential(*stem, nn.Conv2d(1, w, 3, s, 1, bias=False), nn.BatchNorm2d(w), act(),
                         *sep(w, 2 * w, 1), *sep(2 * w, 2 * w, s), *sep(2 * w, 4 * w, 1),
                         *sep(4 * w, 4 * w, 2), *sep(4 * w, 8 * w, 1), *sep(8 * w, 8 * w, 1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8 * w, 10))


def mbv1(w: int = 32, up: int = 1, act: type[nn.Module] = nn.ReLU) -> nn.Module:
    """MobileNetV1-style depthwise-separable CNN with batch norm, optionally on the image upsampled ``up`` times."""
    def sep(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
        return [nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), act(),
                nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), act()]

    return _separable_net(w, up, act, sep)


class _Attention(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.h, self.qkv, self.out = heads, nn.Linear(d, 3 * d), nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.h, d // self.h).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-1, -2) / (d // self.h) ** 0.5, dim=-1)
        return self.out((a @ v).transpose(1, 2).reshape(n, t, d))


class _Encoder(nn.Module):
    def __init__(self, d: int, heads: int, mixer: bool, tokens: int) -> None:
        super().__init__()
        self.mixer = mixer
        self.n1, self.n2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.mix: nn.Module = (nn.Sequential(nn.Linear(tokens, 2 * tokens), nn.GELU(), nn.Linear(2 * tokens, tokens))
                               if mixer else _Attention(d, heads))
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.n1(x)
        x = x + (self.mix(y.transpose(1, 2)).transpose(1, 2) if self.mixer else self.mix(y))
        return x + self.mlp(self.n2(x))


class vit(nn.Module):
    """A small ViT (or MLP-mixer with ``mixer=True``) on 2x2 patches of the 8x8 image, LayerNorm, GELU."""

    def __init__(self, d: int = 64, depth: int = 4, heads: int = 4, patch: int = 2, mixer: bool = False) -> None:
        super().__init__()
        t = (8 // patch) ** 2
        self.embed = nn.Conv2d(1, d, patch, patch)
        self.pos = nn.Parameter(torch.zeros(1, t, d))
        self.blocks = nn.Sequential(*[_Encoder(d, heads, mixer, t) for _ in range(depth)])
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x).flatten(2).transpose(1, 2) + self.pos
        return self.head(self.norm(self.blocks(x)).mean(1))


def xcep(w: int = 32, up: int = 1, act: type[nn.Module] = nn.ReLU) -> nn.Module:
    """Xception / Keras ``SeparableConv2D``-style: depthwise then pointwise with no norm or activation between,
    batch norm and activation after the pointwise (the depthwise outputs keep free per-channel scales)."""
    def sep(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
        return [nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False),
                nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), act()]

    return _separable_net(w, up, act, sep)


class _PreAct(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.f = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c, 3, 1, 1, bias=False),
                               nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.f(x)


def preact(w: int = 64, blocks: int = 4) -> nn.Module:
    """Pre-activation ResNet: an un-normalised residual stream that grows with depth (batch norm inside branches)."""
    return nn.Sequential(nn.Conv2d(1, w, 3, 1, 1), *[_PreAct(w) for _ in range(blocks)], nn.BatchNorm2d(w), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(w, 10))


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


MODELS = {"plain": plain, "mbv2": mbv2, "dwsep": dwsep, "mbv1": mbv1, "mbv3": mbv3, "vit": vit, "xcep": xcep,
          "preact": preact, "nn": nn}
"""The names a model expression may use."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--calibration", type=int, default=128)
    parser.add_argument("--label-smoothing", type=float, default=0.0)
    parser.add_argument("--weight-decay", type=float, default=0.0, help="AdamW decoupled weight decay (0: Adam)")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    d = load_digits_data()
    x, y = torch.from_numpy(d.x_train), torch.from_numpy(d.y_train)
    folder = Path(tempfile.mkdtemp(prefix="ptq-loss-"))

    def logits(path: Path) -> np.ndarray:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return np.asarray(session.run(None, {"input": d.x_test})[0])

    for expression in args.models:
        for seed in range(args.seeds):
            torch.manual_seed(seed)
            model = eval(expression, dict(MODELS))
            start = time.monotonic()
            model = train(model, x, y, args.epochs, seed=seed, lr=args.lr, label_smoothing=args.label_smoothing,
                          weight_decay=args.weight_decay)
            fp32, pre, int8 = folder / "fp32.onnx", folder / "pre.onnx", folder / "int8.onnx"
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                torch.onnx.export(model, (x[:2],), str(fp32), input_names=["input"], dynamo=False,
                                  dynamic_axes={"input": {0: "n"}})
                quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
                quantize_static(str(pre), str(int8), _Reader(d.x_train[:args.calibration]),
                                quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                                weight_type=QuantType.QInt8, per_channel=True,
                                calibrate_method=CalibrationMethod.MinMax)
            la, lb = logits(fp32), logits(int8)
            a, b = float((la.argmax(1) == d.y_test).mean()), float((lb.argmax(1) == d.y_test).mean())
            snr = 10 * np.log10((la ** 2).mean() / ((la - lb) ** 2).mean())
            print(f"{expression} seed {seed}: FP32 {a:.4f}, INT8 QDQ U8S8 per-channel MinMax ({args.calibration} "
                  f"calibration images) {b:.4f}: drop {100 * (a - b):+.2f} pp, logit SNR {snr:.1f} dB, "
                  f"{int((la.argmax(1) != lb.argmax(1)).sum())} of {len(la)} predictions changed "
                  f"({time.monotonic() - start:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
