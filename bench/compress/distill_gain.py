"""Distillation gain over several seeds: the width-1/4 student (1/16 of the MACs) distilled vs on labels only.

Run on demand (never from pytest):

    .venv/bin/python bench/compress/distill_gain.py --samples 360 --epochs 60 --seeds 5 --lr 3e-3

Trains the teacher (``DigitsWideCNN(32)``, 15 epochs, all 1,437 training images) once, then per seed
draws a random subset of ``--samples`` labelled images and trains ``DigitsWideCNN(8)`` (the student
``widthFactor: 0.25`` builds) twice with the conversion's own code (``edgemodel.convert.training``:
``fit``, ``kd_loss``, ``mixup``; learning rate, batch size and seed as in ``spec.optimization.training``):
on labels only (cross-entropy), and distilled (alpha * T^2 * KL + (1 - alpha) * CE, with mixup unless
``--mixup no``); ``--mixup-baseline`` adds labels only with mixup (no teacher); ``--unlabelled`` gives
the distilled student the remaining training images too, with label -1 (soft targets only). Same seed, subset, initialisation, data order and epochs for both. Prints every
seed's top-1 on the 360 held-out images and the mean gain; no seed is picked.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from models import DigitsWideCNN, train

from edgemodel.convert.training.distill import kd_loss, mixup
from edgemodel.convert.training.loop import TrainSet, cross_entropy, fit
from edgemodel_dev.examples_models import load_digits_data


def student(teacher: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int, n: int, kd: bool,
            args: argparse.Namespace, use_mixup: bool) -> nn.Module:
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    xs, ys = x[order[:n]], y[order[:n]]
    if kd and args.unlabelled:  # the other training images, without their labels (-1): soft targets only
        xs, ys = x[order], torch.cat([ys, torch.full((len(x) - n,), -1, dtype=ys.dtype)])
    torch.manual_seed(seed)
    model = DigitsWideCNN(8)
    if kd or use_mixup:  # labels only with mixup: alpha 0 (the teacher's outputs are computed but weigh nothing)
        with torch.no_grad():
            soft = teacher(xs)
        fit(model, TrainSet([xs], ys, [soft]), kd_loss(args.temperature, args.alpha if kd else 0.0), args.epochs,
            args.lr, 64, seed, float("inf"), "student", transform=mixup(teacher) if use_mixup else None)
    else:
        fit(model, TrainSet([xs], ys, []), cross_entropy, args.epochs, args.lr, 64, seed, float("inf"), "student")
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", default="360")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--alpha", type=float, default=0.7)
    parser.add_argument("--lr", type=float, default=1e-3, help="spec.optimization.training.learningRate")
    parser.add_argument("--mixup", choices=["both", "yes", "no"], default="yes")
    parser.add_argument("--unlabelled", action="store_true",
                        help="the distilled student also sees the other training images, labelled -1 (unlabelled)")
    parser.add_argument("--mixup-baseline", action="store_true",
                        help="also train on labels only with mixup (is the gain the teacher's or mixup's?)")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    data = load_digits_data()
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    xt, yt = torch.from_numpy(data.x_test), torch.from_numpy(data.y_test)

    def top1(m: nn.Module) -> float:
        with torch.no_grad():
            return float((m(xt).argmax(1) == yt).float().mean())

    start = time.monotonic()
    teacher = train(DigitsWideCNN(32), x, y, 15)
    teacher_acc = top1(teacher)
    print(f"teacher top-1 {teacher_acc:.4f} ({time.monotonic() - start:.0f}s)", flush=True)
    for n in (int(s) for s in args.samples.split(",")):
        start = time.monotonic()
        labels = [top1(student(teacher, x, y, seed, n, False, args, False)) for seed in range(args.seeds)]
        if args.mixup_baseline:
            mixed = [top1(student(teacher, x, y, seed, n, False, args, True)) for seed in range(args.seeds)]
            print(f"samples {n} epochs {args.epochs}: labels only with mixup (no teacher) {np.mean(mixed):.4f} "
                  f"{[round(a, 4) for a in mixed]}", flush=True)
        for use_mixup in {"both": (False, True), "yes": (True,), "no": (False,)}[args.mixup]:
            soft = [top1(student(teacher, x, y, seed, n, True, args, use_mixup)) for seed in range(args.seeds)]
            print(f"samples {n}{' + unlabelled' if args.unlabelled else ''} epochs {args.epochs} alpha {args.alpha} T {args.temperature:g} mixup {use_mixup}: "
                  f"labels only {np.mean(labels):.4f} {[round(a, 4) for a in labels]}, distilled {np.mean(soft):.4f} "
                  f"{[round(a, 4) for a in soft]}: gain {100 * (np.mean(soft) - np.mean(labels)):+.2f} pp, "
                  f"{100 * (teacher_acc - np.mean(soft)):.2f} pp below the teacher "
                  f"({time.monotonic() - start:.0f}s, load {os.getloadavg()[0]:.1f})", flush=True)


if __name__ == "__main__":
    main()
