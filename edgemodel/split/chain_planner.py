"""Plan a pipeline of stages over an ordered set of edge devices (EdgeShard-style DP). Pure, stdlib only.

The model is a chain of ``K`` candidate cuts, i.e. ``K + 1`` segments with a reference latency
each (measured on one machine), the weight bytes each segment holds, and the encoded feature
bytes at every cut. The devices are ordered (``devices[0]`` is the **entry**: requests arrive
there, stage 1 runs there and the answer leaves from there). A plan puts contiguous runs of
segments on a strictly increasing subsequence of the devices (devices may be skipped), one
stage per device:

- a stage's compute on device ``d`` = the sum of its reference segment latencies x ``d.slowdown``
  (measured speed: ms on the device / ms on the reference), plus the encode/decode time of the
  features it sends (``codec_ms``, also scaled by the sender), plus ``d.overhead_ms``, what serving
  one request costs the device beyond the model (mTLS, HTTP, decoding the request; 0 when unmeasured);
- the hop from stage ``i`` to ``i + 1`` costs ``link.transfer_ms(features, output)``: one RTT plus
  the features forward and the model's output back (answers return along the chain);
- a stage's weights must fit ``d.memory_bytes`` (when set).

Objectives: ``latency`` minimises the end-to-end time of one request (the sum of computes and
hops); ``throughput`` minimises the **period** of the pipeline, the slowest stage or link
(``max`` of stage computes and of the links' serialisation times; the RTT does not limit a
pipeline with requests in flight), ties broken by latency. Both are solved exactly by a dynamic
programme over (segments covered, last device, stages used); :func:`brute_force` enumerates
every plan for tests.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from edgemodel.split.planner import Link, PlanError


class ChainObjective(StrEnum):
    LATENCY = "latency"
    """Lowest end-to-end latency of one request."""
    THROUGHPUT = "throughput"
    """Shortest pipeline period (slowest stage or link), i.e. the most requests per second."""


@dataclass(frozen=True)
class Device:
    """One device that may host a stage: ``slowdown`` = its ms / the reference's ms (measured).

    ``overhead_ms``: what serving one request costs the device beyond the model (receiving and decoding
    the request, mTLS, answering), added once to every stage it hosts (measured with a trivial model).
    """

    name: str
    slowdown: float = 1.0
    memory_bytes: int | None = None
    overhead_ms: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.slowdown) and self.slowdown > 0):
            raise PlanError(
                f"devices[{self.name}].slowdown: {self.slowdown} must be a positive number, e.g. 4"
            )
        if not (math.isfinite(self.overhead_ms) and self.overhead_ms >= 0):
            raise PlanError(f"devices[{self.name}].overheadMs: {self.overhead_ms} must be a number >= 0")
        if self.memory_bytes is not None and self.memory_bytes <= 0:
            raise PlanError(f"devices[{self.name}].memoryBytes: {self.memory_bytes} must be > 0 or unset")


@dataclass(frozen=True)
class ChainLinks:
    """Links between devices by name (either direction); ``default`` for pairs not listed."""

    default: Link | None = None
    between: Mapping[tuple[str, str], Link] = field(default_factory=dict)

    def get(self, a: str, b: str) -> Link:
        link = self.between.get((a, b)) or self.between.get((b, a)) or self.default
        if link is None:
            raise PlanError(
                f"links: no link between {a!r} and {b!r}; declare it (or a default link) or measure it"
            )
        return link


@dataclass(frozen=True)
class ChainCosts:
    """Reference costs of one model: per segment (``K + 1``) latency and weight bytes, per cut (``K``) bytes."""

    cuts: Sequence[str]
    segment_ms: Sequence[float]
    feature_bytes: Sequence[int]
    output_bytes: int
    segment_bytes: Sequence[int] = ()
    """Weight bytes of every segment (empty: no memory limits can be checked)."""
    codec_ms: Sequence[float] = ()
    """Reference encode + decode ms of the features at each cut (empty: 0)."""

    def __post_init__(self) -> None:
        k = len(self.cuts)
        if len(self.segment_ms) != k + 1:
            raise PlanError(
                f"costs.segmentMs: has {len(self.segment_ms)} entries, needs {k + 1} "
                f"({k} cuts make {k + 1} segments)"
            )
        if len(self.feature_bytes) != k:
            raise PlanError(
                f"costs.featureBytes: has {len(self.feature_bytes)} entries, needs {k} (one per cut)"
            )
        if self.segment_bytes and len(self.segment_bytes) != k + 1:
            raise PlanError(
                f"costs.segmentBytes: has {len(self.segment_bytes)} entries, needs {k + 1} or none"
            )
        if self.codec_ms and len(self.codec_ms) != k:
            raise PlanError(f"costs.codecMs: has {len(self.codec_ms)} entries, needs {k} or none")
        if not all(math.isfinite(v) and v >= 0 for v in (*self.segment_ms, *self.codec_ms)):
            raise PlanError("costs.segmentMs/codecMs: every entry must be a finite number >= 0 (re-measure)")
        if any(b < 0 for b in (*self.feature_bytes, *self.segment_bytes)) or self.output_bytes < 0:
            raise PlanError("costs: byte counts (featureBytes, segmentBytes, outputBytes) must be >= 0")

    @property
    def segments(self) -> int:
        return len(self.segment_ms)

    def to_dict(self) -> dict[str, Any]:
        """The costs as chain.json keeps them (the operator re-plans with them, ``from_dict``)."""
        return {
            "cuts": list(self.cuts),
            "segmentMs": [round(v, 4) for v in self.segment_ms],
            "featureBytes": list(self.feature_bytes),
            "outputBytes": self.output_bytes,
            "segmentBytes": list(self.segment_bytes),
            "codecMs": [round(v, 4) for v in self.codec_ms],
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> ChainCosts:
        """Costs from :meth:`to_dict`; :class:`PlanError` naming the field when one is missing or malformed."""
        try:
            return cls(
                tuple(str(c) for c in doc["cuts"]),
                tuple(float(v) for v in doc["segmentMs"]),
                tuple(int(v) for v in doc["featureBytes"]),
                int(doc["outputBytes"]),
                tuple(int(v) for v in doc.get("segmentBytes") or ()),
                tuple(float(v) for v in doc.get("codecMs") or ()),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PlanError(f"chain.json plan.costs: missing or malformed ({exc}); rebuild the revision") from exc

    @classmethod
    def from_cumulative(
        cls,
        cuts: Sequence[str],
        head_ms: Sequence[float],
        full_ms: float,
        feature_bytes: Sequence[int],
        output_bytes: int,
        head_bytes: Sequence[int] = (),
        full_bytes: int = 0,
        codec_ms: Sequence[float] = (),
    ) -> ChainCosts:
        """Costs from the measured head latency (and head weight bytes) at every cut; negatives from noise clip to 0."""
        if len(head_ms) != len(cuts):
            raise PlanError(f"costs: {len(cuts)} cuts but {len(head_ms)} head latencies; measure one per cut")
        bounds = [0.0, *head_ms, full_ms]
        segment_ms = [max(0.0, b - a) for a, b in itertools.pairwise(bounds)]
        segment_bytes: list[int] = []
        if head_bytes:
            sizes = [0, *head_bytes, full_bytes]
            segment_bytes = [max(0, b - a) for a, b in itertools.pairwise(sizes)]
        return cls(
            tuple(cuts),
            tuple(segment_ms),
            tuple(feature_bytes),
            output_bytes,
            tuple(segment_bytes),
            tuple(codec_ms),
        )


@dataclass(frozen=True)
class Stage:
    """Segments ``first..last`` (inclusive) on ``device``; ``cut_in`` is None for stage 1, ``cut_out`` for the last."""

    device: str
    first: int
    last: int
    cut_in: str | None
    cut_out: str | None
    compute_ms: float
    hop_ms: float
    """The hop to the next stage (0 for the last stage)."""
    send_ms: float
    """Serialisation time of the features on the link to the next stage (the link's share of the period)."""
    weight_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "segments": [self.first, self.last],
            "cutIn": self.cut_in,
            "cutOut": self.cut_out,
            "computeMs": round(self.compute_ms, 4),
            "hopMs": round(self.hop_ms, 4),
            "sendMs": round(self.send_ms, 4),
            "weightBytes": self.weight_bytes,
        }


