"""Export the source model to ONNX, check it, and compare its outputs with the original model."""

from __future__ import annotations

import contextlib
import logging
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgemodel.api import SourceFormat, TensorSpec
from edgemodel.api.tensors import DType
from edgemodel.convert.errors import ConversionError, Reason, first_line
from edgemodel.convert.runners import Batch, all_finite, flatten_outputs, ort_runner, ort_session
from edgemodel.convert.source import ONNX_DTYPES, LoadedSource

log = logging.getLogger(__name__)

EXPORT_RTOL = 1e-3
EXPORT_ATOL = 1e-4
"""Exported outputs must satisfy |onnx - original| <= ATOL * max(1, max|original|) + RTOL * |original|."""


@dataclass
class ExportInfo:
    path: Path
    opset: int
    exporter: str
    """e.g. "torch.onnx dynamo (torch 2.13.0)", "torch.onnx TorchScript (legacy)", "none (ONNX source)"."""
    outputs: list[TensorSpec] = field(default_factory=list)
    max_abs_diff: float = 0.0
    check: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """torch.onnx prints progress and warns about optional ops (torchvision); keep the Job log readable."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "torch._dynamo",
                                              "torch.fx", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def output_names(model: Any, args: tuple[Any, ...]) -> list[str]:
    """Names for the exported outputs: ``output`` for one tensor, dict keys, else ``output_{i}``."""
    import torch

    with torch.inference_mode():
        out = model(*args)
    if isinstance(out, dict):
        return [str(k) for k in out if out[k] is not None]
    count = len(flatten_outputs(out))
    return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]


def _dynamic_shapes(inputs: list[TensorSpec]) -> tuple[dict[int, Any], ...]:
    import torch

    return tuple({axis: torch.export.Dim.AUTO for axis, d in enumerate(spec.shape) if d == -1} for spec in inputs)


def _export_dynamo(model: Any, args: tuple[Any, ...], inputs: list[TensorSpec], outputs: list[str], path: Path,
                   opset: int | None) -> None:
    import torch

    torch.onnx.export(
        model, args, str(path), dynamo=True, input_names=[i.name for i in inputs], output_names=outputs,
        dynamic_shapes=_dynamic_shapes(inputs), opset_version=opset, verbose=False, external_data=False,
    )


def _export_legacy(model: Any, args: tuple[Any, ...], inputs: list[TensorSpec], outputs: list[str], path: Path,
                   opset: int | None) -> None:
    import torch

    axes: dict[str, dict[int, str]] = {
        spec.name: {a: ("batch" if a == 0 else f"{spec.name}_dim{a}") for a, d in enumerate(spec.shape) if d == -1}
        for spec in inputs
    }
    if inputs[0].shape[0] == -1:
        axes.update({name: {0: "batch"} for name in outputs})
    torch.onnx.export(model, args, str(path), dynamo=False, input_names=[i.name for i in inputs],
                      output_names=outputs, dynamic_axes=axes, opset_version=opset or 17)


def _tidy_dims(path: Path, inputs: list[TensorSpec]) -> None:
    """Fixed spec dims become fixed in the graph; dynamic ones are named ``batch`` / ``{input}_dim{axis}``."""
    import onnx

    model = onnx.load_model(str(path))
    rename: dict[str, str] = {}
    by_name = {spec.name: spec for spec in inputs}
    for value in model.graph.input:
        spec = by_name.get(value.name)
        if spec is None:
            continue
        for axis, (dim, want) in enumerate(zip(value.type.tensor_type.shape.dim, spec.shape, strict=False)):
            if want > 0:
                if not dim.HasField("dim_value"):
                    dim.dim_value = want
            elif dim.HasField("dim_param"):
                rename.setdefault(dim.dim_param, "batch" if axis == 0 else f"{spec.name}_dim{axis}")
    for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and dim.dim_param in rename:
                dim.dim_param = rename[dim.dim_param]
    onnx.save_model(model, str(path))


def graph_outputs(path: Path) -> list[TensorSpec]:
    """The model's outputs as TensorSpecs (dynamic dims as -1; unknown dtypes as float32)."""
    import onnx

    model = onnx.load_model(str(path), load_external_data=False)
    specs = []
    for value in model.graph.output:
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim] or [-1]
        dtype = ONNX_DTYPES.get(tensor.elem_type, "float32")
        specs.append(TensorSpec(name=value.name, dtype=DType(dtype), shape=dims[:8]))
    return specs


