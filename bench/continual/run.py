"""Continual-learning benchmark on a digits stream with drift at a known point.

    .venv/bin/pip install river   # the oracle (bench only; the agent never imports it)
    nice -n 10 .venv/bin/python -m bench.continual.run [--undrifted 20000] [--requests 2000]

1. Detection: the digits CNN (scikit-learn digits, trained here) serves a stream of undrifted test
   digits (resampled with light pixel noise), then digits rotated by ``--angle`` degrees from sample
   ``--undrifted`` on. The agent's own detectors (``edge_agent.drift.DriftMonitor``: PSI against the
   validation reference, Page-Hinkley on the confidence) run on it: alarm delay after the drift and
   false alarms per 10,000 undrifted samples, beside river's ADWIN on the same confidence stream.
2. Update: fine-tune with replay (``edgemodel.continual.train.run_round``) on labelled rotated digits
   captured from the stream; accuracy on held-out rotated digits and on the original test set.
3. Capture overhead: p50 of sequential requests to a real agent (AgentServer + the ONNX export) with
   continual learning on (capture to disk, drift) and off.
Results as JSON on stdout and in bench/results/continual.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import logging
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("bench.continual")


def rotate(images: np.ndarray, angle: float) -> np.ndarray:
    from scipy.ndimage import rotate as nd_rotate

    out = nd_rotate(images, angle, axes=(2, 3), reshape=False, order=1, mode="constant", cval=0.0)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def softmax_conf(model: Any, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import torch

    with torch.inference_mode():
        p = torch.softmax(model(torch.from_numpy(x)), dim=1).numpy()
    return p.argmax(1), p.max(1)


def detection(
    model: Any,
    x_ref: np.ndarray,
    x_stream: np.ndarray,
    x_drift: np.ndarray,
    undrifted: int,
    drifted: int,
    seed: int,
) -> dict[str, Any]:
    from river import drift as river_drift

    from edge_agent.drift import DriftMonitor, DriftSettings, Reference, summarise

    rng = np.random.default_rng(seed)
    clean = x_stream[rng.integers(0, len(x_stream), undrifted)]
    clean = np.clip(clean + rng.normal(0, 0.03, clean.shape), 0, 1).astype(np.float32)
    moved = x_drift[rng.integers(0, len(x_drift), drifted)]
    moved = np.clip(moved + rng.normal(0, 0.03, moved.shape), 0, 1).astype(np.float32)
    stream = np.concatenate([clean, moved])
    _, conf = softmax_conf(model, stream)
    features = summarise(stream)
    reference = Reference.from_samples(summarise(x_ref))
    monitor = DriftMonitor(DriftSettings(), reference)
    alarms_by = {"psi": [], "page_hinkley": [], "monitor": []}  # type: dict[str, list[int]]
    started = time.perf_counter()
    for i in range(len(stream)):
        before = monitor.alarm_since
        fired = monitor.update(features[i : i + 1], conf[i : i + 1], now=float(i))
        for name in fired:
            alarms_by[name].append(i)
        if before is None and monitor.alarm_since is not None:
            alarms_by["monitor"].append(i)
    per_sample_us = (time.perf_counter() - started) / len(stream) * 1e6
    adwin_alarms = []
    for delta in (0.002, 0.0002):
        adwin = river_drift.ADWIN(delta=delta)
        hits = []
        for i, c in enumerate(conf):
            adwin.update(float(c))
            if adwin.drift_detected:
                hits.append(i)
        adwin_alarms.append((delta, hits))

    def summary(hits: list[int]) -> dict[str, Any]:
        # PH restarts after each alarm and PSI stays above its threshold: count onsets (gaps > 1 sample)
        onsets = [h for j, h in enumerate(hits) if j == 0 or h - hits[j - 1] > 1]
        false = [h for h in onsets if h < undrifted]
        after = [h - undrifted for h in onsets if h >= undrifted]
        return {
            "falseAlarms": len(false),
            "falseAlarmsPer10k": round(len(false) * 10000 / undrifted, 2),
            "delay": after[0] if after else None,
        }

    result = {name: summary(h) for name, h in alarms_by.items()}
    for delta, hits in adwin_alarms:
        result[f"river_adwin_delta_{delta}"] = summary(hits)
    result["undrifted"] = undrifted
    result["drifted"] = drifted
    result["meanConfidence"] = {
        "undrifted": round(float(conf[:undrifted].mean()), 3),
        "drifted": round(float(conf[undrifted:].mean()), 3),
    }
    result["detectorMicrosecondsPerSample"] = round(per_sample_us, 1)
    return result


def update(
    model: Any,
    data: Any,
    x_drift_train: np.ndarray,
    y_drift_train: np.ndarray,
    x_drift_test: np.ndarray,
    y_drift_test: np.ndarray,
    captured: int,
    seed: int,
    epochs: int = 80,
) -> dict[str, Any]:
    from edgemodel.continual.train import RoundSettings, accuracy, run_round

    rng = np.random.default_rng(seed)
    pick = rng.choice(len(x_drift_train), min(captured, len(x_drift_train)), replace=False)
    before = {
        "drifted": accuracy(model, x_drift_test, y_drift_test),
        "original": accuracy(model, data.x_test, data.y_test),
    }
    started = time.perf_counter()
    gate, info = run_round(
        model,
        x_drift_train[pick],
        y_drift_train[pick],
        data.x_train,
        data.y_train,
        data.x_test,
        data.y_test,
        RoundSettings(
            epochs=epochs,
            learning_rate=2e-3,
            replay_ratio=2.0,
            holdout_fraction=0.2,
            min_gain=0.05,
            max_drop=0.01,
            seed=seed,
        ),
    )
    seconds = time.perf_counter() - started
    after = {
        "drifted": accuracy(model, x_drift_test, y_drift_test),
        "original": accuracy(model, data.x_test, data.y_test),
    }
    return {
        "capturedLabelled": len(pick),
        "before": before,
        "after": after,
        "gatePassed": gate.passed,
        "gate": gate.message,
        "trainingSeconds": round(seconds, 1),
        **info,
    }


def export_onnx(model: Any, path: Path) -> None:
    import torch

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        logging.disable(logging.INFO)
        torch.onnx.export(
            model,
            (torch.zeros(2, 1, 8, 8),),
            str(path),
            input_names=["input"],
            output_names=["logits"],
            dynamo=True,
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},),
        )
        logging.disable(logging.NOTSET)


async def _p50(
    onnx_path: Path, enabled: bool, requests: int, rows: np.ndarray, workdir: Path
) -> dict[str, Any]:
    import aiohttp

    from edge_agent.server import AgentServer
    from edge_agent.settings import AgentSettings, LocalModel

    os.environ["EDGEMODEL_AGENT_CONTINUAL_ENABLED"] = "true" if enabled else "false"
    os.environ["EDGEMODEL_AGENT_CONTINUAL_CAPTURE_DIR"] = str(workdir / f"captures-{enabled}")
    server = AgentServer(AgentSettings(port=0, intra_op_threads=1, inference_workers=1))
    await server.start()
    await server.load_local([LocalModel("digits", "1", onnx_path)])
    server.dataplane.started = True
    url = f"{server.url}/v2/models/digits/infer"
    times = []
    try:
        async with aiohttp.ClientSession() as session:
            for i in range(requests + 100):
                row = rows[i % len(rows)]
                body = {
                    "id": f"r{i}",
                    "inputs": [
                        {
                            "name": "input",
                            "datatype": "FP32",
                            "shape": [1, 1, 8, 8],
                            "data": row.ravel().tolist(),
                        }
                    ],
                }
                t0 = time.perf_counter()
                async with session.post(url, json=body) as response:
                    await response.read()
                    assert response.status == 200
                if i >= 100:
                    times.append(time.perf_counter() - t0)
        await asyncio.to_thread(server.continual.drain)
        captured = sum(w.captured for w in server.continual.watches.values())
    finally:
        await server.stop()
    return {"p50_ms": round(statistics.median(times) * 1e3, 4), "captured": captured}


def overhead(model: Any, rows: np.ndarray, requests: int, rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "digits.onnx"
        export_onnx(model, path)
        on, off = [], []
        for _ in range(rounds):  # interleaved, so machine load hits both alike
            off.append(asyncio.run(_p50(path, False, requests, rows, Path(tmp)))["p50_ms"])
            result = asyncio.run(_p50(path, True, requests, rows, Path(tmp)))
            on.append(result["p50_ms"])
        p_off, p_on = statistics.median(off), statistics.median(on)
        return {
            "requests": requests,
            "rounds": rounds,
            "p50_off_ms": p_off,
            "p50_on_ms": p_on,
            "overhead_pct": round((p_on / p_off - 1) * 100, 2),
            "captured_last_round": result["captured"],
            "rounds_off_ms": off,
            "rounds_on_ms": on,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--undrifted", type=int, default=20000)
    parser.add_argument("--drifted", type=int, default=1000)
    parser.add_argument("--angle", type=float, default=20.0)
    parser.add_argument(
        "--captured", type=int, default=898, help="labelled drifted samples used for the update"
    )
    parser.add_argument("--epochs", type=int, default=80, help="fine-tuning epochs of the update")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--overhead-only", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import torch

    from edgemodel_dev.examples_models import load_digits_data, train_digits_cnn

    torch.set_num_threads(1)
    data = load_digits_data(args.seed, test_fraction=0.5)
    half = len(data.x_test) // 2
    log.info("Training the digits CNN on %d images", len(data.x_train))
    model, acc = train_digits_cnn(data, epochs=40, seed=args.seed)
    log.info("Test accuracy %.3f", acc)
    x_ref, x_stream = data.x_test[:half], data.x_test[half:]
    x_drift_train, y_drift_train = rotate(data.x_train, args.angle), data.y_train
    x_drift_test, y_drift_test = rotate(data.x_test, args.angle), data.y_test
    results: dict[str, Any] = {"angle": args.angle, "testAccuracy": round(acc, 4)}
    if not args.overhead_only:
        log.info("Detection: %d undrifted then %d rotated samples", args.undrifted, args.drifted)
        results["detection"] = detection(
            model, x_ref, x_stream, x_drift_test[half:], args.undrifted, args.drifted, args.seed
        )
    if not args.skip_overhead:
        for traffic, rows in (("undrifted", x_stream), ("drifted", x_drift_test[half:])):
            log.info(
                "Capture overhead, %s traffic: %d requests x %d rounds, on and off",
                traffic,
                args.requests,
                args.rounds,
            )
            results[f"overhead_{traffic}"] = overhead(model, rows, args.requests, args.rounds)
    if args.overhead_only:
        print(json.dumps(results, indent=1))
        return
    log.info("Update: fine-tune with replay on %d labelled rotated digits", args.captured)
    results["update"] = update(
        model, data, x_drift_train, y_drift_train, x_drift_test, y_drift_test, args.captured, args.seed, args.epochs
    )
    text = json.dumps(results, indent=1)
    print(text)
    out = Path(__file__).resolve().parents[1] / "results" / "continual.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
