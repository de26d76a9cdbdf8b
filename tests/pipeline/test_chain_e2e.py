"""A 3-stage chain of the digits CNN served by three local processes over mTLS, end to end.

Requests enter at stage 1 (which also holds the whole model), features travel stage to stage in
the codec, the answer returns from stage 1. FP32 features reproduce the model exactly; with a
stage stopped under load every request is still answered (the entry falls back to the whole model).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import re
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edgemodel.split.chain import build_chain
from edgemodel.split.codec import WireFormat
from edgemodel.split.devpki import make_pki
from edgemodel.split.graph import find_cut_candidates
from edgemodel.split.remote import RemoteTail, TlsFiles
from edgemodel.split.runtime import OrtPart
from edgemodel.split.stages import StageProcess, start_chain
from edgemodel_dev.examples_models import load_digits_data, train_digits_cnn
from tests.serving import metric_total

INPUT = "input"


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    """The digits CNN trained briefly on scikit-learn's digits, exported to ONNX; the held-out images."""
    import torch

    work = tmp_path_factory.mktemp("digits")
    data = load_digits_data(seed=0)
    model, _ = train_digits_cnn(data, epochs=15, seed=0)
    path = work / "digits.onnx"
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        logging.disable(logging.INFO)
        torch.onnx.export(
            model.eval(),
            (torch.from_numpy(data.x_test[:2]),),
            str(path),
            input_names=[INPUT],
            output_names=["logits"],
            dynamo=True,
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},),
        )
        logging.disable(logging.NOTSET)
    return path, data.x_test, data.y_test


def three_stage_chain(
    model: Path, out: Path, wire: str, samples: list[dict[str, np.ndarray]]
) -> tuple[list[Path], list[str]]:
    candidates = [c.tensor for c in find_cut_candidates(model)]
    assert len(candidates) >= 2, candidates
    cuts = [candidates[len(candidates) // 3], candidates[(2 * len(candidates)) // 3]]
    result = build_chain(model, samples, out, cuts, wire=wire)
    return result.paths, cuts


@contextlib.contextmanager
def running_chain(
    stages: list[Path], cuts: list[str], full: Path, wire: str, work: Path
) -> Iterator[tuple[list[StageProcess], TlsFiles]]:
    pki = make_pki(work / "pki")
    tls = {
        "ca": pki.ca,
        "server_cert": pki.server_cert,
        "server_key": pki.server_key,
        "client_cert": pki.client_cert,
        "client_key": pki.client_key,
    }
    procs = start_chain(
        stages, cuts, INPUT, full=full, wire=wire, model="digits", tls=tls, log_dir=work, cooldown_s=1.0
    )
    try:
        yield procs, TlsFiles(pki.ca, pki.client_cert, pki.client_key)
    finally:
        for p in procs:
            p.stop()


def scrape(stage: StageProcess, tls: TlsFiles) -> str:
    with urllib.request.urlopen(stage.url + "/metrics", context=tls.client_context(), timeout=10) as r:
        return str(r.read().decode())


async def send_all(
    url: str, tls: TlsFiles, images: np.ndarray, concurrency: int, on_done: object = None
) -> list[np.ndarray]:
    """Every image as one request with ``concurrency`` in flight; returns the logits in order."""
    results: list[np.ndarray | None] = [None] * len(images)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(images)):
        queue.put_nowait(i)
    async with RemoteTail(
        url, "digits", "1", INPUT, wire=WireFormat.parse("fp32"), tls=tls, timeout_s=30, cooldown_s=0
    ) as client:

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                answer = await client.infer({INPUT: images[i : i + 1]})
                results[i] = answer.outputs["logits"]
                if callable(on_done):
                    await on_done(i)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return [r for r in results if r is not None]


def test_three_processes_reproduce_the_model_exactly_with_fp32_features(
    digits: tuple[Path, np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    model, x, y = digits
    stages, cuts = three_stage_chain(
        model, tmp_path / "chain", "fp32", [{INPUT: x[i : i + 1]} for i in range(16)]
    )
    full = OrtPart(model)
    local = [OrtPart(p) for p in stages]
    images = x[:120]
    with running_chain(stages, cuts, model, "fp32", tmp_path) as (procs, tls):
        answers = asyncio.run(send_all(procs[0].url, tls, images, concurrency=6))
        texts = [scrape(p, tls) for p in procs]
    assert len(answers) == len(images)
    for i, got in enumerate(answers):
        chain_here = local[2].run(local[1].run(local[0].run({INPUT: images[i : i + 1]})))["logits"]
        np.testing.assert_array_equal(got, chain_here)  # FP32 on the wire: bit for bit the local chain
        np.testing.assert_allclose(got, full.run({INPUT: images[i : i + 1]})["logits"], rtol=1e-5, atol=1e-5)
    accuracy = float(np.mean([int(np.argmax(a)) == int(t) for a, t in zip(answers, y[:120], strict=True)]))
    assert accuracy > 0.85
    # every stage saw every request, none fell back; per-stage compute is measured on each
    for index, text in enumerate(texts, 1):
        assert metric_total(text, "edgemodel_pipeline_requests_total", stage=str(index), path="chain") == len(
            images
        )
        assert metric_total(
            text, "edgemodel_pipeline_stage_duration_seconds_count", stage=str(index), phase="compute"
        ) == len(images)
    assert metric_total(texts[0], "edgemodel_pipeline_requests_total", path="local") == 0
    assert metric_total(texts[0], "edgemodel_pipeline_bytes_total", stage="1") > 0


@pytest.mark.parametrize("stopped", [2, 3])
def test_a_stage_stopped_under_load_loses_no_request(
    digits: tuple[Path, np.ndarray, np.ndarray], tmp_path: Path, stopped: int
) -> None:
    model, x, _ = digits
    samples = [{INPUT: x[i : i + 1]} for i in range(16)]
    stages, cuts = three_stage_chain(model, tmp_path / "chain", "int8", samples)
    full = OrtPart(model)
    images = np.concatenate([x, x])[:600]
    with running_chain(stages, cuts, model, "int8", tmp_path) as (procs, tls):
        done = 0

        async def count(_: int) -> None:
            nonlocal done
            done += 1
            if done == 150:  # a quarter in: kill the stage (no goodbye) while requests are in flight
                procs[stopped - 1].process.kill()

        answers = asyncio.run(send_all(procs[0].url, tls, images, concurrency=4, on_done=count))
        entry = scrape(procs[0], tls)
    assert len(answers) == len(images)  # 0 failed requests: send_all raises on any error
    want = [int(np.argmax(full.run({INPUT: images[i : i + 1]})["logits"])) for i in range(len(images))]
    assert [int(np.argmax(a)) for a in answers] == want  # INT8 features, then the whole model: same top-1
    local = metric_total(entry, "edgemodel_pipeline_requests_total", stage="1", path="local")
    chained = metric_total(entry, "edgemodel_pipeline_requests_total", stage="1", path="chain")
    assert local >= 300, entry
    assert chained >= 150, entry
    assert local + chained == len(images), entry
    assert metric_total(entry, "edgemodel_pipeline_requests_total", stage="1", path="unavailable") == 0
    assert re.search(r'edgemodel_pipeline_stage_duration_seconds_count\{.*phase="local".*\} [1-9]', entry)
