"""The chart speaks the components' real interfaces: settings names, CLI flags, Job labels, ports."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from edgemodel.cli import build_parser
from tests.conftest import ROOT
from tests.helm.chart import SWITCHES, find, full, one, pod_specs, render

# Variables the chart sets that are not settings fields: the downward API values the agent reads.
NOT_SETTINGS = {"NODE_NAME", "POD_IP", "PYTHONDONTWRITEBYTECODE"}

S = TypeVar("S")


def settings_from_env(settings: Callable[[], S], workload: dict[str, Any], value_from: str | None = None) -> S:
    """``settings()`` read with the env of the workload's first container added to the process environment
    (restored at once); ``value_from`` stands for the values of ``valueFrom`` entries."""
    containers = workload["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] if value_from is None else e.get("value", value_from) for e in containers[0]["env"]}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        return settings()


def _all_env(prefix: str) -> set[str]:
    names = set()
    for values in SWITCHES.values():
        for _where, spec in pod_specs(render(values)):
            for c in spec["containers"]:
                names |= {e["name"] for e in c.get("env", []) if e["name"].startswith(prefix)}
    return names


def test_operator_env_names_are_operator_settings() -> None:
    from edgemodel_operator.settings import OperatorSettings

    fields = {f"EDGEMODEL_OPERATOR_{n.upper()}" for n in OperatorSettings.model_fields}
    used = _all_env("EDGEMODEL_OPERATOR_")
    assert used - fields == set(), f"unknown operator settings: {used - fields}"
    assert len(used) >= 15


def test_agent_env_names_are_agent_settings() -> None:
    from edge_agent.capture_worker import ContinualSettings
    from edge_agent.settings import AgentSettings

    fields = {f"EDGEMODEL_AGENT_{n.upper()}" for n in AgentSettings.model_fields}
    fields |= {f"EDGEMODEL_AGENT_CONTINUAL_{n.upper()}" for n in ContinualSettings.model_fields}
    used = _all_env("EDGEMODEL_AGENT_")
    assert used - fields == set(), f"unknown agent settings: {used - fields}"
    node = AgentSettings.model_fields["node_name"].validation_alias
    assert "NODE_NAME" in str(node), "the agent must read NODE_NAME (downward API) for its node name"


def test_operator_settings_from_the_chart_env_validate() -> None:
    """The operator's real settings class accepts exactly what the Deployment sets."""
    from edgemodel_operator.settings import OperatorSettings

    for switch in ("defaults", "watch-namespaces", "external-store", "prometheus-analysis"):
        settings = settings_from_env(OperatorSettings, one(render(SWITCHES[switch]), "Deployment", full("operator")))
        assert settings.bind_address == "0.0.0.0"
        assert settings.metrics_port == 8080
        assert settings.liveness_port == 8081
        if switch == "watch-namespaces":
            assert settings.namespaces == ["ml-a", "ml-b"]


def test_agent_settings_from_the_chart_env_validate() -> None:
    from edge_agent.settings import AgentSettings

    ds = one(render({"agent": {"labels": {"edgemodel.io/site": "s1"}}}), "DaemonSet", full("agent"))
    settings = settings_from_env(AgentSettings, ds, value_from="edge-1")
    assert settings.host == "0.0.0.0"
    assert settings.port == 8080
    assert settings.public_key == Path("/etc/edgemodel/signing/public.pem")
    assert settings.cache_dir == Path("/var/lib/edgemodel-agent")
    assert settings.labels == {"edgemodel.io/site": "s1"}
    assert settings.node_name == "edge-1"
    defaults = AgentSettings()  # the chart's request limits are the agent's own defaults
    assert (settings.max_body_bytes, settings.max_decompressed_bytes, settings.max_json_bytes, settings.max_elements,
            settings.body_read_timeout_s) == (defaults.max_body_bytes, defaults.max_decompressed_bytes,
                                              defaults.max_json_bytes, defaults.max_elements, defaults.body_read_timeout_s)  # fmt: skip


def test_request_limits_reach_both_agents_and_the_store_limit_the_store() -> None:
    from edge_agent.settings import AgentSettings

    limits = {"maxBodyBytes": 33554432, "maxDecompressedBytes": 67108864, "maxJsonBytes": 16777216,
              "maxElements": 16777216, "bodyReadTimeoutSeconds": 30}  # fmt: skip
    docs = render({"agent": {"limits": limits}, "cloudAgent": {"enabled": True}, "store": {"maxUploadBytes": 21474836480}})
    for kind, name in (("DaemonSet", full("agent")), ("Deployment", full("cloud-agent"))):
        settings = settings_from_env(AgentSettings, one(docs, kind, name), value_from="edge-1")
        assert settings.max_body_bytes == 33554432
        assert settings.max_decompressed_bytes == 67108864
        assert settings.max_json_bytes == 16777216
        assert settings.max_elements == 16777216
        assert settings.body_read_timeout_s == 30
    args = one(docs, "Deployment", full("store"))["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--max-upload-bytes") + 1] == "21474836480"


