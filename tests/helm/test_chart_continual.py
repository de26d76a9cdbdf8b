"""Continual learning in the chart: the agents' drift, capture and upload settings, the captures volume and the
upload token, read back with the agent's own settings classes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.helm.chart import SWITCHES, full, one, render, render_error
from tests.helm.test_alignment import settings_from_env


def _agent(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(pod spec, agent container) of the DaemonSet."""
    ds = one(render(values), "DaemonSet", full("agent"))
    spec = ds["spec"]["template"]["spec"]
    return spec, spec["containers"][0]


def _continual(values: dict[str, Any]):  # type: ignore[no-untyped-def]
    from edge_agent.capture_worker import ContinualSettings

    return settings_from_env(ContinualSettings, one(render(values), "DaemonSet", full("agent")), value_from="edge-1")


def test_defaults_watch_drift_but_capture_nothing_to_disk() -> None:
    spec, c = _agent({})
    settings = _continual({})
    assert settings.enabled
    assert settings.capture_dir is None
    assert settings.store_url == ""
    assert (settings.psi_window, settings.psi_threshold, settings.reference_samples) == (200, 0.25, 500)
    assert "captures" not in {v["name"] for v in spec["volumes"]}
    assert not any(e["name"] == "EDGEMODEL_AGENT_STORE_TOKEN_FILE" for e in c["env"])


def test_capture_and_upload_to_the_release_store() -> None:
    from edge_agent.settings import AgentSettings

    values = SWITCHES["agent-continual"]
    spec, c = _agent(values)
    settings = _continual(values)
    assert settings.capture_dir == Path("/var/lib/edgemodel-captures")
    assert settings.max_bytes == 64 << 20
    assert settings.max_records == 5000
    assert settings.max_captures_per_s == 50
    assert settings.store_url == "http://em-edgemodel-store.edge-system.svc:8081"
    assert settings.upload_interval_s == 300
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["captures"]["mountPath"] == "/var/lib/edgemodel-captures"
    assert mounts["capture-store-token"]["readOnly"] is True
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["captures"] == {"name": "captures", "emptyDir": {"sizeLimit": "1Gi"}}
    assert volumes["capture-store-token"]["secret"]["secretName"] == full("store-token")
    agent = settings_from_env(AgentSettings, one(render(values), "DaemonSet", full("agent")), value_from="edge-1")
    assert agent.store_token_file == Path("/var/run/edgemodel/store-token/token")


def test_a_host_path_capture_volume_tuned_detectors_and_the_agents_store_url() -> None:
    values = {
        "store": {"agentUrl": "https://artifacts.example.com"},
        "agent": {"continual": {
            "capture": {"enabled": True, "hostPath": "/data/captures", "maxBytes": 1 << 28, "lowConfidence": 0.8},
            "upload": {"enabled": True, "intervalSeconds": 60},
            "drift": {"psiWindow": 500, "phThreshold": 12},
        }},
    }  # fmt: skip
    spec, _ = _agent(values)
    settings = _continual(values)
    assert settings.store_url == "https://artifacts.example.com"
    assert settings.upload_interval_s == 60
    assert settings.max_bytes == 1 << 28
    assert settings.low_confidence == 0.8
    assert (settings.psi_window, settings.ph_threshold) == (500, 12)
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["captures"]["hostPath"] == {"path": "/data/captures", "type": "DirectoryOrCreate"}
    assert volumes["capture-store-token"]["secret"]["secretName"] == full("store-token")


def test_continual_off_and_bad_values_fail_with_the_field() -> None:
    assert not _continual({"agent": {"continual": {"enabled": False}}}).enabled
    err = render_error({"agent": {"continual": {"upload": {"enabled": True}}}})
    assert "agent.continual.upload.enabled needs agent.continual.capture.enabled" in err
    err = render_error({"agent": {"continual": {"capture": {"randomRate": 2}}}})
    assert "randomRate" in err
    err = render_error({"agent": {"continual": {"drift": {"psiWindow": 3}}}})
    assert "psiWindow" in err