def model_opset(path: Path) -> int:
    import onnx

    model = onnx.load_model(str(path), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _named(names: list[str], wanted: list[str] | None, what: str) -> list[str]:
    """``wanted`` (spec.outputs) when given and of the right count, else ``names``."""
    if not wanted:
        return names
    if len(wanted) != len(names):
        raise ConversionError(
            Reason.INVALID_SPEC,
            f"spec.outputs names {len(wanted)} output(s) ({', '.join(wanted)}) but {what} has {len(names)} "
            f"({', '.join(names)}); name every output in order, or leave spec.outputs empty",
        )
    return list(wanted)


def _rename_outputs(path: Path, wanted: list[str]) -> None:
    """Rename the graph outputs of an ONNX file to ``wanted`` (in order), wherever the names are used."""
    import onnx

    model = onnx.load_model(str(path))
    current = [o.name for o in model.graph.output]
    rename = dict(zip(current, _named(current, wanted, "the ONNX source"), strict=True))
    if all(a == b for a, b in rename.items()):
        return
    taken = {v.name for v in model.graph.value_info} | {i.name for i in model.graph.input}
    taken |= {out for node in model.graph.node for out in node.output} - set(current)
    clash = sorted(set(wanted) & taken)
    if clash:
        raise ConversionError(Reason.INVALID_SPEC, f"spec.outputs: {', '.join(clash)} already names another tensor "
                              "of the ONNX source; choose other output names")
    for node in model.graph.node:
        node.output[:] = [rename.get(n, n) for n in node.output]
        node.input[:] = [rename.get(n, n) for n in node.input]
    for output in model.graph.output:
        output.name = rename[output.name]
    onnx.save_model(model, str(path))


def export(source: LoadedSource, inputs: list[TensorSpec], sample: Batch, out: Path, opset: int | None,
           output_names_: list[str] | None = None) -> ExportInfo:
    """Produce ``out`` (an ONNX file) from the source; ONNX sources are copied (and converted to ``opset``).

    ``output_names_`` (spec.outputs) names the outputs in order; otherwise the source's names are kept.
    """
    import onnx

    if source.format == SourceFormat.ONNX:
        assert source.onnx_path is not None
        shutil.copyfile(source.onnx_path, out)
        exporter = "none (ONNX source)"
        if opset and model_opset(out) != opset:
            try:
                converted = onnx.version_converter.convert_version(onnx.load_model(str(out)), opset)
            except Exception as exc:
                raise ConversionError(Reason.EXPORT_FAILED, f"spec.optimization.opset: cannot convert the ONNX model "
                                      f"to opset {opset} ({first_line(exc)}); leave opset empty") from exc
            onnx.save_model(converted, str(out))
            exporter = f"onnx.version_converter to opset {opset}"
        if output_names_:
            _rename_outputs(out, output_names_)
    else:
        exporter = _export_torch(source, inputs, sample, out, opset, output_names_)
    try:
        onnx.checker.check_model(str(out), full_check=True)
    except Exception as exc:
        raise ConversionError(Reason.EXPORT_FAILED, f"the exported ONNX model fails onnx.checker ({first_line(exc)})") from exc
    info = ExportInfo(out, model_opset(out), exporter, graph_outputs(out))
    log.info("Exported ONNX opset %d with %s (%s bytes)", info.opset, exporter, f"{out.stat().st_size:,}")
    return info


def from_torchscript(model: Any, args: tuple[Any, ...]) -> Any:
    """A TorchScript module as an ExportedProgram's module (``TS2EPConverter``), ready for the dynamo exporter.

    The converter writes an absent optional upsampling scale (``float? scales_h=None``, as ``nn.Upsample`` and
    ``F.interpolate`` call it) as ``-1.0``; the ONNX exporter then writes a Resize with scale -1, which fails
    ONNX shape inference and ONNX Runtime. Those arguments are put back to None (the output size decides).
    """
    from torch._export.converter import TS2EPConverter

    module = TS2EPConverter(model, args).convert().module()
    changed = False
    for node in module.graph.nodes:
        schema = getattr(node.target, "_schema", None) if node.op == "call_function" else None
        if schema is None or not schema.name.startswith("aten::upsample"):
            continue
        values = list(node.args)
        for i, argument in enumerate(schema.arguments[:len(values)]):
            if argument.name.startswith("scales") and isinstance(values[i], float) and values[i] < 0:
                values[i], changed = None, True
        node.args = tuple(values)
    if changed:
        module.recompile()
    return module


def _export_torch(source: LoadedSource, inputs: list[TensorSpec], sample: Batch, out: Path, opset: int | None,
                  wanted: list[str] | None = None) -> str:
    import torch

    args = tuple(torch.from_numpy(np.ascontiguousarray(sample[spec.name])) for spec in inputs)
    model = source.torch_model
    names = _named(output_names(model, args), wanted, "the model")
    errors: list[str] = []
    with _quiet_exporter():
        candidates: list[tuple[str, Any]] = []
        if source.format == SourceFormat.TORCHSCRIPT:
            candidates.append(("torch.onnx dynamo (via TorchScript to ExportedProgram)", "ts2ep"))
            candidates.append(("torch.onnx TorchScript (legacy)", "legacy"))
        else:
            candidates.append(("torch.onnx dynamo", "dynamo"))
        for label, how in candidates:
            try:
                if how == "ts2ep":
                    _export_dynamo(from_torchscript(model, args), args, inputs, names, out, opset)
                elif how == "legacy":
                    _export_legacy(model, args, inputs, names, out, opset)
                else:
                    _export_dynamo(model, args, inputs, names, out, opset)
            except Exception as exc:
                errors.append(f"{label}: {first_line(exc)}")
                log.warning("Export with %s failed: %s", label, first_line(exc))
                continue
            _tidy_dims(out, inputs)
            return f"{label}, torch {torch.__version__}"
    raise ConversionError(Reason.EXPORT_FAILED, f"torch.onnx could not export the model ({'; '.join(errors)}); "
                          "make the model torch.export-able or provide an ONNX file (spec.source.format: ONNX)")


def export_module(module: Any, inputs: list[TensorSpec], sample: Batch, out: Path, opset: int | None,
                  outputs: list[str]) -> Path:
    """Export a module the converter trained (pruned, QAT, distilled) like the source, with the source's output names."""
    import torch

    args = tuple(torch.from_numpy(np.ascontiguousarray(sample[spec.name])) for spec in inputs)
    with _quiet_exporter():
        try:
            _export_dynamo(module, args, inputs, outputs, out, opset)
        except Exception as exc:
            raise ConversionError(Reason.EXPORT_FAILED, f"torch.onnx could not export the trained model "
                                  f"{out.stem} ({first_line(exc)})") from exc
    _tidy_dims(out, inputs)
    return out


def compare(reference: list[np.ndarray], exported: list[np.ndarray]) -> tuple[float, bool]:
    """Largest absolute difference and whether every output is within the export tolerance."""
    worst = 0.0
    within = len(reference) == len(exported)
    for ref, got in zip(reference, exported, strict=False):
        if ref.shape != got.shape:
            return float("inf"), False
        if ref.dtype.kind not in "fc":
            within = within and bool(np.array_equal(ref, got))
            continue
        ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
        diff = float(np.max(np.abs(ref64 - got64))) if ref.size else 0.0
        worst = max(worst, diff)
        atol = EXPORT_ATOL * max(1.0, float(np.max(np.abs(ref64))) if ref.size else 1.0)
        within = within and bool(np.allclose(got64, ref64, rtol=EXPORT_RTOL, atol=atol))
    return worst, within


def check_export(info: ExportInfo, reference: list[np.ndarray], batch: Batch, threads: int) -> None:
    """Run the exported model on ``batch`` and compare with the original's outputs (ExportMismatch)."""
    session = ort_session(info.path, "all", threads)
    try:
        exported = ort_runner(session)(batch)
    except Exception as exc:
        raise ConversionError(Reason.EXPORT_FAILED, f"ONNX Runtime cannot run the exported model ({first_line(exc)})") from exc
    worst, within = compare(reference, exported)
    n = len(next(iter(batch.values())))
    info.max_abs_diff = worst
    info.check = {"samples": n, "rtol": EXPORT_RTOL, "atol": EXPORT_ATOL, "atolScaledByMaxAbs": True,
                  "maxAbsDiff": worst, "passed": within}
    if not all_finite(exported):
        raise ConversionError(Reason.EXPORT_MISMATCH, "the exported ONNX model produces NaN or Inf where the original "
                              "model does not; report the model to the torch.onnx exporter or provide an ONNX file")
    if not within:
        raise ConversionError(Reason.EXPORT_MISMATCH, f"the exported ONNX model differs from the original by up to "
                              f"{worst:.3g} (tolerance rtol {EXPORT_RTOL}, atol {EXPORT_ATOL} x max|output|) on {n} "
                              "samples; try another spec.optimization.opset or provide an ONNX file")
    log.info("Checked the export: max |onnx - original| = %.3g on %d samples (rtol %g, atol %g)", worst, n,
             EXPORT_RTOL, EXPORT_ATOL)
