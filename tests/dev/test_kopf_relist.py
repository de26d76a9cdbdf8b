"""kopf's relist path, exercised: after an API outage during which its kind's watch history moved on,
kopf's watch from its last resourceVersion gets 410 Expired, and kopf lists again and handles
everything created meanwhile."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kopf.testing import KopfRunner

from edgemodel_dev.cluster import LocalCluster
from tests.dev.test_kopf_flow import CRD, OPERATOR

COUNT = 6


def created(cluster: LocalCluster, name: str) -> Any:
    obj = cluster.get("kopf.dev/v1", "kopfexamples", name, "default") or {}
    return obj.get("status", {}).get("create_fn")


def example(name: str) -> dict[str, Any]:
    return {"apiVersion": "kopf.dev/v1", "kind": "KopfExample",
            "metadata": {"name": name, "namespace": "default"}, "spec": {"duration": "1m", "field": "x"}}


def test_kopf_relists_after_its_watch_expired(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with LocalCluster(tmp_path / "kube", history_size=COUNT - 2, bookmark_interval=1.0) as cluster:
        monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
        cluster.kubectl("apply", "-f", "-", stdin=CRD)
        args = ["run", "--all-namespaces", "--standalone", "--verbose", str(OPERATOR)]
        with KopfRunner(args, timeout=90) as runner:
            cluster.create(example("before"))
            cluster.wait_for(lambda: created(cluster, "before"), timeout=30, what="kopf to handle the first one")
            rt = cluster.resource("kopf.dev/v1", "KopfExample")
            cluster.stop()  # outage: kopf's watch drops and retries with its last resourceVersion
            # more changes of the kind than its history keeps, in one step on the control plane's loop so
            # the outage stays far shorter than kopf's retries (a longer one makes kopf relist without a 410)
            cluster.call(lambda: [cluster.plane.registry.create(rt, "default", example(f"during-{index}"))
                                  for index in range(COUNT)])
            cluster.start()
            for index in range(COUNT):
                cluster.wait_for(lambda i=index: created(cluster, f"during-{i}"), timeout=60,
                                 what=f"kopf to handle during-{index} after relisting")
        assert runner.exception is None
        assert "Traceback" not in runner.output
        # the evidence that the relist path ran: kopf logs this when its watch gets 410 Expired
        assert "Restarting the watch-stream for kopfexamples.v1.kopf.dev cluster-wide" in runner.output, runner.output[-3000:]