@dataclass(frozen=True)
class ChainPlan:
    """A chosen pipeline: its stages in order, end-to-end latency and period."""

    stages: tuple[Stage, ...]
    objective: ChainObjective

    @property
    def latency_ms(self) -> float:
        return sum(s.compute_ms + s.hop_ms for s in self.stages)

    @property
    def period_ms(self) -> float:
        return max(max(s.compute_ms, s.send_ms) for s in self.stages)

    @property
    def throughput_rps(self) -> float:
        return 1e3 / self.period_ms if self.period_ms > 0 else math.inf

    @property
    def cuts(self) -> list[str]:
        return [s.cut_out for s in self.stages[:-1] if s.cut_out is not None]

    @property
    def devices(self) -> list[str]:
        return [s.device for s in self.stages]

    def score(self) -> tuple[float, float]:
        if self.objective is ChainObjective.THROUGHPUT:
            return (self.period_ms, self.latency_ms)
        return (self.latency_ms, self.period_ms)

    def to_dict(self) -> dict[str, Any]:
        return {
            "objective": self.objective.value,
            "devices": self.devices,
            "cuts": self.cuts,
            "latencyMs": round(self.latency_ms, 4),
            "periodMs": round(self.period_ms, 4),
            "throughputRps": round(self.throughput_rps, 3),
            "stages": [s.to_dict() for s in self.stages],
        }


