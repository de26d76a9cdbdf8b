"""Layering: import-linter contracts, a pure API package, no package named `operator`."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_import_linter_contracts_hold() -> None:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--no-cache"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 5 kept, 0 broken." in result.stdout, result.stdout
    assert "infrastructure or pytest KEPT" in result.stdout, result.stdout


def test_api_package_imports_only_pydantic_and_stdlib() -> None:
    allowed_third_party = {"pydantic", "pydantic_core"}
    offenders = []
    for path in sorted((ROOT / "edgemodel" / "api").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if name.startswith("edgemodel.api") or top in sys.stdlib_module_names or top in allowed_third_party:
                    continue
                offenders.append(f"{path.name}: {name}")
    assert offenders == []


def test_operator_folder_is_not_a_package() -> None:
    assert not (ROOT / "operator" / "__init__.py").exists(), "operator/ must stay a plain folder"
    import operator

    assert hasattr(operator, "eq"), "the stdlib operator module must not be shadowed"
    assert (ROOT / "operator" / "edgemodel_operator" / "__init__.py").is_file()


def test_agent_cli_import_pulls_neither_torch_nor_kopf() -> None:
    code = (
        "import sys, edgemodel.cli, edgemodel.cli.agent, edge_agent; "
        "from edgemodel.cli import build_parser; build_parser(); "
        "bad = [m for m in ('torch', 'kopf', 'kubernetes', 'onnx') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
