"""The conversion pipeline: fetch -> load and check -> export -> build candidates -> measure -> choose
-> split (with spec.split on) -> sign.

``convert()`` leaves every file of the revision except ``result.json`` in one folder; the
caller publishes it (``--output DIR`` locally, the artifact store in a Job) and writes the result.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgemodel.api import (
    ArtifactChoice,
    ArtifactManifest,
    ArtifactRef,
    CandidateResult,
    CandidateSummary,
    ConversionResult,
    EdgeModel,
    EdgeModelSpec,
    HardwareClass,
    ManifestDriftReference,
    ManifestSplit,
    ManifestValidation,
    Precision,
    SplitArtifacts,
    now_rfc3339,
)
from edgemodel.api.edgemodel import (
    DEFAULT_SPLIT_RTT_MS,
    SPLIT_AUTO,
    OptimizationMode,
    QuantMethod,
    SourceFormat,
    SplitObjective,
    ValidationMetric,
)
from edgemodel.convert import candidates as cands
from edgemodel.convert.data import Dataset, generate, load_npz
from edgemodel.convert.drift_reference import drift_reference
from edgemodel.convert.environment import describe, gpu_provider
from edgemodel.convert.errors import ConversionError, Reason, first_line
from edgemodel.convert.export import check_export, export
from edgemodel.convert.fetch import fetch
from edgemodel.convert.measure import Evaluator, evaluate, measure_latency
from edgemodel.convert.progress import LogProgress, Progress
from edgemodel.convert.report import render_markdown, render_plot
from edgemodel.convert.runners import (
    all_finite,
    available_threads,
    ort_runner,
    ort_session,
    run_dataset,
    torch_runner,
)
from edgemodel.convert.select import Choice, choose, latency_key
from edgemodel.convert.source import LoadedSource, load_source
from edgemodel.convert.training import TrainingOutput, check_labels, train
from edgemodel.errors import UserError
from edgemodel.signing import sha256_file, sign

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

log = logging.getLogger(__name__)

GENERATED_SAMPLES = 64
EVAL_BATCH = 64
CALIB_BATCH = 8
SPLIT_SAMPLES = 16
"""Evaluation samples the split is verified on (and the auto cut profiled with)."""
SPLIT_FILES = ("head.onnx", "tail.onnx", "split.json")
SPLIT_MESSAGE_LIMIT = 600


@dataclass
class ConvertOptions:
    """How thoroughly to measure; defaults suit a conversion Job."""

    workdir: Path
    revision: int = 1
    threads: int | None = None
    """ONNX Runtime intra-op threads for measuring (default: CPUs available to the process)."""
    latency_runs: int = 50
    """Timed runs per candidate and batch size at most."""
    latency_budget_s: float = 2.0
    """Seconds of timing per candidate and batch size at most (at least one run per round is always made)."""
    latency_rounds: int | None = None
    """Interleaved measurement rounds (default: spec.optimization.measurement.rounds); also the split profile's."""
    batch_size: int | None = None
    """The larger batch measured besides batch 1 (default 8, or serving.batching.maxBatchSize)."""
    export_check_samples: int = 16
    split_profile_runs: int = 2
    """Timed runs of every head and tail per measurement round when profiling the cuts for spec.split.cut auto."""
    plot: bool = True


@dataclass
class ConversionOutput:
    """A converted, signed revision in ``directory`` (everything but result.json)."""

    directory: Path
    manifest: ArtifactManifest
    manifest_bytes: bytes
    signature: str
    files: dict[str, Path] = field(default_factory=dict)
    """File name -> path of every file to publish, manifest.json and manifest.json.sig included."""


@dataclass
class _Inputs:
    source: LoadedSource
    source_sha: str
    calibration: Dataset | None
    evaluation: Dataset
    metric: ValidationMetric
    notes: list[str]
    training: Dataset | None = None
    student: LoadedSource | None = None
    drift: ManifestDriftReference | None = None
    """Summary of the validation inputs, the agents' PSI reference (None without validation data)."""