def _check(costs: ChainCosts, devices: Sequence[Device], stages: int | None, max_stages: int | None) -> None:
    if not devices:
        raise PlanError("devices: needs at least one device (the entry node)")
    names = [d.name for d in devices]
    if len(set(names)) != len(names):
        raise PlanError(f"devices: names must be unique, got {names}")
    if stages is not None and not 1 <= stages <= min(len(devices), costs.segments):
        raise PlanError(
            f"stages: {stages} must be between 1 and {min(len(devices), costs.segments)} "
            f"({len(devices)} devices, {costs.segments} segments); or use auto"
        )
    if max_stages is not None and max_stages < 1:
        raise PlanError(f"maxStages: {max_stages} must be >= 1")


class _Evaluator:
    """Costs of one stage and one hop (shared by the DP and the brute force, so both cost plans alike)."""

    def __init__(self, costs: ChainCosts, devices: Sequence[Device], links: ChainLinks) -> None:
        self.costs, self.devices, self.links = costs, devices, links
        self.prefix_ms = list(itertools.accumulate(costs.segment_ms, initial=0.0))
        self.prefix_bytes = (
            list(itertools.accumulate(costs.segment_bytes, initial=0)) if costs.segment_bytes else []
        )

    def weight(self, first: int, last: int) -> int:
        return self.prefix_bytes[last + 1] - self.prefix_bytes[first] if self.prefix_bytes else 0

    def fits(self, device: int, first: int, last: int) -> bool:
        limit = self.devices[device].memory_bytes
        return limit is None or not self.prefix_bytes or self.weight(first, last) <= limit

    def stage(self, device: int, first: int, last: int, next_device: int | None) -> Stage:
        c, d = self.costs, self.devices[device]
        compute = (self.prefix_ms[last + 1] - self.prefix_ms[first]) * d.slowdown + d.overhead_ms
        hop = send = 0.0
        if next_device is not None:
            cut = last  # cut index ``last`` ends segment ``last``
            compute += (c.codec_ms[cut] if c.codec_ms else 0.0) * d.slowdown
            link = self.links.get(d.name, self.devices[next_device].name)
            hop = link.transfer_ms(c.feature_bytes[cut], c.output_bytes)
            send = link.transfer_ms(c.feature_bytes[cut], 0) - link.rtt_ms
        cut_in = c.cuts[first - 1] if first > 0 else None
        cut_out = c.cuts[last] if next_device is not None else None
        return Stage(d.name, first, last, cut_in, cut_out, compute, hop, send, self.weight(first, last))

    def plan(self, devices: Sequence[int], bounds: Sequence[int], objective: ChainObjective) -> ChainPlan:
        """``bounds`` = the first segment of every stage after the first."""
        starts, ends = [0, *bounds], [*(b - 1 for b in bounds), self.costs.segments - 1]
        nexts: list[int | None] = [*devices[1:], None]
        return ChainPlan(
            tuple(self.stage(d, s, e, n) for d, s, e, n in zip(devices, starts, ends, nexts, strict=True)),
            objective,
        )


