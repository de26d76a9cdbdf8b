"""Plan and build candidate ONNX models: ORT-optimised FP32, INT8 dynamic/static, FP16.

Offline optimisation is saved at level ``extended`` for CPU and ``basic`` for GPU classes even
when ``graphOptimizationLevel: all`` is asked for: level ``all`` adds layout transforms for the
CPU it runs on (e.g. NCHWc blocks for AVX-512), which must not be baked into an artifact that
runs on other hardware. The agent applies level ``all`` online when it loads the model, and
candidates are measured that way.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgemodel.api import EdgeModelSpec, HardwareClass, Precision
from edgemodel.api.edgemodel import (
    ActivationType,
    CalibrationMethod,
    GraphOptimizationLevel,
    OptimizationMode,
    QuantFormat,
    QuantMethod,
)
from edgemodel.convert.data import Dataset
from edgemodel.convert.errors import first_line
from edgemodel.convert.runners import ort_session

log = logging.getLogger(__name__)

BASELINE = "fp32-opt"
CHEAP_BUILD_S = 2.0
"""Auto mode adds more INT8 variants when the first INT8 candidate built faster than this."""
LEVEL_ORDER = ["disabled", "basic", "extended", "all"]


@dataclass(frozen=True)
class StaticSettings:
    format: QuantFormat
    activation: ActivationType
    per_channel: bool
    method: CalibrationMethod

    @property
    def name(self) -> str:
        fmt = "qdq" if self.format == QuantFormat.QDQ else "qop"
        act = "u8s8" if self.activation == ActivationType.UINT8 else "s8s8"
        channel = "perchannel" if self.per_channel else "pertensor"
        return f"int8-static-{fmt}-{act}-{channel}-{self.method.value.lower()}"


TIERS = {"fp32": 0, "fp16": 10, "dynamic": 20, "static": 30, "trained": 40, "trained_qdq": 41, "trained_static": 41}
"""Simplicity of each kind of candidate (lower is simpler): the FP32 graph as exported and optimised, FP16 (a
cast of the weights), INT8 dynamic (weights only, no calibration data), INT8 static (activation ranges
calibrated on data). Candidates that change the weights by training (pruned, distilled: 40; QAT or retrained +
static INT8: 41) come last. Within a tier every setting that differs from the spec's INT8 defaults adds one (see complexity)."""


def complexity(kind: str, settings: dict[str, Any]) -> int:
    """Simplicity rank of a candidate (lower is simpler): its kind's tier plus one per non-default setting.

    Non-default: per-tensor weights (per-channel is the default), QOperator format (QDQ is the portable
    default), S8S8 activations (U8S8 is the default), and the calibration method (MinMax +0, Percentile +1,
    Entropy +2: more data-dependent). A kind not in TIERS counts as 40 (retrained weights).
    """
    rank = TIERS.get(kind, 40)
    if kind in ("dynamic", "static") and settings.get("perChannel") is False:
        rank += 1
    if kind == "static":
        rank += settings.get("format") == QuantFormat.QOPERATOR.value
        rank += settings.get("activationType") == ActivationType.INT8.value
        rank += {CalibrationMethod.PERCENTILE.value: 1, CalibrationMethod.ENTROPY.value: 2}.get(
            str(settings.get("calibrationMethod")), 0)
    return int(rank)


@dataclass
class CandidatePlan:
    """A candidate to build: ``complexity`` ranks its simplicity for the choice (default: from ``kind`` and
    ``settings``, see :func:`complexity`)."""

    name: str
    hardware_class: HardwareClass
    precision: Precision
    kind: str
    """fp32, fp16, dynamic or static."""
    settings: dict[str, Any] = field(default_factory=dict)
    static: StaticSettings | None = None
    complexity: int | None = None

    def __post_init__(self) -> None:
        if self.complexity is None:
            self.complexity = complexity(self.kind, self.settings)


@dataclass
class BuiltCandidate:
    plan: CandidatePlan
    path: Path | None
    build_s: float = 0.0
    error: str = ""


