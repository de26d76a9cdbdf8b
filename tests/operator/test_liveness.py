"""Node liveness from the agents' Leases: stale after the timeout, fresh again on renewal, without a kopf
handler per renewal; and against the emulator, one list + watch that follows renewals."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from edgemodel.api import EdgeModelSpec
from edgemodel_dev.cluster import LocalCluster
from edgemodel_dev.polling import wait_until_async
from edgemodel_operator.fleet import Fleet
from edgemodel_operator.kube import Credentials, operator_client
from edgemodel_operator.liveness import Liveness, renewed_at
from edgemodel_operator.metrics import OperatorMetrics
from edgemodel_operator.scheduling import select

T0 = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def lease(name: str, when: float) -> dict[str, Any]:
    stamp = dt.datetime.fromtimestamp(when, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {"metadata": {"name": name, "labels": {"edgemodel.io/heartbeat": "true"}},
            "spec": {"holderIdentity": name, "renewTime": stamp, "leaseDurationSeconds": 40}}


def test_a_node_turns_stale_after_the_timeout_and_fresh_on_its_next_renewal() -> None:
    clock, flips = Clock(), []
    metrics = OperatorMetrics()
    live = Liveness(40.0, on_flip=lambda names: flips.append(sorted(names)), metrics=metrics, clock=clock)
    live.replace([lease("a", T0), lease("b", T0)])
    assert flips == []
    assert live.sweep() == set()
    clock.now = T0 + 39
    live.observe(*renewed_at(lease("a", T0 + 39)))
    clock.now = T0 + 40.5
    live.observe(*renewed_at(lease("a", T0 + 40.5)))
    assert live.sweep() == {"b"}, "b renewed nothing for 40 s"
    assert flips == [["b"]]
    assert live.stale == {"b"}
    assert live.sweep() == set(), "marked once, not on every sweep"
    assert flips == [["b"]]
    assert metrics.agents.labels(liveness="stale")._value.get() == 1
    assert metrics.agents.labels(liveness="fresh")._value.get() == 1
    clock.now = T0 + 50
    live.observe(*renewed_at(lease("b", T0 + 50)))
    assert live.stale == set(), "a returning node flips back at once"
    assert flips == [["b"], ["b"]]
    assert metrics.lease_lag._sum.get() == 0.0, "renewals seen the moment they were made"
    live.replace([lease("a", T0 + 50)])
    assert live.last_seen("b") is None, "a deleted Lease is forgotten"


def test_late_renewals_are_judged_by_the_streams_clock_and_silence_by_the_wall_clock() -> None:
    """An API server (or operator) that falls behind delivers every renewal late: nobody is stale while the
    others keep renewing after it; when no renewal arrives at all for the timeout, the wall clock decides."""
    clock = Clock()
    live = Liveness(40.0, clock=clock)
    live.replace([lease("a", T0), lease("b", T0)])
    for second in range(1, 120):  # renewals of a arrive 60 s late; b stopped at T0
        clock.now = T0 + 60 + second
        live.observe(*renewed_at(lease("a", T0 + second)))
        live.sweep()
        if second <= 40:
            assert live.stale == set(), f"nobody is stale at stream time T0+{second}"
    assert live.stale == {"b"}, "b is stale once a renewed for 40 s (stream time) after it"
    assert live.now() == dt.datetime.fromtimestamp(T0 + 119, dt.UTC)
    clock.now += 40.5  # silence: no renewal of anyone arrives
    assert live.sweep() == {"a"}
    assert live.now() == dt.datetime.fromtimestamp(clock.now, dt.UTC)


def test_the_fleet_counts_the_lease_over_an_old_status_heartbeat() -> None:
    """A node that writes no status for minutes stays fresh while it renews its Lease; it is stale (and keeps
    its models) when the Lease stops."""
    old = dt.datetime.fromtimestamp(T0 - 3600, dt.UTC)
    body = {"metadata": {"name": "n1", "labels": {"site": "a"}, "generation": 2},
            "spec": {"models": [{"name": "m", "namespace": "ns", "revision": 1}]},
            "status": {"heartbeatTime": old.strftime("%Y-%m-%dT%H:%M:%SZ"),
                       "capabilities": {"hardwareClass": "cpu", "arch": "amd64"}}}
    clock = Clock()
    fleet, live = Fleet(), Liveness(40.0, clock=clock)
    fleet.load([body])
    fleet.liveness = live
    spec = EdgeModelSpec.model_validate({"source": {"uri": "file:///m.pt", "format": "TorchScript"},
                                         "inputs": [{"name": "x", "dtype": "float32", "shape": [1, 4]}]})
    now = dt.datetime.fromtimestamp(T0, dt.UTC)

    def selection() -> tuple[list[str], list[str]]:
        chosen = select(spec, "ns", "m", fleet.snapshot(), now, 40.0)
        return [a.name for a in chosen.fresh], [a.name for a in chosen.stale]

    assert selection() == ([], ["n1"]), "no Lease: only the hour-old status heartbeat"
    live.observe(*renewed_at(lease("n1", T0 - 5)))
    assert selection() == (["n1"], [])
    now += dt.timedelta(seconds=60)
    assert selection() == ([], ["n1"])
    assert fleet.get("n1").assigned_revision("ns", "m") == 1  # type: ignore[union-attr]


async def test_liveness_follows_renewals_through_one_watch(kube_cluster: LocalCluster) -> None:
    cluster = kube_cluster
    client = operator_client(Credentials(server=cluster.url, insecure=True, token=cluster.admin_token), OperatorMetrics())
    flips: list[set[str]] = []
    live = Liveness(1.5, on_flip=flips.append)
    cluster.create({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", **lease("other", T0),
                    "metadata": {"name": "not-an-agent", "namespace": "default"}})
    now = dt.datetime.now(dt.UTC).timestamp()
    for name in ("n1", "n2"):
        cluster.create({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", **lease(name, now)}
                       | {"metadata": {**lease(name, now)["metadata"], "namespace": "default"}})
    task = asyncio.create_task(live.run(client, "default", sweep_seconds=0.2))
    try:
        await wait_until_async("the first list", live.synced.wait, 10)
        assert set(live.renewed) == {"n1", "n2"}, "only Leases labelled edgemodel.io/heartbeat=true"

        async def renew_n1() -> None:
            while True:
                obj = await asyncio.to_thread(cluster.get, "coordination.k8s.io/v1", "Lease", "n1", "default")
                obj["spec"]["renewTime"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
                await asyncio.to_thread(cluster.apply, obj)
                await asyncio.sleep(0.3)

        renewer = asyncio.create_task(renew_n1())
        try:
            await wait_until_async("n2 marked stale", lambda: live.stale == {"n2"}, 10)
            assert {"n2"} in flips
            assert live.events > 3, "renewals of n1 arrive through the watch"
        finally:
            renewer.cancel()
        await wait_until_async("n1 marked stale once it stops", lambda: live.stale == {"n1", "n2"}, 10)
        obj = await asyncio.to_thread(cluster.get, "coordination.k8s.io/v1", "Lease", "n2", "default")
        obj["spec"]["renewTime"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        await asyncio.to_thread(cluster.apply, obj)
        await wait_until_async("n2 fresh again", lambda: "n2" not in live.stale, 10)
        await asyncio.to_thread(cluster.delete, "coordination.k8s.io/v1", "Lease", "n1", "default")
        await wait_until_async("a deleted Lease forgotten", lambda: "n1" not in live.renewed, 10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.close()
