"""Bearer-token auth on inference and admin endpoints; HTTPS with a given certificate."""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tritonclient.utils import InferenceServerException

from edge_agent.settings import AgentSettings
from edgemodel.errors import UserError
from tests.agent.conftest import AgentThread, local

TOKEN = "s3cret-token"
BODY = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}


@pytest.fixture(scope="module")
def secured(model_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentThread]:
    token_file = tmp_path_factory.mktemp("secret") / "token"
    token_file.write_text(TOKEN + "\n")
    with AgentThread(AgentSettings(port=0, token_file=token_file), local(model_files, "affine=affine1")) as agent:
        yield agent


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v2/models/affine/infer"), ("GET", "/v2/models/affine"), ("GET", "/v2/models/affine/ready"),
     ("GET", "/v2/models/affine/config"), ("GET", "/v2"), ("POST", "/v2/repository/index")],
)  # fmt: skip
def test_protected_endpoints_need_the_token(secured: AgentThread, method: str, path: str) -> None:
    body = BODY if path.endswith("infer") else None
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        r = requests.request(method, f"{secured.url}{path}", json=body, headers=headers, timeout=10)
        assert r.status_code == 401, (headers, r.text)
        assert "bearer token" in r.json()["error"]
    ok = requests.request(method, f"{secured.url}{path}", json=body, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert ok.status_code == 200, ok.text


def test_probes_and_metrics_stay_open(secured: AgentThread) -> None:
    assert requests.get(f"{secured.url}/v2/health/live", timeout=10).status_code == 200
    assert requests.get(f"{secured.url}/v2/health/ready", timeout=10).status_code == 200
    metrics = requests.get(f"{secured.url}/metrics", timeout=10)
    assert metrics.status_code == 200
    assert 'edgemodel_requests_total{code="401",model="",namespace="",provider="",version=""}' in metrics.text


def test_tritonclient_with_the_token_header(secured: AgentThread) -> None:
    client = httpclient.InferenceServerClient(f"127.0.0.1:{secured.port}")
    inp = httpclient.InferInput("x", [1, 4], "FP32")
    inp.set_data_from_numpy(np.ones((1, 4), dtype=np.float32))
    try:
        with pytest.raises(InferenceServerException, match="bearer token"):
            client.infer("affine", [inp])
        result = client.infer("affine", [inp], headers={"Authorization": f"Bearer {TOKEN}"})
        np.testing.assert_allclose(result.as_numpy("y"), np.full((1, 4), 3.0))
    finally:
        client.close()


def test_metrics_token_when_asked(model_files: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "token").write_text(TOKEN)
    settings = AgentSettings(port=0, token_file=tmp_path / "token", metrics_require_token=True)
    with AgentThread(settings, local(model_files, "affine=affine1")) as agent:
        assert requests.get(f"{agent.url}/metrics", timeout=10).status_code == 401
        assert requests.get(f"{agent.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10).status_code == 200


def test_empty_token_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("  \n")
    from edge_agent.server import read_token

    with pytest.raises(UserError, match="the file is empty"):
        read_token(tmp_path / "token")
    with pytest.raises(UserError, match="cannot read it"):
        read_token(tmp_path / "missing")


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_path, key_path


def test_https_with_the_given_certificate(model_files: dict[str, Path], tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    with AgentThread(AgentSettings(port=0, tls_cert=cert, tls_key=key), local(model_files, "affine=affine1")) as agent:
        assert agent.url.startswith("https://")
        r = requests.post(f"{agent.url}/v2/models/affine/infer", json=BODY, verify=str(cert), timeout=10)
        assert r.status_code == 200
        assert r.json()["outputs"][0]["data"] == [3.0, 5.0, 7.0, 9.0]
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(f"{agent.url}/v2/health/live", timeout=10)  # not trusted without the CA
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(f"http://127.0.0.1:{agent.port}/v2/health/live", timeout=10)


def test_tls_needs_both_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="give both"):
        AgentSettings(tls_cert=tmp_path / "x.crt")
