"""Compression with training inside the conversion Job: structured pruning, QAT and distillation.

Each method turns the original model (the teacher) into an ONNX file that joins the usual
candidates; pruned and distilled models also get a static INT8 sibling. Training runs on CPU,
seeded, bounded by epochs and by ``spec.optimization.training.maxSeconds``, with one log line per
epoch. Training assumes a classifier: the first output is ``[batch, classes]`` logits.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgemodel.api import EdgeModelSpec, Precision
from edgemodel.convert.data import Dataset
from edgemodel.convert.errors import ConversionError, Reason
from edgemodel.convert.export import _dynamic_shapes, export_module
from edgemodel.convert.progress import Progress
from edgemodel.convert.source import LoadedSource
from edgemodel.convert.training import distill, qat
from edgemodel.convert.training.lift import clone, lift
from edgemodel.convert.training.loop import Fitted, TrainSet, cross_entropy, fit, predict
from edgemodel.convert.training.prune import count, prune_channels, width_student

log = logging.getLogger(__name__)

DATA_FIELD = "spec.optimization.training.dataUri"
SMALL_MODEL_MACS = 20_000_000
"""Below this many MACs per sample, training runs on one thread: more only add synchronisation (and on a shared
machine, OpenMP threads spinning against other processes made a 0.5 M MAC student 20x slower)."""
LIFT_ATOL = 1e-4


@dataclass
class Trained:
    """An ONNX model made by training, to become a candidate."""

    name: str
    method: str
    """pruning, qat or distillation."""
    precision: Precision
    path: Path
    macs: int
    quantize: bool
    """Whether a static INT8 sibling (QDQ U8S8 per-channel) is built from it."""
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainingOutput:
    candidates: list[Trained]
    teacher_macs: int
    notes: list[str]
    seconds: float


def _tensors(data: Dataset, names: list[str]) -> tuple[list[Any], Any]:
    import torch

    inputs = [torch.from_numpy(np.ascontiguousarray(data.inputs[n])) for n in names]
    labels = None if data.labels is None else torch.from_numpy(data.labels.astype(np.int64))
    if labels is not None and not bool((labels >= 0).any()):
        labels = None  # every sample unlabelled (-1)
    return inputs, labels


def _labelled(inputs: list[Any], labels: Any) -> TrainSet:
    """The labelled samples only (label >= 0): what pruning fine-tuning and QAT train on."""
    keep = labels >= 0
    return TrainSet([x[keep] for x in inputs], labels[keep], [])


def check_labels(spec: EdgeModelSpec, data: Dataset) -> None:
    """InvalidData naming training.dataUri for a label below -1, or when pruning or QAT is on and no sample has a
    label."""
    opt = spec.optimization
    if data.labels is not None and len(data.labels) and int(data.labels.min()) < -1:
        raise ConversionError(Reason.INVALID_DATA, f"{DATA_FIELD}: {opt.training.data_uri} has label "
                              f"{int(data.labels.min())}; labels are classes 0, 1, ... or -1 for an unlabelled sample")
    if (opt.pruning.enabled or opt.qat.enabled) and (data.labels is None or not (data.labels >= 0).any()):
        needs = " and ".join(m for m, on in (("pruning", opt.pruning.enabled), ("qat", opt.qat.enabled)) if on)
        raise ConversionError(Reason.INVALID_DATA, f"{DATA_FIELD}: {opt.training.data_uri} has no 'labels' array"
                              f"{' (every label is -1, unlabelled)' if data.labels is not None else ''}, which "
                              f"{needs} fine-tuning needs; add labels (one integer class per sample) or use "
                              "distillation only")


def train(spec: EdgeModelSpec, source: LoadedSource, data: Dataset, student: LoadedSource | None, workdir: Path,
          threads: int, outputs: list[str], progress: Progress) -> TrainingOutput:
    """Run every enabled method; ConversionError (InvalidData, StudentMismatch, InvalidSpec) on bad input."""
    import torch

    check_labels(spec, data)
    names = [i.name for i in spec.inputs]
    inputs, labels = _tensors(data, names)
    example = tuple(x[:2] for x in inputs)
    sample = {n: data.inputs[n][:2] for n in names}
    dynamic = _dynamic_shapes(spec.inputs)
    workdir.mkdir(parents=True, exist_ok=True)
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    start = time.monotonic()
    try:
        with warnings.catch_warnings():
            # torch 2.13 deprecates a pytree spec that torch-pruning's deep copies and torchao's graphs still use
            warnings.simplefilter("ignore", FutureWarning)
            made, notes, teacher_macs = _run(spec, source, student, workdir, outputs, progress, inputs, labels,
                                             example, sample, dynamic, start)
    finally:
        torch.set_num_threads(saved_threads)
    return TrainingOutput(made, teacher_macs, notes, time.monotonic() - start)


def _run(spec: EdgeModelSpec, source: LoadedSource, student: LoadedSource | None, workdir: Path,
         outputs: list[str], progress: Progress, inputs: list[Any], labels: Any, example: tuple[Any, ...],
         sample: dict[str, np.ndarray], dynamic: Any, start: float) -> tuple[list[Trained], list[str], int]:
    import torch

    opt, t = spec.optimization, spec.optimization.training
    progress.stage("Capturing the model for training", 1)
    teacher = lift(source.torch_model, example, dynamic)
    reference = predict(source.torch_model, list(example))
    got = predict(teacher, list(example))
    if reference.dim() != 2 or tuple(got.shape) != tuple(reference.shape):
        raise ConversionError(Reason.INVALID_SPEC, f"spec.optimization: pruning, qat and distillation train "
                              f"classifiers whose first output is [batch, classes] logits; this model's is "
                              f"{list(reference.shape)}")
    if not torch.allclose(got, reference, atol=LIFT_ATOL * max(1.0, float(reference.abs().max())), rtol=1e-3):
        raise ConversionError(Reason.INVALID_SPEC, "spec.source.uri: the model captured for training differs "
                              f"from the original by {float((got - reference).abs().max()):.3g}; turn pruning, "
                              "qat and distillation off")
    teacher_macs, _ = count(teacher, example)
    if teacher_macs < SMALL_MODEL_MACS:
        torch.set_num_threads(1)
    progress.advance(f"captured with {sum(1 for _ in teacher.modules()) - 1} layers, {teacher_macs:,} MACs")
    # Cheapest first: each method gets an equal share of the time left, so a slow one cannot starve the others.
    methods = [m for m, on in (("distillation", opt.distillation.enabled), ("pruning", opt.pruning.enabled),
                               ("qat", opt.qat.enabled)) if on]
    end = start + t.max_seconds
    context = _Context(spec, teacher, inputs, labels, example, dynamic, student, progress)
    made: list[Trained] = []
    notes: list[str] = []
    for index, method in enumerate(methods):
        now = time.monotonic()
        deadline = now + max(0.0, end - now) / (len(methods) - index)
        trained, note = _METHODS[method](context, deadline)
        module, name, precision, macs, quantize, settings, fitted = trained
        progress.stage(f"Exporting {name}", 1)
        path = export_module(module, spec.inputs, sample, workdir / f"{name}.onnx", opt.opset, outputs)
        progress.advance(f"exported {path.name}")
        settings.update({"compression": method, "macs": macs, "training": fitted.describe(), "seed": t.seed})
        made.append(Trained(name, method, precision, path, macs, quantize, settings))
        if fitted.stopped_by_time:
            notes.append(f"{name}: training stopped at the time bound (spec.optimization.training.maxSeconds "
                         f"{t.max_seconds}) after {fitted.epochs} of {fitted.asked} epochs.")
        notes += [note] if note else []
    return made, notes, teacher_macs


Made = tuple[Any, str, Precision, int, bool, dict[str, Any], Fitted]


@dataclass
class _Context:
    spec: EdgeModelSpec
    teacher: Any
    inputs: list[Any]
    labels: Any
    example: tuple[Any, ...]
    dynamic: Any
    student: LoadedSource | None
    progress: Progress


def _prune(c: _Context, deadline: float) -> tuple[Made, str]:
    opt, t = c.spec.optimization.pruning, c.spec.optimization.training
    progress, example, teacher = c.progress, c.example, c.teacher
    progress.stage("Training: structured pruning", 1 + opt.fine_tune_epochs)
    pruned = prune_channels(clone(teacher), example, opt.target_speedup, t.seed)
    progress.advance(f"pruned channels: MACs {pruned.macs_before:,} -> {pruned.macs_after:,}")
    fitted = fit(pruned.model, _labelled(c.inputs, c.labels), cross_entropy, opt.fine_tune_epochs, t.learning_rate,
                 t.batch_size, t.seed, deadline, "pruned model", progress)
    pruned.model.eval()
    settings = {"library": "torch-pruning (MagnitudePruner, L1 channel importance)", "targetSpeedup": opt.target_speedup,
                "macReduction": round(pruned.macs_before / max(pruned.macs_after, 1), 3),
                "channelsRemoved": round(pruned.channel_ratio, 3), "channelMultiple": pruned.alignment or 1,
                "parameters": pruned.params_after,
                "fineTuneEpochs": fitted.epochs}
    return (pruned.model, "pruned-fp32", Precision.FP32, pruned.macs_after, True, settings, fitted), ""


def _qat(c: _Context, deadline: float) -> tuple[Made, str]:
    opt, t = c.spec.optimization.qat, c.spec.optimization.training
    progress, example, teacher = c.progress, c.example, c.teacher
    progress.stage("Training: quantisation-aware", opt.epochs + 2)
    began = time.monotonic()
    prepared = qat.prepare(teacher, example, c.dynamic)
    progress.advance(f"prepared fake quantisation (prepare_qat_pt2e) in {time.monotonic() - began:.1f}s")
    fitted = fit(prepared, _labelled(c.inputs, c.labels), cross_entropy, opt.epochs, t.learning_rate / 10,
                 t.batch_size, t.seed, deadline, "QAT model", progress, train_mode=qat.train_mode)
    began = time.monotonic()
    converted = qat.convert(prepared)
    progress.advance(f"converted to quantize/dequantize ops (convert_pt2e) in {time.monotonic() - began:.1f}s")
    log.info("Converted the QAT model with convert_pt2e in %.1fs", time.monotonic() - began)
    macs, _ = count(teacher, example)
    settings = {"library": "torchao PT2E (prepare_qat_pt2e, X86InductorQuantizer)", "format": "QDQ",
                "activationType": "uint8", "weightType": "int8", "perChannel": True, "epochs": fitted.epochs}
    return (converted, "qat-int8-qdq-u8s8-perchannel", Precision.INT8, macs, False, settings, fitted), ""


def _distill(c: _Context, deadline: float) -> tuple[Made, str]:
    opt, t = c.spec.optimization.distillation, c.spec.optimization.training
    progress, example, teacher, inputs, labels = c.progress, c.example, c.teacher, c.inputs, c.labels
    progress.stage("Training: distillation", opt.epochs)
    teacher_macs, _ = count(teacher, example)
    if opt.width_factor is not None:
        student = width_student(teacher, example, opt.width_factor, t.seed).model
        kind = f"teacher at width {opt.width_factor:g}"
    else:
        assert c.student is not None
        student = lift(c.student.torch_model, example, c.dynamic, field="spec.optimization.distillation.student")
        kind = "spec.optimization.distillation.student"
    teacher.eval()
    distill.check_student(predict(student, list(example)), predict(teacher, list(example)),
                          "spec.optimization.distillation.student" if opt.width_factor is None
                          else "spec.optimization.distillation.widthFactor")
    soft = predict(teacher, inputs)
    alpha = opt.alpha if labels is not None else 1.0
    mixup = opt.mixup and distill.mixable(inputs)
    fitted = fit(student, TrainSet(inputs, labels, [soft]), distill.kd_loss(opt.temperature, alpha), opt.epochs,
                 t.learning_rate, t.batch_size, t.seed, deadline, "student", progress,
                 transform=distill.mixup(teacher) if mixup else None)
    student.eval()
    macs, params = count(student, example)
    settings = {"student": kind, "temperature": opt.temperature, "alpha": alpha, "mixup": mixup, "epochs": fitted.epochs,
                "parameters": params, "macsOfTeacher": round(macs / max(teacher_macs, 1), 4)}
    note = "" if labels is not None else ("Distillation trained on soft targets alone: the training data has no "
                                          "labels (alpha 1).")
    if labels is not None and not bool((labels >= 0).all()):
        note = (f"Distillation used {int((labels < 0).sum())} unlabelled samples (label -1) for soft targets only; "
                f"pruning and QAT (when on) fine-tune on the {int((labels >= 0).sum())} labelled ones.")
    if opt.mixup and not mixup:
        note = (note + " " if note else "") + ("Distillation ran without mixup: an input is not floating-point "
                                               "(spec.optimization.distillation.mixup needs float inputs).")
    return (student, "distilled-fp32", Precision.FP32, macs, True, settings, fitted), note


_METHODS = {"pruning": _prune, "qat": _qat, "distillation": _distill}
