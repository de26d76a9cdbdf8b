"""API paths of Kubernetes resources."""

from __future__ import annotations

from urllib.parse import quote


def resource_path(group: str, version: str, plural: str, name: str | None = None, subresource: str | None = None,
                  namespace: str | None = None) -> str:  # fmt: skip
    """Path of a resource (core group when ``group`` is empty; namespaced when ``namespace`` is given)."""
    base = f"/api/{version}" if not group else f"/apis/{group}/{version}"
    if namespace:
        base += f"/namespaces/{quote(namespace, safe='')}"
    path = f"{base}/{plural}"
    if name:
        path += f"/{quote(name, safe='')}"
    if subresource:
        path += f"/{subresource}"
    return path


def resource_of(path: str) -> str:
    """The resource name of an API path, for metrics: /apis/batch/v1/namespaces/x/jobs/y -> jobs."""
    parts = [p for p in path.split("?")[0].split("/") if p]
    if "namespaces" in parts:
        i = parts.index("namespaces")
        parts = parts[i + 2:] if len(parts) > i + 2 else ["namespaces"]
    else:
        parts = parts[2:] if parts and parts[0] == "api" else parts[3:]
    if not parts:
        return "unknown"
    if len(parts) >= 3:
        return f"{parts[0]}/{parts[2]}"
    return parts[0]
