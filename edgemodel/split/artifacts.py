"""Build the split artifacts of one model: the converter's single entry point (onnx, onnxruntime).

:func:`build_split` resolves the cut (a tensor/layer name, or ``auto`` via the planner), cuts the
model, verifies head+tail against the whole model, optionally quantises each part, and writes::

    out_dir/head.onnx     the edge part (inputs -> cut tensor)
    out_dir/tail.onnx     the cloud part (cut tensor -> outputs)
    out_dir/split.json    SplitManifest: cut, wire format, verification, plan, profile, sha256 of both parts

For ``auto`` the edge latency is predicted from a profile measured where the converter runs,
multiplied by ``edge_slowdown`` (the converter does not run on the edge hardware); the cloud
latency is that profile unscaled. ``split.json`` keeps both profiles so the agent can re-plan
with the bandwidth and RTT it measures.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import onnx

from edgemodel.errors import UserError
from edgemodel.split.codec import WireFormat
from edgemodel.split.graph import (
    Feeds,
    find_cut_candidates,
    load_model,
    quantize_split,
    resolve_cut,
    split_model,
)
from edgemodel.split.graph import verify_split as verify
from edgemodel.split.planner import Link, Objective, OptionKind, Plan, choose_cut
from edgemodel.split.profile import SplitProfile, planner_costs, profile_split
from edgemodel.timing import Contender, decide

log = logging.getLogger(__name__)

AUTO = "auto"
MANIFEST = "split.json"


@dataclass(frozen=True)
class SplitSettings:
    """What to build: ``cut`` is a tensor or node name, or ``auto`` (then ``link`` is required)."""

    cut: str = AUTO
    wire: str = "int8"
    link: Link | None = None
    objective: Objective = Objective.LATENCY
    budget_ms: float | None = None
    edge_slowdown: float = 4.0
    """Predicted edge latency = latency measured here x this factor (auto only)."""
    quantize_parts: bool = False
    """Quantise head and tail independently (static INT8 QDQ, needs calibration samples)."""
    rtol: float = 1e-3
    atol: float = 1e-4
    profile_runs: int = 10
    """Timed runs of every head and tail per profiling round (auto only)."""
    profile_rounds: int = 10
    """Interleaved profiling rounds (auto only); the cut is chosen on the per-round totals."""
    threads: int | None = None


@dataclass
class SplitResult:
    """What :func:`build_split` wrote and decided."""

    head_path: Path
    tail_path: Path
    manifest_path: Path
    manifest: dict[str, Any] = field(default_factory=dict)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def scaled_profile(profile: SplitProfile, factor: float) -> SplitProfile:
    """A copy of ``profile`` with every latency multiplied by ``factor`` (a predicted slower device)."""
    if not factor > 0:
        raise UserError(f"spec.split.edgeSlowdown: {factor} must be > 0 (e.g. 4 for an edge 4x slower)")
    scaled = copy.deepcopy(profile)
    scaled.full_ms *= factor
    for cut in scaled.cuts:
        cut.head_ms *= factor
        cut.tail_ms *= factor
        cut.encode_ms = {k: v * factor for k, v in cut.encode_ms.items()}
    scaled.input_codec_ms = {k: v * factor for k, v in scaled.input_codec_ms.items()}
    return scaled


CUT_MIN_SPEEDUP = 1.02
"""The fastest auto cut replaces one that sends fewer feature bytes only when it is predicted this much faster at
the lower bound of the 95% CI (paired over the profiling rounds)."""


def round_totals(profile: SplitProfile, plan: Plan, slowdown: float, wire: str) -> dict[str, list[float]]:
    """Per cut, the predicted end-to-end ms of every profiling round: the plan's transfer, the round's head x
    ``slowdown``, tail, and (when ``wire`` was timed in the rounds) encode x ``slowdown`` + decode, else the
    plan's codec time."""
    by_cut = {c.tensor: c for c in profile.cuts}
    totals: dict[str, list[float]] = {}
    for option in plan.options:
        cut = by_cut.get(option.cut or "")
        if option.kind is not OptionKind.SPLIT or cut is None or not cut.rounds.get("head"):
            continue
        heads, tails = cut.rounds["head"], cut.rounds.get("tail", [])
        encodes, decodes = cut.rounds.get("encode"), cut.rounds.get("decode")
        timed = profile.round_wire == str(WireFormat.parse(wire)) and encodes and decodes
        rows = []
        for r in range(min(len(heads), len(tails))):
            codec_ms = (encodes[r] * slowdown + decodes[r] if timed and encodes and decodes
                        and r < min(len(encodes), len(decodes)) else option.codec_ms)
            rows.append(heads[r] * slowdown + tails[r] + codec_ms + option.transfer_ms)
        totals[option.cut or ""] = rows
    return totals


