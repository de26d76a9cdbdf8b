"""The product's one Kubernetes client (edgemodel.kube): credentials both ways, the retry policy, the verbs.

Against a small real aiohttp server (no emulator needed): what is retried (connection errors, 429,
5xx) and what is not (other 4xx), the token file re-read, server-side apply's field manager, and the
watch stream parsed line by line.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from aiohttp import web

from edgemodel.errors import UserError
from edgemodel.kube import (
    APPLY_PATCH,
    ApiError,
    ApiUnavailable,
    Credentials,
    KubeClient,
    in_cluster_credentials,
    load_credentials,
    load_kubeconfig,
    resource_of,
    resource_path,
)
from edgemodel.kube import credentials as credentials_mod
from edgemodel.retry import Backoff
from edgemodel_dev.net import free_port

FAST = Backoff(first=0.01, cap=0.02, jitter=0.0)


def write_kubeconfig(path: Path, contexts: dict[str, tuple[dict[str, object], dict[str, object]]],
                     current: str) -> Path:
    """A kubeconfig with one cluster and one user per context: name -> (cluster, user)."""
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": current,
        "contexts": [{"name": n, "context": {"cluster": f"c-{n}", "user": f"u-{n}", "namespace": f"ns-{n}"}}
                     for n in contexts],
        "clusters": [{"name": f"c-{n}", "cluster": c} for n, (c, _) in contexts.items()],
        "users": [{"name": f"u-{n}", "user": u} for n, (_, u) in contexts.items()],
    }))  # fmt: skip
    return path


# -- credentials ---------------------------------------------------------------------------------

def test_kubeconfig_contexts_inline_data_and_relative_files(tmp_path: Path) -> None:
    ca = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    path = write_kubeconfig(tmp_path / "config", {
        "prod": ({"server": "https://10.0.0.1:6443/", "certificate-authority-data": base64.b64encode(ca).decode()},
                 {"token": "abc"}),
        "lab": ({"server": "https://lab:6443", "certificate-authority": "ca.crt", "insecure-skip-tls-verify": True},
                {"client-certificate-data": base64.b64encode(b"CERT").decode(),
                 "client-key-data": base64.b64encode(b"KEY").decode(), "tokenFile": "tok"}),
    }, current="prod")  # fmt: skip
    prod = load_kubeconfig(path, scratch=tmp_path)
    assert (prod.server, prod.token, prod.ca_data, prod.namespace) == ("https://10.0.0.1:6443", "abc", ca, "ns-prod")
    lab = load_kubeconfig(path, context="lab", scratch=tmp_path)
    assert lab.server == "https://lab:6443"
    assert lab.ca_file == tmp_path / "ca.crt", "relative paths are relative to the kubeconfig"
    assert lab.token_file == tmp_path / "tok"
    assert lab.insecure
    assert lab.namespace == "ns-lab"
    assert lab.client_cert is not None
    assert lab.client_cert.read_bytes() == b"CERT"
    assert lab.client_key is not None
    assert lab.client_key.read_bytes() == b"KEY"
    assert lab.client_key.stat().st_mode & 0o777 == 0o600


def test_kubeconfig_errors_name_the_field_and_the_fix(tmp_path: Path) -> None:
    path = write_kubeconfig(tmp_path / "config", {"a": ({"server": "https://a"}, {"exec": {"command": "aws"}})}, "a")
    with pytest.raises(UserError, match="exec or auth-provider plugin.*token"):
        load_kubeconfig(path)
    with pytest.raises(UserError, match="no context named 'zzz'"):
        load_kubeconfig(path, context="zzz")
    (tmp_path / "list").write_text("- 1\n")
    with pytest.raises(UserError, match="not a kubeconfig"):
        load_kubeconfig(tmp_path / "list")


def service_account(tmp_path: Path) -> Path:
    account = tmp_path / "sa"
    account.mkdir()
    (account / "token").write_text("sa-token\n")
    (account / "ca.crt").write_text("ca")
    (account / "namespace").write_text("edgemodel-system\n")
    return account


def test_in_cluster_service_account(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    account = service_account(tmp_path)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "6443")
    creds = in_cluster_credentials(account)
    assert creds.server == "https://[fd00::1]:6443"
    assert (creds.token_file, creds.ca_file, creds.namespace) == (account / "token", account / "ca.crt",
                                                                  "edgemodel-system")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
    with pytest.raises(UserError, match="KUBERNETES_SERVICE_HOST is not set"):
        in_cluster_credentials(account)


def test_load_credentials_prefers_the_pod_then_kubeconfig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    account = service_account(tmp_path)
    config = write_kubeconfig(tmp_path / "config", {"x": ({"server": "https://x"}, {"token": "t"})}, "x")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    assert load_credentials(None, account=account).server == "https://10.0.0.1:443"
    assert load_credentials(config, account=account).server == "https://x", "an explicit kubeconfig wins"
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
    monkeypatch.setenv("KUBECONFIG", f"{tmp_path / 'missing'}:{config}")
    assert load_credentials(None, account=account).server == "https://x", "$KUBECONFIG is a path list"
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(credentials_mod.Path, "home", lambda: tmp_path / "home")
    with pytest.raises(UserError, match="no Kubernetes credentials.*--kubeconfig"):
        load_credentials(None, account=account)


def test_paths() -> None:
    assert resource_path("", "v1", "pods", namespace="ml") == "/api/v1/namespaces/ml/pods"
    assert resource_path("batch", "v1", "jobs", "a b", namespace="ml") == "/apis/batch/v1/namespaces/ml/jobs/a%20b"
    assert resource_of(resource_path("edgemodel.io", "v1alpha1", "edgeagents", "n", "status")) == "edgeagents/status"


# -- requests ------------------------------------------------------------------------------------

@pytest.fixture
async def server() -> AsyncIterator[tuple[str, dict[str, list[web.Request]]]]:
    """A tiny API server: /answers/<status> answers each status in turn from the query (?s=503,429,200)."""
    seen: dict[str, list[web.Request]] = {}

    async def answers(request: web.Request) -> web.Response:
        key = request.match_info["key"]
        seen.setdefault(key, []).append(request)
        statuses = [int(s) for s in request.query["s"].split(",")]
        status = statuses[min(len(seen[key]) - 1, len(statuses) - 1)]
        body = await request.read()
        if status >= 400:
            return web.json_response({"kind": "Status", "reason": "Nope", "message": f"answered {status}"},
                                     status=status)
        return web.json_response({"metadata": {"name": key}, "echo": json.loads(body) if body else None,
                                  "query": dict(request.query)})

    async def watch(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(b'{"type": "ADDED", "object": {"metadata": {"name": "a"}}}\n{"type": "MOD')
        await resp.write(b'IFIED", "object": {"metadata": {"name": "a"}}}\n\n')
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_route("*", "/answers/{key}", answers)
    app.router.add_get("/watch", watch)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}", seen
    await runner.cleanup()


@pytest.mark.parametrize("statuses", ["503,200", "429,500,200", "502,504,200"])
async def test_429_and_5xx_are_retried(server: tuple[str, dict[str, list[web.Request]]], statuses: str) -> None:
    url, seen = server
    counted: list[tuple[str, str, str]] = []
    client = KubeClient(Credentials(server=url, token="t"), attempts=3, backoff=FAST,
                        on_response=lambda *a: counted.append(a))
    try:
        got = await client.get("/answers/k", params={"s": statuses})
        assert got["metadata"]["name"] == "k"
        assert len(seen["k"]) == len(statuses.split(","))
        assert [c[2] for c in counted] == statuses.split(",")
        assert all(r.headers["Authorization"] == "Bearer t" for r in seen["k"])
    finally:
        await client.close()


@pytest.mark.parametrize("status", [400, 403, 404, 409, 422])
async def test_other_4xx_are_not_retried(server: tuple[str, dict[str, list[web.Request]]], status: int) -> None:
    url, seen = server
    client = KubeClient(Credentials(server=url), attempts=5, backoff=FAST)
    try:
        with pytest.raises(ApiError) as err:
            await client.patch("/answers/k?s=" + str(status), [{"op": "test", "path": "/x", "value": 1}])
        assert err.value.status == status
        assert err.value.reason == "Nope"
        assert err.value.message == f"answered {status}"
        assert str(err.value) == f"PATCH /answers/k?s={status}: HTTP {status} Nope: answered {status}"
        assert len(seen["k"]) == 1
        if status == 404:
            assert await client.get("/answers/k", params={"s": "404"}, missing_ok=True) is None
    finally:
        await client.close()


async def test_persistent_5xx_raises_the_last_answer(server: tuple[str, dict[str, list[web.Request]]]) -> None:
    url, seen = server
    client = KubeClient(Credentials(server=url), attempts=3, backoff=FAST)
    try:
        with pytest.raises(ApiError) as err:
            await client.get("/answers/k", params={"s": "503"})
        assert err.value.status == 503
        assert len(seen["k"]) == 3
    finally:
        await client.close()


async def test_connection_errors_are_retried_then_unavailable() -> None:
    port = free_port()
    counted: list[str] = []
    client = KubeClient(Credentials(server=f"http://127.0.0.1:{port}"), attempts=3, backoff=FAST,
                        on_response=lambda _m, _p, code: counted.append(code))
    try:
        with pytest.raises(ApiUnavailable, match=f"GET /x: API server http://127.0.0.1:{port} unreachable"):
            await client.get("/x")
        assert counted == ["error"] * 3
    finally:
        await client.close()


async def test_writes_carry_the_field_manager_and_apply_needs_one(
        server: tuple[str, dict[str, list[web.Request]]]) -> None:  # fmt: skip
    url, seen = server
    anonymous = KubeClient(Credentials(server=url))
    managed = KubeClient(Credentials(server=url), field_manager="edgemodel-operator")
    try:
        with pytest.raises(ValueError, match="field manager"):
            await anonymous.apply("/answers/a?s=200", {"spec": {}})
        created = await managed.create("/answers/c?s=200", {"metadata": {"name": "c"}})
        assert created["query"]["fieldManager"] == "edgemodel-operator"
        assert created["echo"] == {"metadata": {"name": "c"}}
        applied = await managed.apply("/answers/a?s=200", {"spec": {"x": 1}}, force=True)
        assert applied["query"] == {"s": "200", "fieldManager": "edgemodel-operator", "force": "true"}
        assert seen["a"][0].headers["Content-Type"] == APPLY_PATCH
        plain = await anonymous.put("/answers/p?s=200", {"a": 1})
        assert "fieldManager" not in plain["query"]
    finally:
        await anonymous.close()
        await managed.close()


async def test_a_token_file_is_read_and_reread(server: tuple[str, dict[str, list[web.Request]]], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    url, seen = server
    token = tmp_path / "token"
    token.write_text("one\n")
    client = KubeClient(Credentials(server=url, token_file=token))
    try:
        await client.get("/answers/t", params={"s": "200"})
        token.write_text("two\n")
        await client.get("/answers/t", params={"s": "200"})
        monkeypatch.setattr("edgemodel.kube.client.TOKEN_REREAD_SECONDS", -1.0)
        await client.get("/answers/t", params={"s": "200"})
        assert [r.headers["Authorization"] for r in seen["t"]] == ["Bearer one", "Bearer one", "Bearer two"]
    finally:
        await client.close()


async def test_watch_events_split_across_chunks(server: tuple[str, dict[str, list[web.Request]]]) -> None:
    url, _ = server
    client = KubeClient(Credentials(server=url))
    try:
        events = [(kind, obj["metadata"]["name"]) async for kind, obj in client.watch("/watch", {}, timeout_s=5)]
        assert events == [("ADDED", "a"), ("MODIFIED", "a")]
    finally:
        await client.close()
