"""Where the API server is and how to log in: a kubeconfig file or the pod's service account.

One loader for the operator and the agent (stdlib and PyYAML: the agent never imports the
``kubernetes`` package): kubeconfig contexts, bearer tokens and token files, client certificates and
CAs as files or inline data, ``insecure-skip-tls-verify``; in a pod, the service account's token
(re-read by the client, since projected tokens rotate), CA and namespace. Exec and auth-provider
plugins are not supported (an error says so).
"""

from __future__ import annotations

import base64
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from edgemodel.errors import UserError

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@dataclass
class Credentials:
    """Where the API server is and how to authenticate."""

    server: str
    token: str | None = None
    token_file: Path | None = None
    ca_file: Path | None = None
    ca_data: bytes | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    insecure: bool = False
    namespace: str | None = None
    """The default namespace (the pod's, or the kubeconfig context's)."""

    def ssl_context(self) -> ssl.SSLContext | bool:
        """TLS settings for aiohttp (True = defaults, e.g. for plain http)."""
        if not self.server.startswith("https"):
            return True
        return tls_context(verify=not self.insecure, ca_file=self.ca_file, ca_data=self.ca_data,
                           cert_file=self.client_cert, key_file=self.client_key)


def tls_context(
    *, verify: bool = True, ca_file: str | Path | None = None, ca_data: bytes | None = None,
    cert_file: str | Path | None = None, key_file: str | Path | None = None,
) -> ssl.SSLContext:  # fmt: skip
    """TLS client settings: the given CA (else the system's) or no verification, and a client certificate."""
    if verify:
        ctx = ssl.create_default_context(
            cafile=str(ca_file) if ca_file else None, cadata=ca_data.decode() if ca_data else None
        )
    else:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert_file and key_file:
        ctx.load_cert_chain(cert_file, key_file)
    return ctx


def _data_file(data: str, suffix: str, folder: Path) -> Path:
    fd, name = tempfile.mkstemp(suffix=suffix, dir=folder)
    with os.fdopen(fd, "wb") as fh:
        fh.write(base64.b64decode(data))
    os.chmod(name, 0o600)
    return Path(name)


def load_kubeconfig(path: Path, context: str | None = None, scratch: Path | None = None) -> Credentials:
    """Credentials of the current (or given) context of a kubeconfig file.

    Inline client certificates and keys are written to files 0600 in ``scratch`` (a new temporary
    folder by default): Python's ssl module loads them only from files.
    """
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"--kubeconfig {path}: cannot read it as YAML ({exc})") from exc
    if not isinstance(config, dict):
        raise UserError(f"--kubeconfig {path}: not a kubeconfig (expected a mapping with clusters, users, contexts)")
    name = context or config.get("current-context")

    def pick(section: str, wanted: str | None) -> dict[str, Any]:
        for item in config.get(section) or []:
            if isinstance(item, dict) and item.get("name") == wanted:
                return dict(item.get(section[:-1]) or {})
        raise UserError(f"--kubeconfig {path}: no {section[:-1]} named {wanted!r}; check current-context")

    ctx = pick("contexts", name)
    cluster = pick("clusters", ctx.get("cluster"))
    user = pick("users", ctx.get("user")) if ctx.get("user") else {}
    if user.get("exec") or user.get("auth-provider"):
        raise UserError(f"--kubeconfig {path}: user {ctx.get('user')!r} logs in with an exec or auth-provider plugin, "
                        "which edgemodel does not run; use a token, a token file or a client certificate")
    base = path.parent

    def rel(value: str | None) -> Path | None:
        return (base / value) if value and not os.path.isabs(value) else (Path(value) if value else None)

    server = str(cluster.get("server") or "").rstrip("/")
    if not server:
        raise UserError(f"--kubeconfig {path}: cluster {ctx.get('cluster')!r} has no server URL")
    cert = rel(user.get("client-certificate"))
    key = rel(user.get("client-key"))
    if user.get("client-certificate-data") or user.get("client-key-data"):  # ssl wants files
        folder = scratch or Path(tempfile.mkdtemp(prefix="edgemodel-kubeconfig-"))
        if user.get("client-certificate-data"):
            cert = _data_file(user["client-certificate-data"], ".crt", folder)
        if user.get("client-key-data"):
            key = _data_file(user["client-key-data"], ".key", folder)
    ca_data = cluster.get("certificate-authority-data")
    return Credentials(
        server=server,
        token=user.get("token"),
        token_file=rel(user.get("tokenFile")),
        ca_file=rel(cluster.get("certificate-authority")),
        ca_data=base64.b64decode(ca_data) if ca_data else None,
        client_cert=cert,
        client_key=key,
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        namespace=ctx.get("namespace") or None,
    )


def in_cluster_credentials(account: Path = SERVICE_ACCOUNT) -> Credentials:
    """Credentials of the pod's service account."""
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise UserError("--in-cluster: KUBERNETES_SERVICE_HOST is not set; run inside a pod or pass --kubeconfig")
    if not (account / "token").is_file():
        raise UserError(f"--in-cluster: {account / 'token'} is missing; mount the service account token")
    host = f"[{host}]" if ":" in host else host
    ns_file = account / "namespace"
    namespace = ns_file.read_text().strip() if ns_file.is_file() else None
    return Credentials(server=f"https://{host}:{port}", token_file=account / "token", ca_file=account / "ca.crt",
                       namespace=namespace or None)


def default_kubeconfig() -> Path | None:
    """The first existing file of ``$KUBECONFIG`` (a path list), else ``~/.kube/config``; None without one."""
    listed = [Path(p) for p in os.environ.get("KUBECONFIG", "").split(os.pathsep) if p]
    for candidate in [*listed, Path.home() / ".kube" / "config"]:
        if candidate.is_file():
            return candidate
    return None


def load_credentials(kubeconfig: Path | None = None, context: str | None = None,
                     account: Path = SERVICE_ACCOUNT) -> Credentials:
    """The given kubeconfig; without one the pod's service account when running in a pod, else the default
    kubeconfig (``$KUBECONFIG`` or ``~/.kube/config``)."""
    if kubeconfig is not None:
        return load_kubeconfig(kubeconfig, context)
    if os.environ.get("KUBERNETES_SERVICE_HOST") and (account / "token").is_file():
        return in_cluster_credentials(account)
    found = default_kubeconfig()
    if found is None:
        raise UserError("no Kubernetes credentials: not running in a pod (no KUBERNETES_SERVICE_HOST and service "
                        f"account token in {account}), no $KUBECONFIG and no ~/.kube/config; pass --kubeconfig")
    return load_kubeconfig(found, context)
