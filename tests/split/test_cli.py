"""``python -m edgemodel.split``: candidates, build, profile and plan from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from edgemodel.split.__main__ import main
from tests.split import models


def test_candidates_build_profile_and_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "residual.onnx"
    onnx.save_model(models.residual_model(), str(path))
    assert main(["candidates", str(path)]) == 0
    out = capsys.readouterr().out
    assert "6 candidate cuts" in out
    assert "block_relu" in out
    assert "reluA" not in out
    assert main(["build", str(path), "--cut", "block_add", "--out", str(tmp_path / "split"), "--count", "2"]) == 0
    manifest = json.loads((tmp_path / "split" / "split.json").read_text())
    assert manifest["cut"]["tensor"] == "block_add"
    for side in ("edge", "cloud"):
        assert main(["profile", str(path), "--runs", "2", "--count", "1", "--threads", "1",
                     "--out", str(tmp_path / f"{side}.json")]) == 0
    capsys.readouterr()
    assert main(["plan", "--edge", str(tmp_path / "edge.json"), "--cloud", str(tmp_path / "cloud.json"),
                 "--mbit", "0.001", "--rtt-ms", "20"]) == 0
    assert "chosen: edge-only" in capsys.readouterr().out


def test_mistakes_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "residual.onnx"
    onnx.save_model(models.residual_model(), str(path))
    assert main(["build", str(path), "--cut", "reluA", "--out", str(tmp_path / "x")]) == 2
    assert "error: spec.split.cut: 'reluA' cannot be a cut" in capsys.readouterr().err
    assert main(["build", str(path), "--cut", "auto", "--out", str(tmp_path / "x"), "--count", "1"]) == 2
    assert "needs the link" in capsys.readouterr().err
    assert main(["plan", "--edge", str(tmp_path / "no.json"), "--cloud", str(tmp_path / "no.json"),
                 "--mbit", "1"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["build", str(path), "--samples", str(tmp_path / "none.npz"), "--out", str(tmp_path / "y")]) == 2
    assert "--samples:" in capsys.readouterr().err
