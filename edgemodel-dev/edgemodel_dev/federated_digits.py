"""Digits data for federated runs: an untrained small CNN (TorchScript), the held-out validation set, and the
training split cut into per-node shards, IID or pathological non-IID (each node holds only a few classes).

Used by the federated benchmark (``bench/federated``), its end-to-end test and the demo's federated chapter
(:func:`write_demo_digits`: a revision-1 model pre-trained on a few labelled images held in the cloud)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    model: torch.nn.Module
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


def class_shards(labels: np.ndarray, pool: np.ndarray, nodes: int, classes_per_node: int, seed: int = 0) -> list[np.ndarray]:
    """Indices (from ``pool``) per node, each node holding exactly ``classes_per_node`` classes: a seeded class
    order dealt out round-robin; a class dealt to several nodes is split evenly between them."""
    rng = np.random.default_rng(seed)
    classes = [int(c) for c in rng.permutation(np.unique(labels[pool]))]
    holders: dict[int, list[int]] = {}
    for node in range(nodes):
        for j in range(classes_per_node):
            holders.setdefault(classes[(node * classes_per_node + j) % len(classes)], []).append(node)
    out: list[list[np.ndarray]] = [[] for _ in range(nodes)]
    for cls, owners in holders.items():
        for owner, part in zip(owners, np.array_split(pool[labels[pool] == cls], len(owners)), strict=True):
            out[owner].append(part)
    return [np.sort(np.concatenate(parts)) for parts in out]


def write_digits(
    directory: Path, nodes: list[str], iid: bool = True, seed: int = 0, arch: str = "cnn"
) -> DigitsFiles:
    """Write the model, validation.npz (the held-out test split) and ``<node>/train.npz`` per node."""
    from edgemodel_dev.examples_models import load_digits_data

    data = load_digits_data(seed)
    directory.mkdir(parents=True, exist_ok=True)
    validation = directory / "validation.npz"
    arrays: dict[str, Any] = {INPUT: data.x_test, LABELS: data.y_test}
    np.savez(validation, **arrays)
    shards: dict[str, Path] = {}
    for node, idx in zip(nodes, shard_indices(data.y_train, len(nodes), iid, seed=seed), strict=True):
        path = directory / node / "train.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        shard: dict[str, Any] = {INPUT: data.x_train[idx], LABELS: data.y_train[idx]}
        np.savez(path, **shard)
        shards[node] = path
    return DigitsFiles(untrained_model(directory / "model.pt", arch=arch, seed=seed), validation, shards)


@dataclass(frozen=True)
class DemoDigits:
    """What the federated demo chapter needs: :func:`write_demo_digits`."""

    model: Path
    """revision 1: the seeded MLP pre-trained on ``cloud_per_class`` images per class (TorchScript)"""
    model_accuracy: float
    """revision 1's torch accuracy on the held-out half"""
    validation: Path
    """validation.npz: the first half of the test split, held by the cloud (stop condition, accuracy gate)"""
    calibration: Path
    """calib.npz: inputs of the cloud's own images (the EdgeModel's INT8 calibration)"""
    heldout_x: np.ndarray
    heldout_y: np.ndarray
    """the second half of the test split: seen by no training, no stop condition and no gate"""
    shards: dict[str, Path]
    classes: dict[str, list[int]]
    """node -> the classes its shard holds"""


def write_demo_digits(
    directory: Path, nodes: list[str], classes_per_node: int = 2, cloud_per_class: int = 2,
    pretrain_epochs: int = 30, seed: int = 0,
) -> DemoDigits:
    """Pathological non-IID shards of the digits training split (minus the cloud's few images) per node, and a
    revision-1 MLP trained only on the cloud's ``cloud_per_class`` images per class."""
    from edgemodel.federated import model as models
    from edgemodel.federated.data import Dataset
    from edgemodel_dev.examples_models import load_digits_data

    data = load_digits_data(seed)
    directory.mkdir(parents=True, exist_ok=True)
    cloud = np.sort(np.concatenate([np.flatnonzero(data.y_train == c)[:cloud_per_class] for c in range(10)]))
    rest = np.setdiff1d(np.arange(len(data.y_train)), cloud)
    half = len(data.y_test) // 2
    validation, calibration = directory / "validation.npz", directory / "calib.npz"
    held: dict[str, Any] = {INPUT: data.x_test[:half], LABELS: data.y_test[:half]}
    np.savez(validation, **held)
    calib: dict[str, Any] = {INPUT: data.x_train[cloud]}
    np.savez(calibration, **calib)
    shards: dict[str, Path] = {}
    classes: dict[str, list[int]] = {}
    for node, idx in zip(nodes, class_shards(data.y_train, rest, len(nodes), classes_per_node, seed), strict=True):
        path = directory / node / "train.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, Any] = {INPUT: data.x_train[idx], LABELS: data.y_train[idx]}
        np.savez(path, **arrays)
        shards[node] = path
        classes[node] = sorted({int(c) for c in data.y_train[idx]})
    initial = untrained_model(directory / "initial.pt", arch="mlp", seed=seed)
    module = models.load_module(initial, "model")
    small = Dataset(data.x_train[cloud], data.y_train[cloud])
    for epoch in range(pretrain_epochs):
        models.train(module, small, epochs=1, batch_size=8, learning_rate=0.05, seed=epoch)
    heldout_x, heldout_y = data.x_test[half:], data.y_test[half:]
    accuracy = models.evaluate(module, Dataset(heldout_x, heldout_y))[1]
    model = models.save(module, directory / "revision-1.pt")
    return DemoDigits(model, accuracy, validation, calibration, heldout_x, heldout_y, shards, classes)
