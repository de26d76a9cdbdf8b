"""Choose where to cut a model for a link, like Neurosurgeon (Kang et al., ASPLOS 2017). Pure, stdlib only.

The model is a chain of ``K`` candidate cuts, which split it into ``K + 1`` segments. Given the
edge and cloud latency of every segment, the encoded feature bytes at every cut, the bytes of
the raw input and of the returned output, and the link (bandwidth, RTT), every option is costed:

- ``edge-only``:  all segments on the edge, nothing sent;
- ``split`` at cut ``k``: segments ``0..k`` on the edge, ``k+1..K`` in the cloud, the features of
  cut ``k`` up and the output down (one round trip);
- ``cloud-only``: the raw input up, every segment in the cloud, the output down.

``transfer = RTT + 8 * (bytes_up + bytes_down) / bandwidth`` (a warm keep-alive connection: no
handshakes; TCP slow start is not modelled). The objective is either the lowest end-to-end
latency or, under a latency budget, the least edge compute (battery, shared edge CPU) among the
options that meet the budget. Segment latencies may be slightly negative when they come from
differences of noisy measurements; only the cumulative head and tail costs must be >= 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any


class PlanError(ValueError):
    """Inconsistent planner inputs; the message names the field and the fix."""


class OptionKind(StrEnum):
    EDGE_ONLY = "edge-only"
    SPLIT = "split"
    CLOUD_ONLY = "cloud-only"


class Objective(StrEnum):
    LATENCY = "latency"
    """Lowest end-to-end latency."""
    EDGE_COMPUTE = "edge-compute"
    """Least edge compute among the options within the latency budget."""


@dataclass(frozen=True)
class Link:
    """The edge-cloud link: bandwidth in Mbit/s (10**6 bit/s) and round-trip time in ms."""

    bandwidth_mbit_s: float
    rtt_ms: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.bandwidth_mbit_s) and self.bandwidth_mbit_s > 0):
            raise PlanError(f"link.bandwidthMbitS: {self.bandwidth_mbit_s} must be a positive number, e.g. 10")
        if not (math.isfinite(self.rtt_ms) and self.rtt_ms >= 0):
            raise PlanError(f"link.rttMs: {self.rtt_ms} must be >= 0, e.g. 20")

    def transfer_ms(self, bytes_up: int, bytes_down: int) -> float:
        """One request/response round trip carrying ``bytes_up`` and ``bytes_down``."""
        return self.rtt_ms + 8.0 * (bytes_up + bytes_down) / (self.bandwidth_mbit_s * 1e6) * 1e3


@dataclass(frozen=True)
class SplitCosts:
    """Per-segment latencies and per-cut sizes of one model (see the module docstring)."""

    cuts: Sequence[str]
    edge_segment_ms: Sequence[float]
    cloud_segment_ms: Sequence[float]
    feature_bytes: Sequence[int]
    input_bytes: int
    output_bytes: int
    codec_ms: Sequence[float] = field(default_factory=tuple)
    """Optional per-cut encode (edge) + decode (cloud) time of the features."""
    input_codec_ms: float = 0.0

    def __post_init__(self) -> None:
        k = len(self.cuts)
        for name, values, want in (("edgeSegmentMs", self.edge_segment_ms, k + 1),
                                   ("cloudSegmentMs", self.cloud_segment_ms, k + 1),
                                   ("featureBytes", self.feature_bytes, k)):
            if len(values) != want:
                raise PlanError(f"costs.{name}: has {len(values)} entries, needs {want} "
                                f"({k} cuts make {k + 1} segments)")
            if not all(math.isfinite(v) for v in values):
                raise PlanError(f"costs.{name}: every entry must be a finite number")
        if self.codec_ms and len(self.codec_ms) != k:
            raise PlanError(f"costs.codecMs: has {len(self.codec_ms)} entries, needs {k} (one per cut) or none")
        if any(b < 0 for b in self.feature_bytes) or self.input_bytes < 0 or self.output_bytes < 0:
            raise PlanError("costs: byte counts (featureBytes, inputBytes, outputBytes) must be >= 0")
        tolerance = 1e-6
        if any(v < -tolerance for v in self.head_ms()) or any(v < -tolerance for v in self.tail_ms()):
            raise PlanError("costs: the cumulative head/tail latency at some cut is negative; "
                            "check the segment latencies (re-measure with more runs)")

    def head_ms(self) -> list[float]:
        """Edge compute when cutting at each cut (prefix sums of the edge segments)."""
        out, acc = [], 0.0
        for value in self.edge_segment_ms[:-1]:
            acc += value
            out.append(acc)
        return out

    def tail_ms(self) -> list[float]:
        """Cloud compute when cutting at each cut (suffix sums of the cloud segments)."""
        out, acc = [], 0.0
        for value in reversed(self.cloud_segment_ms[1:]):
            acc += value
            out.append(acc)
        return out[::-1]

    @classmethod
    def from_cumulative(cls, cuts: Sequence[str], edge_full_ms: float, edge_head_ms: Sequence[float],
                        cloud_full_ms: float, cloud_tail_ms: Sequence[float], feature_bytes: Sequence[int],
                        input_bytes: int, output_bytes: int, codec_ms: Sequence[float] = (),
                        input_codec_ms: float = 0.0) -> SplitCosts:
        """Costs from measured head latency (edge) and tail latency (cloud) at each cut."""
        if len(edge_head_ms) != len(cuts) or len(cloud_tail_ms) != len(cuts):
            raise PlanError(f"costs: {len(cuts)} cuts but {len(edge_head_ms)} head and {len(cloud_tail_ms)} "
                            f"tail latencies; measure one of each per cut")
        edge = [b - a for a, b in zip([0.0, *edge_head_ms], [*edge_head_ms, edge_full_ms], strict=True)]
        cloud = [a - b for a, b in zip([cloud_full_ms, *cloud_tail_ms], [*cloud_tail_ms, 0.0], strict=True)]
        return cls(tuple(cuts), tuple(edge), tuple(cloud), tuple(feature_bytes), input_bytes, output_bytes,
                   tuple(codec_ms), input_codec_ms)


@dataclass(frozen=True)
class Option:
    """One way to run the model and its cost on a link."""

    kind: OptionKind
    cut: str | None
    cut_index: int | None
    edge_ms: float
    transfer_ms: float
    cloud_ms: float
    codec_ms: float
    bytes_up: int
    bytes_down: int

    @property
    def total_ms(self) -> float:
        return self.edge_ms + self.codec_ms + self.transfer_ms + self.cloud_ms

    @property
    def label(self) -> str:
        return f"cut:{self.cut}" if self.kind is OptionKind.SPLIT else self.kind.value

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Option:
        """The inverse of :meth:`to_dict` (as written into split.json); KeyError/ValueError when malformed."""
        return cls(OptionKind(data["kind"]), data.get("cut"), data.get("cutIndex"), float(data["edgeMs"]),
                   float(data["transferMs"]), float(data["cloudMs"]), float(data["codecMs"]), int(data["bytesUp"]),
                   int(data["bytesDown"]))

    def to_dict(self) -> dict[str, Any]:
        return {"option": self.label, "kind": self.kind.value, "cut": self.cut, "cutIndex": self.cut_index,
                "edgeMs": self.edge_ms, "codecMs": self.codec_ms, "transferMs": self.transfer_ms,
                "cloudMs": self.cloud_ms, "totalMs": self.total_ms, "bytesUp": self.bytes_up,
                "bytesDown": self.bytes_down}


@dataclass(frozen=True)
class Plan:
    """The chosen option, every costed option, and whether the latency budget (if any) is met."""

    chosen: Option
    options: tuple[Option, ...]
    objective: Objective
    link: Link
    budget_ms: float | None = None
    budget_met: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"chosen": self.chosen.to_dict(), "objective": self.objective.value,
                "link": {"bandwidthMbitS": self.link.bandwidth_mbit_s, "rttMs": self.link.rtt_ms},
                "budgetMs": self.budget_ms, "budgetMet": self.budget_met,
                "options": [o.to_dict() for o in self.options]}


def cost_options(costs: SplitCosts, link: Link, edge_only: bool = True, cloud_only: bool = True) -> list[Option]:
    """Every allowed option (edge-only, each cut in order, cloud-only) with its cost on ``link``."""
    options: list[Option] = []
    edge_total = sum(costs.edge_segment_ms)
    cloud_total = sum(costs.cloud_segment_ms)
    if edge_only:
        options.append(Option(OptionKind.EDGE_ONLY, None, None, edge_total, 0.0, 0.0, 0.0, 0, 0))
    codec = list(costs.codec_ms) or [0.0] * len(costs.cuts)
    for k, (cut, head, tail) in enumerate(zip(costs.cuts, costs.head_ms(), costs.tail_ms(), strict=True)):
        up = costs.feature_bytes[k]
        options.append(Option(OptionKind.SPLIT, cut, k, head, link.transfer_ms(up, costs.output_bytes), tail,
                              codec[k], up, costs.output_bytes))
    if cloud_only:
        options.append(Option(OptionKind.CLOUD_ONLY, None, None, 0.0,
                              link.transfer_ms(costs.input_bytes, costs.output_bytes), cloud_total,
                              costs.input_codec_ms, costs.input_bytes, costs.output_bytes))
    if not options:
        raise PlanError("nothing to choose from: the model has no candidate cut and both edge-only and "
                        "cloud-only are disabled")
    return options


def choose_cut(costs: SplitCosts, link: Link, objective: Objective = Objective.LATENCY,
               budget_ms: float | None = None, edge_only: bool = True, cloud_only: bool = True) -> Plan:
    """The best option for ``link``: lowest latency, or least edge compute within ``budget_ms``.

    With :attr:`Objective.EDGE_COMPUTE` and no option within the budget, the lowest-latency option
    is returned with ``budget_met=False`` (the caller decides whether that is acceptable).
    Ties go to the option nearer the edge (less data leaves the device).
    """
    return pick(cost_options(costs, link, edge_only, cloud_only), link, objective, budget_ms)


def pick(options: Sequence[Option], link: Link, objective: Objective = Objective.LATENCY,
         budget_ms: float | None = None) -> Plan:
    """The choice among already costed ``options`` (in edge-to-cloud order), as :func:`choose_cut` makes it."""
    if not options:
        raise PlanError("nothing to choose from: no option was costed")
    fastest = min(options, key=lambda o: o.total_ms)
    if objective is Objective.LATENCY:
        met = budget_ms is None or fastest.total_ms <= budget_ms
        return Plan(fastest, tuple(options), objective, link, budget_ms, met)
    if budget_ms is None or not (math.isfinite(budget_ms) and budget_ms > 0):
        raise PlanError(f"budgetMs: {budget_ms} must be a positive number of milliseconds with objective "
                        f"{Objective.EDGE_COMPUTE.value}")
    within = [o for o in options if o.total_ms <= budget_ms]
    if not within:
        return Plan(fastest, tuple(options), objective, link, budget_ms, False)
    chosen = min(within, key=lambda o: (o.edge_ms + o.codec_ms, o.total_ms))
    return Plan(chosen, tuple(options), objective, link, budget_ms, True)


def on_link(option: Option, link: Link) -> Option:
    """``option`` costed on another link: the same compute and bytes, the transfer recomputed."""
    if option.kind is OptionKind.EDGE_ONLY:
        return option
    return replace(option, transfer_ms=link.transfer_ms(option.bytes_up, option.bytes_down))


def format_plan(plan: Plan) -> str:
    """A small fixed-width table of every option, the chosen one marked with ``*``."""
    lines = [f"{'':1} {'option':<28} {'edge ms':>9} {'codec ms':>9} {'xfer ms':>9} {'cloud ms':>9} "
             f"{'total ms':>9} {'bytes up':>10}"]
    for o in plan.options:
        mark = "*" if o == plan.chosen else ""
        lines.append(f"{mark:1} {o.label[:28]:<28} {o.edge_ms:9.2f} {o.codec_ms:9.2f} {o.transfer_ms:9.2f} "
                     f"{o.cloud_ms:9.2f} {o.total_ms:9.2f} {o.bytes_up:10d}")
    return "\n".join(lines)
