"""Capture of served requests for continual learning: the policy and a bounded ring buffer on disk.

Per model, ``CaptureStore`` keeps records in one folder: ``{seq}.rec`` (the request's inputs),
``index.jsonl`` (one line per record: request id, predictions, confidence, reason, bytes),
``labels.jsonl`` (feedback) and ``uploaded.jsonl`` (records sent to the artifact store). Files are
written atomically (temporary name, then rename) and the folder is re-read on restart: records
survive the agent. The folder never holds more than ``max_bytes`` of records nor ``max_records``:
the oldest unlabelled (or already uploaded) records are evicted first; labelled records waiting
for upload are never evicted, so when they alone fill the buffer new captures are refused and
counted (``full``), and the status says so.

``CapturePolicy`` chooses what to keep: every uncertain request (top-1 probability below
``low_confidence`` or normalised entropy above ``high_entropy``) and a small random sample of
the rest (a picture of normal traffic). Everything here runs on the capture worker thread or in
``asyncio.to_thread``, never on the request path.
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

log = logging.getLogger(__name__)

INDEX = "index.jsonl"
LABELS = "labels.jsonl"
UPLOADED = "uploaded.jsonl"


def probabilities(output: np.ndarray) -> np.ndarray:
    """Rows of class probabilities from a classifier output: kept when they already are, else softmax."""
    x = np.asarray(output, dtype=np.float64)
    x = x.reshape(1, -1) if x.ndim <= 1 else x.reshape(len(x), -1)
    if x.shape[1] < 2:  # one score: a binary probability or a regression; treat as [1 - p, p] when in [0, 1]
        p = np.clip(x[:, 0], 0.0, 1.0)
        return np.stack([1.0 - p, p], axis=1)
    if x.min() >= 0.0 and float(np.abs(x.sum(axis=1) - 1.0).max()) < 1e-3:
        return x
    z = np.exp(x - x.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def confidence_entropy(p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-1 class, top-1 probability and entropy normalised to [0, 1] of each row."""
    predicted = p.argmax(axis=1)
    confidence = p.max(axis=1)
    entropy = -np.sum(np.where(p > 0, p * np.log(np.maximum(p, 1e-300)), 0.0), axis=1) / np.log(p.shape[1])
    return predicted, confidence, entropy


@dataclass
class CapturePolicy:
    """What to capture: uncertain requests, plus ``random_rate`` of the others."""

    low_confidence: float = 0.7
    high_entropy: float = 0.5
    random_rate: float = 0.02
    seed: int | None = None
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._draws = np.random.default_rng(self.seed)

    def decide_many(self, confidence: np.ndarray, entropy: np.ndarray) -> list[str | None]:
        """``decide`` for many requests at once (their lowest confidence and highest entropy)."""
        uncertain = (confidence < self.low_confidence) | (entropy > self.high_entropy)
        draws = self._draws.random(len(confidence)) < self.random_rate
        return [
            "uncertain" if u else "random" if d else None
            for u, d in zip(uncertain.tolist(), draws.tolist(), strict=True)
        ]

    def decide(self, confidence: float, entropy: float) -> str | None:
        """The capture reason ("uncertain" or "random"), or None to skip."""
        if confidence < self.low_confidence or entropy > self.high_entropy:
            return "uncertain"
        if self._rng.random() < self.random_rate:
            return "random"
        return None


@dataclass
class Record:
    """One captured request (its inputs are in ``{seq}.rec``)."""

    seq: int
    id: str
    version: str
    predicted: list[int]
    confidence: float
    reason: str
    nbytes: int
    time: float
    labels: list[int] | None = None
    uploaded: bool = False


def _index_line(r: Record) -> dict[str, Any]:
    return {
        "seq": r.seq,
        "id": r.id,
        "version": r.version,
        "predicted": r.predicted,
        "confidence": r.confidence,
        "reason": r.reason,
        "nbytes": r.nbytes,
        "time": r.time,
    }


def encode_record(inputs: Mapping[str, np.ndarray]) -> bytes:
    """A record file: one JSON header line (name, dtype, shape of each input), then the raw arrays."""
    arrays = [np.ascontiguousarray(a) for a in inputs.values()]
    header = [
        {"name": n, "dtype": a.dtype.str, "shape": list(a.shape)} for n, a in zip(inputs, arrays, strict=True)
    ]
    return b"".join([json.dumps(header).encode(), b"\n", *(a.tobytes() for a in arrays)])


