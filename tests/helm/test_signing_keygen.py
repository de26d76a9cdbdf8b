"""The chart's signing-key install hook (helm/edgemodel/files/signing-keygen.py) against an in-memory
CoreV1Api stand-in with the API server's create/409 and read/404 behaviour; keys are checked with
the project's real signing helpers."""

from __future__ import annotations

import base64
import importlib.util
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from edgemodel import signing
from tests.helm.chart import CHART


def _hook() -> ModuleType:
    spec = importlib.util.spec_from_file_location("signing_keygen", CHART / "files" / "signing-keygen.py")
    assert spec
    assert spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class ApiError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class MemoryCore:
    """Secrets and ConfigMaps by (namespace, name); only get and create, like the hook's Role."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}

    def _read(self, kind: str, name: str, namespace: str) -> Any:
        if (kind, namespace, name) not in self.objects:
            raise ApiError(404)
        return SimpleNamespace(data=self.objects[(kind, namespace, name)].get("data"))

    def _create(self, kind: str, namespace: str, body: dict[str, Any]) -> None:
        key = (kind, namespace, body["metadata"]["name"])
        if key in self.objects:
            raise ApiError(409)
        self.objects[key] = body

    def read_namespaced_secret(self, name: str, namespace: str) -> Any:
        return self._read("Secret", name, namespace)

    def create_namespaced_secret(self, namespace: str, body: Any) -> Any:
        self._create("Secret", namespace, body)

    def read_namespaced_config_map(self, name: str, namespace: str) -> Any:
        return self._read("ConfigMap", name, namespace)

    def create_namespaced_config_map(self, namespace: str, body: Any) -> Any:
        self._create("ConfigMap", namespace, body)


def _run(api: MemoryCore, namespaces: list[str]) -> list[str]:
    result: list[str] = _hook().ensure_keys(api, "edge", namespaces, "sig", "sig-public", {"app": "x"})
    return result


def test_generates_a_working_key_pair_everywhere_once() -> None:
    api = MemoryCore()
    actions = _run(api, ["ml-a", "edge"])
    assert actions == ["generated a new ed25519 key pair", "created Secret edge/sig", "created Secret ml-a/sig",
                       "created ConfigMap edge/sig-public"]
    private = base64.b64decode(api.objects[("Secret", "ml-a", "sig")]["data"]["private.pem"])
    public = api.objects[("ConfigMap", "edge", "sig-public")]["data"]["public.pem"].encode()
    key = signing.load_public_key(public)
    from cryptography.hazmat.primitives import serialization

    priv = serialization.load_pem_private_key(private, password=None)
    signing.verify(b"manifest", signing.sign(b"manifest", priv), key)  # type: ignore[arg-type]
    again = _run(api, ["ml-a", "ml-b"])
    assert again == ["reused the key in Secret edge/sig", "created Secret ml-b/sig"]
    assert api.objects[("Secret", "ml-b", "sig")]["data"]["private.pem"] == base64.b64encode(private).decode()


def test_refuses_a_public_key_that_does_not_match() -> None:
    api = MemoryCore()
    _run(api, [])
    api.objects[("ConfigMap", "edge", "sig-public")]["data"]["public.pem"] = "-----BEGIN PUBLIC KEY-----\nother\n"
    with pytest.raises(SystemExit, match="does not match Secret edge/sig"):
        _run(api, [])


def test_secret_without_private_pem_is_reported() -> None:
    api = MemoryCore()
    api.objects[("Secret", "edge", "sig")] = {"metadata": {"name": "sig"}, "data": {"other": "eA=="}}
    with pytest.raises(SystemExit, match="exists without key private.pem"):
        _run(api, [])
