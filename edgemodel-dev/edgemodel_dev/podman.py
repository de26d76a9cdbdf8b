"""The local kubelet's container runtime: a pod's container as a real podman container.

With ``LocalCluster(container_runtime="podman")`` (``edgemodel-dev up --container-runtime podman``)
the kubelet runs the containers of Job pods from their images (which must exist locally: nothing
is pulled) with what the pod spec asks for, as a real node would: the user and groups
(``runAsUser``/``runAsGroup``, else the image's ``USER``; ``fsGroup`` and ``supplementalGroups``),
``readOnlyRootFilesystem``, capabilities, ``allowPrivilegeEscalation``, CPU and memory limits,
``command``/``args`` over the image's entrypoint, ``env``, ``workingDir`` and the pod's volumes
bind-mounted at their ``mountPath`` (Secret, ConfigMap and downward API files owned by root with
group ``fsGroup`` and their real mode, read-only). Like every pod of the local kubelet, the
container shares the host's network (its pod IP is 127.0.0.1), so it reaches the API and the
artifact store on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from pathlib import Path
from typing import Any

from edgemodel_dev.containers import ULIMITS, Engine
from edgemodel_dev.fileaccess import Identity
from edgemodel_dev.podenv import ContainerConfigError, expand, parse_quantity

JSON = dict[str, Any]
KEYED = ("secret", "configMap", "downwardAPI")
RUNTIMES = ("process", "podman")


class PodmanRuntime:
    """Builds ``podman run`` command lines for the kubelet and removes what a killed run leaves."""

    def __init__(self, engine: Engine | None = None, scope: str = "jobs") -> None:
        self.engine = engine or Engine.find()
        self.scope = scope
        self._users: dict[str, tuple[int, int]] = {}

    def wants(self, pod: JSON) -> bool:
        """Whether this pod's containers run in podman (``scope`` jobs: pods owned by a Job; all: every pod)."""
        if self.scope == "all":
            return True
        return any(ref.get("kind") == "Job" for ref in (pod.get("metadata") or {}).get("ownerReferences") or [])

    def image_user(self, image: str) -> tuple[int, int]:
        """The image's ``USER`` as (uid, gid); root when it names none. Raises when the image is missing."""
        if image not in self._users:
            proc = self.engine.run(["image", "inspect", "--format", "{{.Config.User}}", image], check=False,
                                   timeout=60)
            if proc.returncode != 0:
                raise ContainerConfigError(
                    "ErrImageNeverPull", f'image "{image}" is not present on the node and the local kubelet pulls '
                                         "nothing: build it (edgemodel_dev.images, docs/images.md)")
            user = proc.stdout.strip()
            uid, _, gid = user.partition(":")
            if uid and not uid.isdigit():
                raise ContainerConfigError("CreateContainerConfigError",
                                           f'image "{image}" has a non-numeric USER {user!r}')
            self._users[image] = (int(uid or 0), int(gid or uid or 0))
        return self._users[image]

    @staticmethod
    def container_name(pod: JSON, container: JSON) -> str:
        meta = pod["metadata"]
        return f"k8s_{container['name']}_{meta['name']}_{meta['namespace']}_{meta['uid'][:8]}"

    def run_argv(self, pod: JSON, container: JSON, identity: Identity, env: dict[str, str],
                 volumes: dict[str, Path], termination: Path) -> list[str]:
        """``podman run`` for ``container``; ``volumes`` maps volume names to their local folders."""
        spec = pod.get("spec") or {}
        sc = container.get("securityContext") or {}
        argv = [*self.engine.argv, "run", "--rm", "--name", self.container_name(pod, container), "--pull", "never",
                "--network", "host", "--hostname", pod["metadata"]["name"], *ULIMITS, "--stop-timeout",
                str(int(spec.get("terminationGracePeriodSeconds", 30))),
                "--user", f"{identity.uid}:{identity.gid}"]
        for group in identity.groups:
            argv += ["--group-add", str(group)]
        if sc.get("readOnlyRootFilesystem"):
            argv.append("--read-only")
        caps = sc.get("capabilities") or {}
        for cap in caps.get("drop") or []:
            argv += ["--cap-drop", str(cap)]
        for cap in caps.get("add") or []:
            argv += ["--cap-add", str(cap)]
        if sc.get("allowPrivilegeEscalation") is False:
            argv += ["--security-opt", "no-new-privileges"]
        limits = (container.get("resources") or {}).get("limits") or {}
        if "memory" in limits:
            argv += ["--memory", str(int(parse_quantity(limits["memory"])))]
        if "cpu" in limits:
            argv += ["--cpus", f"{parse_quantity(limits['cpu']):g}"]
        by_name = {v["name"]: v for v in spec.get("volumes") or []}
        for mount in container.get("volumeMounts") or []:
            volume = by_name.get(mount.get("name", ""))
            local = volumes.get(mount.get("name", ""))
            if volume is None or local is None:
                continue
            if mount.get("subPath"):
                local = local / mount["subPath"]
            read_only = mount.get("readOnly") or any(k in volume for k in KEYED)
            argv += ["-v", f"{local}:{mount['mountPath']}:{'ro' if read_only else 'rw'}"]
        argv += ["-v", f"{termination}:{container.get('terminationMessagePath') or '/dev/termination-log'}:rw"]
        for key, value in env.items():
            argv += ["--env", f"{key}={value}"]
        if container.get("workingDir"):
            argv += ["--workdir", str(container["workingDir"])]
        command = [expand(str(c), env) for c in container.get("command") or []]
        if command:
            argv += ["--entrypoint", json.dumps(command)]
        argv.append(str(container.get("image", "")))
        argv += [expand(str(a), env) for a in container.get("args") or []]
        return argv

    async def remove(self, pod: JSON, container: JSON) -> None:
        """Remove the container if a killed ``podman run`` left it behind."""
        with contextlib.suppress(OSError):
            proc = await asyncio.create_subprocess_exec(
                *self.engine.argv, "rm", "--force", "--time", "0", "--ignore", self.container_name(pod, container),
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
            await proc.wait()


def apply_ownership(path: Path, group: int, mode: int) -> None:
    """The owner (root), group and mode a real kubelet gives a Secret/ConfigMap file."""
    if os.geteuid() == 0:
        os.chown(path, 0, group)
    os.chmod(path, mode)


def runtime_for(name: str, scope: str = "jobs") -> PodmanRuntime | None:
    if name not in RUNTIMES:
        raise ValueError(f"container runtime {name!r}: choose from {', '.join(RUNTIMES)}")
    return PodmanRuntime(scope=scope) if name == "podman" else None
