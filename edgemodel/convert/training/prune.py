"""Structured channel pruning with torch-pruning (L1 magnitude, dependency-aware), then fine-tuning."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any

from edgemodel.convert.training.lift import clone, output_layers

log = logging.getLogger(__name__)

MAX_RATIO = 0.95
STEPS = 19
"""Channels are removed in steps of MAX_RATIO / STEPS (5 %) per layer until the MAC target is reached."""


@dataclass
class Pruned:
    model: Any
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    channel_ratio: float


def count(model: Any, args: tuple[Any, ...]) -> tuple[int, int]:
    """(MACs, parameters) of one forward pass of ``args`` (torch-pruning's counter)."""
    import torch_pruning as tp

    with warnings.catch_warnings():  # its deep copy of a captured graph trips a torch 2.13 pytree deprecation
        warnings.simplefilter("ignore", FutureWarning)
        macs, params = tp.utils.count_ops_and_params(model, args)
    return int(macs), int(params)


def prune_channels(model: Any, example: tuple[Any, ...], target_speedup: float, seed: int) -> Pruned:
    """Remove the least important channels of every prunable layer (in place) until MACs fall by ``target_speedup``.

    The output layers keep their width, so outputs keep their shape.
    """
    import torch
    import torch_pruning as tp

    torch.manual_seed(seed)
    macs0, params0 = count(model, example)
    macs, step = macs0, 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        pruner = tp.pruner.MagnitudePruner(
            model, example, importance=tp.importance.MagnitudeImportance(p=1), iterative_steps=STEPS,
            pruning_ratio=MAX_RATIO, ignored_layers=output_layers(model), round_to=None,
        )
        while macs0 / max(macs, 1) < target_speedup and step < STEPS:
            pruner.step()
            step += 1
            macs, _ = count(model, example)
    macs, params = count(model, example)
    log.info("Pruned channels: MACs %s -> %s (%.2fx), parameters %s -> %s, %d step(s) of %.0f%%",
             f"{macs0:,}", f"{macs:,}", macs0 / max(macs, 1), f"{params0:,}", f"{params:,}", step,
             100 * MAX_RATIO / STEPS)
    return Pruned(model, macs0, macs, params0, params, step * MAX_RATIO / STEPS)


def width_student(teacher: Any, example: tuple[Any, ...], width_factor: float, seed: int) -> Pruned:
    """The teacher with every hidden layer's channels times ``width_factor`` (one uniform cut), freshly initialised."""
    import torch
    import torch_pruning as tp

    torch.manual_seed(seed)
    student = clone(teacher)
    macs0, params0 = count(student, example)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        tp.pruner.MagnitudePruner(student, example, importance=tp.importance.MagnitudeImportance(p=1),
                                  pruning_ratio=1.0 - width_factor, ignored_layers=output_layers(student)).step()
    for module in student.modules():
        if module is not student and hasattr(module, "reset_parameters"):
            module.reset_parameters()
    macs, params = count(student, example)
    log.info("Built a student at width %.3g of the teacher: MACs %s -> %s (1/%.1f)", width_factor, f"{macs0:,}",
             f"{macs:,}", macs0 / max(macs, 1))
    return Pruned(student, macs0, macs, params0, params, 1.0 - width_factor)
