"""Measure a model's candidate cuts on one execution provider: head/tail latency and feature bytes.

For every candidate cut the head (inputs -> cut) and the tail (cut -> outputs) run in their own
ONNX Runtime sessions, exactly as a split deployment runs them, so the measured latencies include
what the cut costs (e.g. a Conv+Relu fusion lost at the boundary, the session overhead). Feature
bytes are the real encoded message sizes (:mod:`edgemodel.split.codec`) for each wire format,
averaged over the sample inputs (zstd sizes depend on the data). Run it once on the edge hardware
class and once on the cloud side; :func:`planner_costs` turns the two into planner inputs.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgemodel.errors import UserError
from edgemodel.split import codec
from edgemodel.split.graph import (
    CutCandidate,
    Feeds,
    as_feed_list,
    find_cut_candidates,
    initializer_bytes,
    load_model,
    split_model,
)
from edgemodel.split.planner import SplitCosts
from edgemodel.split.runtime import DEFAULT_PROVIDERS, OrtPart
from edgemodel.timing import time_rounds

log = logging.getLogger(__name__)

DEFAULT_WIRE_FORMATS = ("fp32", "fp16", "int8", "fp16+zstd", "int8+zstd")


@dataclass
class CutProfile:
    """Measurements at one cut (latencies are medians in ms; bytes are means over the samples)."""

    tensor: str
    index: int
    shape: list[int]
    head_ms: float
    tail_ms: float
    feature_bytes: dict[str, int]
    encode_ms: dict[str, float]
    decode_ms: dict[str, float]
    rounds: dict[str, list[float]] = field(default_factory=dict)
    """Per-round median ms of ``head``, ``tail`` and, for the planning wire format, ``encode`` and ``decode``
    (interleaved profiles only): round r of every cut ran seconds apart, so cuts compare in pairs."""


@dataclass
class SplitProfile:
    """A model's cut profile on one provider (``edgemodel-split-profile/v1`` JSON via :meth:`to_dict`)."""

    provider: str
    threads: int | None
    runs: int
    full_ms: float
    input_bytes: dict[str, int]
    output_bytes: int
    cuts: list[CutProfile]
    input_codec_ms: dict[str, float] = field(default_factory=dict)
    host: dict[str, Any] = field(default_factory=dict)
    rounds: int = 0
    """Interleaved rounds the latencies come from (0: measured cut after cut)."""
    round_wire: str | None = None
    """The wire format whose encode/decode time was timed in the rounds."""

    def to_dict(self) -> dict[str, Any]:
        """camelCase JSON form (``kind: edgemodel-split-profile/v1``)."""
        return {"kind": "edgemodel-split-profile/v1", **_camel(asdict(self))}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SplitProfile:
        if data.get("kind") != "edgemodel-split-profile/v1":
            raise UserError(f"profile: kind {data.get('kind')!r} is not edgemodel-split-profile/v1")
        fields = _snake({k: v for k, v in data.items() if k != "kind"})
        fields["cuts"] = [CutProfile(**c) for c in fields["cuts"]]
        return cls(**fields)

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: Path) -> SplitProfile:
        return cls.from_dict(json.loads(path.read_text()))


_KEYS = {"head_ms": "headMs", "tail_ms": "tailMs", "feature_bytes": "featureBytes", "encode_ms": "encodeMs",
         "decode_ms": "decodeMs", "full_ms": "fullMs", "input_bytes": "inputBytes", "output_bytes": "outputBytes",
         "input_codec_ms": "inputCodecMs", "round_wire": "roundWire"}
_SNAKE = {v: k for k, v in _KEYS.items()}


def _camel(data: dict[str, Any]) -> dict[str, Any]:
    out = {_KEYS.get(k, k): v for k, v in data.items()}
    if "cuts" in out:
        out["cuts"] = [{_KEYS.get(k, k): v for k, v in c.items()} for c in out["cuts"]]
    return out


def _snake(data: dict[str, Any]) -> dict[str, Any]:
    out = {_SNAKE.get(k, k): v for k, v in data.items()}
    if "cuts" in out:
        out["cuts"] = [{_SNAKE.get(k, k): v for k, v in c.items()} for c in out["cuts"]]
    return out