def plan_chain(
    costs: ChainCosts,
    devices: Sequence[Device],
    links: ChainLinks,
    objective: ChainObjective = ChainObjective.LATENCY,
    stages: int | None = None,
    max_stages: int | None = None,
    allowed: Sequence[frozenset[str] | None] | None = None,
) -> ChainPlan:
    """The best pipeline (exact DP over segments covered x last device x stages used).

    ``stages`` fixes the number of stages (None: any number up to ``max_stages``, i.e. ``auto``);
    ``allowed[k]`` restricts stage ``k`` to some device names (per-stage selectors). Stage 1 always
    runs on ``devices[0]`` (the entry). Raises :class:`PlanError` when no plan fits the memory limits.
    """
    _check(costs, devices, stages, max_stages)
    ev = _Evaluator(costs, devices, links)
    n_seg, n_dev = costs.segments, len(devices)
    top = stages or min(max_stages or n_dev, n_dev, n_seg)

    def ok(stage_index: int, device: int) -> bool:
        if allowed is None or stage_index >= len(allowed) or allowed[stage_index] is None:
            return True
        names = allowed[stage_index]
        return names is not None and devices[device].name in names

    # best[(b, d, s)]: the s-th stage (1-based) starts at segment b on device d. Value: the best score of
    # the closed stages 1..s-1 and that prefix (devices, stage starts). A closed stage's cost depends
    # only on its segments, its device and the next device, all fixed by the transition that closes it,
    # so the principle of optimality holds for a sum (latency) and for a max (period).
    Score = tuple[float, float]
    Entry = tuple[Score, tuple[int, ...], tuple[int, ...]]
    best: dict[tuple[int, int, int], Entry] = {}

    def add(score: Score, st: Stage) -> Score:
        lat, per = (score[1], score[0]) if objective is ChainObjective.THROUGHPUT else score
        lat, per = lat + st.compute_ms + st.hop_ms, max(per, st.compute_ms, st.send_ms)
        return (per, lat) if objective is ChainObjective.THROUGHPUT else (lat, per)

    def offer(key: tuple[int, int, int], entry: Entry) -> None:
        if key not in best or entry[0] < best[key][0]:
            best[key] = entry

    if ok(0, 0):
        best[(0, 0, 1)] = ((0.0, 0.0), (0,), ())
    finals: list[Entry] = []
    for s in range(1, top + 1):
        for b in range(n_seg):
            for d in range(n_dev):
                entry = best.get((b, d, s))
                if entry is None:
                    continue
                score, devs, bounds = entry
                if (stages is None or s == stages) and ev.fits(d, b, n_seg - 1):
                    finals.append((add(score, ev.stage(d, b, n_seg - 1, None)), devs, bounds))
                if s == top:
                    continue
                for e in range(b, n_seg - 1):
                    if not ev.fits(d, b, e):
                        break  # weights only grow with e
                    for d_next in range(d + 1, n_dev):
                        if ok(s, d_next):
                            offer(
                                (e + 1, d_next, s + 1),
                                (add(score, ev.stage(d, b, e, d_next)), (*devs, d_next), (*bounds, e + 1)),
                            )
    plans = [ev.plan(devs, bounds, objective) for _, devs, bounds in finals]
    if not plans:
        raise PlanError(_no_plan(costs, devices, stages))
    return min(plans, key=lambda p: (p.score(), len(p.stages)))


