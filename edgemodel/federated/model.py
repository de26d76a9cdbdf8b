"""The trained model: a TorchScript module whose floating-point state is what Flower exchanges.

Parameters travel as the module's floating-point state_dict entries (trainable weights and float buffers such as
BatchNorm running statistics) in a fixed order; integer buffers (e.g. ``num_batches_tracked``) stay local.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgemodel.federated.data import Dataset
from edgemodel.federated.errors import FederatedError, Reason

log = logging.getLogger(__name__)


def load_module(path: Path, field: str) -> Any:
    """Load a TorchScript module for training; a file that is none, or has no trainable parameters, is refused."""
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise FederatedError(
            Reason.MODEL_UNREADABLE,
            f"{field}: cannot load {path.name} as TorchScript ({exc}); save "
            "it with torch.jit.save(torch.jit.script(model), 'model.pt')",
        ) from exc
    trainable = [p for p in module.parameters() if p.requires_grad]
    if not trainable:
        raise FederatedError(
            Reason.MODEL_NOT_TRAINABLE,
            f"{field}: the model has no trainable parameters, so there is "
            "nothing to train; give a model with weights",
        )
    return module


def _float_keys(module: Any) -> list[str]:
    return [k for k, v in module.state_dict().items() if v.is_floating_point()]


def get_weights(module: Any) -> list[np.ndarray]:
    """The exchanged state, as NumPy arrays in a fixed order."""
    state = module.state_dict()
    return [state[k].detach().cpu().numpy().copy() for k in _float_keys(module)]


def set_weights(module: Any, weights: Sequence[np.ndarray]) -> None:
    """Load exchanged state (same order as :func:`get_weights`); a mismatch is an error."""
    import torch

    keys = _float_keys(module)
    if len(keys) != len(weights):
        raise FederatedError(
            Reason.TRAINING_FAILED,
            f"received {len(weights)} arrays for a model with {len(keys)}; "
            "the server and client models differ (same spec.model.uri?)",
        )
    state = module.state_dict()
    with torch.no_grad():
        for key, array in zip(keys, weights, strict=True):
            if tuple(state[key].shape) != tuple(array.shape):
                raise FederatedError(
                    Reason.TRAINING_FAILED,
                    f"array {key} has shape {array.shape}, the model expects {tuple(state[key].shape)}",
                )
            state[key].copy_(torch.from_numpy(np.asarray(array)))


def train(
    module: Any,
    data: Dataset,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    proximal_mu: float = 0.0,
    seed: int = 0,
) -> float:
    """Local SGD (momentum 0.9) on cross-entropy, plus FedProx's proximal term when ``proximal_mu`` > 0; returns the
    mean training loss of the last epoch."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    inputs = torch.from_numpy(data.inputs)
    labels = torch.from_numpy(data.labels)
    params = [p for p in module.parameters() if p.requires_grad]
    anchor = [p.detach().clone() for p in params]
    optimiser = torch.optim.SGD(params, lr=learning_rate, momentum=0.9)
    module.train()
    mean = 0.0
    for _ in range(epochs):
        order = torch.randperm(len(labels), generator=generator)
        total, seen = 0.0, 0
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            optimiser.zero_grad()
            loss = torch.nn.functional.cross_entropy(module(inputs[idx]), labels[idx])
            objective = loss
            if proximal_mu > 0:
                objective = loss + proximal_mu / 2 * sum(
                    ((p - a) ** 2).sum() for p, a in zip(params, anchor, strict=True)
                )
            objective.backward()
            optimiser.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
        mean = total / max(seen, 1)
    module.eval()
    return mean


def evaluate(module: Any, data: Dataset, batch_size: int = 512) -> tuple[float, float]:
    """(mean cross-entropy, top-1 accuracy) on ``data``."""
    import torch

    module.eval()
    inputs = torch.from_numpy(data.inputs)
    labels = torch.from_numpy(data.labels)
    loss_sum, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(labels), batch_size):
            logits = module(inputs[start : start + batch_size])
            target = labels[start : start + batch_size]
            loss_sum += float(torch.nn.functional.cross_entropy(logits, target, reduction="sum"))
            correct += int((logits.argmax(dim=1) == target).sum())
    return loss_sum / len(labels), correct / len(labels)


def save(module: Any, path: Path) -> Path:
    """Write the module as TorchScript (what an EdgeModel's spec.source reads)."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(module, str(path))
    return path
