"""The product ships only the product; the test infrastructure is a distribution of its own.

Builds both wheels (``pip wheel --no-deps --no-build-isolation``: offline, a few seconds), looks
inside the product's, and installs the dev distribution's into a fresh venv where a subset of its
conformance suite runs with the fixtures of its ``pytest11`` plugin.
"""

from __future__ import annotations

import email
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEV = ROOT / "edgemodel-dev"
# Conformance tests the installed dev wheel runs; they use only the plugin's fixtures and the
# emulator's public API (no helpers of this repository's tests/).
WHEEL_CONFORMANCE = [ROOT / "tests" / "dev" / "test_emulator_conformance.py"]
TEST_INFRA = re.compile(r"^\s*(import pytest|from pytest|import edgemodel_dev|from edgemodel_dev|from _pytest)", re.M)


def sources(project: Path, into: Path) -> Path:
    """The project's files that git tracks or would track (no build/, .venv, caches), copied to
    ``into``: a wheel built there cannot pick up stale build output or ignored files."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", "."],
                            cwd=project, capture_output=True, check=True, timeout=60).stdout.decode()
    for rel in filter(None, listed.split("\0")):
        src = project / rel
        if src.is_file() and not rel.startswith(("tests/", "bench/", "edgemodel-dev/")):
            (into / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, into / rel)
    return into


def build_wheel(project: Path, out: Path) -> Path:
    tree = sources(project, out / f"src-{project.name}")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(out), str(tree)], check=True, capture_output=True, text=True,
                   timeout=300, cwd=out)
    name = "edgemodel_dev" if project == DEV else "edgemodel"
    (wheel,) = out.glob(f"{name}-*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("wheels")
    return {"edgemodel": build_wheel(ROOT, out), "edgemodel-dev": build_wheel(DEV, out)}


def test_product_wheel_holds_no_emulator_demo_or_pytest_code(wheels: dict[str, Path]) -> None:
    with zipfile.ZipFile(wheels["edgemodel"]) as wheel:
        names = wheel.namelist()
        packages = sorted({n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")})
        assert packages == ["edge_agent", "edgemodel", "edgemodel_operator"]
        # The package roots are there (a wheel that lost them would pass the negative checks).
        assert "edgemodel/crds.py" in names
        assert "edge_agent/server.py" in names
        assert "edgemodel_operator/handlers.py" in names
        leaked = [n for n in names if re.search(r"edgemodel/(dev|demo)/|examples_models|builtin-schemas|testing\.py"
                                                r"|conftest\.py|(^|/)tests?/", n)]
        assert leaked == [], f"test infrastructure in the product wheel: {leaked}"
        importing = [n for n in names if n.endswith(".py") and TEST_INFRA.search(wheel.read(n).decode())]
        assert importing == [], f"product modules import pytest or edgemodel_dev: {importing}"
        metadata = email.message_from_bytes(wheel.read(next(n for n in names if n.endswith("METADATA"))))
    requires = metadata.get_all("Requires-Dist") or []
    image_extras = ("agent", "convert", "operator")
    # What `pip install .[agent]` / `.[convert]` / `.[operator]` (the images) pulls in.
    for req in requires:
        marker = re.search(r'extra\s*==\s*"([^"]+)"', req)
        if marker is None or marker.group(1) in image_extras:
            assert not re.match(r"(pytest|edgemodel-dev|edgemodel_dev|hypothesis|moto)\b", req), req
    assert not any(re.search(r'extra\s*==\s*"dev"', r) for r in requires), "the product has no dev extra any more"
    assert {e for e in metadata.get_all("Provides-Extra") or []} >= set(image_extras)


def test_dev_wheel_carries_its_package_data_and_entry_points(wheels: dict[str, Path]) -> None:
    with zipfile.ZipFile(wheels["edgemodel-dev"]) as wheel:
        names = set(wheel.namelist())
        entry_points = wheel.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert {"edgemodel_dev/builtin-schemas.json", "edgemodel_dev/py.typed",
            "edgemodel_dev/demo/examples/digits-edgemodel.yaml",
            "edgemodel_dev/demo/examples/digits-split-edgemodel.yaml",
            "edgemodel_dev/demo/examples/digits-federatedtraining.yaml"} <= names
    assert {f"edgemodel_dev/crds/{p.name}" for p in (ROOT / "crds").glob("*.yaml")} <= names
    assert not any(n.startswith(("edgemodel/", "edge_agent/", "edgemodel_operator/")) for n in names)
    assert "[pytest11]\nedgemodel_dev = edgemodel_dev.testing" in entry_points
    assert "edgemodel-dev = edgemodel_dev.cli:main" in entry_points


def test_package_data_copies_equal_their_sources() -> None:
    from edgemodel_dev.cluster import DEFAULT_CRDS
    from edgemodel_dev.demo.runner import EXAMPLES

    assert sorted(p.name for p in DEFAULT_CRDS.glob("*.yaml")) == sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    for crd in (ROOT / "crds").glob("*.yaml"):
        assert (DEFAULT_CRDS / crd.name).read_bytes() == crd.read_bytes(), (
            f"{DEFAULT_CRDS / crd.name} is stale: run `make crds`")
    for name in ("digits-edgemodel.yaml", "digits-split-edgemodel.yaml", "digits-federatedtraining.yaml"):
        assert (EXAMPLES / name).read_bytes() == (ROOT / "examples" / name).read_bytes(), (
            f"{EXAMPLES / name} is stale: run `make crds`")


def test_dev_wheel_installs_into_a_fresh_venv_and_passes_conformance_from_there(
        wheels: dict[str, Path], tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    # Both distributions from their wheels only (--no-deps, no index): nothing of the source checkout.
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
                    str(wheels["edgemodel"]), str(wheels["edgemodel-dev"])], check=True, capture_output=True,
                   timeout=300)
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # Third-party libraries (aiohttp, pytest, kubernetes, ...) come from the project's venv through a
    # plain path line: a .pth line does not run that folder's .pth files, so the editable installs
    # of edgemodel and edgemodel_dev there stay invisible (asserted below).
    (site / "zz-project-deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    work = tmp_path / "run"
    work.mkdir()
    for test in WHEEL_CONFORMANCE:
        shutil.copy(test, work / test.name)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PYTEST"))}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    where = subprocess.run(
        [str(python), "-c", "import edgemodel, edgemodel_dev, edgemodel_dev.cluster as c; "
         "print(edgemodel.__file__); print(edgemodel_dev.__file__); print(c.DEFAULT_CRDS)"],
        capture_output=True, text=True, check=True, env=env, cwd=work).stdout.split()
    assert all(Path(p).is_relative_to(venv) for p in where), where
    assert sorted(p.name for p in Path(where[2]).glob("*.yaml")) == sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    cli = subprocess.run([str(venv / "bin" / "edgemodel-dev"), "up", "--help"], capture_output=True, text=True,
                         env=env, cwd=work, timeout=60)
    assert cli.returncode == 0, cli.stderr
    assert "--nodes" in cli.stdout
    result = subprocess.run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(work), "-c", os.devnull,
         "-o", "asyncio_mode=auto", "-W", "error", "-W", "ignore::DeprecationWarning",
         # the 3 s waits of the future-resourceVersion check run in the main suite only
         "-k", "not future_resource_version", *[t.name for t in WHEEL_CONFORMANCE]],
        capture_output=True, text=True, env=env, cwd=work, timeout=600)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    summary = result.stdout.strip().splitlines()[-1]
    passed = re.search(r"(\d+) passed", summary)
    assert passed is not None, summary
    assert int(passed.group(1)) >= 9, summary
    assert "failed" not in summary, summary
    assert "error" not in summary, summary
