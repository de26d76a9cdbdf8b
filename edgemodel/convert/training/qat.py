"""Quantisation-aware training on PyTorch's supported path for torch 2.13: PT2E in torchao.

torch 2.13 no longer ships ``torch.ao.quantization.quantize_pt2e`` (PT2E moved to torchao); eager
``torch.ao.quantization.prepare_qat`` remains but exports to ONNX only through the legacy TorchScript
exporter. torchao's ``prepare_qat_pt2e`` with the X86 quantizer (uint8 activations, int8 symmetric
per-channel weights: U8S8 per-channel, the static INT8 setting that measured fastest here) fakes
quantisation while training, folds batch norms, and ``convert_pt2e`` leaves quantize/dequantize
ops that ``torch.onnx`` (dynamo) writes as QuantizeLinear/DequantizeLinear: a QDQ model ONNX Runtime
fuses into integer kernels, gated and measured like every other candidate.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """torchao prints that its CUDA kernels do not load on a CPU-only machine (nothing here needs them); export warns."""
    loggers = [logging.getLogger(n) for n in ("torchao", "torch.utils._pytree", "torch._dynamo")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def prepare(model: Any, example: tuple[Any, ...], dynamic_shapes: Any) -> Any:
    """A copy of ``model`` captured with torch.export and prepared for QAT (fake quantisation, fused BN)."""
    import copy

    import torch

    with _quiet():
        from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
            X86InductorQuantizer,
            get_default_x86_inductor_quantization_config,
        )
        captured = torch.export.export(copy.deepcopy(model).eval(), example, dynamic_shapes=dynamic_shapes,
                                       strict=False).module()
        quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config(is_qat=True))
        return prepare_qat_pt2e(captured, quantizer)


def train_mode(prepared: Any) -> None:
    from torchao.quantization.pt2e import move_exported_model_to_train

    with _quiet():
        move_exported_model_to_train(prepared)


def convert(prepared: Any) -> Any:
    """The trained model with real quantize/dequantize ops (weights stored as int8)."""
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    with _quiet():
        move_exported_model_to_eval(prepared)
        return convert_pt2e(prepared)
