"""A digits classifier large enough for compression to matter: a wide plain CNN (about 7 M MACs).

Depthwise-separable (MobileNetV2-style) variants were tried first: their grouped convolutions train
20x slower per MAC on this CPU (a 12 M MAC one took minutes per epoch), which breaks the
5-minute conversion budget, so the benchmark uses plain 3x3 convolutions.
"""

from __future__ import annotations

import torch
from torch import nn


class DigitsWideCNN(nn.Module):
    """[N, 1, 8, 8] digits -> 10 logits: a wide plain CNN (3x3 convolutions, batch norm)."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        w = width

        def conv(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        self.features = nn.Sequential(*conv(1, w), *conv(w, 2 * w), *conv(2 * w, 2 * w), nn.MaxPool2d(2),
                                      *conv(2 * w, 4 * w), *conv(4 * w, 4 * w))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int = 0, lr: float = 3e-3,
          label_smoothing: float = 0.0, weight_decay: float = 0.0) -> nn.Module:
    """Adam + cosine schedule with light augmentation (random 1-pixel shifts); returns the model in eval mode."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=epochs)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), 64):
            idx = order[start:start + 64]
            shift = [int(s) for s in torch.randint(-1, 2, (2,), generator=generator)]
            xb = torch.roll(x[idx], shifts=shift, dims=(2, 3))
            optimiser.zero_grad()
            nn.functional.cross_entropy(model(xb), y[idx], label_smoothing=label_smoothing).backward()
            optimiser.step()
        scheduler.step()
    return model.eval()
