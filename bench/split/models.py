"""The split benchmark's models, exported to ONNX: ResNet-18 (random weights) and the digits CNN (trained).

ResNet-18 is written here (no torchvision beside torch 2.13); its weights are random (seeded), so
it measures latency and feature sizes, and "accuracy" is top-1 agreement with the unsplit model.
The digits CNN is edgemodel_dev.examples_models' model trained on scikit-learn's digits: real accuracy.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger("bench.split")


@dataclass(frozen=True)
class BenchModel:
    """An exported model plus the inputs to time with and the evaluation set (labels may be absent)."""

    name: str
    onnx_path: Path
    input_name: str
    timing_input: np.ndarray
    eval_inputs: np.ndarray
    eval_labels: np.ndarray | None
    note: str


def _resnet18():  # type: ignore[no-untyped-def]
    import torch
    from torch import nn

    from bench.convert.models import ResNet18  # the one ResNet-18 the benchmarks share

    torch.manual_seed(0)
    model = ResNet18()
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight, generator=generator)
        elif isinstance(module, nn.BatchNorm2d):
            with torch.no_grad():
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.uniform_(-0.1, 0.1, generator=generator)
                module.running_mean.uniform_(-0.1, 0.1, generator=generator)
                module.running_var.uniform_(0.5, 1.5, generator=generator)
    return model.eval()


def _export(model, example: np.ndarray, path: Path) -> None:  # type: ignore[no-untyped-def]
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        logging.disable(logging.INFO)  # the exporter's optimiser logs every pass at INFO
        batch2 = np.concatenate([example[:1], example[:1]])  # a batch of 1 would specialise the batch dimension
        torch.onnx.export(model, (torch.from_numpy(batch2),), str(path), input_names=["input"],
                          output_names=["logits"], dynamo=True,
                          dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},))
        logging.disable(logging.NOTSET)


def resnet18(workdir: Path, eval_samples: int = 64) -> BenchModel:
    """ResNet-18 for 224x224 RGB, random weights; evaluation on seeded random images."""
    path = workdir / "resnet18.onnx"
    rng = np.random.default_rng(0)
    if not path.is_file():
        log.info("Exporting ResNet-18 (random weights) to %s", path)
        _export(_resnet18(), rng.standard_normal((1, 3, 224, 224)).astype(np.float32), path)
    timing = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    evals = np.random.default_rng(2).standard_normal((eval_samples, 3, 224, 224)).astype(np.float32)
    return BenchModel("resnet18", path, "input", timing, evals, None,
                      "random weights: accuracy = top-1 agreement with the unsplit model on random images")


def digits(workdir: Path) -> BenchModel:
    """The digits CNN trained on scikit-learn's digits (train split); evaluation on the 360 test images."""
    from edgemodel_dev.examples_models import load_digits_data, train_digits_cnn

    path = workdir / "digits.onnx"
    info = workdir / "digits.json"
    data = load_digits_data(seed=0)
    if not path.is_file():
        log.info("Training the digits CNN and exporting it to %s", path)
        model, acc = train_digits_cnn(data, epochs=40, seed=0)
        _export(model, data.x_test[:1], path)
        info.write_text(json.dumps({"torchTestAccuracy": acc}))
    acc = json.loads(info.read_text())["torchTestAccuracy"]
    return BenchModel("digits", path, "input", data.x_test[:1], data.x_test, data.y_test,
                      f"trained on sklearn digits (torch test accuracy {acc:.4f}); 360 held-out test images")
