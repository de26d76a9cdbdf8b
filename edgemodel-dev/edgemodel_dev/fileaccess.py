"""Who a container runs as, and which of its Secret/ConfigMap files it may read.

A real kubelet writes the files of ``secret``, ``configMap`` and ``downwardAPI`` volumes owned by
root with ``items[].mode`` or ``defaultMode`` (default 0644); with a pod ``fsGroup`` it gives them
that group and adds ``r--r-----`` (these volumes are read-only). The container runs as
``runAsUser`` (container, then pod), else the image's ``USER``; its groups are ``runAsGroup`` (else
the image's), ``fsGroup`` and ``supplementalGroups``.

The local kubelet runs no images and its processes keep its own user, so it models this: each
such file is readable by the process exactly when the container's identity could read it on a real
node (unreadable files get mode 0000 and the process runs without the DAC-override capabilities,
so even root gets ``Permission denied``). That catches e.g. a key mounted 0400 for a non-root user
without ``fsGroup``.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from typing import Any

from edgemodel_dev.podenv import ContainerConfigError

JSON = dict[str, Any]
DEFAULT_MODE = 0o644
READ_ONLY_FSGROUP_MASK = 0o440
DEFAULT_IMAGE_USER = (10001, 10001)
"""What the local kubelet assumes an image's ``USER`` is when a pod asks for ``runAsNonRoot`` but
names no ``runAsUser``: the non-root user of this project's images (docker/*.Dockerfile)."""
DAC_CAPABILITIES = ("dac_override", "dac_read_search")


@dataclass(frozen=True)
class Identity:
    """The user and groups a container's processes run as."""

    uid: int
    gid: int
    groups: tuple[int, ...] = ()

    def can_read(self, owner: int, group: int, mode: int) -> bool:
        """Whether a file with this owner, group and mode is readable (root reads everything)."""
        if self.uid == 0:
            return True
        if owner == self.uid:
            return bool(mode & 0o400)
        if group == self.gid or group in self.groups:
            return bool(mode & 0o040)
        return bool(mode & 0o004)


def _security(obj: JSON) -> JSON:
    return obj.get("securityContext") or {}


def container_identity(
    pod: JSON, container: JSON, default: Identity, image_user: tuple[int, int] = DEFAULT_IMAGE_USER
) -> Identity:
    """The identity of ``container``; ``default`` stands for an image run without any user setting.

    Raises ContainerConfigError as a real kubelet does when ``runAsNonRoot`` meets uid 0.
    """
    pod_sc = _security(pod.get("spec") or {})
    sc = _security(container)
    uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
    gid = sc.get("runAsGroup", pod_sc.get("runAsGroup"))
    non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
    if uid is None:
        if non_root:
            uid, image_gid = image_user
        else:
            uid, image_gid = default.uid, default.gid
        gid = image_gid if gid is None else gid
    elif gid is None:
        gid = image_user[1] if uid == image_user[0] else 0
    if non_root and int(uid) == 0:
        raise ContainerConfigError(
            "CreateContainerConfigError", "container's runAsUser breaks non-root policy "
                                          f"(pod: {pod['metadata'].get('name')}, container: {container.get('name')})")
    groups = [int(g) for g in pod_sc.get("supplementalGroups") or []]
    if pod_sc.get("fsGroup") is not None:
        groups.insert(0, int(pod_sc["fsGroup"]))
    return Identity(int(uid), int(gid), tuple(dict.fromkeys(groups)))


def keyed_file_modes(pod: JSON, volume: JSON) -> tuple[int, int, dict[str, int]]:
    """(owner, group, {path: mode}) a real kubelet gives the files of a Secret/ConfigMap/downwardAPI volume.

    Paths are those of ``items`` (mode from ``items[].mode``, else ``defaultMode``); files of a
    source without ``items`` get ``defaultMode`` and are not listed (see :func:`file_mode`).
    """
    source = volume.get("secret") or volume.get("configMap") or volume.get("downwardAPI") or {}
    default = int(source.get("defaultMode", DEFAULT_MODE))
    fs_group = _security(pod.get("spec") or {}).get("fsGroup")
    group = int(fs_group) if fs_group is not None else 0
    modes: dict[str, int] = {}
    for item in source.get("items") or []:
        mode = int(item.get("mode", default))
        modes[str(item.get("path", ""))] = mode | READ_ONLY_FSGROUP_MASK if fs_group is not None else mode
    return 0, group, modes


def file_mode(pod: JSON, volume: JSON, path: str) -> int:
    """The mode a real kubelet gives the file ``path`` of a Secret/ConfigMap/downwardAPI volume."""
    source = volume.get("secret") or volume.get("configMap") or volume.get("downwardAPI") or {}
    _, _, modes = keyed_file_modes(pod, volume)
    if path in modes:
        return modes[path]
    mode = int(source.get("defaultMode", DEFAULT_MODE))
    if _security(pod.get("spec") or {}).get("fsGroup") is not None:
        mode |= READ_ONLY_FSGROUP_MASK
    return mode


def drop_dac_prefix() -> list[str]:
    """An argv prefix that runs a program without the DAC-override capabilities (root obeys file modes).

    Empty when the kubelet is not root (it has no such capabilities to drop).
    """
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise ContainerConfigError("ContainerCannotRun", "setpriv (util-linux) is needed to model file modes "
                                                         "when the local kubelet runs as root")
    caps = ",".join(f"-{c}" for c in DAC_CAPABILITIES)
    return [setpriv, f"--bounding-set={caps}", f"--inh-caps={caps}", "--"]
