"""The demo's federated chapter: its data split and manifests (fast), and the whole chapter end to end (slow)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jsonschema
import numpy as np
import pytest
import yaml

from edgemodel.api.federated import FederatedTrainingSpec
from edgemodel.crds import all_crds
from edgemodel_dev.demo.federated_chapter import (
    EXAMPLE,
    TRAINING,
    ChapterFailed,
    FederatedChapter,
    origin_text,
    round_line,
    training_manifest,
)
from edgemodel_dev.federated_digits import class_shards
from tests.conftest import ROOT, require_tool

EDGEMODEL_DEV = str(Path(sys.executable).parent / "edgemodel-dev")


@pytest.mark.parametrize("nodes", [5, 3, 10])
def test_each_node_holds_exactly_two_classes_and_the_shards_partition_the_pool(nodes: int) -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 10, size=1000)
    pool = np.setdiff1d(np.arange(1000), np.arange(0, 1000, 50))  # some samples stay in the cloud
    shards = class_shards(labels, pool, nodes, classes_per_node=2, seed=0)
    assert len(shards) == nodes
    assert all(len(set(labels[s].tolist())) == 2 for s in shards), [sorted(set(labels[s].tolist())) for s in shards]
    joined = np.concatenate(shards)
    assert len(joined) == len(set(joined.tolist())), "no sample on two nodes"
    assert set(joined.tolist()) <= set(pool.tolist())
    if nodes * 2 >= 10:  # every class is dealt out: the shards cover the pool
        assert sorted(joined.tolist()) == pool.tolist()


def test_the_example_and_the_demo_manifest_are_valid_federated_trainings(tmp_path: Path) -> None:
    schema = all_crds()["edgemodel.io_federatedtrainings.yaml"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    example = yaml.safe_load((ROOT / "examples" / "digits-federatedtraining.yaml").read_text())
    assert EXAMPLE.read_bytes() == (ROOT / "examples" / "digits-federatedtraining.yaml").read_bytes()
    doc = training_manifest(tmp_path / "r1.pt", tmp_path / "val.npz", target=0.93, rounds=12, deadline_s=300)
    for manifest in (example, doc):
        jsonschema.Draft4Validator(schema).validate(manifest)
        FederatedTrainingSpec.model_validate(manifest["spec"])
    assert doc["metadata"]["name"] == TRAINING
    spec = doc["spec"]
    assert spec["model"]["uri"] == (tmp_path / "r1.pt").as_uri()
    assert spec["validation"] == {"dataUri": (tmp_path / "val.npz").as_uri(), "targetAccuracy": 0.93}
    assert (spec["rounds"], spec["deadlineSeconds"], spec["edgeModel"]) == (12, 300, "digits")
    assert spec["strategy"]["name"] == "FedAvg"
    assert 1024 <= spec["port"] < 65535, "a free port (and port + 1 for /status)"


def test_progress_lines_say_who_took_part_and_what_came_out() -> None:
    record = {"round": 3, "participating": ["edge-0", "edge-2", "edge-3"], "dropped": ["edge-1"], "aggregated": True,
              "accuracy": 0.8556, "seconds": 0.42, "bytesExchanged": 81920}
    nodes = ["edge-0", "edge-1", "edge-2", "edge-3", "edge-4"]
    assert round_line(record, nodes) == ("round  3: 3/5 nodes participating (edge-1 dropped) (edge-4 not connected), "
                                         "validation accuracy 85.56%, 0.42 s, 80 KiB exchanged")
    assert "NOT aggregated" in round_line({**record, "aggregated": False}, nodes)
    origin = {"kind": "FederatedTraining", "name": "default/digits-fl", "reason": "reached the target validation "
              "accuracy", "metrics": {"round": 6.0, "validationAccuracy": 0.921}}
    assert origin_text(origin) == ("FederatedTraining default/digits-fl (reached the target validation accuracy; "
                                   "round 6, validationAccuracy 0.921)")
    assert origin_text(None) == "-"


@pytest.mark.slow
def test_the_federated_chapter_trains_on_the_nodes_and_rolls_the_result_out_as_revision_2(tmp_path: Path) -> None:
    require_tool("kubectl")
    workdir = tmp_path / "demo"
    result = subprocess.run(
        [EDGEMODEL_DEV, "demo", "--plain", "--chapter", "federated", "--no-prometheus", "--workdir", str(workdir)],
        capture_output=True, text=True, timeout=900, check=False,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-6000:]
    flat = " ".join(out.split())  # the console wraps long progress lines
    # Five nodes, two classes each, on the nodes' own file systems.
    classes = re.findall(r"│ (edge-\d) +│ shop-\d +│ (\d), (\d) +│ (\d+) +│", out)
    assert len(classes) == 5, out[:4000]
    assert sorted(c for _, a, b, _n in classes for c in (a, b)) == [str(c) for c in range(10)]
    for node, *_ in classes:
        assert (workdir / "kube" / "nodes" / node / "hostpath" / "var/lib/edgemodel/federated/digits.npz").is_file()
    assert "edgemodel.edgemodel.io/digits created" in out
    assert "Revision 1 is Available on 5/5 nodes" in out
    assert "federatedtraining.edgemodel.io/digits-fl created" in out
    rounds = re.findall(r"round +(\d+): (\d)/5 nodes participating.*?, validation accuracy ([\d.]+)%, ([\d.]+) s", flat)
    assert rounds, out[-6000:]
    assert [int(r[0]) for r in rounds] == list(range(1, len(rounds) + 1))
    assert all(int(r[1]) >= 4 for r in rounds), "minClients 4 of 5"
    assert float(rounds[-1][2]) >= 92.0, "stopped at the target accuracy"
    assert f"FederatedTraining {TRAINING} Succeeded: {len(rounds)} rounds" in flat
    origin = re.search(r"Revision 2 is Available on 5/5 nodes; its origin \(status.history\): FederatedTraining "
                       r"default/digits-fl \(reached the target validation accuracy; round (\d+)", flat)
    assert origin is not None, out[-6000:]
    assert int(origin.group(1)) == len(rounds)
    served = {int(r): float(a) for r, a in re.findall(r"Revision (\d) served \d+ answers, 0 errors, accuracy ([\d.]+)%",
                                                      flat)}
    assert set(served) == {1, 2}, out[-6000:]
    assert served[2] > served[1] + 10.0, served
    assert re.search(r"revision 2 served accuracy \(held-out\)\s*│\s*[\d.]+% \(\d+ answers\)", out), out[-3000:]
    assert "demo finished: the federated chapter ran" in flat
    leftovers = subprocess.run(["pgrep", "-f", str(workdir)], capture_output=True, text=True, check=False)
    assert leftovers.stdout.strip() == "", f"processes left running: {leftovers.stdout}"


class FakeCluster:
    """What the chapter's training step reads: one FederatedTraining object, whatever its status."""

    def __init__(self, training: dict[str, Any]) -> None:
        self.training = training

    def get(self, api_version: str, kind: str, name: str, namespace: str) -> dict[str, Any]:
        assert (api_version, kind, name, namespace) == ("edgemodel.io/v1alpha1", "FederatedTraining", TRAINING,
                                                         "default")
        return self.training


