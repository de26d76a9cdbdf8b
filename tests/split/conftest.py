"""Fixtures of the split tests: tiny ONNX models and a torch-exported residual model (exported once)."""

from __future__ import annotations

import onnx
import pytest

from tests.split import models


@pytest.fixture(scope="session")
def torch_residual(tmp_path_factory: pytest.TempPathFactory) -> onnx.ModelProto:
    path = models.export_torch_residual(tmp_path_factory.mktemp("torch-residual") / "model.onnx")
    return onnx.load_model(str(path))


@pytest.fixture
def chain() -> onnx.ModelProto:
    return models.chain_model()


@pytest.fixture
def residual() -> onnx.ModelProto:
    return models.residual_model()
