"""The pipeline planner: its DP against brute force on random small instances, and hand-checked cases."""

from __future__ import annotations

import random

import pytest

from edgemodel.split.chain_planner import (
    ChainCosts,
    ChainLinks,
    ChainObjective,
    Device,
    brute_force,
    enumerate_plans,
    format_chain,
    plan_chain,
    single_node,
)
from edgemodel.split.planner import Link, PlanError


def random_instance(rng: random.Random) -> tuple[ChainCosts, list[Device], ChainLinks]:
    k = rng.randint(0, 6)
    cuts = [f"c{i}" for i in range(k)]
    costs = ChainCosts(
        cuts,
        [rng.uniform(0, 20) for _ in range(k + 1)],
        [rng.randint(100, 2_000_000) for _ in range(k)],
        rng.randint(0, 4000),
        [rng.randint(0, 1000) for _ in range(k + 1)],
        [rng.uniform(0, 1) for _ in range(k)] if rng.random() < 0.5 else [],
    )
    n = rng.randint(1, 4)
    memory = [rng.choice([None, rng.randint(500, 4000)]) for _ in range(n)]
    devices = [Device(f"d{i}", rng.uniform(0.5, 8), memory[i], rng.choice([0.0, rng.uniform(0, 10)])) for i in range(n)]
    between = {
        (f"d{i}", f"d{j}"): Link(rng.choice([1, 10, 100, 1000]), rng.uniform(0, 20))
        for i in range(n)
        for j in range(i + 1, n)
        if rng.random() < 0.7
    }
    return costs, devices, ChainLinks(Link(100, 2), between)


@pytest.mark.parametrize("objective", list(ChainObjective))
def test_dp_matches_brute_force_on_random_graphs(objective: ChainObjective) -> None:
    rng = random.Random(20)
    checked = infeasible = 0
    for _ in range(400):
        costs, devices, links = random_instance(rng)
        stages = rng.choice([None, None, 1, 2, 3])
        if stages is not None and stages > min(len(devices), costs.segments):
            with pytest.raises(PlanError, match="stages"):
                plan_chain(costs, devices, links, objective, stages)
            continue
        try:
            want = brute_force(costs, devices, links, objective, stages)
        except PlanError:
            with pytest.raises(PlanError, match="memory limits"):
                plan_chain(costs, devices, links, objective, stages)
            infeasible += 1
            continue
        got = plan_chain(costs, devices, links, objective, stages)
        assert got.score()[0] == pytest.approx(want.score()[0], rel=1e-9, abs=1e-9)
        if stages is not None:
            assert len(got.stages) == stages
        # the plan the DP returns is valid and costed exactly like the brute force costs it
        assert got.stages[0].device == devices[0].name
        assert [s.first for s in got.stages] == [0, *(s.last + 1 for s in got.stages[:-1])]
        assert got.stages[-1].last == costs.segments - 1
        assert any(p.stages == got.stages for p in enumerate_plans(costs, devices, links, objective, stages))
        checked += 1
    assert checked > 250
    assert infeasible > 5


def test_latency_is_sum_and_throughput_is_bottleneck() -> None:
    # 3 equal segments of 10 ms, three equal devices, a fast link: throughput wants 3 stages, latency 1
    costs = ChainCosts(["a", "b"], [10, 10, 10], [1000, 1000], 40)
    devices = [Device("e0"), Device("e1"), Device("e2")]
    links = ChainLinks(Link(1000, 1))
    lat = plan_chain(costs, devices, links, ChainObjective.LATENCY)
    assert lat.devices == ["e0"]
    assert lat.latency_ms == pytest.approx(30)
    thr = plan_chain(costs, devices, links, ChainObjective.THROUGHPUT)
    assert thr.devices == ["e0", "e1", "e2"]
    assert thr.period_ms == pytest.approx(10)
    assert thr.latency_ms == pytest.approx(30 + 2 * (1 + 8 * 1040 / 1e9 * 1e3))
    # 4 segments over 3 devices: the period is 20 with 2 or 3 stages; the tie goes to the lower latency
    four = plan_chain(
        ChainCosts(["a", "b", "c"], [10, 10, 10, 10], [1000] * 3, 40),
        devices,
        links,
        ChainObjective.THROUGHPUT,
    )
    assert four.period_ms == pytest.approx(20)
    assert len(four.stages) == 2
    assert "period 10.00 ms" in format_chain(thr)


