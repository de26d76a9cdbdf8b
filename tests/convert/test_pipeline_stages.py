"""spec.split.stages in the conversion: every stage built, verified and signed with the revision."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from edgemodel.api import EdgeModel
from edgemodel.convert.errors import ConversionError, Reason
from edgemodel.convert.pipeline import ConvertOptions, convert
from edgemodel.signing import load_private_key, load_public_key, sha256_file, verify
from edgemodel.split.chain_devices import ENV as DEVICES_ENV
from edgemodel.split.chain_devices import LABELLED, MEASURED, PlanDevices, device_from_dict
from edgemodel.split.chain_planner import ChainCosts, ChainLinks, ChainObjective, Device, plan_chain
from edgemodel.split.graph import find_cut_candidates
from edgemodel.split.planner import Link
from edgemodel_dev.examples_models import DigitsExample
from tests.convert.conftest import Keys, digits_doc

FP32_ONLY = [{"hardwareClass": "cpu", "precisions": ["fp32"]}]
STAGE_FILES = {"stage-1.onnx", "stage-2.onnx", "stage-3.onnx", "chain.json"}


def run(doc: dict[str, Any], keys: Keys, workdir: Path) -> Any:
    options = ConvertOptions(
        workdir=workdir,
        latency_runs=5,
        latency_budget_s=0.05,
        threads=1,
        plot=False,
        split_profile_runs=1,
        latency_rounds=3,
    )
    return convert(EdgeModel.model_validate(doc), load_private_key(keys.private), options)


def session_run(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))


@pytest.mark.parametrize("manual", [True, False])
def test_stages_are_built_verified_and_signed_as_one_revision(
    digits: DigitsExample, digits_onnx: Path, keys: Keys, tmp_path: Path, manual: bool
) -> None:
    cuts = [c.tensor for c in find_cut_candidates(digits_onnx)]
    stages: dict[str, Any] = {
        "count": 3,
        "pool": {"matchLabels": {"edgemodel.io/stage-pool": "a"}},
        "objective": "throughput",
    }
    if manual:
        stages["cuts"] = [cuts[1], cuts[-2]]
    doc = digits_doc(
        digits,
        **{
            "spec.source.uri": digits_onnx.as_uri(),
            "spec.source.format": "ONNX",
            "spec.optimization.targets": FP32_ONLY,
            "spec.split": {"wire": "int8", "link": {"bandwidthMbitS": 100, "rttMs": 2}, "stages": stages},
        },
    )
    output = run(doc, keys, tmp_path / "work")
    verify(output.manifest_bytes, output.signature, load_public_key(keys.public.read_bytes()))
    assert set(output.manifest.files) >= STAGE_FILES
    for name in STAGE_FILES:
        assert output.manifest.files[name] == sha256_file(output.directory / name), name
    chain = json.loads((output.directory / "chain.json").read_text())
    assert [s["sha256"] for s in chain["stages"]] == [
        output.manifest.files[f"stage-{k}.onnx"] for k in (1, 2, 3)
    ]
    if manual:
        assert chain["cuts"] == [cuts[1], cuts[-2]]
        assert chain["plan"] is None
    else:
        assert chain["plan"]["objective"] == "throughput"
        assert len(chain["plan"]["stages"]) == 3
        # the profiled costs travel with the plan: the operator re-costs it with the nodes' measured speeds
        costs = ChainCosts.from_dict(chain["plan"]["costs"])
        assert [costs.cuts.index(c) + 1 for c in chain["cuts"]] == [s["segments"][0] for s in chain["plan"]["stages"][1:]]
        assert sum(costs.segment_ms) > 0
    assert chain["verification"]["wire"]["top1Agreement"] == 1.0
    assert output.manifest.split is None  # no single-cut head/tail beside a pipeline
    with np.load(digits.val_npz) as data:
        x = data["input"][:4]
    for i in range(len(x)):
        feeds: dict[str, np.ndarray] = {"input": x[i : i + 1]}
        for k in (1, 2, 3):
            feeds = session_run(output.directory / f"stage-{k}.onnx", feeds)
        whole = session_run(output.directory / "model-cpu.onnx", {"input": x[i : i + 1]})
        np.testing.assert_allclose(feeds["logits"], whole["logits"], rtol=1e-4, atol=1e-4)


def test_bad_stage_cuts_fail_with_invalid_split(
    digits: DigitsExample, digits_onnx: Path, keys: Keys, tmp_path: Path
) -> None:
    cuts = [c.tensor for c in find_cut_candidates(digits_onnx)]
    doc = digits_doc(
        digits,
        **{
            "spec.source.uri": digits_onnx.as_uri(),
            "spec.source.format": "ONNX",
            "spec.optimization.targets": FP32_ONLY,
            "spec.split": {
                "link": {"bandwidthMbitS": 100},
                "stages": {"count": 3, "cuts": [cuts[-2], cuts[1]], "pool": {}},
            },
        },
    )
    with pytest.raises(ConversionError) as info:
        run(doc, keys, tmp_path / "work")
    assert info.value.reason == Reason.INVALID_SPLIT
    assert str(info.value).startswith("spec.split.stages: the cuts")


@pytest.mark.parametrize("known", [True, False])
def test_auto_cuts_are_planned_for_the_devices_the_operator_passes(
    digits: DigitsExample, digits_onnx: Path, keys: Keys, tmp_path: Path, known: bool,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    given = PlanDevices(
        (Device("cam-1", 20.0, None, 1.0), Device("nuc-a", 1.0, 1 << 30), Device("nuc-b", 2.0)),
        (LABELLED, MEASURED, LABELLED), reason="the nodes cam-1, nuc-a, nuc-b",
    ) if known else PlanDevices(reason="no speed known for node(s) nuc-b: label them ...")
    monkeypatch.setenv(DEVICES_ENV, given.to_json())
    stages: dict[str, Any] = {"count": 3, "pool": {}, "objective": "throughput"}  # auto cuts (count: the CNN is tiny)
    stages["links"] = [{"from": "nuc-a", "to": "cam-1", "bandwidthMbitS": 5, "rttMs": 7}]  # declared, by node name
    doc = digits_doc(digits, **{"spec.source.uri": digits_onnx.as_uri(), "spec.source.format": "ONNX",
                                "spec.optimization.targets": FP32_ONLY,
                                "spec.split": {"wire": "int8", "link": {"bandwidthMbitS": 100, "rttMs": 2},
                                               "stages": stages}})
    with caplog.at_level(logging.INFO, logger="edgemodel.convert.stages"):
        output = run(doc, keys, tmp_path / "work")
    plan = json.loads((output.directory / "chain.json").read_text())["plan"]
    logged = " ".join(r.getMessage() for r in caplog.records)
    if not known:  # identical devices, as before, and the Job says why
        assert plan["deviceSpecs"][0] == {"name": "stage-1", "slowdown": 4.0, "overheadMs": 0.0, "memoryBytes": None}
        assert plan["devicesFrom"].startswith("identical devices (spec.split.edgeSlowdown 4): no speed known")
        assert "planning for 3 identical devices" in logged
        assert "no speed known for node(s) nuc-b" in logged
        return
    assert plan["deviceSpecs"] == given.specs()
    assert plan["devicesFrom"] == "the nodes cam-1, nuc-a, nuc-b"
    assert "planning for the nodes cam-1 x20 (label), nuc-a x1 (measured), nuc-b x2 (label)" in logged
    assert plan["devices"] == ["cam-1", "nuc-a", "nuc-b"]
    costs = ChainCosts.from_dict(plan["costs"])
    cut = costs.cuts.index(plan["cuts"][0])
    declared = Link(5, 7)  # the hop from cam-1 to nuc-a uses the declared link, the next one the default
    assert plan["stages"][0]["sendMs"] == pytest.approx(declared.transfer_ms(costs.feature_bytes[cut], 0) - 7, abs=1e-3)
    assert plan["stages"][0]["hopMs"] == pytest.approx(
        declared.transfer_ms(costs.feature_bytes[cut], costs.output_bytes), abs=1e-3)
    # reproducible from chain.json alone: its costs and device list give the same plan's score again
    links = ChainLinks(Link(100, 2), {("nuc-a", "cam-1"): declared})
    again = plan_chain(costs, [device_from_dict(d) for d in plan["deviceSpecs"]], links, ChainObjective.THROUGHPUT,
                       stages=3)
    assert again.period_ms == pytest.approx(plan["periodMs"], rel=1e-3, abs=1e-3)
