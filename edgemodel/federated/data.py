"""Load the model and the .npz data sets of a federated run, with errors that name the spec field."""

from __future__ import annotations

import logging
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgemodel.convert.errors import ConversionError
from edgemodel.convert.errors import Reason as ConvertReason
from edgemodel.convert.fetch import fetch
from edgemodel.federated.errors import FederatedError, Reason

log = logging.getLogger(__name__)

MAX_SAMPLES = 10_000_000


@dataclass(frozen=True)
class Dataset:
    """Inputs (float32, first axis = samples) and integer class labels."""

    inputs: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def fetch_file(uri: str, dest: Path, field: str, missing: Reason) -> Path:
    """Copy ``uri`` (file://, http(s)://, s3://) to ``dest``; errors name ``field``."""
    try:
        path, _ = fetch(uri, dest, field, ConvertReason.SOURCE_UNREADABLE)
    except ConversionError as exc:
        reason = Reason.SOURCE_UNAVAILABLE if exc.reason == ConvertReason.SOURCE_UNAVAILABLE else missing
        raise FederatedError(reason, str(exc)) from exc
    return path


def node_uri(template: str, node: str) -> str:
    """The data URI of ``node``: ``{node}`` replaced by its (URL-quoted) name."""
    return template.replace("{node}", urllib.parse.quote(node, safe=""))


def load_npz(path: Path, field: str, input_array: str, labels_array: str, where: str = "") -> Dataset:
    """Read and check an .npz with an inputs array and a 1-D integer labels array (no pickles)."""
    at = f" on {where}" if where else ""
    if not path.is_file():
        raise FederatedError(
            Reason.DATA_MISSING,
            f"{field}: {path} does not exist{at}; put the node's .npz there or fix the path",
        )
    try:
        with np.load(path, allow_pickle=False) as npz:
            names = list(npz.files)
            missing = [n for n in (input_array, labels_array) if n not in names]
            if missing:
                raise FederatedError(
                    Reason.DATA_INVALID,
                    f"{field}: {path}{at} has no array {missing[0]!r} (it has "
                    f"{', '.join(names) or 'none'}); set the array names in spec.data",
                )
            inputs = np.asarray(npz[input_array], dtype=np.float32)
            labels = np.asarray(npz[labels_array])
    except FederatedError:
        raise
    except Exception as exc:
        raise FederatedError(
            Reason.DATA_INVALID, f"{field}: {path}{at} is not a readable .npz ({exc})"
        ) from exc
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise FederatedError(
            Reason.DATA_INVALID,
            f"{field}: {labels_array!r}{at} must be a 1-D integer array, "
            f"got {labels.dtype} with shape {labels.shape}",
        )
    if len(labels) == 0 or inputs.shape[0] != len(labels) or len(labels) > MAX_SAMPLES:
        raise FederatedError(
            Reason.DATA_INVALID,
            f"{field}: {path}{at} has {inputs.shape[0]} inputs and "
            f"{len(labels)} labels; they must match, between 1 and {MAX_SAMPLES:,}",
        )
    log.info("Loaded %s samples from %s%s", f"{len(labels):,}", path, at)
    return Dataset(inputs, labels.astype(np.int64))
