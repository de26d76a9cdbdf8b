"""Keys of the artifact store and where they live on disk (stdlib only).

A key is a relative path of non-empty segments. A *revision key* is
``{namespace}/{name}/{revision}/{file}``; uploads to revision keys go to a staging folder and
become readable only when the revision is committed (renamed into place in one step).
Segments starting with ``.`` or ``_`` are reserved (staging, commit endpoints) and never served.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

STAGING_DIR = ".staging"
TRASH_DIR = ".trash"
SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")
UPLOAD_ID = re.compile(r"^[A-Za-z0-9-]{1,64}$")
REVISION = re.compile(r"^[1-9][0-9]{0,17}$")
"""A revision segment: a positive integer in ASCII digits (``'²'.isdigit()`` is true in Python)."""
TMP_DIR = ".tmp"
"""Uploads in progress, outside any revision folder, so a commit can never take a half-written file along."""
REVISION_FILES = ("manifest.json", "manifest.json.sig", "report.md", "result.json")


class InvalidKey(ValueError):
    """A key that is not a valid store key (message says why)."""


def split_key(key: str) -> list[str]:
    """Validate a key and return its segments; reject traversal and reserved names."""
    segments = [s for s in key.strip("/").split("/")]
    if not key.strip("/") or any(not SEGMENT.match(s) or s in {".", ".."} for s in segments):
        raise InvalidKey(
            f"invalid key {key!r}: use segments of letters, digits, '.', '_' or '-' that start with a letter or digit"
        )
    return segments


@dataclass(frozen=True)
class RevisionRef:
    """``{namespace}/{name}/{revision}`` of one converted model revision."""

    namespace: str
    name: str
    revision: int

    @property
    def prefix(self) -> str:
        return f"{self.namespace}/{self.name}/{self.revision}"

    def key(self, filename: str) -> str:
        return f"{self.prefix}/{filename}"

    @classmethod
    def parse(cls, namespace: str, name: str, revision: str) -> RevisionRef:
        split_key(f"{namespace}/{name}")
        if not REVISION.match(revision):
            raise InvalidKey(f"invalid revision {revision!r}: use a positive integer, e.g. 3")
        return cls(namespace, name, int(revision))


def revision_of(segments: list[str]) -> RevisionRef | None:
    """The revision a key belongs to when it is ``ns/name/rev/file``, else None."""
    if len(segments) == 4 and REVISION.match(segments[2]):
        return RevisionRef(segments[0], segments[1], int(segments[2]))
    return None


@dataclass(frozen=True)
class StoreLayout:
    """Paths of live, staged and trashed data under one root folder (all on one file system)."""

    root: Path

    def live(self, segments: list[str]) -> Path:
        """The path of a key; InvalidKey when a symbolic link would lead out of the root."""
        path = self.root.joinpath(*segments)
        if not path.resolve().is_relative_to(self.root):
            raise InvalidKey(f"invalid key {'/'.join(segments)!r}: it leads out of the store (a symbolic link)")
        return path

    def revision_dir(self, ref: RevisionRef) -> Path:
        return self.root / ref.namespace / ref.name / str(ref.revision)

    def staging_dir(self, ref: RevisionRef, upload_id: str) -> Path:
        if not UPLOAD_ID.match(upload_id):
            raise InvalidKey(f"invalid upload id {upload_id!r}: use up to 64 letters, digits or '-'")
        return self.root / STAGING_DIR / ref.namespace / ref.name / f"{ref.revision}.{upload_id}"

    @property
    def tmp(self) -> Path:
        return self.root / STAGING_DIR / TMP_DIR

    @property
    def trash(self) -> Path:
        return self.root / TRASH_DIR

    def prune_empty(self, folder: Path) -> None:
        """Remove ``folder`` and its parents while empty, up to (never including) the root or ``.staging``.

        Retention and commits leave ``{ns}/{name}`` and ``.staging/{ns}/{name}`` behind otherwise.
        """
        stops = {self.root, self.root / STAGING_DIR}
        while folder not in stops and self.root in folder.parents:
            try:
                folder.rmdir()
            except OSError:  # not empty (or already gone): nothing above it can be empty either
                return
            folder = folder.parent
