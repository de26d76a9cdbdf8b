"""The `edgemodel` console script: help, crds, validate, and one-line errors for user mistakes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edgemodel.cli import SUBCOMMANDS, main

ROOT = Path(__file__).resolve().parents[2]
EDGEMODEL = str(Path(sys.executable).parent / "edgemodel")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EDGEMODEL, *args], capture_output=True, text=True, timeout=120, check=False)


def test_help_lists_every_command() -> None:
    result = run("--help")
    assert result.returncode == 0
    for name in SUBCOMMANDS:
        assert name in result.stdout


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_subcommand_has_help(name: str) -> None:
    result = run(name, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: edgemodel" in result.stdout


def test_crds_check_passes_on_repo_and_fails_on_stale(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["crds", "--check", str(ROOT / "crds")]) == 0
    assert main(["crds", "--write", str(tmp_path)]) == 0
    (tmp_path / "edgemodel.io_edgemodels.yaml").write_text("stale\n")
    assert main(["crds", "--check", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "stale CRDs" in err
    assert "edgemodel crds --write" in err


def test_crds_print_is_valid_multi_document_yaml() -> None:
    import yaml

    result = run("crds")
    docs = list(yaml.safe_load_all(result.stdout))
    assert [d["metadata"]["name"] for d in docs] == ["edgemodels.edgemodel.io", "edgeagents.edgemodel.io",
                                                          "federatedtrainings.edgemodel.io"]


def test_validate_accepts_examples() -> None:
    files = sorted((ROOT / "examples").glob("*edgemodel*.yaml"))
    result = run("validate", *[a for f in files for a in ("-f", str(f))])
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("is valid") == len(files)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("apiVersion: edgemodel.io/v1alpha1\nkind: EdgeModel\nmetadata: {name: x}\nspec:\n  source: {uri: file:///m.pt, format: TorchScript}\n  inputs: [{name: x, shape: [-1]}]\n  rollout: {steps: [10, 50]}\n",
         "spec.rollout.steps: the last step must be 100"),
        ("apiVersion: edgemodel.io/v1alpha1\nkind: EdgeModel\nmetadata: {name: x}\nspec:\n  inputs: [{name: x, shape: [-1]}]\n",
         "spec.source: required field is missing"),
        ("kind: Deployment\napiVersion: apps/v1\n", "holds no EdgeModel"),
        ("a: [unclosed\n", "not valid YAML"),
    ],
)
def test_validate_bad_manifest_is_one_line_without_traceback(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    result = run("validate", "-f", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert expected in result.stderr


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    result = run("validate", "-f", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert "no such file" in result.stderr
