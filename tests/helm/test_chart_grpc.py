"""The agents' gRPC port (issue 19): container port, setting, Services and NetworkPolicy, and switching it off."""

from __future__ import annotations

from typing import Any

from tests.helm.chart import SWITCHES, full, one, render


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def test_grpc_port_reaches_the_agents_services_and_policy_by_default() -> None:
    docs = render(SWITCHES["cloud-agent"])
    for kind, name in (("DaemonSet", "agent"), ("Deployment", "cloud-agent")):
        container = one(docs, kind, full(name))["spec"]["template"]["spec"]["containers"][0]
        assert _env(container)["EDGEMODEL_AGENT_GRPC_PORT"] == "8081"
        assert {"name": "grpc", "containerPort": 8081, "protocol": "TCP"} in container["ports"]
        ports = {p["name"]: p for p in one(docs, "Service", full(name))["spec"]["ports"]}
        assert ports["grpc"] == {
            "name": "grpc",
            "port": 8081,
            "targetPort": "grpc",
            "protocol": "TCP",
            "appProtocol": "grpc",
        }
        assert ports["http"]["port"] == 8080
    policy = one(docs, "NetworkPolicy", full("agent"))
    assert {"port": "grpc", "protocol": "TCP"} in policy["spec"]["ingress"][0]["ports"]
    peers = one(render(SWITCHES["network-policy-peers"]), "NetworkPolicy", full("agent"))["spec"]["ingress"][
        0
    ]
    assert {"port": "grpc", "protocol": "TCP"} in peers["ports"]  # the same callers as the HTTP port
    assert {"ipBlock": {"cidr": "10.0.0.0/8"}} in peers["from"]


def test_a_custom_grpc_port_and_none() -> None:
    custom = render({"agent": {"grpcPort": 9000}})
    container = one(custom, "DaemonSet", full("agent"))["spec"]["template"]["spec"]["containers"][0]
    assert _env(container)["EDGEMODEL_AGENT_GRPC_PORT"] == "9000"
    assert {"name": "grpc", "containerPort": 9000, "protocol": "TCP"} in container["ports"]
    for off in (None, 0):
        docs = render({"agent": {"grpcPort": off}})
        container = one(docs, "DaemonSet", full("agent"))["spec"]["template"]["spec"]["containers"][0]
        assert "EDGEMODEL_AGENT_GRPC_PORT" not in _env(container)
        assert "grpc" not in {p["name"] for p in container["ports"]}
        assert "grpc" not in {p["name"] for p in one(docs, "Service", full("agent"))["spec"]["ports"]}
        policy = one(docs, "NetworkPolicy", full("agent"))
        assert {"port": "grpc", "protocol": "TCP"} not in policy["spec"]["ingress"][0]["ports"]
