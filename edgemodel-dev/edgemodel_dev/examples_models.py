"""Small real example models for the demo, the tests and the benchmarks (torch + scikit-learn only).

The digits CNN trains on scikit-learn's bundled ``load_digits`` (1,797 real 8x8 images, 10
classes) in a few seconds on a CPU and reaches about 97-99 % test accuracy, so accuracy gates
can be checked against a real number. Nothing is downloaded.

Typical use (what the demo and the operator's end-to-end tests do)::

    from edgemodel_dev.examples_models import write_digits_example
    example = write_digits_example(Path(".demo/models/digits"))
    example.model_pt      # TorchScript, input "input" [-1, 1, 8, 8] float32 -> logits [-1, 10]
    example.calib_npz     # {"input": float32[N, 1, 8, 8]}
    example.val_npz       # {"input": float32[M, 1, 8, 8], "labels": int64[M]}
    example.manifest(name="digits")   # an EdgeModel dict pointing at these files

torch is imported by the functions, never at module import, so importing this module is cheap.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch

DIGITS_INPUT_NAME = "input"
DIGITS_INPUT_SHAPE = [-1, 1, 8, 8]
DIGITS_CLASSES = 10


@dataclass(frozen=True)
class DigitsData:
    """scikit-learn digits as float32 images in [0, 1] of shape [N, 1, 8, 8] and int64 labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_digits_data(seed: int = 0, test_fraction: float = 0.2) -> DigitsData:
    """Split scikit-learn's digits into train and test sets, stratified and reproducible."""
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=test_fraction, random_state=seed, stratify=labels
    )
    return DigitsData(x_train, y_train, x_test, y_test)


def digits_cnn(width: int = 16) -> torch.nn.Module:
    """A small CNN for [N, 1, 8, 8] inputs with 10 logits out (about 30k parameters at width 16)."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(2 * width, 4 * width, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4 * width, DIGITS_CLASSES),
    )


def train_digits_cnn(
    data: DigitsData | None = None, epochs: int = 40, seed: int = 0, width: int = 16
) -> tuple[torch.nn.Module, float]:
    """Train the digits CNN (a few seconds on one core); return the model in eval mode and its test accuracy.

    Training uses one thread: for a model this small, more threads only add synchronisation cost
    (and on a shared machine they fight other processes).
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(data or load_digits_data(seed), epochs, seed, width)
    finally:
        torch.set_num_threads(threads)


def _train(data: DigitsData, epochs: int, seed: int, width: int) -> tuple[torch.nn.Module, float]:
    import torch

    torch.manual_seed(seed)
    model = digits_cnn(width)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=epochs)
    x = torch.from_numpy(data.x_train)
    y = torch.from_numpy(data.y_train)
    generator = torch.Generator().manual_seed(seed)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), 64):
            idx = order[start:start + 64]
            optimiser.zero_grad()
            loss_fn(model(x[idx]), y[idx]).backward()
            optimiser.step()
        scheduler.step()
    model.eval()
    return model, accuracy(model, data.x_test, data.y_test)


def accuracy(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of a classifier on numpy inputs and labels."""
    import torch

    with torch.inference_mode():
        predicted = model(torch.from_numpy(x)).argmax(dim=1).numpy()
    return float((predicted == y).mean())


def save_torchscript(model: torch.nn.Module, path: Path) -> Path:
    """Script the model and save it with ``torch.jit.save`` (the TorchScript source format)."""
    import warnings

    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(model), str(path))
    return path


def save_torch_export(model: torch.nn.Module, example: np.ndarray, path: Path, dynamic_batch: bool = True) -> Path:
    """Export the model with ``torch.export`` (dynamic batch) and save it as ``.pt2``."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    args = (torch.from_numpy(example),)
    shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
    program = torch.export.export(model, args, dynamic_shapes=shapes)
    torch.export.save(program, str(path))
    return path


@dataclass(frozen=True)
class DigitsExample:
    """Files written by :func:`write_digits_example` and the accuracy the model reached."""

    directory: Path
    model_pt: Path
    calib_npz: Path
    val_npz: Path
    test_accuracy: float
    model_pt2: Path | None = None

    def manifest(self, name: str = "digits", namespace: str = "default", max_accuracy_drop: float = 0.005,
                 targets: tuple[str, ...] = ("cpu",), torch_export: bool = False) -> dict[str, Any]:
        """An EdgeModel object (as a dict) that converts this example from file:// URIs."""
        model_path = self.model_pt2 if torch_export and self.model_pt2 else self.model_pt
        return {
            "apiVersion": "edgemodel.io/v1alpha1",
            "kind": "EdgeModel",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "source": {"uri": model_path.resolve().as_uri(),
                           "format": "TorchExport" if torch_export and self.model_pt2 else "TorchScript"},
                "inputs": [{"name": DIGITS_INPUT_NAME, "dtype": "float32", "shape": DIGITS_INPUT_SHAPE}],
                "optimization": {
                    "mode": "auto",
                    "int8": {"calibrationDataUri": self.calib_npz.resolve().as_uri()},
                    "targets": [{"hardwareClass": t} for t in targets],
                },
                "validation": {"dataUri": self.val_npz.resolve().as_uri(), "metric": "top1",
                               "maxAccuracyDrop": max_accuracy_drop},
            },
        }


def write_digits_example(
    directory: Path, epochs: int = 40, seed: int = 0, calib_samples: int = 256,
    val_samples: int | None = None, torch_export: bool = False,
) -> DigitsExample:
    """Train the digits CNN and write ``model.pt`` (+ ``model.pt2``), ``calib.npz`` and ``val.npz``.

    Calibration inputs come from the training split, validation inputs and labels from the
    held-out test split (360 images unless ``val_samples`` is smaller). ``info.json`` records
    the test accuracy.
    """
    import numpy as np

    directory.mkdir(parents=True, exist_ok=True)
    data = load_digits_data(seed)
    model, acc = train_digits_cnn(data, epochs=epochs, seed=seed)
    model_pt = save_torchscript(model, directory / "model.pt")
    model_pt2 = save_torch_export(model, data.x_test[:2], directory / "model.pt2") if torch_export else None
    calib = directory / "calib.npz"
    val = directory / "val.npz"
    n_val = len(data.x_test) if val_samples is None else min(val_samples, len(data.x_test))
    calib_arrays: dict[str, Any] = {DIGITS_INPUT_NAME: data.x_train[:calib_samples]}
    val_arrays: dict[str, Any] = {DIGITS_INPUT_NAME: data.x_test[:n_val], "labels": data.y_test[:n_val]}
    np.savez(calib, **calib_arrays)
    np.savez(val, **val_arrays)
    (directory / "info.json").write_text(json.dumps({"testAccuracy": acc, "epochs": epochs, "seed": seed}) + "\n")
    return DigitsExample(directory, model_pt, calib, val, acc, model_pt2)
