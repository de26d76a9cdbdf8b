"""Distillation gain over several seeds: the width-1/4 student (1/16 of the MACs) with soft targets vs labels only.

Run on demand (never from pytest):

    .venv/bin/python bench/compress/distill_gain.py --samples 1437,360 --epochs 30 --seeds 3

Trains the teacher (``DigitsWideCNN(32)``, 15 epochs, all 1,437 training images) once, then for each
training-set size (a stratified-by-chance random subset per seed) trains ``DigitsWideCNN(8)`` (the same
student ``widthFactor: 0.25`` builds) with the conversion's loss (alpha * T^2 * KL + (1 - alpha) * CE,
T 4, alpha 0.9) and with labels only, same seed, data order and epochs, with and without 1-pixel shift
augmentation (the teacher then labels each shifted batch). Prints the mean top-1 on the 360 held-out
images and the gain in percentage points. No seed is picked: every seed's result is printed.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from models import DigitsWideCNN, train

from edgemodel_dev.examples_models import load_digits_data


def student(
    teacher: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    seed: int,
    n: int,
    kd: bool,
    epochs: int,
    augment: bool,
    temperature: float = 4.0,
    alpha: float = 0.9,
    lr: float = 3e-3,
) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(x), generator=generator)[:n]
    xs, ys = x[idx], y[idx]
    torch.manual_seed(seed)
    model = DigitsWideCNN(8)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, epochs)
    with torch.no_grad():
        soft_all = teacher(xs)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(xs), generator=generator)
        for start in range(0, len(xs), 64):
            b = order[start : start + 64]
            xb, soft = xs[b], soft_all[b]
            if augment:
                shift = [int(v) for v in torch.randint(-1, 2, (2,), generator=generator)]
                xb = torch.roll(xb, shifts=shift, dims=(2, 3))
                with torch.no_grad():
                    soft = teacher(xb)
            out = model(xb)
            loss = F.cross_entropy(out, ys[b])
            if kd:
                kl = (
                    F.kl_div(
                        F.log_softmax(out / temperature, 1),
                        F.log_softmax(soft / temperature, 1),
                        reduction="batchmean",
                        log_target=True,
                    )
                    * temperature
                    * temperature
                )
                loss = alpha * kl + (1 - alpha) * loss
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        scheduler.step()
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", default="1437,360")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--augment", choices=["both", "yes", "no"], default="both")
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
    print(f"teacher top-1 {top1(teacher):.4f} ({time.monotonic() - start:.0f}s)", flush=True)
    for n in (int(s) for s in args.samples.split(",")):
        for augment in {"both": (False, True), "yes": (True,), "no": (False,)}[args.augment]:
            start = time.monotonic()
            got = {
                kd: [
                    top1(student(teacher, x, y, seed, n, kd, args.epochs, augment))
                    for seed in range(args.seeds)
                ]
                for kd in (False, True)
            }
            labels, soft = float(np.mean(got[False])), float(np.mean(got[True]))
            print(
                f"samples {n} epochs {args.epochs} augment {augment}: labels only {labels:.4f} "
                f"{[round(a, 4) for a in got[False]]}, distilled {soft:.4f} {[round(a, 4) for a in got[True]]}: "
                f"gain {100 * (soft - labels):+.2f} pp ({time.monotonic() - start:.0f}s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
