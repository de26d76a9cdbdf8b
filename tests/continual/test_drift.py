"""Drift detectors on synthetic streams: an alarm soon after a shift, none on stationary data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pytest

if TYPE_CHECKING:
    from edge_agent.capture_worker import ContinualHub

from edge_agent.drift import DriftMonitor, DriftSettings, PageHinkley, PsiDetector, Reference, psi, summarise


def _confidences(rng: np.random.Generator, n: int, mean: float) -> np.ndarray:
    return np.clip(rng.normal(mean, 0.08, n), 0, 1)


def test_page_hinkley_alarms_after_a_fall_of_the_confidence() -> None:
    rng = np.random.default_rng(0)
    ph = PageHinkley(delta=0.01, threshold=8.0)
    before = _confidences(rng, 3000, 0.92)
    after = _confidences(rng, 1000, 0.70)
    assert not any(ph.update(float(x)) for x in before)
    delay = next(i for i, x in enumerate(after) if ph.update(float(x)))
    assert delay < 100


def test_page_hinkley_false_alarms_on_stationary_data_stay_within_budget() -> None:
    rng = np.random.default_rng(1)
    ph = PageHinkley(delta=0.01, threshold=8.0)
    alarms = sum(ph.update(float(x)) for x in _confidences(rng, 20000, 0.9))
    assert alarms <= 2  # <= 1 per 10,000 samples


def test_psi_alarms_on_shifted_inputs_and_not_on_stationary_ones() -> None:
    rng = np.random.default_rng(2)
    reference = Reference.from_samples(rng.normal(0, 1, (2000, 16)))
    detector = PsiDetector(reference, window=200, threshold=0.25)
    stationary = sum(detector.update(row) for row in rng.normal(0, 1, (10000, 16)))
    assert stationary == 0
    shifted = rng.normal(0.8, 1, (400, 16))
    delay = next(i for i, row in enumerate(shifted) if detector.update(row))
    assert delay < 200
    assert detector.score > 0.25


def test_psi_of_identical_and_different_distributions() -> None:
    expected = np.full(4, 0.25)
    assert psi(expected, np.array([25, 25, 25, 25])) == pytest.approx(0.0)
    assert psi(expected, np.array([100, 0, 0, 0])) > 1.0


def test_reference_round_trips_through_npz_and_skips_constant_features() -> None:
    x = np.concatenate([np.random.default_rng(3).normal(size=(100, 3)), np.zeros((100, 1))], axis=1)
    ref = Reference.from_samples(x)
    assert ref.edges[3].size == 0
    again = Reference.from_npz(ref.to_npz())
    assert again.features == 4
    assert np.array_equal(again.edges[0], ref.edges[0])
    with pytest.raises(ValueError, match="at least 10 samples"):
        Reference.from_samples(x[:3])


def test_summarise_reduces_large_inputs_to_block_means() -> None:
    x = np.arange(2 * 256, dtype=np.float32).reshape(2, 256)
    s = summarise(x, 64)
    assert s.shape == (2, 64)
    assert s[0, 0] == pytest.approx(x[0, :4].mean())
    assert summarise(np.ones((3, 8))).shape == (3, 8)


def test_monitor_learns_a_reference_then_opens_and_closes_an_alarm_episode() -> None:
    rng = np.random.default_rng(4)
    monitor = DriftMonitor(DriftSettings(reference_samples=300, clear_after=500))
    for row in rng.normal(0, 1, (1500, 8)):
        monitor.update(row[None, :], np.array([0.95]), now=100.0)
    assert monitor.reference_source == "first-served"
    assert monitor.alarm_since is None
    for row in rng.normal(1.0, 1, (300, 8)):
        monitor.update(row[None, :], np.array([0.6]), now=200.0)
    assert monitor.alarm_since == 200.0
    assert monitor.alarms == 1
    assert monitor.last_alarm_detector in ("psi", "page_hinkley")
    # back to normal traffic: the PSI window refills with reference-like samples and the episode ends
    for row in rng.normal(0, 1, (1500, 8)):
        monitor.update(row[None, :], np.array([0.95]), now=300.0)
    assert monitor.alarm_since is None


def test_vectorised_page_hinkley_matches_the_sequential_one() -> None:
    rng = np.random.default_rng(5)
    stream = np.concatenate(
        [
            _confidences(rng, 2000, 0.9),
            _confidences(rng, 500, 0.6),
            _confidences(rng, 800, 0.9),
            _confidences(rng, 500, 0.5),
        ]
    )
    one, many = PageHinkley(), PageHinkley()
    alarms_one = [i for i, x in enumerate(stream) if one.update(float(x))]
    alarms_many = []
    for start in range(0, len(stream), 37):
        before = many.n
        chunk = stream[start : start + 37]
        if many.update_many(chunk):
            alarms_many.append(start)
        assert many.n <= before + len(chunk)
    assert len(alarms_one) >= 2
    assert alarms_many == sorted({(i // 37) * 37 for i in alarms_one})
    assert many.score == pytest.approx(one.score)


@dataclass
class _Version:
    """A served version as the hub sees it; ``drift_reference`` is what the agent sets from the signed manifest."""

    namespace: str = "ml"
    name: str = "m"
    version: str = "1"
    drift_reference: Reference | None = None


@dataclass
class _Tensor:
    name: str
    data: np.ndarray


@dataclass
class _Request:
    id: str | None
    inputs: list[_Tensor]


def _serve(hub: ContinualHub, mv: _Version, x: np.ndarray) -> None:
    logits = np.tile(np.array([[4.0, 0.0, 0.0]], dtype=np.float32), (len(x), 1))
    for start in range(0, len(x), 25):
        rows = x[start : start + 25]
        hub.process(mv, _Request(None, [_Tensor("input", rows)]), [("logits", logits[: len(rows)], False)])


def test_a_manifest_reference_detects_drift_from_the_first_requests_and_says_where_it_came_from() -> None:
    """The signed manifest's driftReference (the validation inputs' summary) is the PSI reference from the
    first request: traffic that is drifted from the start alarms; without one the first samples served
    become the reference, so the same traffic looks normal, and status says referenceSource first-served."""
    from prometheus_client import CollectorRegistry

    from edge_agent.capture_worker import ContinualHub, ContinualSettings
    from edgemodel.api import ManifestDriftReference

    rng = np.random.default_rng(6)
    validation = rng.normal(0, 1, (500, 16))
    ref = Reference.from_samples(summarise(validation))
    summary = ManifestDriftReference(
        input="input", samples=500, bins=10,
        edges=[e.tolist() for e in ref.edges], expected=[p.tolist() for p in ref.expected],
    )  # fmt: skip
    drifted = rng.normal(1.0, 1, (600, 16)).astype(np.float32)

    shipped = ContinualHub(ContinualSettings(), CollectorRegistry())
    _serve(shipped, _Version(drift_reference=Reference.from_manifest(summary)), drifted)
    entry = shipped.status()[0]
    assert entry["referenceSource"] == "validation"
    assert entry["driftAlarm"] is True
    assert entry["driftDetector"] == "psi"

    fallback = ContinualHub(ContinualSettings(), CollectorRegistry())
    _serve(fallback, _Version(), drifted)
    entry = fallback.status()[0]
    assert entry["referenceSource"] == "first-served"
    assert entry["driftAlarm"] is False


def test_a_manifest_reference_with_mismatched_shapes_is_refused_with_the_field() -> None:
    from pydantic import ValidationError

    from edgemodel.api import ManifestDriftReference

    with pytest.raises(ValidationError, match=r"expected\[0\] needs len\(edges\[0\]\) \+ 1 = 3 values, got 2"):
        ManifestDriftReference(input="input", samples=20, bins=10, edges=[[0.0, 1.0]], expected=[[0.5, 0.5]])