def offline_level(requested: GraphOptimizationLevel, hardware_class: HardwareClass) -> str:
    """The level baked into the artifact: at most extended (CPU) / basic (GPU), never above the request."""
    cap = "extended" if hardware_class == HardwareClass.CPU else "basic"
    return LEVEL_ORDER[min(LEVEL_ORDER.index(requested.value), LEVEL_ORDER.index(cap))]


def _static_plan(s: StaticSettings, samples: int) -> CandidatePlan:
    return CandidatePlan(
        s.name, HardwareClass.CPU, Precision.INT8, "static",
        {"method": "static", "format": s.format.value, "activationType": s.activation.value, "weightType": "int8",
         "perChannel": s.per_channel, "calibrationMethod": s.method.value, "calibrationSamples": samples,
         "preprocess": "quant_pre_process"},
        static=s,
    )


AUTO_STATIC = [
    StaticSettings(QuantFormat.QDQ, ActivationType.UINT8, True, CalibrationMethod.MIN_MAX),
    StaticSettings(QuantFormat.QDQ, ActivationType.INT8, True, CalibrationMethod.MIN_MAX),
    StaticSettings(QuantFormat.QOPERATOR, ActivationType.UINT8, True, CalibrationMethod.MIN_MAX),
]
AUTO_STATIC_EXTRA = [
    StaticSettings(QuantFormat.QDQ, ActivationType.UINT8, False, CalibrationMethod.MIN_MAX),
    StaticSettings(QuantFormat.QDQ, ActivationType.UINT8, True, CalibrationMethod.PERCENTILE),
    StaticSettings(QuantFormat.QDQ, ActivationType.UINT8, True, CalibrationMethod.ENTROPY),
]


def _dynamic_plan(per_channel: bool) -> CandidatePlan:
    name = f"int8-dynamic-{'perchannel' if per_channel else 'pertensor'}"
    return CandidatePlan(name, HardwareClass.CPU, Precision.INT8, "dynamic",
                         {"method": "dynamic", "weightType": "int8", "perChannel": per_channel,
                          "preprocess": "quant_pre_process"})


def plan_candidates(spec: EdgeModelSpec, calibration: Dataset | None) -> tuple[list[CandidatePlan], list[CandidatePlan], list[str]]:
    """Candidates to build, more to add when INT8 builds turn out cheap (auto mode), and notes for the report.

    Auto mode builds the FP32 baseline per class, INT8 dynamic (per-channel weights), INT8 static
    QDQ U8S8 and S8S8 and QOperator U8S8 (per-channel, MinMax) when calibration data exists, and
    FP16 for GPU classes; the pinned INT8 settings are always among them. Explicit mode builds the
    baseline plus exactly what is pinned.
    """
    opt = spec.optimization
    auto = opt.mode == OptimizationMode.AUTO
    classes = {t.hardware_class: t for t in opt.targets}
    plans: list[CandidatePlan] = []
    notes: list[str] = []
    extras: list[CandidatePlan] = []
    for hw in classes:
        level = offline_level(opt.graph_optimization_level, hw)
        plans.append(CandidatePlan(BASELINE, hw, Precision.FP32, "fp32",
                                   {"offlineLevel": level, "onlineLevel": "all",
                                    "requestedLevel": opt.graph_optimization_level.value}))
    wants_int8 = opt.int8.enabled and HardwareClass.CPU in classes and Precision.INT8 in classes[HardwareClass.CPU].precisions
    if wants_int8:
        samples = min(opt.int8.calibration_samples, len(calibration)) if calibration else 0
        if auto or opt.int8.method == QuantMethod.DYNAMIC:
            plans.append(_dynamic_plan(opt.int8.per_channel))
            if auto:
                extras.append(_dynamic_plan(not opt.int8.per_channel))
        if auto or opt.int8.method == QuantMethod.STATIC:
            pinned = StaticSettings(opt.int8.format, opt.int8.activation_type, opt.int8.per_channel,
                                    opt.int8.calibration_method)
            wanted = [pinned] + ([s for s in AUTO_STATIC if s != pinned] if auto else [])
            if calibration is None:
                notes.append("Static INT8 was not tried: spec.optimization.int8.calibrationDataUri is empty "
                             "(auto mode builds static candidates only with calibration data).")
            else:
                plans.extend(_static_plan(s, samples) for s in wanted)
                if auto:
                    extras.extend(_static_plan(s, samples) for s in AUTO_STATIC_EXTRA if s not in wanted)
    elif opt.int8.enabled and HardwareClass.GPU in classes and HardwareClass.CPU not in classes:
        notes.append("INT8 is not built for gpu targets: GPU INT8 needs TensorRT, which cannot be measured here.")
    if HardwareClass.GPU in classes:
        gpu = classes[HardwareClass.GPU]
        if opt.fp16 and Precision.FP16 in gpu.precisions:
            plans.append(CandidatePlan("fp16", HardwareClass.GPU, Precision.FP16, "fp16",
                                       {"keepIoTypes": True, "from": f"{BASELINE} (gpu)",
                                        "converter": "onnxruntime.transformers.float16"}))
    return plans, extras, notes


