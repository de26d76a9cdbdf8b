"""pytest fixtures for tests that need a Kubernetes API (the emulator, or a real cluster).

Use them from any test folder by importing them into that folder's ``conftest.py``::

    from edgemodel_dev.testing import kube_cluster, kube_cluster_auth  # noqa: F401

(or ``pytest_plugins = ["edgemodel_dev.testing"]`` in the top-level ``tests/conftest.py``).

Fixtures:

``kube_cluster``
    A fresh :class:`~edgemodel_dev.cluster.LocalCluster` per test (API + controllers + kubelet,
    no CRDs, no edge nodes): ``.url``, ``.kubeconfig``, ``.api_client()``, ``.kubectl(...)``,
    ``.apply_crds()``, ``.add_nodes(n)``, ``.run_on_nodes(cmd)``, ``.stop()``/``.start()``
    (API outage), ``.kubelet``, ``.get/.list/.create/.apply/.delete`` and ``.wait_for``.
``module_kube_cluster``
    The same, shared by the tests of one module (use distinct names or namespaces).
``kube_cluster_auth``
    A cluster with bearer-token auth on: ``.admin_token``, ``.agent_token(node)``,
    ``.agent_kubeconfig(node)`` (an agent may only touch its own EdgeAgent).
``real_cluster``
    For tests marked ``realcluster``: the cluster of ``$EDGEMODEL_KUBECONFIG``; the test fails
    (never skips) when that variable is not set.
``kubectl_path``
    The real kubectl binary; fails with the fix when it is not installed.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgemodel.errors import UserError
from edgemodel_dev.cluster import DEFAULT_CRDS, LocalCluster, find_kubectl

REAL_CLUSTER_ENV = "EDGEMODEL_KUBECONFIG"


def _start(state_dir: Path, **options: Any) -> LocalCluster:
    return LocalCluster(state_dir, bookmark_interval=1.0, **options).start()


@pytest.fixture
def kube_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """A fresh emulated cluster for one test."""
    cluster = _start(tmp_path / "kube")
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="module")
def module_kube_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One emulated cluster shared by the tests of a module."""
    cluster = _start(tmp_path_factory.mktemp("kube"))
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def kube_cluster_auth(tmp_path: Path) -> Iterator[LocalCluster]:
    """An emulated cluster that requires bearer tokens (admin and per-agent)."""
    cluster = _start(tmp_path / "kube", auth=True)
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def kubectl_path() -> Path:
    try:
        return find_kubectl()
    except UserError as exc:
        pytest.fail(str(exc))


class RealCluster:
    """The subset of the LocalCluster interface that works against a real cluster."""

    def __init__(self, kubeconfig: Path, state_dir: Path) -> None:
        self.kubeconfig = kubeconfig
        self.state_dir = state_dir

    def api_client(self) -> Any:
        import kubernetes

        return kubernetes.config.new_client_from_config(config_file=str(self.kubeconfig))

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True,
                timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, KUBECONFIG=str(self.kubeconfig))
        result = subprocess.run([str(find_kubectl()), *args], input=stdin, capture_output=True, text=True,
                                timeout=timeout, env=env, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    def apply_crds(self, paths: Iterable[Path | str] | None = None) -> list[str]:
        names = []
        for path in [Path(p) for p in (paths or [DEFAULT_CRDS])]:
            self.kubectl("apply", "-f", str(path))
            files = sorted(path.glob("*.yaml")) if path.is_dir() else [path]
            names += [d["metadata"]["name"] for f in files for d in yaml.safe_load_all(f.read_text()) if d]
        for name in names:
            self.kubectl("wait", "--for=condition=established", f"crd/{name}", "--timeout=60s")
        return names

    def stop(self) -> None:
        pytest.fail("a real cluster cannot simulate an API outage; mark the test for the emulator only")

    start = stop


@pytest.fixture
def real_cluster(tmp_path: Path) -> RealCluster:
    """The real cluster of ``$EDGEMODEL_KUBECONFIG`` (for tests marked ``realcluster``)."""
    value = os.environ.get(REAL_CLUSTER_ENV)
    if not value:
        pytest.fail(f"this test needs a real cluster: set {REAL_CLUSTER_ENV}=/path/to/kubeconfig "
                    "(or deselect it with -m 'not realcluster')")
    path = Path(value).expanduser()
    if not path.is_file():
        pytest.fail(f"{REAL_CLUSTER_ENV}={value}: no such kubeconfig file")
    return RealCluster(path, tmp_path)
