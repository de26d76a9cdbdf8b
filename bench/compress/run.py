"""Benchmark of compression with training (spec.optimization.pruning / qat / distillation) on real data.

Run on demand (never from pytest):

    .venv/bin/python bench/compress/run.py --threads 2 --out bench/results/compress.md

Trains the wide digits CNN (bench/compress/models.py) on scikit-learn digits (1,437 training and
360 held-out images), then runs the real conversion (``edgemodel.convert.pipeline.convert``) with
pruning, QAT and distillation (width 0.25) on, timed end to end. The distillation target is measured
where labels are scarce (with all 1,437 labels the 1/16 student already matches the teacher): two
more conversions with distillation only, learning rate ``--kd-lr``, ``--kd-epochs``: the student
distilled (alpha 0.7, mixup) on ``--kd-samples`` labelled training images plus the other training
images unlabelled (label -1: soft targets only), and the same student on the labelled images only
(alpha 0, no mixup), same code, seed and epochs.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from models import DigitsWideCNN, train

from edgemodel.api import ArtifactManifest, CandidateResult, EdgeModel
from edgemodel.convert.pipeline import ConvertOptions, convert
from edgemodel.signing import generate_keypair, load_private_key
from edgemodel_dev.examples_models import load_digits_data

log = logging.getLogger("bench.compress")


def edgemodel_doc(folder: Path, args: argparse.Namespace, train: str = "train.npz", lr: float = 1e-3,
                  **optimization: Any) -> dict[str, Any]:
    return {"apiVersion": "edgemodel.io/v1alpha1", "kind": "EdgeModel", "metadata": {"name": "digits-wide"},
            "spec": {"source": {"uri": (folder / "teacher.pt").as_uri(), "format": "TorchScript"},
                     "inputs": [{"name": "input", "shape": [-1, 1, 8, 8]}],
                     "optimization": {"int8": {"calibrationDataUri": (folder / "calib.npz").as_uri(),
                                               "calibrationSamples": 128},
                                      "training": {"dataUri": (folder / train).as_uri(), "seed": 0,
                                                   "maxSeconds": args.max_seconds, "learningRate": lr},
                                      **optimization},
                     "validation": {"dataUri": (folder / "val.npz").as_uri(), "metric": "top1",
                                    "maxAccuracyDrop": 0.015}}}


def run(doc: dict[str, Any], folder: Path, key: Any, args: argparse.Namespace) -> tuple[ArtifactManifest, float]:
    start = time.monotonic()
    with tempfile.TemporaryDirectory(dir=folder) as work:
        output = convert(EdgeModel.model_validate(doc), key,
                         ConvertOptions(workdir=Path(work), threads=args.threads, latency_runs=args.runs,
                                        latency_budget_s=args.budget, plot=False))
    return output.manifest, time.monotonic() - start


def p50(c: CandidateResult) -> float:
    return next(s.p50_ms for s in c.latency if s.batch_size == 1)


def table(m: ArtifactManifest) -> list[str]:
    lines = ["| candidate | method | MB | MMACs | p50 / p95 ms (batch 1) | speed-up | top-1 | drop | verdict |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    base = next(c for c in m.candidates if c.name == "fp32-opt")
    chosen = {c.candidate for c in m.choices}
    for c in m.candidates:
        b1 = next((s for s in c.latency if s.batch_size == 1), None)
        verdict = "**chosen**" if c.name in chosen else ("accepted" if c.accepted else "rejected: " + c.reject_reason[:60])
        lines.append(f"| `{c.name}` | {c.settings.get('compression') or 'post-training'} | {c.size_bytes / 1e6:.3f} | "
                     f"{c.settings.get('macs', 0) / 1e6:.2f} | "
                     + (f"{b1.p50_ms:.3f} / {b1.p95_ms:.3f} | {p50(base) / b1.p50_ms:.2f}x" if b1 else "- | -")
                     + f" | {c.metric:.4f} | {100 * (c.metric_drop or 0):+.2f} pp | {verdict} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--budget", type=float, default=3.0)
    parser.add_argument("--teacher-epochs", type=int, default=15)
    parser.add_argument("--max-seconds", type=int, default=200)
    parser.add_argument("--prune-target", type=float, default=4.0, help="spec.optimization.pruning.targetSpeedup")
    parser.add_argument("--kd-samples", type=int, default=360, help="labelled images of the distillation pair")
    parser.add_argument("--kd-epochs", type=int, default=60)
    parser.add_argument("--kd-lr", type=float, default=3e-3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)  # the teacher is small (7 M MACs): one thread trains it fastest on a shared machine
    folder = Path(tempfile.mkdtemp(prefix="bench-compress-"))
    data = load_digits_data()
    start = time.monotonic()
    teacher = train(DigitsWideCNN(), torch.from_numpy(data.x_train), torch.from_numpy(data.y_train),
                    args.teacher_epochs)
    with torch.no_grad():
        teacher_acc = float((teacher(torch.from_numpy(data.x_test)).argmax(1).numpy() == data.y_test).mean())
    log.info("Trained the teacher in %.0fs: test top-1 %.4f", time.monotonic() - start, teacher_acc)
    torch.jit.save(torch.jit.script(teacher), str(folder / "teacher.pt"))
    np.savez(folder / "train.npz", input=data.x_train, labels=data.y_train)
    subset = np.random.default_rng(0).permutation(len(data.x_train))[:args.kd_samples]
    np.savez(folder / "train-kd.npz", input=data.x_train[subset], labels=data.y_train[subset])
    unlabelled = data.y_train.copy()
    unlabelled[np.setdiff1d(np.arange(len(unlabelled)), subset)] = -1  # label -1: soft targets only
    np.savez(folder / "train-kd-unlabelled.npz", input=data.x_train, labels=unlabelled)
    np.savez(folder / "calib.npz", input=data.x_train[:128])
    np.savez(folder / "val.npz", input=data.x_test, labels=data.y_test)
    generate_keypair(folder / "key.pem", folder / "key.pub")
    key = load_private_key(folder / "key.pem")

    full = edgemodel_doc(folder, args, pruning={"enabled": True, "targetSpeedup": args.prune_target,
                                                           "fineTuneEpochs": 6},
                         qat={"enabled": True, "epochs": 3},
                         distillation={"enabled": True, "widthFactor": 0.25, "epochs": 30, "temperature": 4.0,
                                       "alpha": 0.9})
    manifest, seconds = run(full, folder, key, args)
    pair = []
    for alpha, mixup, train_file in ((0.7, True, "train-kd-unlabelled.npz"), (0.0, False, "train-kd.npz")):
        doc = edgemodel_doc(folder, args, train_file, args.kd_lr,
                            distillation={"enabled": True, "widthFactor": 0.25, "epochs": args.kd_epochs,
                                          "temperature": 4.0, "alpha": alpha, "mixup": mixup})
        doc["spec"]["optimization"]["int8"]["enabled"] = False
        pair.append(run(doc, folder, key, args)[0])

    by = {c.name: c for c in manifest.candidates}
    base, ptq = by["fp32-opt"], by["int8-static-qdq-u8s8-perchannel-minmax"]
    pruned, pruned8 = by["pruned-fp32"], by["pruned-int8-static-qdq-u8s8-perchannel-minmax"]
    qat = by["qat-int8-qdq-u8s8-perchannel"]
    kd, student_plain = (next(c for c in m.candidates if c.name == "distilled-fp32") for m in pair)
    original = manifest.validation.original

    def pp(x: float | None) -> str:
        return f"{100 * (x or 0):.2f} pp"

    targets = [
        ("pruning: >= 2.0x p50 over FP32 at <= 1 pp drop", f"{p50(base) / p50(pruned):.2f}x, drop {pp(pruned.metric_drop)}",
         p50(base) / p50(pruned) >= 2.0 and (pruned.metric_drop or 0) <= 0.01),
        ("pruned + INT8: >= 3x at <= 1.5 pp", f"{p50(base) / p50(pruned8):.2f}x, drop {pp(pruned8.metric_drop)}",
         p50(base) / p50(pruned8) >= 3.0 and (pruned8.metric_drop or 0) <= 0.015),
        ("post-training static INT8 loses >= 1 pp (precondition)", f"drop {pp(ptq.metric_drop)}",
         (ptq.metric_drop or 0) >= 0.01),
        ("QAT: <= 0.3 pp drop at >= 1.5x", f"drop {pp(qat.metric_drop)}, {p50(base) / p50(qat):.2f}x",
         (qat.metric_drop or 0) <= 0.003 and p50(base) / p50(qat) >= 1.5),
        (f"distillation ({args.kd_samples} labels): student ~1/16 MACs gains >= 1 pp over labels only",
         f"MACs 1/{1 / kd.settings['macsOfTeacher']:.1f}; {kd.metric:.4f} vs {student_plain.metric:.4f} labels only "
         f"({pp((kd.metric or 0) - (student_plain.metric or 0))})",
         (kd.metric or 0) - (student_plain.metric or 0) >= 0.01),
        ("distillation: within 1.5 pp of the teacher", f"drop {pp(kd.metric_drop)}", (kd.metric_drop or 0) <= 0.015),
        ("whole conversion with training < 5 min", f"{seconds:.0f} s", seconds < 300),
    ]
    load = os.getloadavg()
    lines = [f"# Compression with training: digits wide CNN ({args.threads} threads)", "",
             f"Command: `.venv/bin/python bench/compress/run.py --threads {args.threads}"
             + (f" --prune-target {args.prune_target:g}" if args.prune_target != 4.0 else "")
             + f" --out {args.out or 'bench/results/compress.md'}`",
             "", f"Teacher: `DigitsWideCNN(32)` trained {args.teacher_epochs} epochs, top-1 {original:.4f} on 360 "
             f"held-out images. Conversion with pruning, QAT and distillation: {seconds:.0f} s wall time. "
             f"Load average after the run: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}.", "",
             "| target | measured | met |", "|---|---|---|",
             *[f"| {t} | {m} | {'yes' if ok else '**no**'} |" for t, m, ok in targets], "",
             "## Candidates", "", *table(manifest), "",
             f"Distillation pair ({args.kd_samples} labelled images, {args.kd_epochs} epochs, learning rate "
             f"{args.kd_lr:g}): distilled (alpha 0.7, mixup, plus {len(data.x_train) - args.kd_samples} unlabelled images) top-1 {kd.metric:.4f}, labels only (alpha 0) "
             f"{student_plain.metric:.4f}; teacher {original:.4f}.", "",
             "## Notes", "", *[f"- {n}" for n in manifest.notes], ""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
