"""Quantisation-aware training on PyTorch's supported path for torch 2.13: PT2E in torchao.

torch 2.13 no longer ships ``torch.ao.quantization.quantize_pt2e`` (PT2E moved to torchao); eager
``torch.ao.quantization.prepare_qat`` remains but exports to ONNX only through the legacy TorchScript
exporter. torchao's ``prepare_qat_pt2e`` with the X86 quantizer (uint8 activations, int8 symmetric
per-channel weights: U8S8 per-channel, the static INT8 setting that measured fastest here) fakes
quantisation while training, and ``convert_pt2e`` leaves quantize/dequantize ops that ``torch.onnx`` (dynamo) writes as QuantizeLinear/DequantizeLinear: a QDQ model ONNX Runtime
fuses into integer kernels, gated and measured like every other candidate.

Batch norms are folded into their convolutions *before* ``prepare_qat_pt2e`` (:func:`fold_batch_norms`).
Left in, torchao fuses them itself, and ``convert_pt2e`` then folds them back by re-exporting its
replacement patterns: 102 strict ``torch.export`` (dynamo) traces of small pattern functions, measured
36 of 37 s of ``convert_pt2e`` on the digits CNN on a quiet machine and 371 s under load 15-22. With no
batch norm in the graph torchao skips that step (``_fold_conv_bn_qat`` returns at once), so the cost no
longer depends on the number of pattern variants. Fine-tuning the folded weights with fake quantisation
is the usual QAT recipe for a trained model.
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


def fold_batch_norms(model: Any) -> Any:
    """A copy of a lifted model with every batch norm that follows a convolution (or linear) folded into it."""
    import torch
    from torch.fx.experimental.optimization import fuse

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        folded = fuse(model.eval(), inplace=False, no_trace=isinstance(model, torch.fx.GraphModule))
    left = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    if left:
        log.info("QAT: %d batch norm(s) do not follow a convolution and stay unfolded", left)
    return folded


def prepare(model: Any, example: tuple[Any, ...], dynamic_shapes: Any) -> Any:
    """A copy of ``model`` with batch norms folded, captured with torch.export and prepared for QAT."""
    import torch

    with _quiet():
        from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
            X86InductorQuantizer,
            get_default_x86_inductor_quantization_config,
        )
        captured = torch.export.export(fold_batch_norms(model), example, dynamic_shapes=dynamic_shapes,
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