def _median_ms(fn: Callable[[], object], runs: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return float(statistics.median(times))


def _wire_sizes(tensors: Sequence[Mapping[str, np.ndarray]], formats: Sequence[str],
                timing_runs: int) -> tuple[dict[str, int], dict[str, float], dict[str, float]]:
    sizes: dict[str, int] = {}
    enc_ms: dict[str, float] = {}
    dec_ms: dict[str, float] = {}
    for text in formats:
        fmt = codec.WireFormat.parse(text)
        messages = [codec.encode(t, fmt) for t in tensors]
        sizes[str(fmt)] = int(round(float(np.mean([len(m) for m in messages]))))
        enc_ms[str(fmt)] = _median_ms(functools.partial(codec.encode, tensors[0], fmt), timing_runs, 1)
        dec_ms[str(fmt)] = _median_ms(functools.partial(codec.decode, messages[0]), timing_runs, 1)
    return sizes, enc_ms, dec_ms


def host_info() -> dict[str, Any]:
    """Load average and core count at measurement time (the cores may be shared)."""
    try:
        load = list(os.getloadavg())
    except OSError:  # pragma: no cover - not on Linux
        load = []
    return {"loadAverage": load, "cpuCount": os.cpu_count()}


INTERLEAVE_MAX_BYTES = 2 * 1024 ** 3


MIN_BLOCK_S = 0.0
"""An interleaved block of one part lasts at least this long (0: just the runs asked for; on a busy 2-core
machine a longer block mostly waits for the CPU)."""


def profile_split(model: onnx.ModelProto | str | Path | bytes, samples: Feeds | Sequence[Feeds],
                  providers: Sequence[str] = DEFAULT_PROVIDERS, threads: int | None = None, runs: int = 20,
                  warmup: int = 3, wire_formats: Sequence[str] = DEFAULT_WIRE_FORMATS,
                  candidates: Sequence[CutCandidate] | None = None, interleave: bool | None = None,
                  rounds: int | None = None, round_wire: str | None = None) -> SplitProfile:
    """Measure the whole model and the head and tail of every candidate cut (timed on ``samples[0]``).

    With ``interleave`` (default: when every part's weights together stay under 2 GiB) all
    sessions are created first and timed in ``rounds`` interleaved rounds (default ``runs``: one run
    per part and round; else ``runs / rounds`` runs per block, :func:`edgemodel.timing.time_rounds`),
    so a load change on a shared machine shifts every cut alike instead of skewing the cuts measured
    during it, and each cut keeps its per-round medians (also of encoding and decoding its features
    in ``round_wire``); otherwise cut after cut.
    """
    if runs < 1 or warmup < 0:
        raise UserError(f"runs: {runs} must be >= 1 and warmup {warmup} >= 0")
    proto = load_model(model)
    feeds_list = as_feed_list(samples)
    cuts = list(candidates) if candidates is not None else find_cut_candidates(proto)
    if interleave is None:
        interleave = initializer_bytes(proto) * 2 * max(1, len(cuts)) <= INTERLEAVE_MAX_BYTES
    full = OrtPart(proto.SerializeToString(), providers, threads)
    first = feeds_list[0]
    outputs = full.run(first)
    timing_runs = max(3, min(runs, 10))
    input_sizes, input_enc, input_dec = _wire_sizes(feeds_list, wire_formats, timing_runs)
    input_codec = {k: input_enc[k] + input_dec[k] for k in input_enc}
    output_bytes = len(codec.encode(outputs))
    log.info("Profiling the whole model and %d candidate cuts on %s (%s)", len(cuts), full.provider,
             "interleaved" if interleave else "cut after cut")
    profiles: list[CutProfile] = []
    timed: list[tuple[OrtPart, OrtPart, dict[str, np.ndarray]]] = []
    full_ms = 0.0 if interleave else _median_ms(functools.partial(full.run, first), runs, warmup)
    for number, cut in enumerate(cuts, start=1):
        split = split_model(proto, cut)
        head = OrtPart(split.head.SerializeToString(), providers, threads)
        tail = OrtPart(split.tail.SerializeToString(), providers, threads)
        features = [head.run(f) for f in feeds_list]
        sizes, enc, dec = _wire_sizes(features, wire_formats, timing_runs)
        shape = [int(d) for d in features[0][cut.tensor].shape]
        head_ms = tail_ms = 0.0
        if interleave:
            timed.append((head, tail, features[0]))
        else:
            head_ms = _median_ms(functools.partial(head.run, first), runs, warmup)
            tail_ms = _median_ms(functools.partial(tail.run, features[0]), runs, warmup)
            log.info("Profiled cut %d/%d %s %s: head %.2f ms, tail %.2f ms", number, len(cuts), cut.tensor, shape,
                     head_ms, tail_ms)
        profiles.append(CutProfile(cut.tensor, cut.index, shape, head_ms, tail_ms, sizes, enc, dec))
    n_rounds = 0
    wire_key = str(codec.WireFormat.parse(round_wire)) if round_wire else None
    if interleave:
        n_rounds = rounds or runs
        jobs: dict[str, Callable[[], object]] = {"full": functools.partial(full.run, first)}
        for index, (head, tail, cut_features) in enumerate(timed):
            jobs[f"head:{index}"] = functools.partial(head.run, first)
            jobs[f"tail:{index}"] = functools.partial(tail.run, cut_features)
            if wire_key:
                fmt = codec.WireFormat.parse(wire_key)
                jobs[f"encode:{index}"] = functools.partial(codec.encode, cut_features, fmt)
                jobs[f"decode:{index}"] = functools.partial(codec.decode, codec.encode(cut_features, fmt))
        timings = time_rounds(jobs, n_rounds, block=max(1, -(-runs // n_rounds)), warmup=max(1, warmup),
                              min_block_s=MIN_BLOCK_S)
        full_ms = float(np.median(timings["full"].pooled())) * 1e3
        for index, profile in enumerate(profiles):
            per_round = {part: [round(m * 1e3, 5) for m in timings[f"{part}:{index}"].round_medians()]
                         for part in ("head", "tail", "encode", "decode") if f"{part}:{index}" in timings}
            profile.head_ms = float(np.median(timings[f"head:{index}"].pooled())) * 1e3
            profile.tail_ms = float(np.median(timings[f"tail:{index}"].pooled())) * 1e3
            profile.rounds = per_round
    log.info("Profiled %d cuts: whole model %.2f ms; head/tail ms %s", len(cuts), full_ms,
             ", ".join(f"{c.tensor} {c.head_ms:.2f}/{c.tail_ms:.2f}" for c in profiles))
    return SplitProfile(full.provider, threads, runs, full_ms, input_sizes, output_bytes, profiles, input_codec,
                        host_info(), n_rounds, wire_key if n_rounds else None)


def planner_costs(edge: SplitProfile, cloud: SplitProfile, wire: str = "int8", input_wire: str = "fp32",
                  cuts: Sequence[str] | None = None) -> SplitCosts:
    """Planner inputs from an edge profile and a cloud profile of the same model.

    ``wire`` is the feature format (e.g. ``int8+zstd``), ``input_wire`` the format of the raw
    input for cloud-only; ``cuts`` restricts the candidates (default: every profiled cut).
    """
    wire_key = str(codec.WireFormat.parse(wire))
    input_key = str(codec.WireFormat.parse(input_wire))
    cloud_by_tensor = {c.tensor: c for c in cloud.cuts}
    chosen = [c for c in edge.cuts if cuts is None or c.tensor in cuts]
    missing = [c.tensor for c in chosen if c.tensor not in cloud_by_tensor]
    if missing:
        raise UserError(f"profile: cuts {missing[:3]} are in the edge profile but not the cloud profile; "
                        f"profile the same model on both sides")
    if any(wire_key not in c.feature_bytes for c in chosen) or input_key not in edge.input_bytes:
        raise UserError(f"wire: {wire!r} was not profiled; profile with wire_formats including it")
    return SplitCosts.from_cumulative(
        cuts=[c.tensor for c in chosen],
        edge_full_ms=edge.full_ms,
        edge_head_ms=[c.head_ms for c in chosen],
        cloud_full_ms=cloud.full_ms,
        cloud_tail_ms=[cloud_by_tensor[c.tensor].tail_ms for c in chosen],
        feature_bytes=[c.feature_bytes[wire_key] for c in chosen],
        input_bytes=edge.input_bytes[input_key],
        output_bytes=edge.output_bytes,
        codec_ms=[c.encode_ms[wire_key] + cloud_by_tensor[c.tensor].decode_ms[wire_key] for c in chosen],
        input_codec_ms=edge.input_codec_ms.get(input_key, 0.0),
    )
