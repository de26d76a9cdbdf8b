"""The conversion pipeline: PyTorch (TorchScript, torch.export) or ONNX -> measured, signed ONNX candidates.

Entry points: :func:`edgemodel.convert.pipeline.convert` (library), ``edgemodel convert -f``
(local) and ``edgemodel convert --job`` (:mod:`edgemodel.convert.job`, run by the operator).
Failures are :class:`edgemodel.convert.errors.ConversionError` with a CamelCase reason.
Never imports kopf or the operator (an import-linter contract).
"""

from edgemodel.convert.errors import ConversionError, Reason

__all__ = ["ConversionError", "Reason"]
