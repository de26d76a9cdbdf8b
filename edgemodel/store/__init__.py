"""The artifact store: the default HTTP service (``edgemodel store``) and its clients.

``open_store(url)`` gives a client for ``http(s)://`` (the default store, see
:mod:`edgemodel.store.server`) or ``s3://bucket/prefix`` (S3-compatible, optional). Both keep
the layout ``{namespace}/{name}/{revision}/{file}`` and make a revision visible only when it is
complete. The server module (aiohttp) is imported only by ``edgemodel store``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from edgemodel.store.client import HttpStore, RevisionExists, StoreError, download
from edgemodel.store.layout import RevisionRef


class RevisionStore(Protocol):
    """What the converter needs from a store."""

    def url(self, key: str) -> str: ...
    def health(self) -> None: ...
    def exists(self, key: str) -> bool: ...
    def get_bytes(self, key: str) -> bytes: ...
    def put_revision(self, ref: RevisionRef, files: dict[str, Path],
                     on_file: Callable[[str], None] | None = None) -> dict[str, str]: ...


def open_store(url: str, token: str = "") -> RevisionStore:
    """A store client for ``http(s)://host[:port]`` or ``s3://bucket[/prefix]``."""
    if url.startswith(("http://", "https://")):
        return HttpStore(url, token)
    if url.startswith("s3://"):
        from edgemodel.store.s3 import S3Store

        return S3Store(url)
    raise ValueError(f"store URL {url!r}: use http(s)://host:port (the edgemodel store) or s3://bucket/prefix")


__all__ = ["HttpStore", "RevisionExists", "RevisionRef", "RevisionStore", "StoreError", "download", "open_store"]
