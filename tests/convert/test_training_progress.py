"""Per-epoch training progress: the training loop reports it, the Job publishes it, the operator's status shows it."""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import requests

torch = pytest.importorskip("torch")

from edgemodel.api import EdgeModelStatus  # noqa: E402
from edgemodel.convert import job as job_mod  # noqa: E402
from edgemodel.convert.pipeline import ConvertOptions  # noqa: E402
from edgemodel.convert.published_progress import PublishedProgress, http_put, progress_key  # noqa: E402
from edgemodel.convert.training.distill import kd_loss  # noqa: E402
from edgemodel.convert.training.loop import TrainSet, cross_entropy, fit  # noqa: E402
from edgemodel.store import HttpStore, RevisionRef  # noqa: E402
from edgemodel_dev.examples_models import DigitsExample, load_digits_data  # noqa: E402
from edgemodel_operator import conversion_progress  # noqa: E402
from edgemodel_operator import status as status_mod  # noqa: E402
from tests.convert.conftest import Keys, digits_doc, write_npz  # noqa: E402
from tests.store.running import running_store  # noqa: E402

TOKEN = "progress-token"
EPOCH = re.compile(r"epoch (\d+)/(\d+), loss (\d+\.\d{4}), (accuracy|teacher agreement) (\d\.\d{4})")


