"""Recognise and load the source model: TorchScript (.pt), torch.export (.pt2) or ONNX.

The file's format is sniffed from its contents before loading, so a file of the wrong format
gets ``WrongFormat`` (with the format it really is) and a file that is no model at all gets
``SourceUnreadable``.
"""

from __future__ import annotations

import logging
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgemodel.api import SourceFormat, TensorSpec
from edgemodel.convert.errors import ConversionError, Reason, first_line

log = logging.getLogger(__name__)

SAVE_HINT = {
    SourceFormat.TORCHSCRIPT: "torch.jit.save(torch.jit.script(model), 'model.pt')",
    SourceFormat.TORCH_EXPORT: "torch.export.save(torch.export.export(model, args), 'model.pt2')",
    SourceFormat.ONNX: "torch.onnx.export(model, args, 'model.onnx')",
}


def sniff(path: Path) -> SourceFormat | str:
    """The format of a model file, or a short description of what else it is."""
    size = path.stat().st_size
    if size == 0:
        return "an empty file"
    with path.open("rb") as fh:
        head = fh.read(4)
    if head == b"PK\x03\x04":
        try:
            names = zipfile.ZipFile(path).namelist()
        except (zipfile.BadZipFile, OSError):
            return "a damaged zip archive"
        if any(n.endswith(("/archive_format", "serialized_exported_program.json")) for n in names):
            return SourceFormat.TORCH_EXPORT
        if any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names):
            return SourceFormat.TORCHSCRIPT
        if any(n.endswith("data.pkl") for n in names):
            return "a torch.save() checkpoint (pickled weights or module), not a serialised model"
        return "a zip archive that holds no model"
    import onnx

    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception:  # protobuf raises DecodeError and friends
        return "not a TorchScript, TorchExport or ONNX model"
    if model.ir_version > 0 and len(model.graph.node) > 0:
        return SourceFormat.ONNX
    return "not a TorchScript, TorchExport or ONNX model"


@dataclass
class LoadedSource:
    """The loaded model: a torch callable (TorchScript/ExportedProgram module) or an ONNX file."""

    format: SourceFormat
    path: Path
    torch_model: Any = None
    """For torch sources: a callable module in eval mode."""
    exported_program: Any = None
    """For TorchExport sources: the ExportedProgram."""
    onnx_path: Path | None = None


def _check_format(path: Path, uri: str, declared: SourceFormat) -> None:
    found = sniff(path)
    if found == declared:
        return
    if isinstance(found, SourceFormat):
        raise ConversionError(
            Reason.WRONG_FORMAT,
            f"spec.source.format is {declared.value} but {uri} is a {found.value} model; "
            f"set spec.source.format: {found.value}",
        )
    raise ConversionError(
        Reason.SOURCE_UNREADABLE,
        f"spec.source.uri: {uri} is {found}; save a {declared.value} model with {SAVE_HINT[declared]}",
    )


def load_source(path: Path, uri: str, declared: SourceFormat, inputs: list[TensorSpec]) -> LoadedSource:
    """Load the model and check that ``spec.inputs`` fits its signature."""
    _check_format(path, uri, declared)
    if declared == SourceFormat.ONNX:
        return _load_onnx(path, uri, inputs)
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if declared == SourceFormat.TORCHSCRIPT:
                module = torch.jit.load(str(path), map_location="cpu")
                program = None
            else:
                program = torch.export.load(str(path))
                module = program.module()
    except Exception as exc:
        raise ConversionError(
            Reason.SOURCE_UNREADABLE, f"spec.source.uri: cannot load {uri} as {declared.value} ({first_line(exc)})"
        ) from exc
    if program is None:
        module.eval()  # an ExportedProgram's module is already in inference form and refuses eval()
    _check_torch_arity(module, program, uri, inputs)
    return LoadedSource(declared, path, torch_model=module, exported_program=program)


def _check_torch_arity(module: Any, program: Any, uri: str, inputs: list[TensorSpec]) -> None:
    """The number of spec.inputs must fit the model's forward arguments (names map by position)."""
    if program is not None:
        names = [str(n) for n in program.graph_signature.user_inputs]
        required = len(names)
    else:
        arguments = list(module.forward.schema.arguments)[1:]  # drop self
        names = [a.name for a in arguments]
        required = sum(1 for a in arguments if not a.has_default_value())
    if not required <= len(inputs) <= len(names):
        raise ConversionError(
            Reason.INPUT_MISMATCH,
            f"spec.inputs lists {len(inputs)} input(s) ({', '.join(i.name for i in inputs)}) but the model in {uri} "
            f"takes {len(names)} ({', '.join(names)}); list one spec.inputs entry per forward() argument, in order",
        )


ONNX_DTYPES = {1: "float32", 10: "float16", 11: "float64", 3: "int8", 5: "int16", 6: "int32", 7: "int64",
               2: "uint8", 9: "bool"}


def onnx_inputs(model: Any) -> list[tuple[str, str, list[int | str]]]:
    """Graph inputs that are not initializers: (name, dtype, dims with dim_param strings)."""
    initializers = {i.name for i in model.graph.initializer}
    result = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dims: list[int | str] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                                 for d in tensor.shape.dim]
        result.append((value.name, ONNX_DTYPES.get(tensor.elem_type, f"elem_type {tensor.elem_type}"), dims))
    return result


def check_onnx_inputs(model: Any, uri: str, inputs: list[TensorSpec]) -> None:
    """spec.inputs must name every ONNX graph input with a compatible dtype and shape."""
    graph = {name: (dtype, dims) for name, dtype, dims in onnx_inputs(model)}
    declared = [i.name for i in inputs]
    if sorted(graph) != sorted(declared):
        raise ConversionError(
            Reason.INPUT_MISMATCH,
            f"spec.inputs names {', '.join(declared)} but the ONNX model in {uri} takes {', '.join(graph) or 'nothing'}; "
            "use the model's input names",
        )
    for index, spec in enumerate(inputs):
        dtype, dims = graph[spec.name]
        if dtype != spec.dtype.value:
            raise ConversionError(Reason.INPUT_MISMATCH, f"spec.inputs[{index}] ({spec.name}) is {spec.dtype.value} "
                                  f"but the ONNX model takes {dtype}; set spec.inputs[{index}].dtype: {dtype}")
        # A fixed model dimension must be the same fixed number in the spec; a dynamic one takes anything.
        fits = len(dims) == len(spec.shape) and all(
            not (isinstance(d, int) and d > 0) or d == s for d, s in zip(dims, spec.shape, strict=False)
        )
        if not fits:
            shown = "[" + ", ".join(str(d) if isinstance(d, int) and d > 0 else "-1" for d in dims) + "]"
            raise ConversionError(Reason.INPUT_MISMATCH, f"spec.inputs[{index}] ({spec.name}) has shape {spec.shape} but "
                                  f"the ONNX model takes {shown}; set spec.inputs[{index}].shape to match")


def _load_onnx(path: Path, uri: str, inputs: list[TensorSpec]) -> LoadedSource:
    import onnx

    try:
        model = onnx.load_model(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:
        raise ConversionError(Reason.SOURCE_UNREADABLE,
                              f"spec.source.uri: {uri} is not a valid ONNX model ({first_line(exc)})") from exc
    check_onnx_inputs(model, uri, inputs)
    return LoadedSource(SourceFormat.ONNX, path, onnx_path=path)