def chapter_on(training: dict[str, Any], tmp_path: Path, timeout_s: float = 30.0) -> tuple[FederatedChapter, list[str]]:
    """The chapter over a stand-in stack that holds ``training`` and records what the chapter applies and prints."""
    printed: list[str] = []
    stack = SimpleNamespace(edge_nodes=["edge-0", "edge-1"], cluster=FakeCluster(training),
                            apply=lambda doc, name: printed.append(f"apply {name}") or "applied")
    console = SimpleNamespace(print=lambda text="", *a, **k: printed.append(str(text)))
    demo = SimpleNamespace(stack=stack, console=console, say=printed.append,
                           opt=SimpleNamespace(stage_timeout_s=timeout_s, workdir=tmp_path))
    return FederatedChapter(demo, target=0.9), printed  # type: ignore[arg-type]


def test_a_failed_training_ends_the_chapter_naming_its_condition(tmp_path: Path) -> None:
    training = {"status": {"phase": "Failed", "nodes": ["edge-0", "edge-1"], "rounds": [], "conditions": [
        {"type": "Failed", "status": "True", "reason": "DataMissing",
         "message": "node edge-1: spec.data.path: /var/lib/edgemodel/federated/digits.npz does not exist on node edge-1"}]}}
    chapter, printed = chapter_on(training, tmp_path)
    with pytest.raises(ChapterFailed, match=r"the FederatedTraining digits-fl failed: DataMissing: node edge-1: "
                                            r"spec.data.path: .* does not exist on node edge-1"):
        chapter.train(tmp_path / "r1.pt", tmp_path / "val.npz")
    assert "apply digits-federatedtraining.yaml" in printed


def test_a_training_that_never_finishes_ends_the_chapter_at_the_stage_timeout(tmp_path: Path) -> None:
    record = {"round": 1, "participating": ["edge-0"], "dropped": [], "accuracy": 0.5, "seconds": 1.0,
              "bytesExchanged": 2048}
    training = {"status": {"phase": "Training", "nodes": ["edge-0", "edge-1"], "rounds": [record]}}
    chapter, printed = chapter_on(training, tmp_path, timeout_s=1.0)
    with pytest.raises(ChapterFailed, match=r"did not finish within 1 s \(phase Training, 1 round\(s\)\); see .*kube"):
        chapter.train(tmp_path / "r1.pt", tmp_path / "val.npz")
    assert any("round  1: 1/2 nodes participating (edge-1 not connected)" in line for line in printed), printed


def test_the_cli_refuses_a_target_accuracy_outside_0_1() -> None:
    result = subprocess.run([EDGEMODEL_DEV, "demo", "--chapter", "federated", "--target-accuracy", "92"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "argument --target-accuracy: '92' is not a fraction in (0, 1], e.g. 0.92" in result.stderr
