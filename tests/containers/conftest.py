"""Fixtures for the real-container tests: the project's images built (or reused) with podman, and
helpers to run containers non-root, read-only and without network."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgemodel.errors import UserError
from edgemodel_dev.containers import RESTRICTED, ULIMITS, Engine
from edgemodel_dev.examples_models import DigitsExample, write_digits_example
from edgemodel_dev.images import IMAGES, Built, build_images

ROOT = Path(__file__).resolve().parents[2]
USER = "10001:10001"
REPORT = ROOT / ".tools" / "image-builds.json"


@pytest.fixture(scope="session")
def engine() -> Engine:
    """podman, installed by scripts/install-tools.sh (run here once when missing); fails saying why."""
    try:
        return Engine.find()
    except UserError:
        subprocess.run([str(ROOT / "scripts" / "install-tools.sh")], check=False, timeout=900)
    try:
        return Engine.find()
    except UserError as exc:
        pytest.fail(f"{exc} (the real-container tests need it; installing needs root and apt-get)", pytrace=False)


@pytest.fixture(scope="session")
def images(engine: Engine) -> dict[str, Built]:
    """The base, agent, operator and converter images; their build times and sizes go to .tools/image-builds.json."""
    started = time.monotonic()
    built = build_images(IMAGES)
    report: dict[str, object] = {name: {"ref": b.ref, "built": b.built, "seconds": round(b.seconds, 1),
                     "bytes": engine.image_size(b.ref)} for name, b in built.items()}
    report["total_seconds"] = round(time.monotonic() - started, 1)
    REPORT.parent.mkdir(exist_ok=True)
    REPORT.write_text(json.dumps(report, indent=2) + "\n")
    print("image builds:", json.dumps(report))
    return built


def restricted_run(engine: Engine, image: str, *args: str, name: str, network: str = "none",
                   volumes: tuple[str, ...] = (), env: dict[str, str] | None = None,
                   detach: bool = False, timeout: float = 300, entrypoint: str | None = None,
                   ) -> subprocess.CompletedProcess[str]:
    """``podman run`` as uid 10001 with a read-only root file system, no capabilities, only loopback."""
    argv = ["run", "--name", name, "--user", USER, "--read-only", "--network", network, *ULIMITS, *RESTRICTED,
            "--pull", "never", "--tmpfs", "/tmp:rw,size=512m,mode=1777"]
    if entrypoint:
        argv += ["--entrypoint", entrypoint]
    argv.append("--detach" if detach else "--rm")
    for volume in volumes:
        argv += ["-v", volume]
    for key, value in (env or {}).items():
        argv += ["--env", f"{key}={value}"]
    return engine.run([*argv, image, *args], check=False, timeout=timeout)


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> DigitsExample:
    """The digits CNN (TorchScript), calibration and validation data; the folder is readable by uid 10001."""
    example = write_digits_example(tmp_path_factory.mktemp("digits"), epochs=12, calib_samples=64, val_samples=200)
    example.directory.chmod(0o755)
    return example


@pytest.fixture
def containers(engine: Engine) -> Iterator[list[str]]:
    """Names of containers a test starts; removed at the end."""
    names: list[str] = []
    yield names
    for name in reversed(names):  # the ones that joined another's network namespace first
        proc = engine.run(["rm", "--force", "--time", "2", "--ignore", name], check=False, timeout=60)
        assert proc.returncode == 0, f"could not remove container {name}: {proc.stderr}"


def in_netns(engine: Engine, container: str, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a host program (e.g. this venv's python) inside a container's network namespace."""
    pid = engine.run(["inspect", "--format", "{{.State.Pid}}", container], timeout=30).stdout.strip()
    return subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", "--", *argv], capture_output=True, text=True,
                          timeout=timeout, check=False, env=dict(os.environ))