def decode_record(data: bytes) -> dict[str, np.ndarray]:
    """The inputs of a record file (see ``encode_record``); ValueError when it is damaged."""
    end = data.index(b"\n")
    offset = end + 1
    out: dict[str, np.ndarray] = {}
    for item in json.loads(data[:end]):
        dtype = np.dtype(item["dtype"])
        if dtype.hasobject:
            raise ValueError("object arrays are not stored")
        count = int(np.prod(item["shape"], dtype=np.int64))
        out[item["name"]] = np.frombuffer(data, dtype, count, offset).reshape(item["shape"])
        offset += count * dtype.itemsize
    return out


class CaptureFull(Exception):
    """Labelled records waiting for upload fill the buffer; new captures are refused until an upload."""


class CaptureStore:
    """A bounded, persisted ring buffer of captured requests of one model (thread-safe)."""

    def __init__(self, folder: Path, max_bytes: int = 64 << 20, max_records: int = 5000) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.max_records = max_records
        self._lock = threading.Lock()
        self.records: dict[int, Record] = {}
        self.by_id: dict[str, int] = {}
        self.bytes = 0
        self.next_seq = 1
        self.refused = 0
        """Captures refused because labelled records waiting for upload fill the buffer."""
        self._handles: dict[str, TextIO] = {}
        folder.mkdir(parents=True, exist_ok=True)
        self._restore()

    # -- persistence ---------------------------------------------------------------------------
    def _lines(self, name: str) -> Iterator[dict[str, Any]]:
        path = self.folder / name
        if not path.exists():
            return
        for line in path.read_text().splitlines():
            try:
                item = json.loads(line)
            except ValueError:
                continue  # a line cut by a crash
            if isinstance(item, dict):
                yield item

    def _append(self, name: str, item: Mapping[str, Any]) -> None:
        """One line at the end of a log (kept open, line-buffered: each line reaches the OS at once)."""
        handle = self._handles.get(name)
        if handle is None:
            handle = self._handles[name] = (self.folder / name).open("a", buffering=1)
        handle.write(json.dumps(item, separators=(",", ":")) + "\n")

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()

    def _restore(self) -> None:
        """Re-read the folder: records whose file exists, their labels and upload marks; drop the rest."""
        for item in self._lines(INDEX):
            try:
                record = Record(**{k: item[k] for k in Record.__dataclass_fields__ if k in item})
            except TypeError:
                continue
            if (self.folder / f"{record.seq}.rec").exists():
                self.records[record.seq] = record
        for item in self._lines(LABELS):
            if (labelled := self.records.get(int(item.get("seq", 0)))) is not None:
                labelled.labels = [int(v) for v in item.get("labels", [])]
        for item in self._lines(UPLOADED):
            for seq in item.get("seqs", []):
                if (sent := self.records.get(int(seq))) is not None:
                    sent.uploaded = True
        known = {f"{seq}.rec" for seq in self.records}
        for path in self.folder.glob("*.rec"):
            if path.name not in known:
                path.unlink(missing_ok=True)  # written but never indexed (crash in between)
        for path in self.folder.glob(".*.tmp"):
            path.unlink(missing_ok=True)
        self.records = dict(sorted(self.records.items()))
        self.by_id = {r.id: r.seq for r in self.records.values() if r.id}
        self.bytes = sum(r.nbytes for r in self.records.values())
        self.next_seq = max(self.records, default=0) + 1
        self._compact()

    def _compact(self) -> None:
        """Rewrite the three logs with the live records only (bounded files after many evictions)."""

        self.close()

        def write(name: str, lines: list[dict[str, Any]]) -> None:
            tmp = self.folder / f".{name}.tmp"
            tmp.write_text("".join(json.dumps(x, separators=(",", ":")) + "\n" for x in lines))
            os.replace(tmp, self.folder / name)

        base = [_index_line(r) for r in self.records.values()]
        write(INDEX, base)
        write(
            LABELS,
            [{"seq": r.seq, "labels": r.labels} for r in self.records.values() if r.labels is not None],
        )
        write(UPLOADED, [{"seqs": [r.seq for r in self.records.values() if r.uploaded]}])

    # -- capture -------------------------------------------------------------------------------
    def _evictable(self) -> Iterator[Record]:
        return (r for r in self.records.values() if r.labels is None or r.uploaded)

    def _evict(self, record: Record) -> None:
        (self.folder / f"{record.seq}.rec").unlink(missing_ok=True)
        del self.records[record.seq]
        if self.by_id.get(record.id) == record.seq:
            del self.by_id[record.id]
        self.bytes -= record.nbytes

    def add(
        self,
        request_id: str,
        version: str,
        inputs: Mapping[str, np.ndarray],
        predicted: list[int],
        confidence: float,
        reason: str,
        now: float | None = None,
    ) -> Record:
        """Write one record, evicting old ones to stay within the bounds; CaptureFull when it cannot."""
        data = encode_record(inputs)
        with self._lock:
            if len(data) > self.max_bytes:
                self.refused += 1
                raise CaptureFull(
                    f"one request's inputs take {len(data)} bytes, more than the whole buffer ({self.max_bytes})"
                )
            victims = self._evictable()
            while self.bytes + len(data) > self.max_bytes or len(self.records) >= self.max_records:
                victim = next(victims, None)
                if victim is None:
                    self.refused += 1
                    raise CaptureFull(
                        f"{len(self.records)} labelled records ({self.bytes} bytes) wait for upload and fill the buffer"
                    )
                self._evict(victim)
                victims = self._evictable()
            seq = self.next_seq
            self.next_seq += 1
            tmp = self.folder / f".{seq}.rec.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, self.folder / f"{seq}.rec")
            record = Record(
                seq,
                request_id,
                version,
                predicted,
                round(confidence, 5),
                reason,
                len(data),
                time.time() if now is None else now,
            )
            self._append(INDEX, _index_line(record))
            self.records[seq] = record
            if request_id:
                self.by_id[request_id] = seq
            self.bytes += len(data)
            return record

    @property
    def full(self) -> bool:
        """Whether labelled records waiting for upload fill the buffer (new captures are refused)."""
        with self._lock:
            waiting = [r for r in self.records.values() if r.labels is not None and not r.uploaded]
            return len(waiting) >= self.max_records or sum(r.nbytes for r in waiting) >= self.max_bytes * 0.95

    # -- feedback and upload ---------------------------------------------------------------------
    def get(self, request_id: str) -> Record | None:
        with self._lock:
            seq = self.by_id.get(request_id)
            return self.records.get(seq) if seq is not None else None

    def label(self, request_id: str, labels: list[int]) -> Record | None:
        """Attach ground truth to the captured request ``request_id``; None when it was not captured (or evicted)."""
        with self._lock:
            seq = self.by_id.get(request_id)
            record = self.records.get(seq) if seq is not None else None
            if record is None:
                return None
            if len(labels) != len(record.predicted):
                raise ValueError(
                    f"request {request_id!r} had {len(record.predicted)} row(s); got {len(labels)} label(s)"
                )
            record.labels = labels
            record.uploaded = False
            self._append(LABELS, {"seq": seq, "labels": labels})
            return record

    def inputs(self, record: Record) -> dict[str, np.ndarray]:
        """The inputs of a record, by input name."""
        return decode_record((self.folder / f"{record.seq}.rec").read_bytes())

    def labelled(self, include_uploaded: bool = False) -> list[Record]:
        with self._lock:
            return [
                r
                for r in self.records.values()
                if r.labels is not None and (include_uploaded or not r.uploaded)
            ]

    def bundle(self, records: list[Record]) -> bytes:
        """The labelled records as one .npz: inputs stacked per input name, "labels", "confidence", "reason"."""
        stacked: dict[str, list[np.ndarray]] = {}
        labels: list[int] = []
        confidence: list[float] = []
        reasons: list[str] = []
        for record in records:
            for name, array in self.inputs(record).items():
                stacked.setdefault(name, []).append(array)
            labels.extend(record.labels or [])
            confidence.extend([record.confidence] * len(record.labels or []))
            reasons.extend([record.reason] * len(record.labels or []))
        buffer = io.BytesIO()
        arrays: dict[str, Any] = {k: np.concatenate(v) for k, v in stacked.items()}
        arrays.update(
            labels=np.array(labels, dtype=np.int64),
            confidence=np.array(confidence, dtype=np.float32),
            reason=np.array(reasons, dtype=np.str_),
        )
        np.savez(buffer, **arrays)
        return buffer.getvalue()

    def mark_uploaded(self, records: list[Record]) -> None:
        with self._lock:
            for record in records:
                record.uploaded = True
            self._append(UPLOADED, {"seqs": [r.seq for r in records]})

    def summary(self) -> dict[str, int | bool]:
        with self._lock:
            labelled = sum(1 for r in self.records.values() if r.labels is not None)
            waiting = sum(1 for r in self.records.values() if r.labels is not None and not r.uploaded)
            return {
                "records": len(self.records),
                "bytes": self.bytes,
                "labelled": labelled,
                "waitingUpload": waiting,
                "refused": self.refused,
            }
