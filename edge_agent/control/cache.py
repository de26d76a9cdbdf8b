"""The on-disk artifact cache (bounded, least recently used first out) and the last assignment.

Layout under the cache directory::

    blobs/<sha256>.onnx          verified model files, named by content
    blobs/<sha256>.onnx.part     a download in progress (resumable)
    manifests/<sha256>.json      the signed manifest.json that vouches for the blob, exact bytes
    manifests/<sha256>.<id>.json further manifests vouching for the same bytes (another model or
                                 revision with an identical file, e.g. an unchanged split tail)
    assignment.json              the last spec.models received from the API (offline restarts)

A blob's mtime records its last use; eviction removes the oldest blobs that no assignment
needs until the total is under the bound. Everything is re-verified before it is loaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class ArtifactCache:
    """Content-addressed model files with an LRU size bound."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.blobs = root / "blobs"
        self.manifests = root / "manifests"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.manifests.mkdir(parents=True, exist_ok=True)

    def blob(self, sha256: str) -> Path:
        return self.blobs / f"{sha256}.onnx"

    def part(self, sha256: str) -> Path:
        return self.blobs / f"{sha256}.onnx.part"

    def manifest(self, sha256: str) -> Path:
        return self.manifests / f"{sha256}.json"

    def manifests_for(self, sha256: str) -> list[Path]:
        """Every cached manifest that vouches for the blob (the first one stored comes first)."""
        extra = sorted(self.manifests.glob(f"{sha256}.*.json"))
        return [self.manifest(sha256), *extra] if self.manifest(sha256).is_file() else extra

    def has(self, sha256: str) -> bool:
        return self.blob(sha256).is_file() and self.manifest(sha256).is_file()

    def touch(self, sha256: str) -> None:
        """Mark a blob as just used."""
        with contextlib.suppress(OSError):
            os.utime(self.blob(sha256))

    def store_manifest(self, sha256: str, data: bytes) -> None:
        """Keep a manifest for the blob; one that differs from those already kept is added beside them."""
        primary = self.manifest(sha256)
        if not primary.is_file():
            _atomic_write(primary, data)
            return
        if any(path.read_bytes() == data for path in self.manifests_for(sha256)):
            return
        _atomic_write(self.manifests / f"{sha256}.{hashlib.sha256(data).hexdigest()[:16]}.json", data)

    def commit(self, sha256: str) -> Path:
        """Move a verified ``.part`` into place."""
        target = self.blob(sha256)
        os.replace(self.part(sha256), target)
        return target

    def discard(self, sha256: str) -> None:
        """Forget a blob (e.g. it failed verification) and its manifests."""
        for path in (self.blob(sha256), self.part(sha256), *self.manifests_for(sha256)):
            path.unlink(missing_ok=True)

    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.blobs.iterdir() if p.is_file())

    def evict(self, keep: Iterable[str], reserve: int = 0) -> list[str]:
        """Remove least recently used blobs not in ``keep`` until the cache fits with ``reserve`` bytes
        to spare (a download about to start); the removed sha256s."""
        pinned = set(keep)
        entries = []
        total = 0
        for path in self.blobs.iterdir():
            if not path.is_file():
                continue
            stat = path.stat()
            total += stat.st_size
            sha = path.name.split(".", 1)[0]
            if sha not in pinned:
                entries.append((stat.st_mtime, sha, path, stat.st_size))
        removed: list[str] = []
        for _, sha, path, size in sorted(entries):
            if total + reserve <= self.max_bytes:
                break
            path.unlink(missing_ok=True)
            if path.suffix == ".onnx":
                for manifest in self.manifests_for(sha):
                    manifest.unlink(missing_ok=True)
            total -= size
            removed.append(sha)
            log.info("Evicted %s from the artifact cache (%d bytes, least recently used)", path.name, size)
        if total + reserve > self.max_bytes:
            log.warning(
                "Artifact cache holds %d bytes, above its bound of %d, but every file is assigned; raise cacheMaxBytes",
                total,
                self.max_bytes,
            )
        return removed

    # -- the last assignment -----------------------------------------------------------------
    @property
    def assignment_path(self) -> Path:
        return self.root / "assignment.json"

    def save_assignment(self, state: dict[str, Any]) -> None:
        _atomic_write(self.assignment_path, json.dumps(state, indent=1, sort_keys=True).encode())

    def load_assignment(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.assignment_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("Ignored the saved assignment %s: %s", self.assignment_path, exc)
            return None
        return data if isinstance(data, dict) else None


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
