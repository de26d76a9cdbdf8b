"""Build the project's images (docker/*.Dockerfile) on this machine with podman, cached.

No image registry is reachable here, so the base image (Debian bookworm with Python 3.11, the
same Python as ``python:3.11-slim-bookworm``) is made with ``debootstrap`` and imported. Each image
is tagged with a hash of its inputs (Dockerfile, pyproject.toml, the source, the base, the build
arguments): an image whose inputs did not change is not built again, and within a build podman's
layer cache keeps the dependency layers (they change only with pyproject.toml).

    images = build_images(["agent", "converter"])   # {"agent": "localhost/edgemodel-agent:3f2a...", ...}

Builds use the host network for PyPI/Debian, the host's CA bundle and the host's local wheels
(``PIP_FIND_LINKS``, e.g. the CPU build of torch); containers run with no network.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import edgemodel
from edgemodel.errors import UserError
from edgemodel_dev.containers import CA_BUNDLE, ULIMITS, Engine

log = logging.getLogger(__name__)

REPO_ROOT = Path(edgemodel.__file__).resolve().parents[1]
SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates", "passwd")
BASE_REPO = "localhost/edgemodel-base"
IMAGES = ("agent", "operator", "converter")
SOURCES = ("pyproject.toml", "README.md", "edgemodel", "edge_agent", "operator", "docker/requirements.py")


@dataclass(frozen=True)
class Built:
    """One image: its reference, whether this call built it, and the seconds it took."""

    ref: str
    built: bool
    seconds: float


def debian_mirror() -> str:
    """The Debian mirror apt uses here (``URIs:`` of a deb822 source or a ``deb`` line)."""
    candidates = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in candidates:
        try:
            text = path.read_text()
        except OSError:
            continue
        for match in re.finditer(r"^(?:URIs:\s*|deb\s+(?:\[[^\]]*\]\s+)?)(\S+)", text, re.MULTILINE):
            if "security" not in match.group(1):
                return match.group(1)
    return "http://deb.debian.org/debian"


def _digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:16]


def base_image(engine: Engine) -> Built:
    """``localhost/edgemodel-base:<hash>``: a minbase bookworm + Python 3.11, made once per input."""
    mirror = debian_mirror()
    ref = f"{BASE_REPO}:{_digest(SUITE, mirror, *BASE_PACKAGES)}"
    if engine.image_exists(ref):
        return Built(ref, False, 0.0)
    if os.geteuid() != 0:
        raise UserError("building the base image needs root (debootstrap); run as root or import a Debian "
                        f"bookworm image with Python 3.11 as {ref}")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="edgemodel-rootfs-") as tmp:
        tarball = Path(tmp) / "rootfs.tar"
        log.info("Creating the base image %s from %s (%s)", ref, mirror, ", ".join(BASE_PACKAGES))
        _bootstrap(mirror, Path(tmp), tarball)
        engine.run(["import", "--change", 'CMD ["python3"]', str(tarball), ref], timeout=600)
    return Built(ref, True, time.monotonic() - started)


def _bootstrap(mirror: str, tmp: Path, tarball: Path) -> None:
    """A minbase bookworm with BASE_PACKAGES as a tarball (debootstrap; apt's caches left out)."""
    rootfs = tmp / "rootfs"
    argv = ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", SUITE, str(rootfs), mirror]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"debootstrap failed ({proc.returncode}): {(proc.stderr or proc.stdout)[-2000:]}")
    for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
        subprocess.run(["find", str(rootfs / junk), "-type", "f", "-delete"], check=False)
    subprocess.run(["tar", "-C", str(rootfs), "-cf", str(tarball), "."], check=True, timeout=600)


def _source_files(root: Path) -> list[Path]:
    files: list[Path] = []
    for name in SOURCES:
        path = root / name
        if path.is_file():
            files.append(path)
        else:
            files.extend(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                         and not p.name.endswith((".pyc", ".egg-info")) and ".egg-info" not in str(p))
    return sorted(files)


def _find_links() -> list[Path]:
    """Local wheel folders of the host's pip (``PIP_FIND_LINKS``), mounted into the builds."""
    value = os.environ.get("PIP_FIND_LINKS", "")
    return [Path(p) for p in value.split() if p and Path(p).is_dir()]


def build_args(name: str, base: str) -> dict[str, str]:
    args = {"BASE_IMAGE": base}
    links = _find_links()
    if links:
        args["PIP_FIND_LINKS"] = " ".join(str(p) for p in links)
    if CA_BUNDLE.is_file():
        args["PIP_CERT"] = str(CA_BUNDLE)
    if name == "converter" and links:
        # torch==2.13.0+cpu from the local wheels; other packages from PyPI.
        args["TORCH_INDEX_URL"] = "https://pypi.org/simple"
    return args


def image_ref(name: str, base: str, root: Path = REPO_ROOT) -> str:
    """``localhost/edgemodel-<name>:<hash of Dockerfile, sources, base and build args>``."""
    dockerfile = root / "docker" / f"{name}.Dockerfile"
    parts: list[str | bytes] = [dockerfile.read_bytes(), (root / ".dockerignore").read_bytes()]
    parts += sorted(f"{k}={v}" for k, v in build_args(name, base).items())
    for path in _source_files(root):
        parts += [str(path.relative_to(root)), path.read_bytes()]
    return f"localhost/edgemodel-{name}:{_digest(*parts)}"


def build_image(engine: Engine, name: str, base: str, root: Path = REPO_ROOT) -> Built:
    """Build docker/<name>.Dockerfile unless an image of the same inputs exists."""
    ref = image_ref(name, base, root)
    if engine.image_exists(ref):
        return Built(ref, False, 0.0)
    started = time.monotonic()
    argv = ["build", "--network", "host", *ULIMITS, "--layers", "-f", str(root / "docker" / f"{name}.Dockerfile"),
            "-t", ref, "-t", f"localhost/edgemodel-{name}:dev"]
    for key, value in build_args(name, base).items():
        argv += ["--build-arg", f"{key}={value}"]
    for link in _find_links():
        argv += ["-v", f"{link}:{link}:ro"]
    if CA_BUNDLE.is_file():
        argv += ["-v", f"{CA_BUNDLE}:{CA_BUNDLE}:ro"]
    log.info("Building %s from docker/%s.Dockerfile", ref, name)
    engine.run([*argv, str(root)], timeout=1800)
    seconds = time.monotonic() - started
    _untag_older(engine, ref)
    return Built(ref, True, seconds)


def _untag_older(engine: Engine, ref: str) -> None:
    """Drop the tags of builds of the same image older than a day (their shared layers stay cached;
    younger ones may belong to another checkout's tests running now)."""
    repo = ref.rsplit(":", 1)[0]
    listed = engine.run(["images", "--format", "{{.Repository}}:{{.Tag}}", "--filter", f"reference={repo}",
                         "--filter", "until=24h"], check=False, timeout=60)
    old = [line for line in listed.stdout.split() if line not in (ref, f"{repo}:dev") and line.startswith(repo + ":")]
    if old:
        engine.run(["rmi", "--ignore", *old], check=False, timeout=120)


def build_images(names: tuple[str, ...] | list[str] = IMAGES, root: Path = REPO_ROOT) -> dict[str, Built]:
    """Build (or reuse) the base image and the named images; returns name -> Built (``base`` too)."""
    unknown = [n for n in names if n not in IMAGES]
    if unknown:
        raise UserError(f"unknown image(s) {', '.join(unknown)}; choose from {', '.join(IMAGES)}")
    engine = Engine.find()
    base = base_image(engine)
    # In parallel: much of a cold build waits on downloads.
    with ThreadPoolExecutor(max_workers=len(names) or 1, thread_name_prefix="build") as pool:
        futures = {name: pool.submit(build_image, engine, name, base.ref, root) for name in names}
        return {"base": base, **{name: future.result() for name, future in futures.items()}}
