"""Models of the demo story: the trained digits CNN and a deliberately slow revision of it."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class SlowDigits(nn.Module):
    """The trained digits CNN plus an expensive branch whose result is multiplied by zero.

    Predictions (and so accuracy) are exactly those of the trained model, so it passes the
    conversion's accuracy gate; only its latency (10-20 ms per image on one core, in
    element-wise work that INT8 quantisation cannot speed up) breaks the rollout's p95 budget.
    """

    def __init__(self, trained: nn.Module, size: int = 640, rounds: int = 16) -> None:
        super().__init__()
        self.trained = trained
        self.size = size
        self.rounds = rounds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.trained(x)
        waste = nn.functional.interpolate(x, size=(self.size, self.size), mode="nearest")
        for _ in range(self.rounds):
            waste = torch.sin(waste) + waste * 0.5
        return logits + waste.mean(dim=(1, 2, 3)).unsqueeze(1) * 0.0


def write_slow_revision(trained_pt: Path, out: Path) -> Path:
    """Save a SlowDigits TorchScript model built around the trained TorchScript model."""
    trained = torch.jit.load(str(trained_pt))
    slow = SlowDigits(trained).eval()
    with torch.no_grad():
        scripted = torch.jit.trace(slow, torch.zeros(1, 1, 8, 8))
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(scripted, str(out))
    return out
