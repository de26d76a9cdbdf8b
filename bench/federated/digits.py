"""Digits data for federated runs: an untrained small CNN (TorchScript), the held-out validation set, and the
training split cut into per-node shards, IID or pathological non-IID (each node holds only a few classes)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

INPUT = "input"
LABELS = "labels"


@dataclass(frozen=True)
class DigitsFiles:
    model: Path
    validation: Path
    shards: dict[str, Path]
    """node -> .npz"""


def untrained_model(path: Path, arch: str = "cnn", width: int = 8, seed: int = 0) -> Path:
    """A freshly initialised (seeded) digits model saved as TorchScript: the examples' CNN, or a small MLP
    (64-32-10, for the quick end-to-end test)."""
    import torch

    from edgemodel_dev.examples_models import digits_cnn, save_torchscript

    torch.manual_seed(seed)
    if arch == "mlp":
        model = torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)
        )
    else:
        model = digits_cnn(width)
    return save_torchscript(model, path)


def shard_indices(
    labels: np.ndarray, nodes: int, iid: bool, classes_per_node: int = 2, seed: int = 0
) -> list[np.ndarray]:
    """Sample indices per node: IID (a random equal split) or non-IID (sorted by label, cut into
    ``nodes * classes_per_node`` runs, each node getting ``classes_per_node`` runs: the FedAvg paper's
    pathological split)."""
    rng = np.random.default_rng(seed)
    if iid:
        return [np.sort(part) for part in np.array_split(rng.permutation(len(labels)), nodes)]
    order = np.argsort(labels, kind="stable")
    runs = np.array_split(order, nodes * classes_per_node)
    picks = rng.permutation(len(runs))
    return [
        np.sort(np.concatenate([runs[j] for j in picks[i * classes_per_node : (i + 1) * classes_per_node]]))
        for i in range(nodes)
    ]


def write_digits(
    directory: Path, nodes: list[str], iid: bool = True, seed: int = 0, arch: str = "cnn"
) -> DigitsFiles:
    """Write the model, validation.npz (the held-out test split) and ``<node>/train.npz`` per node."""
    from edgemodel_dev.examples_models import load_digits_data

    data = load_digits_data(seed)
    directory.mkdir(parents=True, exist_ok=True)
    validation = directory / "validation.npz"
    np.savez(validation, **{INPUT: data.x_test, LABELS: data.y_test})
    shards: dict[str, Path] = {}
    for node, idx in zip(nodes, shard_indices(data.y_train, len(nodes), iid, seed=seed), strict=True):
        path = directory / node / "train.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **{INPUT: data.x_train[idx], LABELS: data.y_train[idx]})
        shards[node] = path
    return DigitsFiles(untrained_model(directory / "model.pt", arch=arch, seed=seed), validation, shards)