def test_slow_entry_offloads_to_fast_devices_for_latency() -> None:
    costs = ChainCosts(["a", "b"], [1, 30, 30], [50_000, 1_000], 40)
    devices = [Device("weak", 4.0), Device("mid", 2.0), Device("fast", 1.0)]
    plan = plan_chain(costs, devices, ChainLinks(Link(100, 2)), ChainObjective.LATENCY)
    assert plan.devices == ["weak", "fast"]  # skip the middle device: one hop is cheaper than two
    assert plan.cuts == ["a"]
    assert plan.latency_ms < single_node(costs, devices[0]).latency_ms


def test_memory_limits_force_more_stages_and_name_the_fix() -> None:
    costs = ChainCosts(["a", "b"], [5, 5, 5], [100, 100], 4, segment_bytes=[600, 600, 600])
    devices = [
        Device("e0", memory_bytes=1000),
        Device("e1", memory_bytes=1300),
        Device("e2", memory_bytes=700),
    ]
    plan = plan_chain(costs, devices, ChainLinks(Link(100, 1)))
    assert all(s.weight_bytes <= 1300 for s in plan.stages)
    assert len(plan.stages) >= 2
    with pytest.raises(PlanError, match="memory limits.*add devices"):
        plan_chain(costs, devices[:1], ChainLinks(Link(100, 1)))


def test_per_stage_selectors_restrict_devices() -> None:
    costs = ChainCosts(["a"], [10, 10], [100], 4)
    devices = [Device("e0"), Device("e1"), Device("e2", 0.5)]
    plan = plan_chain(
        costs,
        devices,
        ChainLinks(Link(1000, 0)),
        ChainObjective.THROUGHPUT,
        stages=2,
        allowed=[None, frozenset({"e1"})],
    )
    assert plan.devices == ["e0", "e1"]


def test_bad_inputs_name_the_field() -> None:
    with pytest.raises(PlanError, match="costs.segmentMs"):
        ChainCosts(["a"], [1.0], [1], 0)
    with pytest.raises(PlanError, match="slowdown"):
        Device("x", 0)
    with pytest.raises(PlanError, match="links: no link between"):
        plan_chain(ChainCosts(["a"], [1, 100], [1], 0), [Device("a"), Device("b")], ChainLinks())
    with pytest.raises(PlanError, match="devices"):
        plan_chain(ChainCosts([], [1], [], 0), [], ChainLinks())


def test_from_cumulative_reproduces_measured_heads() -> None:
    costs = ChainCosts.from_cumulative(
        ["a", "b"], [3.0, 7.0], 10.0, [10, 20], 4, head_bytes=[100, 300], full_bytes=400
    )
    assert list(costs.segment_ms) == [3.0, 4.0, 3.0]
    assert list(costs.segment_bytes) == [100, 200, 100]


def test_a_per_request_overhead_counts_once_per_stage_and_can_make_more_stages_lose() -> None:
    # 3 equal segments on 3 equal devices with 12 ms of serving work per request each: throughput
    # still splits 3 ways (period 10 + 12 = 22 against 30 + 12 = 42 on one), latency keeps one stage
    # (every extra stage pays the 12 ms again, plus its hop).
    costs = ChainCosts(["a", "b"], [10, 10, 10], [1000, 1000], 40)
    links = ChainLinks(Link(1000, 1))
    plain = [Device("e0"), Device("e1"), Device("e2")]
    busy = [Device(d.name, 1.0, None, 12.0) for d in plain]
    thr = plan_chain(costs, busy, links, ChainObjective.THROUGHPUT)
    assert thr.period_ms == pytest.approx(22)
    lat = plan_chain(costs, busy, links, ChainObjective.LATENCY)
    assert lat.devices == ["e0"]
    assert lat.latency_ms == pytest.approx(42)
    # an entry whose serving work alone is the bottleneck: more stages cannot lower the period below it
    heavy_entry = [Device("e0", 1.0, None, 25.0), *plain[1:]]
    assert plan_chain(costs, heavy_entry, links, ChainObjective.THROUGHPUT).period_ms >= 25
    assert plan_chain(costs, plain, links, ChainObjective.THROUGHPUT).period_ms == pytest.approx(10)
    with pytest.raises(PlanError, match="overheadMs"):
        Device("x", 1.0, None, -1.0)