def test_container_args_parse_with_the_real_cli() -> None:
    """Every args list the chart passes to `edgemodel` parses with the real argument parser."""
    parser = build_parser()
    seen = set()
    for values in SWITCHES.values():
        for where, spec in pod_specs(render(values)):
            for c in spec["containers"]:
                if c.get("command"):  # the keygen hook runs python, not edgemodel
                    continue
                args = parser.parse_args(c["args"])
                seen.add(args.command)
                if args.command == "store":
                    assert str(args.root) == "/data", where
                    assert args.host == "0.0.0.0", where
    assert seen == {"operator", "store", "agent"}


def test_store_networkpolicy_admits_the_operators_conversion_pods() -> None:
    from edgemodel_operator.jobs import job_labels

    policy = one(render({}), "NetworkPolicy", full("store"))
    selectors = [p["podSelector"]["matchLabels"] for p in policy["spec"]["ingress"][0]["from"] if "namespaceSelector" in p]
    labels = job_labels("digits", 3)
    assert any(sel.items() <= labels.items() for sel in selectors), (selectors, labels)


def test_converter_resources_reach_the_job() -> None:
    """converter.resources -> operator settings -> the Job the operator builds."""
    from edgemodel.api import EdgeModelSpec
    from edgemodel_operator.jobs import build_conversion_job
    from edgemodel_operator.settings import OperatorSettings

    values = {"operator": {"converter": {"resources": {"requests": {"cpu": "3", "memory": "5Gi"},
                                                         "limits": {"cpu": "4", "memory": "6Gi"}}}},
              "podSecurityContext": {"runAsUser": 20000, "runAsGroup": 20001, "fsGroup": 20002}}
    settings = settings_from_env(OperatorSettings, one(render(values), "Deployment", full("operator")))
    owner = {"apiVersion": "edgemodel.io/v1alpha1", "kind": "EdgeModel",
             "metadata": {"name": "digits", "namespace": "ml", "uid": "u1", "generation": 1}}
    spec = EdgeModelSpec.model_validate({"source": {"uri": "file:///m.pt", "format": "TorchScript"},
                                         "inputs": [{"name": "x", "dtype": "float32", "shape": [1, 3]}]})
    job = build_conversion_job(owner, spec, 1, "h", settings)
    c = job["spec"]["template"]["spec"]["containers"][0]
    assert c["resources"] == {"requests": {"cpu": "3", "memory": "5Gi"}, "limits": {"cpu": "4", "memory": "6Gi"}}
    assert job["spec"]["template"]["spec"]["volumes"][0]["secret"]["secretName"] == full("signing")
    assert c["image"] == "ghcr.io/edgemodel/converter:0.1.0"
    # The chart's pod user and fsGroup reach the Job: the key Secret is group-readable by the converter.
    sc = job["spec"]["template"]["spec"]["securityContext"]
    assert (sc["runAsUser"], sc["runAsGroup"], sc["fsGroup"]) == (20000, 20001, 20002)


def test_dockerfiles() -> None:
    """Non-root numeric users, the right extras, torch only in the converter, the CLI as entrypoint."""
    docker = ROOT / "docker"
    texts = {p.name: p.read_text() for p in docker.glob("*.Dockerfile")}
    assert set(texts) == {"agent.Dockerfile", "agent-gpu.Dockerfile", "converter.Dockerfile", "operator.Dockerfile"}
    for name, text in texts.items():
        assert re.search(r"^USER 10001:10001$", text, re.M), name
        assert name == "agent-gpu.Dockerfile" or 'ENTRYPOINT ["edgemodel"]' in text, name
    agent_installs = [line for line in texts["agent.Dockerfile"].splitlines() if "bin/pip install" in line]
    assert agent_installs
    assert all("torch" not in line for line in agent_installs)
    assert "slim" in texts["agent.Dockerfile"]
    assert "torch==2.13.0" in texts["converter.Dockerfile"]
    # Each image installs its extra's dependencies (docker/requirements.py reads pyproject.toml), then the wheel.
    for name, extra in (("agent", "agent"), ("converter", "convert"), ("operator", "operator")):
        assert f"requirements.py /tmp/req/pyproject.toml {extra} " in texts[f"{name}.Dockerfile"], name
        assert "pip install -q --no-deps /tmp/dist/*.whl" in texts[f"{name}.Dockerfile"], name
    assert '"onnxruntime-gpu[cuda,cudnn]==${version}"' in texts["agent-gpu.Dockerfile"]
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    agent_deps = " ".join(extras["agent"]).lower()
    assert "torch" not in agent_deps
    assert "kopf" not in agent_deps
    assert "cryptography" in " ".join(extras["operator"]), "the keygen hook runs in the operator image"
    values = (ROOT / "helm" / "edgemodel" / "values.yaml").read_text()
    assert "runAsUser: 10001" in values
    assert not find(render({}), "StatefulSet")