TRAINED_STATIC = StaticSettings(QuantFormat.QDQ, ActivationType.UINT8, True, CalibrationMethod.MIN_MAX)
"""Static INT8 of pruned and distilled models: QDQ U8S8 per-channel MinMax, the setting that measured fastest here."""


def trained_plans(trained: list[Any], level: GraphOptimizationLevel, int8: bool, samples: int) -> list[CandidatePlan]:
    """Candidates of models made by training (``edgemodel.convert.training.Trained``), CPU only.

    FP32 results are offline-optimised like the baseline; QAT models are QDQ already; with ``int8`` (and
    calibration data) pruned and distilled models also get a static INT8 sibling named ``<method>-int8-...``.
    """
    plans: list[CandidatePlan] = []
    for t in trained:
        base = {**t.settings, "file": str(t.path)}
        if t.precision == Precision.FP32:
            plans.append(CandidatePlan(t.name, HardwareClass.CPU, Precision.FP32, "trained",
                                       {**base, "offlineLevel": offline_level(level, HardwareClass.CPU)}))
            if int8 and t.quantize:
                plan = _static_plan(TRAINED_STATIC, samples)
                plan.name, plan.kind = f"{t.name.removesuffix('-fp32')}-{TRAINED_STATIC.name}", "trained_static"
                plan.settings = {**base, **plan.settings, "compression": f"{t.method}+int8"}
                plan.complexity = complexity(plan.kind, plan.settings)
                plans.append(plan)
        else:
            plans.append(CandidatePlan(t.name, HardwareClass.CPU, t.precision, "trained_qdq", base))
    return plans


