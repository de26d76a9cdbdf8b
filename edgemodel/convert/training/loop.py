"""One bounded, seeded CPU training loop shared by fine-tuning, QAT and distillation."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgemodel.convert.progress import Progress

log = logging.getLogger(__name__)

Transform = Callable[[list[Any], list[Any], Any, Any], tuple[list[Any], list[Any], Any]]
"""(batch inputs, batch extras, batch labels or None, torch.Generator) -> the same, rewritten (e.g. mixup)."""
LossFn = Callable[[Any, list[Any], Any], Any]
"""(first output of the model, per-sample extras such as teacher logits, labels or None) -> loss tensor."""


@dataclass
class Fitted:
    """What a training run did: epochs run of those asked, seconds, last mean loss, whether time ran out."""

    epochs: int
    asked: int
    seconds: float
    loss: float
    stopped_by_time: bool

    def describe(self) -> str:
        text = f"{self.epochs} epoch(s) in {self.seconds:.1f}s, final loss {self.loss:.4f}"
        return text + (f" (stopped at the time bound after {self.epochs} of {self.asked})" if self.stopped_by_time else "")


@dataclass
class TrainSet:
    """Training tensors: inputs in spec order, optional labels, optional per-sample extras (teacher logits)."""

    inputs: list[Any]
    labels: Any | None
    extras: list[Any]

    def __len__(self) -> int:
        return int(self.inputs[0].shape[0])


def fit(model: Any, data: TrainSet, loss_fn: LossFn, epochs: int, lr: float, batch: int, seed: int,
        deadline: float, what: str, progress: Progress | None = None, params: Any = None,
        train_mode: Callable[[Any], None] | None = None, transform: Transform | None = None) -> Fitted:
    """Adam with a cosine schedule for ``epochs`` or until ``deadline`` (time.monotonic()), one log line per epoch.

    ``transform`` (e.g. distillation's mixup) rewrites each batch (inputs, extras, labels) before the step.
    """
    import torch

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(params if params is not None else model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=max(1, epochs))
    (train_mode or (lambda m: m.train()))(model)
    with warnings.catch_warnings():
        # torchao's PT2E graphs use a pytree spec torch 2.13 deprecates (FutureWarning on every forward)
        warnings.simplefilter("ignore", FutureWarning)
        return _epochs(model, data, loss_fn, epochs, optimiser, scheduler, generator, batch, deadline, what,
                       progress, transform)


def _epochs(model: Any, data: TrainSet, loss_fn: LossFn, epochs: int, optimiser: Any, scheduler: Any,
            generator: Any, batch: int, deadline: float, what: str, progress: Progress | None,
            transform: Transform | None = None) -> Fitted:
    import torch

    start = time.monotonic()
    done, last = 0, float("nan")
    # accuracy on the labels, or (without labels) agreement with the teacher's top-1 (extras[0])
    measure = "accuracy" if data.labels is not None else "teacher agreement" if data.extras else ""
    for epoch in range(epochs):
        order = torch.randperm(len(data), generator=generator)
        losses: list[float] = []
        right = seen = 0
        for first in range(0, len(data), batch):
            idx = order[first:first + batch]
            inputs = [x[idx] for x in data.inputs]
            labels = None if data.labels is None else data.labels[idx]
            extras = [e[idx] for e in data.extras]
            if transform is not None:
                inputs, extras, labels = transform(inputs, extras, labels, generator)
            out = model(*inputs)
            out = out[0] if isinstance(out, (tuple, list)) else out
            loss = loss_fn(out, extras, labels)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
            dominant = getattr(labels, "dominant", None)  # mixed labels (distillation's mixup)
            truth = dominant() if dominant is not None else labels
            truth = truth if truth is not None else extras[0].argmax(1) if extras else None
            if truth is not None:
                known = truth >= 0  # -1: an unlabelled sample
                right += int(((out.detach().argmax(1) == truth) & known).sum())
                seen += int(known.sum())
        scheduler.step()
        done, last = epoch + 1, float(np.mean(losses))
        score = f", {measure} {right / max(seen, 1):.4f}" if measure else ""
        log.info("Trained %s: epoch %d/%d, loss %.4f%s, %.1fs", what, done, epochs, last, score,
                 time.monotonic() - start)
        if progress is not None:
            progress.advance(f"{what}: epoch {done}/{epochs}, loss {last:.4f}{score}")
        if time.monotonic() > deadline and done < epochs:
            log.warning("Stopped training %s after %d of %d epochs: spec.optimization.training.maxSeconds reached",
                        what, done, epochs)
            if progress is not None:
                progress.add_steps(-(epochs - done))
            return Fitted(done, epochs, time.monotonic() - start, last, True)
    return Fitted(done, epochs, time.monotonic() - start, last, False)


UNLABELLED = -1
"""The label of a sample without one: distillation learns its soft targets only; fine-tuning skips it."""


def cross_entropy(out: Any, extras: list[Any], labels: Any) -> Any:
    import torch.nn.functional as F

    return F.cross_entropy(out, labels)


def predict(model: Any, inputs: list[Any], batch: int = 256) -> Any:
    """The model's first output over all samples (eval mode, no gradients)."""
    import torch

    parts = []
    with torch.no_grad():
        for first in range(0, int(inputs[0].shape[0]), batch):
            out = model(*[x[first:first + batch] for x in inputs])
            parts.append(out[0] if isinstance(out, (tuple, list)) else out)
    return torch.cat(parts)