def plan_auto(profile: SplitProfile, settings: SplitSettings) -> tuple[Plan, dict[str, Any] | None]:
    """The choice among the cuts only (a split deployment needs a cut): edge = profile x slowdown.

    With the latency objective and per-round measurements, the cuts are compared on their per-round
    predicted totals (:func:`edgemodel.timing.decide`, ``CUT_MIN_SPEEDUP``): the fastest cut by median
    wins only over the cuts it beats beyond the noise; among the others the one sending the fewest
    feature bytes (then the earliest) is chosen: bytes are exact, so near-equal cuts resolve the same
    way every time. Returns the plan and that comparison (None when the planner's choice on the medians
    stands as it is).
    """
    if settings.link is None:
        raise UserError("spec.split.link: cut 'auto' needs the link (bandwidthMbitS, rttMs) to choose a cut for")
    edge = scaled_profile(profile, settings.edge_slowdown)
    costs = planner_costs(edge, profile, wire=settings.wire)
    plan = choose_cut(costs, settings.link, settings.objective, settings.budget_ms, edge_only=False, cloud_only=False)
    totals = round_totals(profile, plan, settings.edge_slowdown, settings.wire)
    if settings.objective is not Objective.LATENCY or len(totals) != len(plan.options) or not totals:
        return plan, None
    index = {o.cut: k for k, o in enumerate(plan.options)}
    # Preference among cuts within the noise: the fewest feature bytes (exact, not measured: less data leaves
    # the device and a slower link than declared hurts least), then the earliest.
    rank = {o.cut: r for r, o in enumerate(sorted(plan.options, key=lambda o: (o.bytes_up, o.cut_index or 0)))}
    decision = decide([Contender(cut, rank[cut], rows) for cut, rows in totals.items()], CUT_MIN_SPEEDUP)
    chosen = plan.options[index[decision.chosen.name]]
    met = settings.budget_ms is None or chosen.total_ms <= settings.budget_ms
    comparison = {
        "rule": f"the cut with the fewest feature bytes that the fastest does not beat by {CUT_MIN_SPEEDUP:g}x at "
                "the lower bound of the 95% CI of the paired per-round totals",
        "rounds": profile.rounds, "fastest": decision.fastest.name, "medianFastest": plan.chosen.cut,
        "withinNoise": list(decision.within_noise),
        "fastestVsChosen": (decision.versus[chosen.cut or ""].text() if chosen.cut != decision.fastest.name
                            else None),
    }
    return replace(plan, chosen=chosen, budget_met=met), comparison


