"""The container engine on this machine: podman with runc and cgroupfs (crun fails on hybrid
cgroups here), with ulimits within the host's hard limits. ``scripts/install-tools.sh`` installs it.

    engine = Engine.find()
    engine.run(["run", "--rm", "--network", "none", "localhost/debian-min", "true"])
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from edgemodel.errors import UserError

ULIMITS = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024")
"""podman's default ulimits exceed this host's hard limits."""
RESTRICTED = ("--cap-drop", "ALL", "--security-opt", "no-new-privileges")
"""What the chart's containerSecurityContext asks for (drop ALL capabilities, no privilege escalation)."""
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


@dataclass(frozen=True)
class Engine:
    """``podman --runtime runc --cgroup-manager cgroupfs``; ``run`` raises with podman's stderr."""

    podman: str

    @classmethod
    def find(cls) -> Engine:
        podman = shutil.which("podman")
        missing = [tool for tool in ("podman", "runc") if shutil.which(tool) is None]
        if podman is None or missing:
            raise UserError(f"{', '.join(missing)} not found: run `make tools` (scripts/install-tools.sh installs "
                            "podman, runc, buildah and debootstrap from Debian as root)")
        return cls(podman)

    @property
    def argv(self) -> list[str]:
        return [self.podman, "--runtime", "runc", "--cgroup-manager", "cgroupfs"]

    def run(self, args: list[str], *, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([*self.argv, *args], capture_output=True, text=True, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise RuntimeError(f"podman {' '.join(args[:3])} ... exited with {proc.returncode}: "
                               f"{(proc.stderr or proc.stdout).strip()[-3000:]}")
        return proc

    def image_exists(self, ref: str) -> bool:
        return self.run(["image", "exists", ref], check=False, timeout=60).returncode == 0

    def image_size(self, ref: str) -> int:
        return int(self.run(["image", "inspect", "--format", "{{.Size}}", ref], timeout=60).stdout.strip())

    def image_user(self, ref: str) -> str:
        """The image's ``USER`` (e.g. ``10001:10001``; empty for root)."""
        return self.run(["image", "inspect", "--format", "{{.Config.User}}", ref], timeout=60).stdout.strip()
