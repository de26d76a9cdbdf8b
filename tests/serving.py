"""What the emulated-cluster end-to-end tests do with a serving agent: ask the digits model over the Open
Inference Protocol's JSON form, and add up a metric from a Prometheus text exposition."""

from __future__ import annotations

import json
import urllib.request

import numpy as np

from edgemodel_dev.examples_models import DIGITS_INPUT_NAME


def infer_digits(endpoint: str, images: np.ndarray, model: str = "digits", timeout: float = 10.0) -> np.ndarray:
    """The first output of ``model`` at ``endpoint`` for ``images`` (JSON request), shaped as it came."""
    body = {"inputs": [{"name": DIGITS_INPUT_NAME, "datatype": "FP32", "shape": list(images.shape),
                        "data": images.ravel().tolist()}]}
    request = urllib.request.Request(f"{endpoint}/v2/models/{model}/infer", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        out = json.loads(response.read())["outputs"][0]
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


def metric_total(text: str, name: str, **labels: str) -> float:
    """The sum of every sample of ``name`` in ``text`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def scraped_metric(endpoint: str, name: str, **labels: str) -> float:
    """``metric_total`` of the agent's ``/metrics`` at ``endpoint``."""
    with urllib.request.urlopen(f"{endpoint}/metrics", timeout=10) as response:
        return metric_total(response.read().decode(), name, **labels)