class Recorder:
    """A Progress that keeps every stage and step."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def stage(self, title: str, total: int) -> None:
        self.events.append(("stage", title))

    def advance(self, detail: str = "") -> None:
        self.events.append(("step", detail))

    def add_steps(self, count: int) -> None:
        self.events.append(("more", str(count)))


def _data(n: int = 96) -> tuple[Any, Any]:
    data = load_digits_data()
    return torch.from_numpy(data.x_train[:n]), torch.from_numpy(data.y_train[:n])


def _model() -> Any:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))


def test_each_epoch_reports_loss_and_accuracy() -> None:
    x, y = _data()
    progress = Recorder()
    fitted = fit(
        _model(), TrainSet([x], y, []), cross_entropy, 3, 1e-2, 32, 0, float("inf"), "pruned model", progress
    )
    steps = [d for kind, d in progress.events if kind == "step"]
    assert fitted.epochs == 3
    assert len(steps) == 3
    found = [EPOCH.search(s) for s in steps]
    assert all(m is not None for m in found), steps
    assert [(m.group(1), m.group(2)) for m in found if m] == [("1", "3"), ("2", "3"), ("3", "3")]
    assert all(s.startswith("pruned model: ") for s in steps)
    losses = [float(m.group(3)) for m in found if m]
    accuracies = [float(m.group(5)) for m in found if m]
    assert losses[-1] < losses[0]  # a linear model on digits learns in 3 epochs
    assert accuracies[-1] > accuracies[0]
    assert all(0.0 <= a <= 1.0 for a in accuracies)
    assert abs(losses[-1] - fitted.loss) < 1e-3


def test_without_labels_the_student_reports_agreement_with_the_teacher() -> None:
    x, _ = _data()
    teacher = _model()
    with torch.no_grad():
        soft = teacher(x)
    progress = Recorder()
    fit(
        _model(),
        TrainSet([x], None, [soft]),
        kd_loss(4.0, 1.0),
        2,
        1e-2,
        32,
        1,
        float("inf"),
        "student",
        progress,
    )
    steps = [d for kind, d in progress.events if kind == "step"]
    assert len(steps) == 2
    assert all("teacher agreement" in s and EPOCH.search(s) for s in steps), steps


def test_published_progress_reaches_the_store_and_the_status_line(tmp_path: Path) -> None:
    ref = RevisionRef("vision", "digits", 3)
    with running_store(tmp_path / "store", TOKEN) as url:
        progress = PublishedProgress(http_put(url, TOKEN, ref))
        progress.stage("Training: distillation", 30)
        progress.advance("student: epoch 1/30, loss 1.2345, accuracy 0.6000")
        progress.advance("student: epoch 2/30, loss 0.9876, accuracy 0.7500")
        progress.close()
        doc = requests.get(f"{url}/{progress_key(ref)}", timeout=10).json()
        assert doc["title"] == "Training: distillation"
        assert (doc["stage"], doc["step"], doc["total"]) == (1, 2, 30)
        assert doc["detail"] == "student: epoch 2/30, loss 0.9876, accuracy 0.7500"

        async def read() -> str:
            async with aiohttp.ClientSession() as session:
                return await conversion_progress.read(session, url, "vision", "digits", 3)

        line = asyncio.run(read())
        assert (
            line == "stage 1 Training: distillation 2/30: student: epoch 2/30, loss 0.9876, accuracy 0.7500"
        )
        # the progress file sits beside the revision folder: the revision can still be committed
        manifest = tmp_path / "manifest.json"
        manifest.write_text("{}")
        HttpStore(url, TOKEN, retries=0).put_revision(ref, {"manifest.json": manifest})
        listing = requests.get(f"{url}/vision/digits/3/", timeout=10).json()
        assert {e["name"] for e in listing["entries"]} == {"manifest.json"}

        async def missing() -> str:
            async with aiohttp.ClientSession() as session:
                return await conversion_progress.read(session, url, "vision", "digits", 4)

        assert asyncio.run(missing()) == ""

    status = status_mod.conversion_running(
        EdgeModelStatus(),
        3,
        "digits-r3-convert",
        conversion_progress.running_detail("1 active, 0 failed Pods", line),
        1,
        "2026-12-02T17:00:00Z",
    )
    (converted,) = [c for c in status.conditions if c.type == "Converted"]
    assert converted.reason == "Converting"
    assert converted.message == (
        f"conversion Job digits-r3-convert of revision 3 is running (1 active, 0 failed Pods; {line})"
    )


@pytest.mark.parametrize("text", ["", "not json", "[1, 2]", '{"stage": 1}', "\u0000"])
def test_unreadable_progress_gives_no_line(text: str) -> None:
    assert conversion_progress.parse(text) == ""
    assert conversion_progress.running_detail("1 active, 0 failed Pods", "") == "1 active, 0 failed Pods"


def test_a_failing_store_never_slows_or_breaks_training() -> None:
    release = threading.Event()
    calls: list[bytes] = []

    def put(data: bytes) -> None:
        calls.append(data)
        release.wait(5)
        raise OSError("store unreachable")

    progress = PublishedProgress(put)
    progress.stage("Training: structured pruning", 100)
    for epoch in range(100):  # the upload is blocked: the steps must not wait for it
        progress.advance(f"pruned model: epoch {epoch + 1}/100, loss 0.1000, accuracy 0.9000")
    release.set()
    progress.close()
    assert 1 <= len(calls) <= 3  # the newest snapshot only, never a queue of 101
    assert json.loads(calls[-1])["step"] in (0, 100)


def test_the_job_publishes_each_training_epoch(
    digits: DigitsExample, keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = load_digits_data()
    train = write_npz(tmp_path / "train.npz", input=data.x_train[:256], labels=data.y_train[:256])
    doc = digits_doc(digits, **{"metadata.namespace": "vision", "spec.optimization.mode": "explicit"})
    doc["spec"]["optimization"].update(
        {
            "training": {"dataUri": train.as_uri(), "maxSeconds": 120},
            "distillation": {"enabled": True, "widthFactor": 0.5, "epochs": 3},
        }
    )
    doc["metadata"]["generation"] = 2
    sent: list[dict[str, Any]] = []
    real = job_mod.http_put

    def recording(base_url: str, token: str, ref: RevisionRef) -> Callable[[bytes], None]:
        put = real(base_url, token, ref)

        def wrapped(body: bytes) -> None:
            sent.append(json.loads(body))
            put(body)

        return wrapped

    monkeypatch.setattr(job_mod, "http_put", recording)
    monkeypatch.setenv("EDGEMODEL_OBJECT", json.dumps(doc))
    monkeypatch.setenv("EDGEMODEL_STORE_TOKEN", TOKEN)
    monkeypatch.setenv("EDGEMODEL_TERMINATION_LOG", str(tmp_path / "termination-log"))
    # the uploader keeps only the newest snapshot (a fast epoch may replace one not yet sent): wait for each epoch's
    original = PublishedProgress.advance

    def each_epoch_sent(self: PublishedProgress, detail: str = "") -> None:
        original(self, detail)
        if "epoch" in detail:
            assert self.flush(30)

    monkeypatch.setattr(PublishedProgress, "advance", each_epoch_sent)
    with running_store(tmp_path / "store", TOKEN) as url:
        options = ConvertOptions(
            workdir=tmp_path / "work",
            threads=1,
            latency_runs=5,
            latency_budget_s=0.05,
            latency_rounds=3,
            plot=False,
        )
        assert job_mod.run_job(2, url, keys.private, options) == 0
        final = requests.get(f"{url}/vision/digits/2.progress.json", timeout=10).json()
    epochs = [s for s in sent if s["title"] == "Training: distillation" and "epoch" in s["detail"]]
    assert [EPOCH.search(s["detail"]).group(1) for s in epochs] == ["1", "2", "3"], sent  # type: ignore[union-attr]
    assert all(s["detail"].startswith("student: ") and "accuracy" in s["detail"] for s in epochs)
    assert final["title"] == "Uploading to the artifact store"
    assert final["step"] == final["total"]
    assert np.isfinite(float(EPOCH.search(epochs[-1]["detail"]).group(3)))  # type: ignore[union-attr]
