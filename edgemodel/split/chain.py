"""Cut a model into N contiguous stages, verify the chain, and write the stage artifacts (onnx, onnxruntime).

A chain of cuts ``c1 < c2 < ... < c(N-1)`` (candidate cuts of the whole model, in topological
order) gives stage 1 = inputs -> c1, stage k = c(k-1) -> c(k), stage N = c(N-1) -> outputs. It is
built by cutting the whole model at ``c1`` and the tail again at ``c2`` and so on, with
:func:`edgemodel.split.graph.split_model`, so each stage is a plain ONNX model that keeps the
model's opsets and metadata and records ``edgemodel.split.role = stage`` and
``edgemodel.split.stage = k/N``. A cut that dominates the whole graph also dominates every tail
that still contains it, so any increasing set of candidates is a valid chain.

:func:`verify_chain` runs stage 1 -> ... -> N against the whole model: with the FP32 wire the
features pass unchanged (the gate is the same tolerance as a two-part split); with INT8 (or FP16)
the features go through :mod:`edgemodel.split.codec` between stages as they do on the network, and
the gate is top-1 agreement with the whole model. :func:`build_chain` writes ``stage-k.onnx`` and
``chain.json`` (cuts, sha256 of each stage, both verifications, the plan) for the converter to
publish as one signed revision.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper

from edgemodel.errors import UserError
from edgemodel.split import codec
from edgemodel.split.chain_planner import (
    ChainCosts,
    ChainLinks,
    ChainObjective,
    ChainPlan,
    Device,
    plan_chain,
)
from edgemodel.split.graph import (
    Feeds,
    as_feed_list,
    find_cut_candidates,
    load_model,
    resolve_cut,
    split_model,
)
from edgemodel.split.profile import SplitProfile, profile_split
from edgemodel.split.runtime import DEFAULT_PROVIDERS, OrtPart

log = logging.getLogger(__name__)

META_STAGE = "edgemodel.split.stage"
CHAIN_MANIFEST = "chain.json"
CHAIN_KIND = "edgemodel-chain/v1"


def _stage_file(index: int) -> str:
    return f"stage-{index + 1}.onnx"


@dataclass
class ChainModels:
    """The stages of one chain of cuts, in order."""

    cuts: list[str]
    stages: list[onnx.ModelProto]

    def save(self, directory: Path) -> list[Path]:
        directory.mkdir(parents=True, exist_ok=True)
        paths = []
        for index, stage in enumerate(self.stages):
            path = directory / _stage_file(index)
            onnx.save_model(stage, str(path))
            paths.append(path)
        return paths


@dataclass(frozen=True)
class ChainVerification:
    """Whole model vs the stages in order: max abs difference (any wire) and top-1 agreement."""

    wire: str
    samples: int
    max_abs_diff: float
    top1_agreement: float
    passed: bool
    per_output: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "wire": self.wire,
            "samples": self.samples,
            "maxAbsDiff": self.max_abs_diff,
            "top1Agreement": self.top1_agreement,
            "passed": self.passed,
            "outputs": self.per_output,
        }


def _mark(stage: onnx.ModelProto, index: int, count: int, cut_in: str | None, cut_out: str | None) -> None:
    meta = {p.key: p.value for p in stage.metadata_props}
    meta.update(
        {
            "edgemodel.split.role": "stage",
            META_STAGE: f"{index + 1}/{count}",
            "edgemodel.split.cut": ",".join(c for c in (cut_in, cut_out) if c),
        }
    )
    del stage.metadata_props[:]
    helper.set_model_props(stage, meta)


def order_cuts(model: onnx.ModelProto | str | Path | bytes, cuts: Sequence[str]) -> list[str]:
    """Resolve ``cuts`` (tensor or node names) and check they are distinct and in topological order."""
    proto = load_model(model)
    resolved = [resolve_cut(proto, c) for c in cuts]
    indices = [c.index for c in resolved]
    if len(set(indices)) != len(indices) or indices != sorted(indices):
        raise UserError(
            f"spec.split.stages: the cuts {list(cuts)} must be distinct and ordered from the input to the "
            f"output; in this model they come as {[c.tensor for c in sorted(resolved, key=lambda c: c.index)]}"
        )
    return [c.tensor for c in resolved]


def split_chain(model: onnx.ModelProto | str | Path | bytes, cuts: Sequence[str]) -> ChainModels:
    """Cut ``model`` at every cut of ``cuts`` (input side first): ``len(cuts) + 1`` stages."""
    proto = load_model(model)
    tensors = order_cuts(proto, cuts)
    stages: list[onnx.ModelProto] = []
    rest = proto
    for cut in tensors:
        parts = split_model(rest, cut)
        stages.append(parts.head)
        rest = parts.tail
    stages.append(rest)
    bounds: list[str | None] = [None, *tensors, None]
    for index, stage in enumerate(stages):
        _mark(stage, index, len(stages), bounds[index], bounds[index + 1])
    return ChainModels(list(tensors), stages)


def run_chain(
    parts: Sequence[Callable[[Feeds], Feeds]], feeds: Feeds, wire: codec.WireFormat | None = None
) -> dict[str, np.ndarray]:
    """Stage 1 -> ... -> N in this process; with ``wire`` the features pass through the codec between stages."""
    current: Feeds = feeds
    for index, part in enumerate(parts):
        current = part(current)
        if wire is not None and index < len(parts) - 1:
            current = codec.decode(codec.encode(current, wire))
    return dict(current)


def verify_chain(
    model: onnx.ModelProto | str | Path | bytes,
    chain: ChainModels,
    samples: Feeds | Sequence[Feeds],
    wire: str = "fp32",
    rtol: float = 1e-4,
    atol: float = 1e-4,
    providers: Sequence[str] = DEFAULT_PROVIDERS,
    min_top1: float = 1.0,
) -> ChainVerification:
    """Run the whole model and the chain on ``samples``; FP32 must match within tolerance, others top-1."""
    fmt = codec.WireFormat.parse(wire)
    feeds_list = as_feed_list(samples)
    full = OrtPart(load_model(model).SerializeToString(), providers)
    parts = [OrtPart(s.SerializeToString(), providers) for s in chain.stages]
    worst: dict[str, float] = {}
    close, agree, total = True, 0, 0
    for feeds in feeds_list:
        want = full.run(feeds)
        got = run_chain(parts, feeds, fmt)  # FP32 through the codec is lossless: the same as in process
        for name, expected in want.items():
            have = got[name]
            if have.shape != expected.shape:
                raise AssertionError(
                    f"chain output {name!r} has shape {have.shape}, the whole model {expected.shape}"
                )
            diff = (
                float(np.max(np.abs(have.astype(np.float64) - expected.astype(np.float64))))
                if expected.size
                else 0.0
            )
            worst[name] = max(worst.get(name, 0.0), diff)
            close = close and bool(np.allclose(have, expected, rtol=rtol, atol=atol))
            if expected.ndim >= 1 and np.issubdtype(expected.dtype, np.floating) and expected.size:
                flat_want = expected.reshape(expected.shape[0], -1) if expected.ndim > 1 else expected[None]
                flat_have = have.reshape(flat_want.shape)
                agree += int(np.sum(np.argmax(flat_want, axis=1) == np.argmax(flat_have, axis=1)))
                total += flat_want.shape[0]
    top1 = agree / total if total else 1.0
    exact_wire = fmt.precision is codec.Precision.FP32
    passed = close if exact_wire else top1 >= min_top1
    result = ChainVerification(
        str(fmt), len(feeds_list), max(worst.values(), default=0.0), top1, passed, worst
    )
    log.info(
        "Verified a %d-stage chain with wire %s on %d samples: max abs diff %.3g, top-1 agreement %.3f (%s)",
        len(chain.stages),
        fmt,
        len(feeds_list),
        result.max_abs_diff,
        top1,
        "passed" if passed else "FAILED",
    )
    return result


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class ChainResult:
    paths: list[Path]
    manifest_path: Path
    manifest: dict[str, Any]


def build_chain(
    model: onnx.ModelProto | str | Path | bytes,
    samples: Feeds | Sequence[Feeds],
    out_dir: Path,
    cuts: Sequence[str],
    wire: str = "int8",
    plan: dict[str, Any] | None = None,
    rtol: float = 1e-3,
    atol: float = 1e-4,
    min_top1: float = 1.0,
    on_step: Callable[[str], None] | None = None,
) -> ChainResult:
    """Cut, verify (FP32 exactly, then ``wire`` by top-1) and write ``stage-k.onnx`` + ``chain.json``.

    Raises :class:`UserError` for bad cuts and :class:`RuntimeError` when a verification fails
    (the stages do not reproduce the model: a bug, or a wire too coarse for this model).
    """
    step = on_step or (lambda _detail: None)
    codec.WireFormat.parse(wire)
    proto = load_model(model)
    if not cuts:
        raise UserError(
            f"spec.split.stages: a chain needs at least one cut; valid cuts are "
            f"{[c.tensor for c in find_cut_candidates(proto)][:8]}"
        )
    chain = split_chain(proto, cuts)
    step(f"cut into {len(chain.stages)} stages at {chain.cuts}")
    exact = verify_chain(proto, chain, samples, "fp32", rtol=rtol, atol=atol)
    if not exact.passed:
        raise RuntimeError(
            f"the {len(chain.stages)} stages differ from the whole model by {exact.max_abs_diff:.3g} "
            f"with FP32 features (rtol {rtol}, atol {atol}); this is a bug in the split"
        )
    on_wire = verify_chain(proto, chain, samples, wire, min_top1=min_top1) if wire != "fp32" else exact
    if not on_wire.passed:
        raise RuntimeError(
            f"with {wire} features the chain agrees with the whole model on top-1 for only "
            f"{on_wire.top1_agreement:.1%} of the samples (needs {min_top1:.0%}); use wire fp16 or fp32"
        )
    step(
        f"stages reproduce the model: max abs diff {exact.max_abs_diff:.3g} (fp32), top-1 {on_wire.top1_agreement:.1%}"
        f" ({wire})"
    )
    paths = chain.save(out_dir)
    bounds: list[str | None] = [None, *chain.cuts, None]
    manifest: dict[str, Any] = {
        "kind": CHAIN_KIND,
        "cuts": chain.cuts,
        "wire": str(codec.WireFormat.parse(wire)),
        "stages": [
            {
                "index": i + 1,
                "file": p.name,
                "sha256": _sha256(p),
                "cutIn": bounds[i],
                "cutOut": bounds[i + 1],
                "inputs": [x.name for x in chain.stages[i].graph.input],
                "outputs": [x.name for x in chain.stages[i].graph.output],
            }
            for i, p in enumerate(paths)
        ],
        "verification": {"fp32": exact.to_dict(), "wire": on_wire.to_dict()},
        "plan": plan,
    }
    manifest_path = out_dir / CHAIN_MANIFEST
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    step(f"wrote {len(paths)} stages and {CHAIN_MANIFEST}")
    return ChainResult(paths, manifest_path, manifest)


def chain_costs(profile: SplitProfile, wire: str = "int8") -> ChainCosts:
    """Pipeline planner inputs from a split profile (one machine's latencies at every cut, bytes in ``wire``).

    The time up to cut ``i`` is estimated twice, as the head's latency and as the whole model's minus
    the tail's; their mean, made non-decreasing and clamped to the whole model's, gives segments that
    sum exactly to the whole model (noise on a busy machine can make a head slower than the whole
    model, and clipping single differences would inflate the sum). The codec time is encode + decode.
    """
    key = str(codec.WireFormat.parse(wire))
    if any(key not in c.feature_bytes for c in profile.cuts):
        raise UserError(f"spec.split.wire: {wire!r} was not profiled; profile with wire_formats including it")
    full = profile.full_ms
    cumulative, running = [], 0.0
    for c in profile.cuts:
        estimate = min(full, max(0.0, (c.head_ms + (full - c.tail_ms)) / 2))
        running = max(running, estimate)
        cumulative.append(running)
    return ChainCosts.from_cumulative(
        [c.tensor for c in profile.cuts],
        cumulative,
        full,
        [c.feature_bytes[key] for c in profile.cuts],
        profile.output_bytes,
        codec_ms=[c.encode_ms.get(key, 0.0) + c.decode_ms.get(key, 0.0) for c in profile.cuts],
    )


def plan_cuts(
    model: onnx.ModelProto | str | Path | bytes,
    samples: Feeds | Sequence[Feeds],
    devices: Sequence[Device],
    links: ChainLinks,
    objective: ChainObjective = ChainObjective.LATENCY,
    stages: int | None = None,
    max_stages: int | None = None,
    wire: str = "int8",
    runs: int = 10,
    threads: int | None = None,
    allowed: Sequence[frozenset[str] | None] | None = None,
) -> tuple[ChainPlan, SplitProfile]:
    """Profile every candidate cut here and plan the pipeline (``stages.cuts`` empty: the converter's auto).

    ``devices`` carry their slowdown relative to this machine (the conversion Job does not run on
    the edge devices: the operator passes the speeds the agents measured, or spec.split.edgeSlowdown);
    ``allowed[k]`` restricts stage ``k`` to some device names (stageSelectors).
    """
    proto = load_model(model)
    profile = profile_split(proto, samples, threads=threads, runs=runs, warmup=1, wire_formats=(wire,))
    plan = plan_chain(
        chain_costs(profile, wire), devices, links, objective, stages=stages, max_stages=max_stages, allowed=allowed
    )
    if len(plan.stages) < 2:
        raise UserError(
            f"spec.split.stages: the planner keeps the whole model on the entry node ({plan.latency_ms:.1f} ms) for "
            f"these devices and links; set count to force a pipeline, or drop spec.split.stages"
        )
    log.info(
        "Planned %d stages on %s at cuts %s (objective %s)",
        len(plan.stages),
        plan.devices,
        plan.cuts,
        objective.value,
    )
    return plan, profile


def read_chain_manifest(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    if data.get("kind") != CHAIN_KIND:
        raise UserError(f"{path}: kind {data.get('kind')!r} is not {CHAIN_KIND}")
    return data
