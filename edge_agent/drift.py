"""Drift detectors of the edge agent (numpy only): inputs against a reference, and the confidence stream.

- ``PsiDetector``: the population stability index of each input feature over a sliding window of
  recent samples against the reference's quantile bins (the revision's validation data, or the
  first samples served when none was shipped); the score is the mean PSI over the features.
  Inputs larger than ``MAX_FEATURES`` elements are summarised by block means first.
- ``PageHinkley``: a one-sided Page-Hinkley test on the model's confidence (top-1 probability):
  it alarms when the mean confidence falls by more than ``delta`` for long enough (``threshold``).
- ``DriftMonitor``: both detectors of one model plus the alarm episode (``alarm_since``) the
  operator's "drift persisting for a window" trigger reads.

Every update is O(features) and runs on the capture worker thread, never on the request path.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from edgemodel.api.artifact import ManifestDriftReference

MAX_FEATURES = 64
"""Inputs with more elements are reduced to this many block means before binning."""
PSI_EPS = 1e-4
"""Floor of a bin proportion (an empty bin would make the PSI infinite)."""


def summarise(x: np.ndarray, features: int = MAX_FEATURES) -> np.ndarray:
    """Rows of ``x`` (first axis = samples) as float64 feature vectors of at most ``features`` block means."""
    flat = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    width = flat.shape[1]
    if width <= features:
        return flat
    edges = np.linspace(0, width, features + 1).astype(np.int64)
    sums = np.add.reduceat(flat, edges[:-1], axis=1)
    return sums / np.diff(edges)


@dataclass(frozen=True)
class Reference:
    """Per-feature quantile bin edges and the reference proportions in each bin."""

    edges: list[np.ndarray]
    """Inner bin edges of each feature (features with a constant reference have none and are skipped)."""
    expected: list[np.ndarray]
    """Proportion of the reference in each bin, floored at PSI_EPS."""

    @classmethod
    def from_samples(cls, x: np.ndarray, bins: int = 10) -> Reference:
        """Quantile bins of each feature of ``x`` (rows = samples, as ``summarise`` returns them)."""
        if x.ndim != 2 or len(x) < bins:
            raise ValueError(
                f"a drift reference needs at least {bins} samples as rows, got shape {list(x.shape)}"
            )
        edges: list[np.ndarray] = []
        expected: list[np.ndarray] = []
        quantiles = np.linspace(0, 1, bins + 1)[1:-1]
        for column in x.T:
            inner = np.unique(np.quantile(column, quantiles))
            if inner.size == 0 or column.min() == column.max():
                inner = np.empty(0)
            counts = np.bincount(np.searchsorted(inner, column, side="right"), minlength=inner.size + 1)
            edges.append(inner)
            expected.append(np.maximum(counts / len(column), PSI_EPS))
        return cls(edges, expected)

    @property
    def features(self) -> int:
        return len(self.edges)

    def to_npz(self) -> dict[str, np.ndarray]:
        """Arrays to save with ``np.savez`` (and read back with ``from_npz``)."""
        out: dict[str, np.ndarray] = {}
        for i, (e, p) in enumerate(zip(self.edges, self.expected, strict=True)):
            out[f"edges_{i}"] = e
            out[f"expected_{i}"] = p
        return out

    @classmethod
    def from_manifest(cls, summary: ManifestDriftReference) -> Reference:
        """The ``driftReference`` of a verified manifest (the converter's summary of the validation inputs)."""
        return cls(
            [np.asarray(e, dtype=np.float64) for e in summary.edges],
            [np.asarray(p, dtype=np.float64) for p in summary.expected],
        )

    @classmethod
    def from_npz(cls, arrays: dict[str, np.ndarray]) -> Reference:
        n = sum(1 for k in arrays if k.startswith("edges_"))
        return cls(
            [np.asarray(arrays[f"edges_{i}"], dtype=np.float64) for i in range(n)],
            [np.asarray(arrays[f"expected_{i}"], dtype=np.float64) for i in range(n)],
        )


def psi(expected: np.ndarray, actual_counts: np.ndarray) -> float:
    """Population stability index of observed bin counts against expected proportions."""
    total = actual_counts.sum()
    if total == 0:
        return 0.0
    actual = np.maximum(actual_counts / total, PSI_EPS)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


class PsiDetector:
    """Mean per-feature PSI of the last ``window`` samples against a reference; alarms above ``threshold``.

    Vectorised over features and rows: the bin edges are one padded matrix, the window is a ring of bin
    indices, and the counts are recomputed with one ``bincount`` when the score is due (every ``every`` rows).
    """

    name = "psi"

    def __init__(
        self, reference: Reference, window: int = 200, threshold: float = 0.25, every: int = 25
    ) -> None:
        if window < 10:
            raise ValueError("window must be at least 10 samples")
        self.reference = reference
        self.window = window
        self.threshold = threshold
        self.every = every
        self._active = np.array([i for i, e in enumerate(reference.edges) if e.size > 0], dtype=np.int64)
        self.bins = max((reference.edges[i].size + 1 for i in self._active), default=1)
        self._edges = np.full((len(self._active), self.bins - 1), np.inf)
        self._expected = np.full((len(self._active), self.bins), PSI_EPS)
        for j, i in enumerate(self._active):
            e = reference.edges[i]
            self._edges[j, : e.size] = e
            self._expected[j, : e.size + 1] = reference.expected[i]
        self._offsets = np.arange(len(self._active), dtype=np.int64) * self.bins
        self._ring = np.zeros((window, len(self._active)), dtype=np.int64)
        self._n = 0
        self.score = 0.0

    def update(self, rows: np.ndarray) -> bool:
        """Add summarised samples (one row, or rows); True when the score is above the threshold."""
        if not self._active.size:
            return False
        x = np.atleast_2d(rows)[-self.window :, self._active]
        binned = (x[:, :, None] >= self._edges[None, :, :]).sum(axis=2)
        slots = (self._n + np.arange(len(binned))) % self.window
        self._ring[slots] = binned
        before = self._n
        self._n += len(np.atleast_2d(rows))
        if self._n < self.window:
            return False
        if self._n // self.every != before // self.every or before < self.window:
            counts = np.bincount(
                (self._ring + self._offsets).ravel(), minlength=self._offsets.size * self.bins
            )
            actual = np.maximum(counts.reshape(-1, self.bins) / self.window, PSI_EPS)
            self.score = float(
                np.mean(np.sum((actual - self._expected) * np.log(actual / self._expected), axis=1))
            )
        return self.score > self.threshold

    def reset(self) -> None:
        self._ring[:] = 0
        self._n = 0
        self.score = 0.0


class PageHinkley:
    """One-sided Page-Hinkley test for a fall of the mean (of the confidence stream).

    m_t = sum(mean_t - x_t - delta) over the samples; alarm when m_t - min(m) > threshold. After an
    alarm the test restarts from the new level. ``score`` is (m_t - min m) / threshold (1.0 = alarm).
    """

    name = "page_hinkley"

    def __init__(self, delta: float = 0.01, threshold: float = 8.0, min_samples: int = 30) -> None:
        self.delta = delta
        self.threshold = threshold
        self.min_samples = min_samples
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self.mean = 0.0
        self.cumulative = 0.0
        self.minimum = 0.0
        self.score = 0.0

    def update(self, x: float) -> bool:
        """Add one value; True when the mean has fallen (the test then restarts)."""
        self.n += 1
        self.mean += (x - self.mean) / self.n
        self.cumulative += self.mean - x - self.delta
        self.minimum = min(self.minimum, self.cumulative)
        gap = self.cumulative - self.minimum
        self.score = gap / self.threshold
        if self.n >= self.min_samples and gap > self.threshold:
            self.reset()
            self.score = 1.0
            return True
        return False

    def update_many(self, values: np.ndarray) -> bool:
        """``update`` for many values at once (vectorised with cumulative sums); True when any alarmed."""
        xs = np.asarray(values, dtype=np.float64).ravel()
        fired = False
        while xs.size:
            k = np.arange(1, xs.size + 1)
            means = (self.mean * self.n + np.cumsum(xs)) / (self.n + k)
            cumulative = self.cumulative + np.cumsum(means - xs - self.delta)
            minimum = np.minimum(self.minimum, np.minimum.accumulate(cumulative))
            gap = cumulative - minimum
            hits = np.flatnonzero((self.n + k >= self.min_samples) & (gap > self.threshold))
            if not hits.size:
                self.n += xs.size
                self.mean, self.cumulative, self.minimum = (
                    float(means[-1]),
                    float(cumulative[-1]),
                    float(minimum[-1]),
                )
                self.score = float(gap[-1]) / self.threshold
                break
            fired = True
            self.reset()
            self.score = 1.0
            xs = xs[hits[0] + 1 :]
        return fired


@dataclass
class DriftSettings:
    """Detector parameters (defaults tuned on the digits bench: docs/benchmarks.md#continual-learning)."""

    reference_samples: int = 500
    """Without a shipped reference, the first samples served become it."""
    psi_window: int = 200
    psi_threshold: float = 0.25
    ph_delta: float = 0.01
    ph_threshold: float = 8.0
    clear_after: int = 1000
    """Samples without any alarm that end an alarm episode."""


class DriftMonitor:
    """Both detectors of one model version and its alarm episode."""

    def __init__(
        self, settings: DriftSettings | None = None, reference: Reference | None = None, source: str = "validation"
    ) -> None:
        self.settings = s = settings or DriftSettings()
        self.page_hinkley = PageHinkley(s.ph_delta, s.ph_threshold)
        self.psi: PsiDetector | None = None
        self._pending: list[np.ndarray] = []
        self.reference_source = "none"
        if reference is not None:
            self.set_reference(reference, source)
        self.samples = 0
        self.alarms = 0
        """Alarm episodes started."""
        self.alarm_since: float | None = None
        """Wall time of the first alarm of the current episode (None: no drift now)."""
        self.last_alarm_detector = ""
        self._last_alarm_sample = 0

    def set_reference(self, reference: Reference, source: str) -> None:
        s = self.settings
        self.psi = PsiDetector(reference, s.psi_window, s.psi_threshold)
        self.reference_source = source
        self._pending = []

    def scores(self) -> dict[str, float]:
        return {
            "psi": self.psi.score if self.psi is not None else 0.0,
            "page_hinkley": self.page_hinkley.score,
        }

    def update(self, features: np.ndarray, confidence: np.ndarray, now: float | None = None) -> list[str]:
        """Feed summarised rows and their confidences; the names of the detectors that alarmed."""
        fired: list[str] = []
        if self.psi is None:
            self._pending.extend(features)
            if len(self._pending) >= self.settings.reference_samples:
                self.set_reference(Reference.from_samples(np.stack(self._pending)), "first-served")
        elif self.psi.update(features):
            fired.append("psi")
        if self.page_hinkley.update_many(confidence):
            fired.append("page_hinkley")
        self.samples += len(confidence)
        if fired:
            self._last_alarm_sample = self.samples
            self.last_alarm_detector = fired[0]
            if self.alarm_since is None:
                self.alarms += 1
                self.alarm_since = time.time() if now is None else now
        elif (
            self.alarm_since is not None
            and self.samples - self._last_alarm_sample >= self.settings.clear_after
        ):
            self.alarm_since = None
        return fired
