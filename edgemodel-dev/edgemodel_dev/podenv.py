"""How the local kubelet turns a container spec into a process: environment (downward API,
ConfigMap and Secret references, ``$(VAR)`` expansion), volume mount paths and the command line.

Container paths are mapped onto local folders by rewriting every occurrence of a volume's
``mountPath`` (at a path boundary) in the command, args, env values and working directory; the
mapping is also passed as JSON in ``EDGEMODEL_MOUNTS`` for programs that build paths themselves.
"""

from __future__ import annotations

import base64
import binascii
import math
import os
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

JSON = dict[str, Any]
Lookup = Callable[[str, str], JSON | None]  # (namespace, name) -> ConfigMap/Secret or None


class ContainerConfigError(Exception):
    """The container cannot start; ``reason`` is the waiting reason (CreateContainerConfigError...)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Mount:
    """A container path and the local folder (or file) standing in for it."""

    container_path: str
    local_path: Path


_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.\-]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: unknown references stay as they are, ``$$`` is a literal ``$``."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _VAR.sub(replace, text)


def substitute(text: str, mounts: list[Mount]) -> str:
    """Rewrite container paths (longest mount first) into their local folders."""
    for mount in sorted(mounts, key=lambda m: len(m.container_path), reverse=True):
        path = mount.container_path.rstrip("/") or "/"
        pattern = re.compile(r"(?<![\w.\-])" + re.escape(path) + r"(?![\w.\-])")
        local = str(mount.local_path)
        text = pattern.sub(lambda _m: local, text)  # noqa: B023 (used at once, inside the iteration)
    return text


def parse_quantity(value: str | int | float) -> float:
    """``500m`` -> 0.5, ``1Gi`` -> 1073741824, ``2`` -> 2."""
    text = str(value).strip()
    suffixes = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
                "n": 1e-9, "u": 1e-6, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}
    for suffix in sorted(suffixes, key=len, reverse=True):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * suffixes[suffix]
    return float(text)


def _label_key(path: str, prefix: str) -> str | None:
    match = re.match(rf"^{re.escape(prefix)}\[['\"](.+)['\"]\]$", path)
    return match.group(1) if match else None


def field_ref(pod: JSON, path: str) -> str:
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.hostIP": status.get("hostIP") or "127.0.0.1",
        "status.hostIPs": status.get("hostIP") or "127.0.0.1",
        "status.podIP": status.get("podIP") or "127.0.0.1",
        "status.podIPs": status.get("podIP") or "127.0.0.1",
    }
    if path in simple:
        return str(simple[path] or "")
    for prefix, source in (("metadata.labels", meta.get("labels")), ("metadata.annotations", meta.get("annotations"))):
        key = _label_key(path, prefix)
        if key is not None:
            return str((source or {}).get(key, ""))
    if path == "metadata.labels":
        return "\n".join(f'{k}="{v}"' for k, v in sorted((meta.get("labels") or {}).items()))
    if path == "metadata.annotations":
        return "\n".join(f'{k}="{v}"' for k, v in sorted((meta.get("annotations") or {}).items()))
    raise ContainerConfigError("CreateContainerConfigError", f"unsupported fieldRef fieldPath {path!r}")


def resource_ref(container: JSON, ref: JSON) -> str:
    resource = str(ref.get("resource", ""))
    kind, _, name = resource.partition(".")
    resources = container.get("resources") or {}
    value = (resources.get(kind) or {}).get(name) or (resources.get("limits") or {}).get(name)
    if value is None:
        value = str(os.cpu_count() or 1) if name == "cpu" else str(_memory_bytes())
    divisor = parse_quantity(ref.get("divisor", "1") or "1")
    return str(int(math.ceil(parse_quantity(value) / divisor)))


def _memory_bytes() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError):
        return 8 * 2**30


def _decode(secret: JSON, key: str) -> str | None:
    data = secret.get("data") or {}
    if key not in data:
        return None
    try:
        return base64.b64decode(data[key]).decode("utf-8", errors="replace")
    except (binascii.Error, ValueError):
        return None


def container_env(
    pod: JSON,
    container: JSON,
    configmaps: Lookup,
    secrets: Lookup,
    base: dict[str, str],
) -> dict[str, str]:
    """The process environment: ``base``, then ``envFrom``, then ``env`` (with ``$(VAR)`` expansion)."""
    namespace = (pod.get("metadata") or {}).get("namespace") or "default"
    env = dict(base)
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        if "configMapRef" in source:
            ref = source["configMapRef"]
            cm = configmaps(namespace, ref.get("name", ""))
            if cm is None and not ref.get("optional"):
                raise ContainerConfigError("CreateContainerConfigError", f'configmap "{ref.get("name")}" not found')
            for key, value in ((cm or {}).get("data") or {}).items():
                env[prefix + key] = str(value)
        if "secretRef" in source:
            ref = source["secretRef"]
            secret = secrets(namespace, ref.get("name", ""))
            if secret is None and not ref.get("optional"):
                raise ContainerConfigError("CreateContainerConfigError", f'secret "{ref.get("name")}" not found')
            for key in (secret or {}).get("data") or {}:
                env[prefix + key] = _decode(secret or {}, key) or ""
    for var in container.get("env") or []:
        name = var.get("name")
        if not name:
            continue
        if "value" in var:
            env[name] = expand(str(var.get("value") or ""), env)
            continue
        source = var.get("valueFrom") or {}
        if "fieldRef" in source:
            env[name] = field_ref(pod, str(source["fieldRef"].get("fieldPath", "")))
        elif "resourceFieldRef" in source:
            env[name] = resource_ref(container, source["resourceFieldRef"])
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            cm = configmaps(namespace, ref.get("name", ""))
            value = ((cm or {}).get("data") or {}).get(ref.get("key", ""))
            if value is None:
                if ref.get("optional"):
                    continue
                what = f'configmap "{ref.get("name")}"' if cm is None else \
                    f'key "{ref.get("key")}" in configmap "{ref.get("name")}"'
                raise ContainerConfigError("CreateContainerConfigError", f"{what} not found")
            env[name] = str(value)
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            secret = secrets(namespace, ref.get("name", ""))
            value = _decode(secret, ref.get("key", "")) if secret else None
            if value is None:
                if ref.get("optional"):
                    continue
                what = f'secret "{ref.get("name")}"' if secret is None else \
                    f'key "{ref.get("key")}" in secret "{ref.get("name")}"'
                raise ContainerConfigError("CreateContainerConfigError", f"{what} not found")
            env[name] = value
        else:
            env[name] = ""
    return env


def venv_bin() -> Path:
    """The folder of the running interpreter (the project's venv ``bin``)."""
    return Path(sys.executable).parent


def resolve_program(program: str, path_env: str) -> str:
    """``python``/``python3`` -> this interpreter; other bare names from the venv first, then PATH."""
    if "/" in program:
        return program
    if program in ("python", "python3", f"python3.{sys.version_info.minor}"):
        return sys.executable
    candidate = venv_bin() / program
    if candidate.exists():
        return str(candidate)
    found = shutil.which(program, path=path_env)
    if found is None:
        raise ContainerConfigError(
            "ContainerCannotRun",
            f'exec: "{program}": executable file not found in the venv ({venv_bin()}) or in $PATH',
        )
    return found


def command_line(container: JSON, env: dict[str, str], mounts: list[Mount]) -> list[str]:
    """``command`` + ``args`` expanded and with mount paths rewritten; needs an explicit command."""
    command = [str(x) for x in container.get("command") or []]
    args = [str(x) for x in container.get("args") or []]
    argv = command + args
    if not argv:
        raise ContainerConfigError(
            "ContainerCannotRun",
            f"container {container.get('name')!r} has no command: the local kubelet runs no images, so set "
            "`command` (e.g. [\"edgemodel\", \"convert\", ...] or [\"python\", \"-c\", \"...\"])",
        )
    argv = [substitute(expand(a, env), mounts) for a in argv]
    argv[0] = resolve_program(argv[0], env.get("PATH", os.defpath))
    return argv