def _fetch_and_load(model: EdgeModel, workdir: Path, progress: Progress) -> _Inputs:
    spec = model.spec
    opt = spec.optimization
    # Calibration data feeds static INT8 and, without validation data, the agreement check.
    # spec.split.quantizeParts calibrates head and tail on it too.
    wants_calibration = opt.int8.enabled or spec.split.quantize_parts or not spec.validation.data_uri
    calib_uri = opt.int8.calibration_data_uri if wants_calibration else None
    if opt.mode == OptimizationMode.EXPLICIT and opt.int8.enabled and opt.int8.method == QuantMethod.STATIC and not calib_uri:
        raise ConversionError(Reason.MISSING_CALIBRATION_DATA, "spec.optimization.int8.calibrationDataUri: explicit "
                              "static INT8 needs calibration data (an .npz of representative inputs); set it or use "
                              "method: dynamic")
    train_uri = opt.training.data_uri if opt.trains else None
    student_src = opt.distillation.student if opt.distillation.enabled else None
    progress.stage("Fetching the model and data", 1 + bool(calib_uri) + bool(spec.validation.data_uri)
                   + bool(train_uri) + bool(student_src))
    name = Path(spec.source.uri.split("?")[0]).name or "model"
    source_path, source_sha = fetch(spec.source.uri, workdir / "source" / name, "spec.source.uri",
                                    Reason.SOURCE_UNREADABLE)
    progress.advance(f"fetched {spec.source.uri}")
    if spec.source.sha256 and spec.source.sha256 != source_sha:
        raise ConversionError(Reason.SOURCE_DIGEST_MISMATCH, f"spec.source.sha256 is {spec.source.sha256} but "
                              f"{spec.source.uri} has sha256 {source_sha}; update the digest or the file")
    calib_path = val_path = None
    if calib_uri:
        calib_path, _ = fetch(calib_uri, workdir / "data" / "calibration.npz",
                              "spec.optimization.int8.calibrationDataUri", Reason.MISSING_CALIBRATION_DATA)
        progress.advance(f"fetched {calib_uri}")
    if spec.validation.data_uri:
        val_path, _ = fetch(spec.validation.data_uri, workdir / "data" / "validation.npz", "spec.validation.dataUri",
                            Reason.INVALID_DATA)
        progress.advance(f"fetched {spec.validation.data_uri}")
    train_path = student_path = None
    if train_uri:
        train_path, _ = fetch(train_uri, workdir / "data" / "training.npz", "spec.optimization.training.dataUri",
                              Reason.INVALID_DATA)
        progress.advance(f"fetched {train_uri}")
    if student_src is not None:
        student_name = Path(student_src.uri.split("?")[0]).name or "student"
        student_path, student_sha = fetch(student_src.uri, workdir / "student" / student_name,
                                          "spec.optimization.distillation.student.uri", Reason.SOURCE_UNREADABLE)
        if student_src.sha256 and student_src.sha256 != student_sha:
            raise ConversionError(Reason.SOURCE_DIGEST_MISMATCH, f"spec.optimization.distillation.student.sha256 is "
                                  f"{student_src.sha256} but {student_src.uri} has sha256 {student_sha}")
        progress.advance(f"fetched {student_src.uri}")

    progress.stage("Loading and checking the model", 1)
    source = load_source(source_path, spec.source.uri, spec.source.format, spec.inputs)
    notes: list[str] = []
    metric = spec.validation.metric
    calibration = (load_npz(calib_path, str(calib_uri), spec.inputs, "calibration", opt.int8.calibration_samples)
                   if calib_path else None)
    validation = (load_npz(val_path, str(spec.validation.data_uri), spec.inputs, "validation", spec.validation.samples,
                           need_labels=metric == ValidationMetric.TOP1, labels_name=spec.validation.labels_array)
                  if val_path else None)
    if validation is not None:
        evaluation = validation
    else:
        evaluation = (calibration.take(spec.validation.samples) if calibration is not None
                      else generate(spec.inputs, min(GENERATED_SAMPLES, spec.validation.samples)))
        if metric == ValidationMetric.TOP1:
            metric = ValidationMetric.AGREEMENT
        notes.append(f"No validation data (spec.validation.dataUri is empty): candidates are scored by {metric.value} "
                     f"with the original model on {evaluation.origin}, not by accuracy against labels.")
    fixed = spec.inputs[0].shape[0]
    if fixed > 0:  # a model with a fixed batch size is fed whole batches only
        evaluation = (evaluation.take(len(evaluation) // fixed * fixed) if len(evaluation) >= fixed else
                      Dataset(evaluation.repeat_to(fixed), None if evaluation.labels is None else
                              np.resize(evaluation.labels, fixed), evaluation.origin))
    progress.advance(f"loaded {spec.source.format.value} model and {len(evaluation)} samples of {evaluation.origin}")
    training = (load_npz(train_path, str(train_uri), spec.inputs, "training", opt.training.max_samples)
                if train_path else None)
    if training is not None:
        check_labels(spec, training)  # fail before minutes of export and training
    student = None
    if student_src is not None and student_path is not None:
        if student_src.format == SourceFormat.ONNX:
            raise ConversionError(Reason.INVALID_SPEC, "spec.optimization.distillation.student.format: the student "
                                  "is trained, so it must be TorchScript or TorchExport, not ONNX")
        student = load_source(student_path, student_src.uri, student_src.format, spec.inputs)
    drift = (drift_reference(validation, spec.inputs[0].name, str(spec.validation.data_uri))
             if validation is not None else None)
    return _Inputs(source, source_sha, calibration, evaluation, metric, notes, training, student, drift)


def _reference(inputs: _Inputs, model: EdgeModel, batch: int, threads: int) -> list[np.ndarray]:
    """The original model's outputs on the evaluation set (InputMismatch / NonFiniteOutput on failure)."""
    names = [i.name for i in model.spec.inputs]
    if inputs.source.torch_model is not None:
        runner = torch_runner(inputs.source.torch_model, names)
    else:
        assert inputs.source.onnx_path is not None
        runner = ort_runner(ort_session(inputs.source.onnx_path, "disabled", threads))
    try:
        outputs = run_dataset(runner, inputs.evaluation, batch)
    except Exception as exc:
        raise ConversionError(Reason.INPUT_MISMATCH, f"the model rejects inputs shaped like spec.inputs "
                              f"({first_line(exc, 200)}); check spec.inputs shapes and dtypes against the model") from exc
    if not outputs:
        raise ConversionError(Reason.INPUT_MISMATCH, "the model returned no tensors; it must return a tensor, "
                              "a tuple of tensors or a dict of tensors")
    if not all_finite(outputs):
        raise ConversionError(Reason.NON_FINITE_OUTPUT, f"the original model outputs NaN or Inf on "
                              f"{inputs.evaluation.origin}; fix the model (or the data) before converting")
    return outputs


def _measure_all(built: list[cands.BuiltCandidate], evaluator: Evaluator, options: ConvertOptions, threads: int,
                 batches: dict[int, dict[str, np.ndarray]], providers: dict[HardwareClass, str],
                 progress: Progress, rounds: int) -> list[CandidateResult]:
    results: list[CandidateResult] = []
    sessions: dict[str, Any] = {}
    keyed: dict[str, CandidateResult] = {}
    provider_of: dict[str, str] = {}
    progress.stage("Measuring candidates", len(built) + 1)
    for b in built:
        plan = b.plan
        result = CandidateResult(name=plan.name, hardware_class=plan.hardware_class, precision=plan.precision,
                                 settings={**plan.settings, "buildSeconds": round(b.build_s, 2)}, error=b.error,
                                 complexity=plan.complexity or 0)
        results.append(result)
        if b.path is None:
            progress.advance(f"{plan.name} ({plan.hardware_class.value}): not built")
            continue
        result.size_bytes = b.path.stat().st_size
        result.sha256 = sha256_file(b.path)
        provider = providers[plan.hardware_class]
        try:
            session = ort_session(b.path, "all", threads, providers=[provider, "CPUExecutionProvider"])
        except Exception as exc:
            result.error = f"ONNX Runtime cannot load it: {first_line(exc)}"
            progress.advance(f"{plan.name} ({plan.hardware_class.value}): {result.error}")
            continue
        measured = evaluate(session, evaluator)
        result.metric, result.metric_drop, result.error = measured.metric, measured.drop, measured.error
        if measured.metric is not None:
            result.metric = round(measured.metric, 6)
            result.metric_drop = round(measured.drop or 0.0, 6)
        result.settings.update(measured.details)
        if not result.error:
            key = f"{plan.name}@{plan.hardware_class.value}"
            sessions[key], keyed[key], provider_of[key] = session, result, provider
        progress.advance(f"{plan.name} ({plan.hardware_class.value}): {evaluator.metric.value} "
                         f"{'-' if result.metric is None else f'{result.metric:.4f}'}"
                         f"{' - ' + result.error if result.error else ''}")
    started = time.perf_counter()
    timings = measure_latency(sessions, batches, provider_of, runs=options.latency_runs,
                              budget_s=options.latency_budget_s, rounds=rounds, baseline=f"{cands.BASELINE}@cpu")
    log.info("Timed %d candidates in %d interleaved rounds in %.1fs", len(sessions), rounds,
             time.perf_counter() - started)
    for key, stats in timings.items():
        keyed[key].latency = stats
    summary = ", ".join(f"{k} {latency_key(keyed[k], 1):.3f} ms" for k in timings)
    progress.advance(f"timed batch sizes {', '.join(map(str, batches))}: {summary}")
    log.info("Measured p50 latency at batch 1: %s", summary)
    return results


def _build_all(model: EdgeModel, exported: Path, inputs: _Inputs, workdir: Path, threads: int,
               progress: Progress, trained: TrainingOutput | None = None) -> tuple[list[cands.BuiltCandidate], list[str]]:
    opt = model.spec.optimization
    calibration = inputs.calibration
    if calibration is None and inputs.training is not None and opt.int8.enabled:
        # With training on, the training inputs calibrate static INT8 when calibrationDataUri is empty.
        calibration = inputs.training.take(opt.int8.calibration_samples)
    plans, extras, notes = cands.plan_candidates(model.spec, calibration)
    if trained is not None:
        cpu = next((t for t in opt.targets if t.hardware_class == HardwareClass.CPU), None)
        int8 = bool(opt.int8.enabled and cpu and Precision.INT8 in cpu.precisions and calibration is not None)
        plans += cands.trained_plans(trained.candidates, opt.graph_optimization_level, int8,
                                     min(opt.int8.calibration_samples, len(calibration)) if calibration else 0)
        if cpu is None:
            notes.append("Trained candidates are built for cpu targets only; no cpu target is listed.")
    builder = cands.CandidateBuilder(exported, workdir / "candidates", calibration, CALIB_BATCH, threads)
    (workdir / "candidates").mkdir(parents=True, exist_ok=True)
    progress.stage("Building candidates", len(plans))
    built: list[cands.BuiltCandidate] = []
    queue = list(plans)
    while queue:
        plan = queue.pop(0)
        b = builder.build(plan)
        built.append(b)
        progress.advance(f"{plan.name} ({plan.hardware_class.value})" + (f": {b.error}" if b.error else f" in {b.build_s:.1f}s"))
        more = [p for p in extras if p.kind == plan.kind]
        if more and not b.error:
            # The first build of a kind tells whether its variants are cheap enough to try as well.
            extras = [p for p in extras if p.kind != plan.kind]
            if b.build_s < cands.CHEAP_BUILD_S:
                queue[0:0] = more
                progress.add_steps(len(more))
                notes.append(f"{plan.kind.capitalize()} INT8 builds are cheap here ({b.build_s:.1f}s), so auto mode "
                             f"also tried {', '.join(p.name for p in more)}.")
    baseline_failed = [b for b in built if b.plan.kind == "fp32" and b.error]
    if baseline_failed:
        raise ConversionError(Reason.INTERNAL, f"the FP32 baseline could not be built ({baseline_failed[0].error})")
    return built, notes


def _split_error(exc: Exception) -> ConversionError:
    """InvalidSplit naming the spec.split field at fault (build_split's messages already list valid cuts)."""
    text = " ".join(str(exc).split())
    if not text.startswith("spec."):
        text = f"spec.split.{text}" if text.startswith(("link.", "budgetMs")) else f"spec.split: {text}"
    if len(text) > SPLIT_MESSAGE_LIMIT:
        text = text[: SPLIT_MESSAGE_LIMIT - 3] + "..."
    return ConversionError(Reason.INVALID_SPLIT, text)


def _check_cut(exported: Path, cut: str) -> None:
    """Refuse a manual cut that is not a valid cut of the exported model before any candidate is built."""
    from edgemodel.split.graph import resolve_cut

    try:
        resolve_cut(exported, cut)
    except UserError as exc:
        raise _split_error(exc) from exc


def _feeds(data: Dataset, batch: int, limit: int) -> list[dict[str, np.ndarray]]:
    """Up to ``limit`` samples of ``data`` (at least one batch) as feeds of exactly ``batch`` samples each."""
    if len(data) < batch:
        return [data.repeat_to(batch)]
    return list(data.take(max(batch, min(limit, len(data)) // batch * batch)).batches(batch))


def _build_stages(model: EdgeModel, exported: Path, inputs: _Inputs, fixed_batch: int | None, workdir: Path,
                  threads: int, progress: Progress) -> list[Path]:
    """spec.split.stages: the stage files and chain.json (edgemodel/convert/stages.py); none without it."""
    if model.spec.split.stages is None:
        return []
    from edgemodel.convert.stages import build_stages
    from edgemodel.split.chain_devices import ENV, PlanDevices
    from edgemodel.split.planner import PlanError

    progress.stage("Building the pipeline stages", 3 if model.spec.split.stages.cuts else 5)
    devices = None
    if raw := os.environ.get(ENV, ""):
        try:
            devices = PlanDevices.from_json(raw)
        except PlanError as exc:  # written by the operator: plan for identical devices and say why
            devices = PlanDevices(reason=str(exc))
    try:
        paths, summary = build_stages(model.spec.split, exported, _feeds(inputs.evaluation, fixed_batch or 1,
                                      SPLIT_SAMPLES), workdir, threads, progress.advance, devices)
    except UserError as exc:
        raise _split_error(exc) from exc
    log.info("Pipeline: %s", summary)
    return paths


def _build_split(model: EdgeModel, exported: Path, inputs: _Inputs, fixed_batch: int | None, workdir: Path,
                 threads: int, options: ConvertOptions, progress: Progress, rounds: int) -> ManifestSplit:
    """Cut the exported FP32 model (spec.split), verify and write head/tail/split.json; the manifest's summary.

    The exported model is cut, not the offline-optimised ``fp32-opt``: cut names are those of the exported
    graph (fusion would drop tensors such as a Conv output before its Relu), and the parts stay free of
    CPU-specific fused operators, so one head and tail serve every hardware class; agents optimise each part
    when they load it.
    """
    from statistics import mean

    from edgemodel.split.artifacts import SplitSettings, build_split
    from edgemodel.split.codec import CodecError, WireFormat, encode
    from edgemodel.split.planner import Link, Objective, PlanError
    from edgemodel.split.runtime import OrtPart

    split = model.spec.split
    batch = fixed_batch or 1
    samples = _feeds(inputs.evaluation, batch, SPLIT_SAMPLES)
    calibration = (_feeds(inputs.calibration, fixed_batch or CALIB_BATCH, len(inputs.calibration))
                   if split.quantize_parts and inputs.calibration is not None else None)
    link = None
    if split.link is not None:  # an empty rttMs here: the operator had no RTT measured by the edge agents yet
        rtt = DEFAULT_SPLIT_RTT_MS if split.link.rtt_ms is None else split.link.rtt_ms
        link = Link(split.link.bandwidth_mbit_s, rtt)
    settings = SplitSettings(
        cut=split.cut, wire=split.wire, link=link,
        objective=Objective.EDGE_COMPUTE if split.objective == SplitObjective.EDGE_COMPUTE else Objective.LATENCY,
        budget_ms=split.budget_ms, edge_slowdown=split.edge_slowdown, quantize_parts=split.quantize_parts,
        profile_runs=options.split_profile_runs, profile_rounds=rounds, threads=threads)
    progress.stage("Splitting the model", 3)
    try:
        result = build_split(exported, samples, workdir, settings, calibration, on_step=progress.advance)
    except (UserError, PlanError, CodecError) as exc:
        raise _split_error(exc) from exc
    m = result.manifest
    head = OrtPart(result.head_path, threads=threads)
    fmt = WireFormat.parse(split.wire)
    feature_bytes = round(mean(len(encode(head.run(feeds), fmt)) for feeds in samples))
    plan = m["plan"]
    auto = split.cut == SPLIT_AUTO
    if plan:
        chosen, link = plan["chosen"], plan["link"]
        why = (f"chosen by the planner ({plan['objective']}) for {link['bandwidthMbitS']:g} Mbit/s and RTT "
               f"{link['rttMs']:g} ms, the edge predicted as this machine x {split.edge_slowdown:g}: edge "
               f"{chosen['edgeMs']:.3f} ms + codec {chosen['codecMs']:.3f} ms + transfer {chosen['transferMs']:.3f} ms "
               f"+ cloud {chosen['cloudMs']:.3f} ms")
        if not plan["budgetMet"]:
            why += f"; no cut meets budgetMs {plan['budgetMs']:g}, so the fastest was taken"
    else:
        why = f"named in spec.split.cut ({split.cut!r})"
    summary = ManifestSplit(
        cut=m["cut"]["tensor"], shape=m["cut"]["shape"], chosen_by="auto" if auto else "manual",
        reason=why, wire=m["wire"], precision=m["precision"],
        predicted_ms=round(plan["chosen"]["totalMs"], 4) if plan else None,
        budget_met=plan["budgetMet"] if plan else None,
        feature_bytes=feature_bytes, feature_batch=batch,
        max_abs_diff=m["verification"]["maxAbsDiff"], verified_samples=m["verification"]["samples"],
        quantized_max_abs_diff=(m["quantizedVerification"] or {}).get("maxAbsDiff"),
        candidates=len(m["profile"]["cuts"]) if m["profile"] else None,
        head=result.head_path.name, tail=result.tail_path.name, manifest=result.manifest_path.name,
    )  # fmt: skip
    log.info("Split at %s (%s): %s; %d feature bytes in %s; max abs diff %.3g", summary.cut, summary.chosen_by,
             why, feature_bytes, m["wire"], summary.max_abs_diff)
    return summary


def _targets_missed(spec: EdgeModelSpec, choices: dict[HardwareClass, Choice]) -> list[str]:
    """spec.optimization.pruning.targetSpeedup checked against the measured CPU choice; appended to its reason."""
    pruning = spec.optimization.pruning
    choice = choices.get(HardwareClass.CPU)
    if not pruning.enabled or choice is None:
        return []
    speedup = choice.speedup or 1.0
    if speedup >= pruning.target_speedup:
        return []
    missed = (f"target missed: spec.optimization.pruning.targetSpeedup {pruning.target_speedup:g}x; the best "
              f"accepted candidate, {choice.candidate.name}, runs {speedup:.2f}x the FP32 baseline")
    choice.reason = f"{missed}; {choice.reason}"  # first, so status.candidates[].reason (300 chars) keeps it
    log.warning("Chose %s, but the %s", choice.candidate.name, missed)
    return [missed[0].upper() + missed[1:] + " (it is still chosen)."]


def convert(model: EdgeModel, signing_key: Ed25519PrivateKey, options: ConvertOptions,
            progress: Progress | None = None) -> ConversionOutput:
    """Run the whole pipeline; raise ConversionError with a reason on failure."""
    progress = progress or LogProgress()
    spec = model.spec
    workdir = options.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    threads = options.threads or available_threads()
    if not model.metadata.name:
        raise ConversionError(Reason.INVALID_SPEC, "metadata.name: the EdgeModel needs a name")

    inputs = _fetch_and_load(model, workdir, progress)
    fixed_batch = spec.inputs[0].shape[0] if spec.inputs[0].shape[0] > 0 else None
    eval_batch = fixed_batch or EVAL_BATCH
    reference = _reference(inputs, model, eval_batch, threads)

    progress.stage("Exporting to ONNX", 2)
    n_check = fixed_batch or min(options.export_check_samples, len(inputs.evaluation))
    sample = inputs.evaluation.repeat_to(fixed_batch or 2)
    info = export(inputs.source, spec.inputs, sample, workdir / "exported.onnx", spec.optimization.opset,
                  [o.name for o in spec.outputs])
    progress.advance(f"exported opset {info.opset} with {info.exporter}")
    check_export(info, [r[:n_check] for r in reference], inputs.evaluation.slice(0, n_check), threads)
    progress.advance(f"outputs match the original within {info.max_abs_diff:.2g}")
    if spec.split.enabled and spec.split.cut != SPLIT_AUTO:
        _check_cut(info.path, spec.split.cut)  # fail fast, before minutes of candidate builds

    trained = None
    if spec.optimization.trains:
        assert inputs.training is not None
        trained = train(spec, inputs.source, inputs.training, inputs.student, workdir / "trained", threads,
                        [o.name for o in info.outputs], progress)
    built, build_notes = _build_all(model, info.path, inputs, workdir, threads, progress, trained)

    classes = [t.hardware_class for t in spec.optimization.targets]
    providers: dict[HardwareClass, str] = {HardwareClass.CPU: "CPUExecutionProvider"}
    notes = inputs.notes + build_notes + (trained.notes if trained else [])
    if HardwareClass.GPU in classes:
        gpu = gpu_provider(info.path)
        providers[HardwareClass.GPU] = gpu or "CPUExecutionProvider"
        if gpu is None:
            notes.append("GPU latency is not measured: no GPU execution provider loads here. GPU candidates were "
                         "validated (and timed) on CPUExecutionProvider; the GPU choice follows the precision rule.")
    measured_on_target = {hw: hw == HardwareClass.CPU or providers[hw] != "CPUExecutionProvider" for hw in classes}
    evaluator = Evaluator(inputs.metric, inputs.evaluation, reference, eval_batch)
    big = options.batch_size or (spec.serving.batching.max_batch_size if spec.serving.batching.enabled else 8)
    batch_sizes = [fixed_batch] if fixed_batch else sorted({1, big})
    batches = {b: inputs.evaluation.repeat_to(b) for b in batch_sizes}
    env_before = describe(threads, {hw.value: p for hw, p in providers.items()})
    rounds = options.latency_rounds or spec.optimization.measurement.rounds
    results = _measure_all(built, evaluator, options, threads, batches, providers, progress, rounds)

    selection_batch = big if (spec.serving.batching.enabled and not fixed_batch) else batch_sizes[0]
    if trained is not None:
        for r in results:
            r.settings.pop("file", None)
            r.settings.setdefault("compression", "")
            r.settings.setdefault("macs", trained.teacher_macs)
    choices = choose(results, spec.optimization.targets, spec.validation.max_accuracy_drop, inputs.metric.value,
                     measured_on_target, selection_batch, spec.optimization.measurement.min_speedup)
    notes += _targets_missed(spec, choices)
    split = (_build_split(model, info.path, inputs, fixed_batch, workdir / "split", threads, options, progress, rounds)
             if spec.split.enabled else None)
    stage_files = _build_stages(model, info.path, inputs, fixed_batch, workdir / "stages", threads, progress)

    progress.stage("Choosing, writing and signing", 1)
    out = workdir / "out"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    artifact_choices: list[ArtifactChoice] = []
    files: dict[str, Path] = {}
    if split is not None:
        for name in SPLIT_FILES:
            shutil.copyfile(workdir / "split" / name, out / name)
            files[name] = out / name
    for path in stage_files:  # spec.split.stages: signed with the rest of the revision
        shutil.copyfile(path, out / path.name)
        files[path.name] = out / path.name
    for hw, choice in choices.items():
        c = choice.candidate
        built_path = next(b.path for b in built if b.plan.name == c.name and b.plan.hardware_class == hw)
        assert built_path is not None
        filename = f"model-{hw.value}.onnx"
        shutil.copyfile(built_path, out / filename)
        files[filename] = out / filename
        artifact_choices.append(ArtifactChoice(
            hardware_class=hw, candidate=c.name, file=filename, sha256=c.sha256, size_bytes=c.size_bytes,
            precision=c.precision, reason=choice.reason, metric=c.metric,
            p50_ms=latency_key(c, selection_batch) if c.latency else None,
            speedup_vs_baseline=round(choice.speedup, 3) if choice.speedup else None,
            speedup_ci95=list(choice.ci95) if choice.ci95 else None))
        log.info("Chose %s for %s: %s", c.name, hw.value, choice.reason)
    manifest = ArtifactManifest(
        model=str(model.metadata.name), namespace=model.metadata.namespace or "default", revision=options.revision,
        created_at=now_rfc3339(), source_uri=spec.source.uri, source_format=spec.source.format.value,
        source_sha256=inputs.source_sha, opset=info.opset, export_tolerance=info.max_abs_diff,
        inputs=spec.inputs, outputs=info.outputs, exporter=info.exporter, export_check=info.check,
        validation=ManifestValidation(
            metric=inputs.metric.value, requested_metric=spec.validation.metric.value,
            data=inputs.evaluation.origin, samples=len(inputs.evaluation), original=round(evaluator.original, 6),
            max_accuracy_drop=spec.validation.max_accuracy_drop, selection_batch=selection_batch),
        measurement={"rounds": rounds, "minSpeedup": spec.optimization.measurement.min_speedup,
                     "rule": "the simplest accepted candidate that the fastest does not beat by minSpeedup at the "
                             "lower bound of the 95% CI of the paired speed-up (edgemodel.timing.decide)"},
        candidates=results, choices=artifact_choices, environment=env_before, notes=notes, split=split,
        drift_reference=inputs.drift,
    )
    plot_name = None
    if options.plot and render_plot(results, inputs.metric.value,
                                    {f"{c.candidate}@{c.hardware_class.value}" for c in artifact_choices},
                                    out / "report.png"):
        plot_name = "report.png"
        files[plot_name] = out / plot_name
    (out / "report.md").write_text(render_markdown(manifest, plot_name))
    files["report.md"] = out / "report.md"
    manifest.files = {name: sha256_file(path) for name, path in sorted(files.items())}
    manifest.sizes = {name: path.stat().st_size for name, path in sorted(files.items())}
    manifest_bytes = (json.dumps(manifest.to_k8s(), indent=2) + "\n").encode()
    signature = sign(manifest_bytes, signing_key)
    (out / "manifest.json").write_bytes(manifest_bytes)
    (out / "manifest.json.sig").write_text(signature + "\n")
    files["manifest.json"] = out / "manifest.json"
    files["manifest.json.sig"] = out / "manifest.json.sig"
    progress.advance("signed manifest.json with ed25519")
    return ConversionOutput(out, manifest, manifest_bytes, signature, files)


def success_result(output: ConversionOutput, uris: dict[str, str]) -> ConversionResult:
    """The ConversionResult of a published revision; ``uris`` maps file names to where they are."""
    m = output.manifest
    chosen = {(c.hardware_class, c.candidate): c for c in m.choices}
    split = None
    if m.split is not None:
        head, tail, manifest = m.split.head, m.split.tail, m.split.manifest
        split = SplitArtifacts(cut=m.split.cut, wire=m.split.wire, head_uri=uris[head],
                               head_sha256=m.files[head], tail_uri=uris[tail], tail_sha256=m.files[tail],
                               manifest_uri=uris[manifest], chosen_by=m.split.chosen_by,
                               predicted_ms=m.split.predicted_ms, feature_bytes=m.split.feature_bytes)
    artifacts = [
        ArtifactRef(hardware_class=c.hardware_class, uri=uris[c.file], sha256=c.sha256, size_bytes=c.size_bytes,
                    precision=c.precision, candidate=c.candidate, manifest_uri=uris["manifest.json"],
                    signature=output.signature, split=split)
        for c in m.choices
    ]
    summaries = []
    for c in m.candidates:
        choice = chosen.get((c.hardware_class, c.name))
        b1 = next((s for s in c.latency if s.batch_size == 1), c.latency[0] if c.latency else None)
        summaries.append(CandidateSummary(
            name=c.name, hardware_class=c.hardware_class, precision=c.precision, p50_ms=b1.p50_ms if b1 else None,
            metric=c.metric, size_bytes=c.size_bytes or None, method=str(c.settings.get("compression", "")),
            macs=c.settings.get("macs"), accepted=c.accepted, chosen=choice is not None,
            reason=(choice.reason if choice else c.reject_reason or "accepted")[:300]))
    parts = []
    for a in m.choices:
        speed = ""
        if a.speedup_vs_baseline and a.candidate != cands.BASELINE:
            speed = f", {a.speedup_vs_baseline:.2f}x FP32" + (
                f" (95% CI {a.speedup_ci95[0]:.2f}-{a.speedup_ci95[1]:.2f})" if a.speedup_ci95 else "")
        elif a.reason.startswith(f"{cands.BASELINE} kept: the fastest"):
            speed = ", kept: faster candidates within the noise"
        parts.append(f"{a.hardware_class.value}: {a.candidate}{speed}, {m.validation.metric} {a.metric:.4f}"
                     if a.metric is not None else f"{a.hardware_class.value}: {a.candidate}")
    if split is not None:
        parts.append(f"split at {split.cut} ({split.chosen_by})")
    parts += [n.rstrip(".") for n in m.notes if n.startswith("Target missed")]
    return ConversionResult(ok=True, revision=m.revision, reason="Converted",
                            message=f"Converted revision {m.revision} ({'; '.join(parts)})",
                            manifest_uri=uris["manifest.json"], artifacts=artifacts, candidates=summaries)


def failure_result(error: ConversionError, revision: int) -> ConversionResult:
    return ConversionResult(ok=False, revision=revision, reason=error.reason.value, message=str(error),
                            retryable=error.retryable)


TERMINATION_LIMIT = 4096


def termination_message(result: ConversionResult) -> str:
    """The result as JSON within the 4 KiB termination-message limit (candidates dropped first)."""
    text = json.dumps(result.to_k8s(), separators=(",", ":"))
    if len(text.encode()) <= TERMINATION_LIMIT:
        return text
    slim = result.model_copy(update={"candidates": []})
    text = json.dumps(slim.to_k8s(), separators=(",", ":"))
    while len(text.encode()) > TERMINATION_LIMIT and slim.message:
        slim = slim.model_copy(update={"message": slim.message[: max(0, len(slim.message) - 256)]})
        text = json.dumps(slim.to_k8s(), separators=(",", ":"))
    return text