class CandidateBuilder:
    """Builds candidate files in ``workdir`` from the exported model."""

    def __init__(self, exported: Path, workdir: Path, calibration: Dataset | None, calib_batch: int,
                 threads: int) -> None:
        self.exported = exported.resolve()  # builds run inside workdir (see build), so no relative paths
        self.workdir = workdir.resolve()
        self.calibration = calibration
        self.calib_batch = calib_batch
        self.threads = threads
        self._preprocessed: Path | None = None
        self._preprocess_note = ""
        self.built: dict[tuple[str, HardwareClass], BuiltCandidate] = {}

    def preprocessed(self) -> Path:
        """The exported model after ``quant_pre_process`` (shape inference + basic optimisation), once."""
        if self._preprocessed is None:
            from onnxruntime.quantization.shape_inference import quant_pre_process

            out = self.workdir / "preprocessed.onnx"
            try:
                quant_pre_process(str(self.exported), str(out))
                self._preprocess_note = "quant_pre_process"
            except Exception as exc:
                log.warning("quant_pre_process with symbolic shape inference failed (%s); retrying without it",
                            first_line(exc))
                quant_pre_process(str(self.exported), str(out), skip_symbolic_shape=True)
                self._preprocess_note = "quant_pre_process (without symbolic shape inference)"
            self._preprocessed = out
        return self._preprocessed

    def build(self, plan: CandidatePlan) -> BuiltCandidate:
        out = self.workdir / f"{plan.name}-{plan.hardware_class.value}.onnx"
        start = time.perf_counter()
        try:
            # ORT calibration prints progress to stdout, and a failed symbolic shape inference leaves
            # a <uuid>.data file in the current folder: keep both out of the caller's way.
            with contextlib.redirect_stdout(io.StringIO()), contextlib.chdir(self.workdir):
                getattr(self, f"_build_{plan.kind}")(plan, out)
            if plan.kind in ("dynamic", "static"):
                plan.settings["preprocess"] = self._preprocess_note
            built = BuiltCandidate(plan, out, time.perf_counter() - start)
            log.info("Built candidate %s (%s) in %.1fs, %s bytes", plan.name, plan.hardware_class.value,
                     built.build_s, f"{out.stat().st_size:,}")
        except Exception as exc:
            built = BuiltCandidate(plan, None, time.perf_counter() - start, first_line(exc))
            log.warning("Could not build candidate %s (%s): %s", plan.name, plan.hardware_class.value, built.error)
        self.built[(plan.name, plan.hardware_class)] = built
        return built

    def _build_fp32(self, plan: CandidatePlan, out: Path) -> None:
        level = plan.settings["offlineLevel"]
        if level == "disabled":
            shutil.copyfile(self.exported, out)
            return
        ort_session(self.exported, level, self.threads, optimized_path=out)

    def _build_trained(self, plan: CandidatePlan, out: Path) -> None:
        ort_session(Path(plan.settings["file"]), plan.settings["offlineLevel"], self.threads, optimized_path=out)

    def _build_trained_qdq(self, plan: CandidatePlan, out: Path) -> None:
        shutil.copyfile(plan.settings["file"], out)

    def _build_trained_static(self, plan: CandidatePlan, out: Path) -> None:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        pre = out.with_suffix(".pre.onnx")
        quant_pre_process(plan.settings["file"], str(pre), skip_symbolic_shape=True)
        self._quantize_static(plan, pre, out)

    def _build_fp16(self, plan: CandidatePlan, out: Path) -> None:
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        source = self.built.get((BASELINE, HardwareClass.GPU))
        base = source.path if source and source.path else self.exported
        model = convert_float_to_float16(onnx.load_model(str(base)), keep_io_types=True)
        onnx.save_model(model, str(out))

    def _build_dynamic(self, plan: CandidatePlan, out: Path) -> None:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(self.preprocessed()), str(out), weight_type=QuantType.QInt8,
                         per_channel=bool(plan.settings["perChannel"]))

    def _build_static(self, plan: CandidatePlan, out: Path) -> None:
        self._quantize_static(plan, self.preprocessed(), out)

    def _quantize_static(self, plan: CandidatePlan, source: Path, out: Path) -> None:
        from onnxruntime.quantization import CalibrationMethod as OrtCalibration
        from onnxruntime.quantization import QuantFormat as OrtFormat
        from onnxruntime.quantization import QuantType, quantize_static

        assert plan.static is not None
        assert self.calibration is not None
        s = plan.static
        samples = int(plan.settings["calibrationSamples"])
        quantize_static(
            str(source), str(out), _Reader(self.calibration.take(samples), self.calib_batch),
            quant_format=OrtFormat.QDQ if s.format == QuantFormat.QDQ else OrtFormat.QOperator,
            activation_type=QuantType.QUInt8 if s.activation == ActivationType.UINT8 else QuantType.QInt8,
            weight_type=QuantType.QInt8, per_channel=s.per_channel,
            calibrate_method={CalibrationMethod.MIN_MAX: OrtCalibration.MinMax,
                              CalibrationMethod.ENTROPY: OrtCalibration.Entropy,
                              CalibrationMethod.PERCENTILE: OrtCalibration.Percentile}[s.method],
        )


class _Reader:
    """onnxruntime.quantization CalibrationDataReader over a Dataset (duck-typed: get_next/rewind)."""

    def __init__(self, dataset: Dataset, batch: int) -> None:
        self.dataset = dataset
        self.batch = batch
        self._iter = iter(dataset.batches(batch))

    def get_next(self) -> dict[str, Any] | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = iter(self.dataset.batches(self.batch))

    def __iter__(self) -> _Reader:
        return self

    def __next__(self) -> dict[str, Any]:
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item
