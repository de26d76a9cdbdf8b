"""The capture ring buffer: bounds, eviction order, persistence across restarts, and the policy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_agent.capture import CaptureFull, CapturePolicy, CaptureStore, confidence_entropy, probabilities


def _x(i: int, size: int = 64) -> dict[str, np.ndarray]:
    return {"input": np.full((1, size), i, dtype=np.float32)}


def test_records_and_bytes_stay_within_bounds(tmp_path: Path) -> None:
    store = CaptureStore(tmp_path, max_bytes=1 << 20, max_records=10)
    for i in range(25):
        store.add(f"r{i}", "1", _x(i), [i % 3], 0.4, "uncertain")
    assert len(store.records) == 10
    assert [r.id for r in store.records.values()] == [
        f"r{i}" for i in range(15, 25)
    ]  # the oldest were evicted
    assert len(list(tmp_path.glob("*.rec"))) == 10
    one = store.records[max(store.records)].nbytes
    small = CaptureStore(tmp_path / "small", max_bytes=one * 4, max_records=1000)
    for i in range(12):
        small.add(f"r{i}", "1", _x(i), [0], 0.4, "uncertain")
    assert small.bytes <= one * 4
    assert sum(p.stat().st_size for p in (tmp_path / "small").glob("*.rec")) == small.bytes


def test_labelled_records_are_kept_and_a_full_buffer_refuses(tmp_path: Path) -> None:
    store = CaptureStore(tmp_path, max_records=4)
    for i in range(4):
        store.add(f"r{i}", "1", _x(i), [0], 0.4, "uncertain")
    for i in (0, 1):
        assert store.label(f"r{i}", [i]) is not None
    store.add("r4", "1", _x(4), [0], 0.4, "uncertain")  # evicts r2 (unlabelled), not r0/r1
    assert {r.id for r in store.records.values()} == {"r0", "r1", "r3", "r4"}
    for i in (3, 4):
        store.label(f"r{i}", [1])
    with pytest.raises(CaptureFull, match="wait for upload"):
        store.add("r5", "1", _x(5), [0], 0.4, "uncertain")
    assert store.full
    assert store.refused == 1
    assert {r.id for r in store.records.values()} == {"r0", "r1", "r3", "r4"}  # nothing lost
    store.mark_uploaded(store.labelled())
    assert not store.full
    store.add("r5", "1", _x(5), [0], 0.4, "uncertain")  # uploaded records are evictable again
    assert "r5" in store.by_id


def test_records_labels_and_uploads_survive_a_restart(tmp_path: Path) -> None:
    store = CaptureStore(tmp_path)
    for i in range(5):
        store.add(f"r{i}", "7", _x(i), [i], 0.3, "random" if i % 2 else "uncertain")
    store.label("r1", [4])
    store.label("r2", [2])
    store.mark_uploaded([store.get("r2")])  # type: ignore[list-item]
    (tmp_path / "99.rec").write_bytes(b"written but never indexed")
    (tmp_path / ".6.rec.tmp").write_bytes(b"cut by a crash")
    with (tmp_path / "index.jsonl").open("a") as fh:
        fh.write('{"seq": 12, "id": "half-writ')  # a line cut by a crash

    again = CaptureStore(tmp_path)
    assert [r.id for r in again.records.values()] == [f"r{i}" for i in range(5)]
    assert again.get("r1").labels == [4]
    assert not again.get("r1").uploaded
    assert again.get("r2").uploaded  # type: ignore[union-attr]
    assert [r.id for r in again.labelled()] == ["r1"]
    np.testing.assert_array_equal(again.inputs(again.get("r3"))["input"], _x(3)["input"])  # type: ignore[arg-type]
    assert not (tmp_path / "99.rec").exists()
    assert not (tmp_path / ".6.rec.tmp").exists()
    assert again.next_seq == 6
    assert again.bytes == store.bytes


def test_bundle_holds_inputs_and_labels(tmp_path: Path) -> None:
    store = CaptureStore(tmp_path)
    store.add("a", "1", {"input": np.ones((2, 3), np.float32)}, [0, 1], 0.5, "uncertain")
    store.label("a", [1, 1])
    import io

    with np.load(io.BytesIO(store.bundle(store.labelled())), allow_pickle=False) as z:
        assert z["input"].shape == (2, 3)
        assert z["labels"].tolist() == [1, 1]
    with pytest.raises(ValueError, match="2 row"):
        store.label("a", [1])


def test_policy_captures_uncertain_and_a_random_sample() -> None:
    policy = CapturePolicy(low_confidence=0.7, high_entropy=0.5, random_rate=0.05, seed=1)
    assert policy.decide(0.5, 0.1) == "uncertain"
    assert policy.decide(0.9, 0.8) == "uncertain"
    picks = [policy.decide(0.99, 0.01) for _ in range(10000)]
    assert set(picks) == {None, "random"}
    assert 350 < picks.count("random") < 650  # 5 % of 10,000


def test_confidence_of_logits_and_probabilities() -> None:
    logits = np.array([[10.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    predicted, confidence, entropy = confidence_entropy(probabilities(logits))
    assert predicted[0] == 0
    assert confidence[0] > 0.99
    assert entropy[0] < 0.01
    assert confidence[1] == pytest.approx(1 / 3)
    assert entropy[1] == pytest.approx(1.0)
    probs = np.array([[0.2, 0.8]])
    assert probabilities(probs).tolist() == probs.tolist()  # already probabilities: kept
    assert probabilities(np.array([[0.9]]))[0].tolist() == pytest.approx([0.1, 0.9])
