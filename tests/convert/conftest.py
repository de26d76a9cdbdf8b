"""Fixtures for conversion tests: the real digits CNN (trained once per session), its ONNX export, keys."""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from edgemodel.signing import generate_keypair
from edgemodel_dev.examples_models import DigitsExample, write_digits_example

FAST = ["--latency-runs", "5", "--latency-budget", "0.05", "--latency-rounds", "3", "--threads", "1", "--no-plot"]
"""CLI flags that keep measurements short in tests (the pipeline still times every candidate)."""


@dataclass(frozen=True)
class Keys:
    private: Path
    public: Path


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> DigitsExample:
    """The digits CNN trained on scikit-learn digits (30 epochs), 64 calibration and 200 validation samples."""
    return write_digits_example(tmp_path_factory.mktemp("digits"), epochs=30, calib_samples=64, val_samples=200,
                                torch_export=True)


@pytest.fixture(scope="session")
def digits_onnx(digits: DigitsExample) -> Path:
    """The digits CNN as an ONNX file (legacy exporter: fixed [batch, 1, 8, 8] input named "input")."""
    import torch

    path = digits.directory / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = torch.jit.load(str(digits.model_pt))
        torch.onnx.export(model, (torch.zeros(2, 1, 8, 8),), str(path), dynamo=False, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=17)
    return path


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    folder = tmp_path_factory.mktemp("keys")
    generate_keypair(folder / "private.pem", folder / "public.pem")
    return Keys(folder / "private.pem", folder / "public.pem")


def digits_doc(example: DigitsExample, **changes: Any) -> dict[str, Any]:
    """The digits EdgeModel as a dict; ``changes`` maps dotted spec paths to new values (None deletes)."""
    doc = copy.deepcopy(example.manifest(name="digits", max_accuracy_drop=0.02))
    for dotted, value in changes.items():
        target = doc
        *parents, leaf = dotted.split(".")
        for key in parents:
            target = target.setdefault(key, {})
        if value is None:
            target.pop(leaf, None)
        else:
            target[leaf] = value
    return doc


def write_doc(doc: dict[str, Any], folder: Path, name: str = "model.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(doc))
    return path


def write_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path