def _no_plan(costs: ChainCosts, devices: Sequence[Device], stages: int | None) -> str:
    total = sum(costs.segment_bytes)
    limits = ", ".join(f"{d.name}: {d.memory_bytes}" for d in devices)
    count = f"{stages} stages" if stages else "any number of stages"
    return (
        f"no pipeline over {len(devices)} devices with {count} fits the memory limits (model weights {total} B; "
        f"limits {limits}); add devices, raise memory limits or allow more stages"
    )


def enumerate_plans(
    costs: ChainCosts,
    devices: Sequence[Device],
    links: ChainLinks,
    objective: ChainObjective = ChainObjective.LATENCY,
    stages: int | None = None,
) -> Iterator[ChainPlan]:
    """Every feasible plan (stage 1 on the entry, devices in order, non-empty stages): for tests and small pools."""
    _check(costs, devices, stages, None)
    ev = _Evaluator(costs, devices, links)
    n_seg, n_dev = costs.segments, len(devices)
    counts = [stages] if stages else range(1, min(n_dev, n_seg) + 1)
    for s in counts:
        for rest in itertools.combinations(range(1, n_dev), s - 1):
            devs = (0, *rest)
            for bounds in itertools.combinations(range(1, n_seg), s - 1):
                starts, ends = [0, *bounds], [*(b - 1 for b in bounds), n_seg - 1]
                if all(ev.fits(d, a, e) for d, a, e in zip(devs, starts, ends, strict=True)):
                    yield ev.plan(devs, bounds, objective)


def brute_force(
    costs: ChainCosts,
    devices: Sequence[Device],
    links: ChainLinks,
    objective: ChainObjective = ChainObjective.LATENCY,
    stages: int | None = None,
) -> ChainPlan:
    """The best of :func:`enumerate_plans` (exponential; the reference the DP is tested against)."""
    plans = list(enumerate_plans(costs, devices, links, objective, stages))
    if not plans:
        raise PlanError(_no_plan(costs, devices, stages))
    return min(plans, key=lambda p: (p.score(), len(p.stages)))


def cost_plan(
    costs: ChainCosts,
    devices: Sequence[Device],
    links: ChainLinks,
    on: Sequence[str],
    starts: Sequence[int],
    objective: ChainObjective = ChainObjective.LATENCY,
) -> ChainPlan:
    """A given plan (stage devices ``on`` by name, the first segment of every stage after the first) costed."""
    index = {d.name: i for i, d in enumerate(devices)}
    missing = [n for n in on if n not in index]
    if missing or len(starts) != len(on) - 1:
        raise PlanError(f"plan: devices {missing} unknown or {len(starts)} stage starts for {len(on)} stages")
    return _Evaluator(costs, devices, links).plan([index[n] for n in on], list(starts), objective)


def single_node(costs: ChainCosts, device: Device) -> ChainPlan:
    """The whole model on one device (the baseline a pipeline must beat)."""
    return _Evaluator(costs, [device], ChainLinks()).plan((0,), (), ChainObjective.LATENCY)


def format_chain(plan: ChainPlan) -> str:
    """A small table of the stages of ``plan``."""
    lines = [f"{'stage':<6} {'device':<16} {'segments':<10} {'cut out':<24} {'compute ms':>10} {'hop ms':>8}"]
    for i, s in enumerate(plan.stages, 1):
        lines.append(
            f"{i:<6} {s.device[:16]:<16} {f'{s.first}-{s.last}':<10} {str(s.cut_out or '-')[:24]:<24} "
            f"{s.compute_ms:10.2f} {s.hop_ms:8.2f}"
        )
    lines.append(
        f"latency {plan.latency_ms:.2f} ms, period {plan.period_ms:.2f} ms "
        f"({plan.throughput_rps:.1f} req/s), objective {plan.objective.value}"
    )
    return "\n".join(lines)
