"""`edgemodel operator` flags and EDGEMODEL_OPERATOR_* variables into settings."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edgemodel.cli import build_parser
from edgemodel.cli.operator import settings_from_args
from edgemodel.errors import UserError

REQUIRED = ["--store-url", "http://store:8080", "--converter-image", "conv:1", "--signing-key-secret", "sign"]


def settings(argv: list[str]):  # type: ignore[no-untyped-def]
    return settings_from_args(build_parser().parse_args(["operator", *argv]))


def test_flags_become_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGEMODEL_OPERATOR_STORE_URL", raising=False)
    s = settings([*REQUIRED, "-n", "ml", "-n", "vision", "--prometheus-url", "http://prom:9090", "--standalone",
                  "--metrics-port", "9100", "--heartbeat-timeout-seconds", "30"])
    assert s.namespaces == ["ml", "vision"]
    assert s.standalone
    assert s.metrics_port == 9100
    assert s.prometheus_url == "http://prom:9090"
    assert s.heartbeat_timeout_seconds == 30


def test_environment_variables_are_read_and_flags_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEMODEL_OPERATOR_STORE_URL", "http://from-env:1")
    monkeypatch.setenv("EDGEMODEL_OPERATOR_CONVERTER_IMAGE", "env:1")
    monkeypatch.setenv("EDGEMODEL_OPERATOR_SIGNING_KEY_SECRET", "env-secret")
    monkeypatch.setenv("EDGEMODEL_OPERATOR_NAMESPACES", '["a"]')
    s = settings(["--converter-image", "flag:2"])
    assert (s.store_url, s.converter_image, s.signing_key_secret, s.namespaces) == (
        "http://from-env:1", "flag:2", "env-secret", ["a"])
    assert settings(["--all-namespaces"]).namespaces == []


def test_bad_settings_name_the_flag_and_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("STORE_URL", "CONVERTER_IMAGE", "SIGNING_KEY_SECRET"):
        monkeypatch.delenv(f"EDGEMODEL_OPERATOR_{var}", raising=False)
    with pytest.raises(UserError) as err:
        settings(["--converter-image", "c:1", "--signing-key-secret", "s"])
    assert "--store-url (EDGEMODEL_OPERATOR_STORE_URL): required" in str(err.value)
    with pytest.raises(UserError) as err:
        settings([*REQUIRED, "--converter-memory-limit", "lots"])
    assert "--converter-memory-limit (EDGEMODEL_OPERATOR_CONVERTER_MEMORY_LIMIT)" in str(err.value)
    with pytest.raises(SystemExit):
        settings([*REQUIRED, "--standalone", "--peering", "x"])


def test_cli_prints_one_line_without_traceback() -> None:
    env = {"PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "edgemodel.cli", "operator", "--converter-image", "c"],
                          capture_output=True, text=True, env=env, timeout=60, check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "edgemodel operator: error: --store-url (EDGEMODEL_OPERATOR_STORE_URL): required" in proc.stderr


def test_every_flag_has_help_from_the_settings() -> None:
    help_text = " ".join(build_parser()._subparsers._group_actions[0].choices["operator"].format_help().split())  # type: ignore[union-attr]
    assert "--store-url URL Artifact store URL the conversion Job uploads to" in help_text
    assert "[env EDGEMODEL_OPERATOR_PROMETHEUS_URL]" in help_text
