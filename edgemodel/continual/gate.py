"""The gate a retrained model must pass before a new revision opens (pure, no torch).

Both conditions must hold: the accuracy on the held-out new samples rises by at least
``min_gain``, and the accuracy on the original validation set drops by at most ``max_drop``
(``spec.validation.maxAccuracyDrop``). Forgetting is thus measured, never assumed away.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class GateResult:
    passed: bool
    new_before: float
    new_after: float
    original_before: float
    original_after: float
    min_gain: float
    max_drop: float
    message: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def check(
    new_before: float,
    new_after: float,
    original_before: float,
    original_after: float,
    min_gain: float,
    max_drop: float,
) -> GateResult:
    """Apply the gate to the four accuracies (fractions in [0, 1])."""
    gain = new_after - new_before
    drop = original_before - original_after
    failures = []
    if gain < min_gain - 1e-12:
        failures.append(
            f"accuracy on new data rose by {gain * 100:+.1f} pp ({new_before:.3f} -> {new_after:.3f}), "
            f"less than minAccuracyGain {min_gain * 100:.1f} pp"
        )
    if drop > max_drop + 1e-12:
        failures.append(
            f"accuracy on the original validation set fell by {drop * 100:.1f} pp ({original_before:.3f} "
            f"-> {original_after:.3f}), more than maxAccuracyDrop {max_drop * 100:.1f} pp"
        )
    if failures:
        message = "; ".join(failures)
    else:
        message = (
            f"new data {new_before:.3f} -> {new_after:.3f} ({gain * 100:+.1f} pp >= {min_gain * 100:.1f}); "
            f"original {original_before:.3f} -> {original_after:.3f} ({-drop * 100:+.1f} pp, "
            f"allowed -{max_drop * 100:.1f})"
        )
    return GateResult(
        not failures, new_before, new_after, original_before, original_after, min_gain, max_drop, message
    )
