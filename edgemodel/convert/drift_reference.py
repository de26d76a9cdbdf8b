"""The revision's drift reference: summary statistics of its validation inputs, published in the signed manifest.

The agents' PSI detector (``edge_agent.drift``) compares the inputs it serves against these per-feature
quantile bins, from the first request of the revision on. The same ``summarise`` and ``Reference`` code runs
here and on the agent, so the features match exactly.
"""

from __future__ import annotations

import numpy as np

from edge_agent.drift import Reference, summarise
from edgemodel.api import ManifestDriftReference
from edgemodel.convert.data import Dataset

BINS = 10


def _short(values: np.ndarray) -> list[float]:
    """Seven significant digits: enough for bin edges and shares, and a manifest of a few tens of KB at most."""
    return [float(f"{v:.7g}") for v in values.tolist()]


def drift_reference(validation: Dataset, input_name: str, uri: str) -> ManifestDriftReference | None:
    """The summary of ``validation``'s first input, or None when it has too few rows or is not numeric."""
    x = validation.inputs.get(input_name)
    if x is None or len(x) < BINS or not np.issubdtype(np.asarray(x).dtype, np.number):
        return None
    reference = Reference.from_samples(summarise(np.asarray(x).reshape(len(x), -1)), bins=BINS)
    return ManifestDriftReference(
        input=input_name,
        data=uri,
        samples=len(x),
        bins=BINS,
        edges=[_short(e) for e in reference.edges],
        expected=[_short(p) for p in reference.expected],
    )

