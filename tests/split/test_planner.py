"""Neurosurgeon-style cut choice: bandwidth-dependent, on synthetic and on measured profiles."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgemodel.split.planner import (
    Link,
    Objective,
    OptionKind,
    PlanError,
    SplitCosts,
    choose_cut,
    cost_options,
    format_plan,
)
from edgemodel.split.profile import planner_costs, profile_split
from tests.split import models

# A VGG-like shape (the Neurosurgeon paper's motivating case): features first grow, then shrink
# below the input size deep in the network; the edge is 5x slower than the cloud.
CUTS = ("conv1", "pool1", "conv2", "pool2", "fc1")
CLOUD_SEG = (0.0, 4.0, 1.0, 4.0, 1.0, 10.0)  # ms; segment 0 is before the first cut (empty here)
EDGE_SEG = tuple(5 * v for v in CLOUD_SEG)
FEATURES = (3_200_000, 800_000, 1_600_000, 200_000, 4_000)
INPUT = 600_000
OUTPUT = 4_000


def synthetic() -> SplitCosts:
    return SplitCosts(CUTS, EDGE_SEG, CLOUD_SEG, FEATURES, INPUT, OUTPUT)


def test_low_bandwidth_keeps_the_work_on_the_edge() -> None:
    plan = choose_cut(synthetic(), Link(bandwidth_mbit_s=0.5, rtt_ms=20))
    assert plan.chosen.kind is OptionKind.EDGE_ONLY
    assert plan.chosen.total_ms == pytest.approx(5 * sum(CLOUD_SEG))


def test_medium_bandwidth_cuts_where_features_are_small() -> None:
    plan = choose_cut(synthetic(), Link(bandwidth_mbit_s=100, rtt_ms=20))
    assert plan.chosen.label == "cut:fc1"
    # edge runs everything up to fc1, the cloud only the last segment
    assert plan.chosen.edge_ms == pytest.approx(5 * 10.0)
    assert plan.chosen.cloud_ms == pytest.approx(10.0)
    assert plan.chosen.transfer_ms == pytest.approx(20 + 8 * (4_000 + 4_000) / 100e6 * 1e3)


def test_high_bandwidth_sends_the_raw_input_to_the_cloud() -> None:
    plan = choose_cut(synthetic(), Link(bandwidth_mbit_s=10_000, rtt_ms=1))
    assert plan.chosen.kind is OptionKind.CLOUD_ONLY
    assert plan.chosen.bytes_up == INPUT
    assert len(plan.options) == len(CUTS) + 2
    table = format_plan(plan)
    assert "* cloud-only" in table
    assert table.count("*") == 1


def test_rtt_alone_can_make_edge_only_win() -> None:
    fast_link = choose_cut(synthetic(), Link(bandwidth_mbit_s=10_000, rtt_ms=1))
    far_cloud = choose_cut(synthetic(), Link(bandwidth_mbit_s=10_000, rtt_ms=200))
    assert fast_link.chosen.kind is OptionKind.CLOUD_ONLY
    assert far_cloud.chosen.kind is OptionKind.EDGE_ONLY


def test_edge_compute_objective_takes_the_least_edge_work_within_the_budget() -> None:
    costs = synthetic()
    link = Link(bandwidth_mbit_s=100, rtt_ms=20)
    fastest = choose_cut(costs, link)
    assert fastest.chosen.label == "cut:fc1"  # 50 + 20.6 + 10 = 80.6 ms
    loose = choose_cut(costs, link, Objective.EDGE_COMPUTE, budget_ms=90)
    assert loose.budget_met
    assert loose.chosen.kind is OptionKind.CLOUD_ONLY  # 0 ms on the edge, 20 + 48.3 + 20 = 88.3 ms <= 90 ms
    assert loose.chosen.edge_ms == 0
    assert loose.chosen.total_ms > fastest.chosen.total_ms
    tight = choose_cut(costs, link, Objective.EDGE_COMPUTE, budget_ms=85)
    assert tight.budget_met
    assert tight.chosen == fastest.chosen  # only the fastest option fits
    impossible = choose_cut(costs, link, Objective.EDGE_COMPUTE, budget_ms=1)
    assert not impossible.budget_met
    assert impossible.chosen == fastest.chosen
    with pytest.raises(PlanError, match="budgetMs"):
        choose_cut(costs, link, Objective.EDGE_COMPUTE)


def test_options_can_be_restricted() -> None:
    link = Link(0.5, 20)
    plan = choose_cut(synthetic(), link, edge_only=False)
    assert plan.chosen.kind is OptionKind.SPLIT
    assert {o.kind for o in cost_options(synthetic(), link, edge_only=False, cloud_only=False)} == {OptionKind.SPLIT}
    empty = SplitCosts((), (1.0,), (1.0,), (), 10, 10)
    with pytest.raises(PlanError, match="nothing to choose from"):
        choose_cut(empty, link, edge_only=False, cloud_only=False)


def test_cumulative_measurements_become_exact_segments() -> None:
    costs = SplitCosts.from_cumulative(["a", "b"], edge_full_ms=10.0, edge_head_ms=[2.0, 7.0], cloud_full_ms=4.0,
                                       cloud_tail_ms=[3.5, 1.0], feature_bytes=[100, 10], input_bytes=50,
                                       output_bytes=8)
    assert costs.head_ms() == pytest.approx([2.0, 7.0])
    assert costs.tail_ms() == pytest.approx([3.5, 1.0])
    assert sum(costs.edge_segment_ms) == pytest.approx(10.0)
    assert sum(costs.cloud_segment_ms) == pytest.approx(4.0)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"edge_segment_ms": (1.0,)}, "edgeSegmentMs: has 1 entries, needs 6"),
    ({"feature_bytes": (1, 2)}, "featureBytes: has 2 entries, needs 5"),
    ({"cloud_segment_ms": (float("nan"),) * 6}, "cloudSegmentMs: every entry must be a finite number"),
    ({"input_bytes": -1}, "byte counts"),
    ({"edge_segment_ms": (-5.0, 1.0, 1.0, 1.0, 1.0, 1.0)}, "cumulative head/tail latency"),
    ({"codec_ms": (1.0,)}, "codecMs: has 1 entries, needs 5"),
])
def test_inconsistent_costs_name_the_field(kwargs: dict[str, object], message: str) -> None:
    base: dict[str, object] = {"cuts": CUTS, "edge_segment_ms": EDGE_SEG, "cloud_segment_ms": CLOUD_SEG,
                               "feature_bytes": FEATURES, "input_bytes": INPUT, "output_bytes": OUTPUT}
    with pytest.raises(PlanError, match=message):
        SplitCosts(**{**base, **kwargs})  # type: ignore[arg-type]


def test_bad_links_are_refused() -> None:
    with pytest.raises(PlanError, match=r"link.bandwidthMbitS: 0 must be a positive number"):
        Link(0, 20)
    with pytest.raises(PlanError, match=r"link.rttMs: -1 must be >= 0"):
        Link(10, -1)


@settings(max_examples=80, deadline=None)
@given(
    segments=st.lists(st.tuples(st.floats(0, 50), st.floats(0, 50)), min_size=2, max_size=8),
    feature_bytes=st.lists(st.integers(0, 5_000_000), min_size=7, max_size=7),
    input_bytes=st.integers(0, 5_000_000),
    rtt=st.floats(0, 100),
)
def test_more_bandwidth_never_sends_less(segments: list[tuple[float, float]], feature_bytes: list[int],
                                         input_bytes: int, rtt: float) -> None:
    """Total = a + bytes/bandwidth per option: the chosen option's bytes never drop as bandwidth grows."""
    k = len(segments) - 1
    costs = SplitCosts([f"c{i}" for i in range(k)], [s[0] for s in segments], [s[1] for s in segments],
                       feature_bytes[:k], input_bytes, 1000)
    sent = [choose_cut(costs, Link(bw, rtt)).chosen.bytes_up for bw in (0.1, 1, 10, 100, 1000, 10_000, 1e6)]
    assert sent == sorted(sent)