def build_split(model: onnx.ModelProto | str | Path | bytes, samples: Feeds | Sequence[Feeds], out_dir: Path,
                settings: SplitSettings | None = None, calibration: Sequence[Feeds] | None = None, *,
                on_step: Callable[[str], None] | None = None) -> SplitResult:
    """Cut, verify, (quantise), profile and write head/tail/split.json; raises UserError on bad settings.

    ``on_step`` (e.g. a progress bar) is called with one line after each of the three steps:
    cut chosen (profiled for ``auto``), head+tail verified (and quantised), files written.
    """
    settings = settings or SplitSettings()
    step = on_step or (lambda _detail: None)
    WireFormat.parse(settings.wire)  # fail early on a bad wire format
    proto = load_model(model)
    candidates = find_cut_candidates(proto)
    if not candidates:
        raise UserError("spec.split: this model has no tensor that dominates the rest of the graph; "
                        "use split: none")
    profile: SplitProfile | None = None
    plan: Plan | None = None
    comparison: dict[str, Any] | None = None
    wire_formats = tuple(dict.fromkeys(("fp32", "fp16", "int8", "int8+zstd", str(WireFormat.parse(settings.wire)))))
    if settings.cut == AUTO:
        log.info("Profiling %d candidate cuts to choose one automatically", len(candidates))
        profile = profile_split(proto, samples, threads=settings.threads,
                                runs=settings.profile_runs * settings.profile_rounds, warmup=1,
                                wire_formats=wire_formats, candidates=candidates, rounds=settings.profile_rounds,
                                round_wire=settings.wire)
        plan, comparison = plan_auto(profile, settings)
        assert plan.chosen.kind is OptionKind.SPLIT
        assert plan.chosen.cut is not None
        cut = next(c for c in candidates if c.tensor == plan.chosen.cut)
        log.info("Chose cut %s: predicted %.1f ms end to end on %g Mbit/s, RTT %g ms", cut.tensor,
                 plan.chosen.total_ms, plan.link.bandwidth_mbit_s, plan.link.rtt_ms)
    else:
        cut = resolve_cut(proto, settings.cut)
    step(f"cut at {cut.tensor}" + (f" (auto: predicted {plan.chosen.total_ms:.1f} ms end to end)" if plan else ""))
    split = split_model(proto, cut)
    verification = verify(proto, split, samples, rtol=settings.rtol, atol=settings.atol)
    if not verification.passed:
        raise RuntimeError(f"head+tail at {cut.tensor} differ from the whole model by {verification.max_abs_diff:.3g} "
                           f"(rtol {settings.rtol}, atol {settings.atol}); this is a bug in the split, not the input")
    quantized_check: dict[str, Any] | None = None
    if settings.quantize_parts:
        if not calibration:
            raise UserError("spec.split.quantizeParts: needs calibration samples (spec.optimization.int8."
                            "calibrationDataUri)")
        split = quantize_split(split, calibration)
        recorded = verify(proto, split, samples, rtol=0.0, atol=1e30).to_dict()
        quantized_check = {k: v for k, v in recorded.items() if k not in ("passed", "rtol", "atol")}  # not a gate
    step(f"head+tail match the whole model within {verification.max_abs_diff:.3g}"
         + (" (then quantised to INT8)" if settings.quantize_parts else ""))
    out_dir.mkdir(parents=True, exist_ok=True)
    head_path, tail_path = split.save(out_dir)
    manifest: dict[str, Any] = {
        "kind": "edgemodel-split/v1",
        "cut": cut.to_dict(),
        "wire": str(WireFormat.parse(settings.wire)),
        "head": {"file": head_path.name, "sha256": _sha256(head_path),
                 "inputs": [i.name for i in split.head.graph.input]},
        "tail": {"file": tail_path.name, "sha256": _sha256(tail_path),
                 "outputs": [o.name for o in split.tail.graph.output]},
        "precision": "int8" if settings.quantize_parts else "fp32",
        "verification": verification.to_dict(),
        "quantizedVerification": quantized_check,
        "plan": plan.to_dict() if plan else None,
        "cutComparison": comparison,
        "edgeSlowdown": settings.edge_slowdown if plan else None,
        "profile": profile.to_dict() if profile else None,
    }
    manifest_path = out_dir / MANIFEST
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    log.info("Wrote split artifacts to %s (cut %s, max abs diff %.3g)", out_dir, cut.tensor,
             verification.max_abs_diff)
    step(f"wrote {head_path.name}, {tail_path.name}, {manifest_path.name}")
    return SplitResult(head_path, tail_path, manifest_path, manifest)


def read_manifest(path: Path) -> dict[str, Any]:
    """``split.json`` as written by :func:`build_split` (agent-side readers may use plain ``json`` instead)."""
    data: dict[str, Any] = json.loads(path.read_text())
    if data.get("kind") != "edgemodel-split/v1":
        raise UserError(f"{path}: kind {data.get('kind')!r} is not edgemodel-split/v1")
    return data
