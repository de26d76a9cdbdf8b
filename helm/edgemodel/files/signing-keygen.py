"""Install hook of the edgemodel chart: make sure the fleet's ed25519 signing key exists.

Runs once per install/upgrade in the operator image (kubernetes client + cryptography). When the
Secret with ``private.pem`` already exists in the release namespace, its key is reused; otherwise a
new key pair is generated. The Secret is then created where it is missing (the release namespace
and every namespace conversion Jobs run in) and the public key is published in a ConfigMap
(``public.pem``) in the release namespace for the agents. Existing objects are never changed.

Environment: EDGEMODEL_KEYGEN_NAMESPACE (release namespace), EDGEMODEL_KEYGEN_JOB_NAMESPACES (JSON
list), EDGEMODEL_KEYGEN_SECRET, EDGEMODEL_KEYGEN_CONFIGMAP, EDGEMODEL_KEYGEN_LABELS (JSON object).
"""

from __future__ import annotations

import base64
import json
import os
import sys
from typing import Any, Protocol


class CoreApi(Protocol):
    """The few CoreV1Api calls this hook makes (get and create, nothing else)."""

    def read_namespaced_secret(self, name: str, namespace: str) -> Any: ...
    def create_namespaced_secret(self, namespace: str, body: Any) -> Any: ...
    def read_namespaced_config_map(self, name: str, namespace: str) -> Any: ...
    def create_namespaced_config_map(self, namespace: str, body: Any) -> Any: ...


def new_keypair() -> tuple[bytes, bytes]:
    """A fresh ed25519 key pair as (PKCS#8 private PEM, SubjectPublicKeyInfo public PEM)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return private, public_from_private(private)


def public_from_private(private_pem: bytes) -> bytes:
    """The public key PEM of an ed25519 private key PEM; ValueError for anything else."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = serialization.load_pem_private_key(private_pem, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("the existing signing Secret's private.pem is not an ed25519 key")
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _status(exc: Exception) -> int | None:
    return getattr(exc, "status", None)


def ensure_keys(
    api: CoreApi, namespace: str, job_namespaces: list[str], secret: str, configmap: str, labels: dict[str, str]
) -> list[str]:
    """Create what is missing; return one line per action for the log."""
    actions: list[str] = []
    try:
        found = api.read_namespaced_secret(secret, namespace)
        private = base64.b64decode((found.data or {})["private.pem"])
        actions.append(f"reused the key in Secret {namespace}/{secret}")
    except KeyError as exc:
        raise SystemExit(f"Secret {namespace}/{secret} exists without key private.pem; delete it or add the key") from exc
    except Exception as exc:
        if _status(exc) != 404:
            raise
        private, _ = new_keypair()
        actions.append("generated a new ed25519 key pair")
    public = public_from_private(private)
    meta = {"name": secret, "labels": labels}
    for ns in dict.fromkeys([namespace, *job_namespaces]):
        body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": {**meta, "namespace": ns},
                "data": {"private.pem": base64.b64encode(private).decode()}}
        if _create(lambda b, n=ns: api.create_namespaced_secret(n, b), body):
            actions.append(f"created Secret {ns}/{secret}")
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": configmap, "namespace": namespace, "labels": labels},
          "data": {"public.pem": public.decode()}}
    if _create(lambda b: api.create_namespaced_config_map(namespace, b), cm):
        actions.append(f"created ConfigMap {namespace}/{configmap}")
    else:
        existing = api.read_namespaced_config_map(configmap, namespace)
        if (existing.data or {}).get("public.pem", "").strip() != public.decode().strip():
            raise SystemExit(
                f"ConfigMap {namespace}/{configmap} holds a public key that does not match Secret {namespace}/{secret}; "
                "agents would reject every artifact: delete the ConfigMap and upgrade the release again"
            )
    return actions


def _create(call: Any, body: dict[str, Any]) -> bool:
    """Create an object; False when it already exists (409)."""
    try:
        call(body)
    except Exception as exc:
        if _status(exc) == 409:
            return False
        raise
    return True


def main() -> int:
    from kubernetes import client, config

    config.load_incluster_config()
    env = os.environ
    actions = ensure_keys(
        client.CoreV1Api(),
        namespace=env["EDGEMODEL_KEYGEN_NAMESPACE"],
        job_namespaces=json.loads(env.get("EDGEMODEL_KEYGEN_JOB_NAMESPACES", "[]")),
        secret=env["EDGEMODEL_KEYGEN_SECRET"],
        configmap=env["EDGEMODEL_KEYGEN_CONFIGMAP"],
        labels=json.loads(env.get("EDGEMODEL_KEYGEN_LABELS", "{}")),
    )
    for line in actions:
        print(f"signing key: {line}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
