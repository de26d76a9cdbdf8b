"""Simulated edge nodes and their managed agent processes; API outages with the state kept."""

from __future__ import annotations

from pathlib import Path

import requests

from edgemodel_dev.cluster import LocalCluster

AGENT = [str(Path(__file__).with_name("fake_agent.py"))]


def heartbeat(cluster: LocalCluster, node: str) -> str | None:
    agent = cluster.get("edgemodel.io/v1alpha1", "edgeagents", node)
    return ((agent or {}).get("status") or {}).get("heartbeatTime")


def test_nodes_have_labels_and_capacity(kube_cluster: LocalCluster) -> None:
    names = kube_cluster.add_nodes(3, sites=["store-1", "store-2"], arch="arm64", memory="2Gi")
    assert names == ["edge-0", "edge-1", "edge-2"]
    node = kube_cluster.get("v1", "nodes", "edge-1") or {}
    labels = node["metadata"]["labels"]
    assert labels["node-role.kubernetes.io/edge"] == "true"
    assert (labels["kubernetes.io/arch"], labels["edgemodel.io/site"]) == ("arm64", "store-2")
    assert node["status"]["capacity"]["memory"] == "2Gi"
    table = kube_cluster.kubectl("get", "nodes", "-l", "node-role.kubernetes.io/edge=true").stdout
    assert table.split("\n")[0].split() == ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
    assert [line.split()[:3] for line in table.strip().split("\n")[1:]] == [
        [name, "Ready", "edge"] for name in names]


def test_agents_run_per_node_and_survive_kill_and_restart(kube_cluster: LocalCluster) -> None:
    kube_cluster.apply_crds()
    nodes = kube_cluster.add_nodes(2)
    processes = kube_cluster.run_on_nodes(["python", *AGENT])
    assert sorted(processes) == nodes
    for node in nodes:
        kube_cluster.wait_for(lambda n=node: heartbeat(kube_cluster, n), what=f"the agent of {node} to report")
    victim = processes["edge-0"]
    victim.kill()
    assert not victim.running
    assert victim.returncode == -9
    last = heartbeat(kube_cluster, "edge-0")
    beats = processes["edge-1"].output().count("heartbeat")
    assert processes["edge-1"].wait_for_output(f"heartbeat {beats + 3}"), "the other agent keeps beating"
    assert heartbeat(kube_cluster, "edge-0") == last, "a killed agent reports nothing"
    victim.start()
    kube_cluster.wait_for(lambda: heartbeat(kube_cluster, "edge-0") != last, what="the restarted agent to report")
    assert victim.starts == 2
    assert processes["edge-1"].stop() == 0
    assert "stopped" in processes["edge-1"].output()


def test_api_outage_keeps_state_and_port(kube_cluster: LocalCluster) -> None:
    kube_cluster.apply_crds()
    kube_cluster.add_nodes(1)
    agent = kube_cluster.run_on_nodes(["python", *AGENT])["edge-0"]
    kube_cluster.wait_for(lambda: heartbeat(kube_cluster, "edge-0"), what="the first heartbeat")
    port, url = kube_cluster.port, kube_cluster.url
    kube_cluster.stop()
    assert not kube_cluster.api_running
    try:
        requests.get(url + "/version", timeout=2)
        raise AssertionError("the API still answers during the outage")
    except requests.ConnectionError:
        pass
    assert agent.wait_for_output("api down"), "the agent notices the outage"
    before = heartbeat(kube_cluster, "edge-0")
    kube_cluster.start()
    assert kube_cluster.port == port
    assert requests.get(url + "/version", timeout=5).json()["minor"] == "36"
    kube_cluster.wait_for(lambda: heartbeat(kube_cluster, "edge-0") != before, what="the agent to reconnect")
    assert kube_cluster.get("v1", "nodes", "edge-0") is not None, "objects survive the outage"


def test_persisted_state_survives_a_restart(tmp_path: Path) -> None:
    with LocalCluster(tmp_path / "state", persist=True, kubelet=False) as first:
        first.apply_crds()
        first.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kept", "namespace": "default"},
                      "data": {"a": "1"}})
        uid = (first.get("v1", "configmaps", "kept", "default") or {})["metadata"]["uid"]
    with LocalCluster(tmp_path / "state", persist=True, kubelet=False) as second:
        kept = second.get("v1", "configmaps", "kept", "default") or {}
        assert (kept["metadata"]["uid"], kept["data"]) == (uid, {"a": "1"})
        assert "edgemodels" in second.kubectl("api-resources", "--api-group=edgemodel.io").stdout


def test_watches_resume_after_an_outage(kube_cluster: LocalCluster) -> None:
    import json

    rv = json.loads(kube_cluster.kubectl("get", "configmaps", "-o", "json").stdout)["metadata"]["resourceVersion"]
    kube_cluster.stop()
    kube_cluster.create({"apiVersion": "v1", "kind": "ConfigMap",
                         "metadata": {"name": "during-outage", "namespace": "default"}})
    kube_cluster.start()
    response = requests.get(f"{kube_cluster.url}/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={rv}"
                            "&timeoutSeconds=1", timeout=10)
    events = [json.loads(line) for line in response.text.splitlines() if line]
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "during-outage")]
