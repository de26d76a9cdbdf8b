"""ORT speed of channel pruning with and without aligned widths (the measurement behind prune.ALIGNMENTS).

Run on demand: ``.venv/bin/python bench/compress/prune_alignment.py SIZE WIDTH TARGET ROUND_TO``, e.g.
``8 32 3 16`` (8x8 input, DigitsWideCNN(32), prune to 3x fewer MACs, widths in multiples of 16; 0 = free
widths). Random weights (latency only); torch-pruning L1 magnitude in steps of 5 %; ORT FP32 with 2
intra-op threads; p50 over 7 interleaved rounds of 200 runs at batch 1.
"""

from __future__ import annotations

import contextlib
import io
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
import torch_pruning as tp
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from models import DigitsWideCNN


def session(model: nn.Module, x: torch.Tensor, path: Path) -> Any:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        torch.onnx.export(model.eval(), (x,), str(path), input_names=["input"], output_names=["out"], dynamo=False,
                          dynamic_axes={"input": {0: "n"}})
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def p50_ms(sessions: dict[str, Any], x: np.ndarray, rounds: int = 7, runs: int = 200) -> dict[str, float]:
    medians: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(rounds):
        for name, s in sessions.items():
            for _ in range(20):
                s.run(None, {"input": x})
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                s.run(None, {"input": x})
                times.append(time.perf_counter() - start)
            medians[name].append(float(np.median(times)))
    return {k: 1000 * float(np.median(v)) for k, v in medians.items()}


def main() -> None:
    warnings.simplefilter("ignore")
    size, width, target, round_to = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]) or None
    folder = Path(tempfile.mkdtemp(prefix="prune-alignment-"))
    x = torch.randn(1, 1, size, size)
    original = DigitsWideCNN(width).eval()
    macs0, _ = tp.utils.count_ops_and_params(original, x)
    pruned = DigitsWideCNN(width).eval()
    pruner = tp.pruner.MagnitudePruner(pruned, x, importance=tp.importance.MagnitudeImportance(p=1), iterative_steps=19,
                                       pruning_ratio=0.95, ignored_layers=[pruned.head[2]], round_to=round_to)
    macs = macs0
    while macs0 / macs < target:
        pruner.step()
        macs, _ = tp.utils.count_ops_and_params(pruned, x)
    widths = [m.out_channels for m in pruned.modules() if isinstance(m, nn.Conv2d)]
    got = p50_ms({"fp32": session(original, x, folder / "a.onnx"), "pruned": session(pruned, x, folder / "b.onnx")},
                 x.numpy())
    print(f"input {size}x{size} width {width} round_to {round_to}: widths {widths}, MACs {macs0 / 1e6:.1f}M -> "
          f"{macs / 1e6:.1f}M ({macs0 / macs:.2f}x); p50 {got['fp32']:.4f} -> {got['pruned']:.4f} ms: "
          f"{got['fp32'] / got['pruned']:.2f}x")


if __name__ == "__main__":
    main()