def test_measured_profile_drives_a_bandwidth_dependent_choice() -> None:
    """Measured head/tail latencies of a real (tiny) model, with the edge predicted 20x slower than the cloud."""
    model = models.shrinking_model()
    samples = models.feeds(model, n=2)
    cloud = profile_split(model, samples, threads=1, runs=5, warmup=1, wire_formats=("fp32", "int8"))
    edge = profile_split(model, samples, threads=1, runs=5, warmup=1, wire_formats=("fp32", "int8"))
    edge.full_ms *= 20
    for cut in edge.cuts:
        cut.head_ms *= 20
    costs = planner_costs(edge, cloud, wire="int8")
    assert costs.cuts[:2] == ("s", "sr")
    assert costs.input_bytes > 15 * costs.feature_bytes[1]  # the strided conv shrinks 3x96x96 to 3x24x24
    slow = choose_cut(costs, Link(0.01, 20))      # 110 KB of input would take ~90 s
    fast = choose_cut(costs, Link(1e6, 0))        # a free link: cloud only (the edge is 20x slower)
    middle = choose_cut(costs, Link(10, 1))       # raw input: ~90 ms; features at the first cut: ~2.5 ms
    assert slow.chosen.kind is OptionKind.EDGE_ONLY
    assert fast.chosen.kind is OptionKind.CLOUD_ONLY
    assert middle.chosen.kind is OptionKind.SPLIT, format_plan(middle)
    assert middle.chosen.bytes_up < costs.input_bytes / 10
    assert slow.chosen.bytes_up <= middle.chosen.bytes_up <= fast.chosen.bytes_up
