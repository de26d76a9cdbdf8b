"""Fetching artifacts from the store: small files whole, model files with resume (HTTP Range).

A model download appends to ``<dest>.part``; after a broken connection the next attempt sends
``Range: bytes=<size of .part>-`` and appends the 206 answer (a 200 answer means the server
ignored the range: the part file restarts). Only a complete file with the right sha256 leaves
the ``.part`` name. ``file://`` URLs are read directly (tests, a store on a shared volume).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlparse

import aiohttp

log = logging.getLogger(__name__)

CHUNK = 1 << 20


class FetchError(Exception):
    """The artifact could not be fetched; ``reason`` is the CamelCase status reason."""

    def __init__(self, reason: str, message: str, retryable: bool = True) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retryable = retryable


def _file_path(url: str) -> Path:
    return Path(unquote(urlparse(url).path))


async def fetch_bytes(session: aiohttp.ClientSession, url: str, headers: dict[str, str], limit: int = 16 << 20) -> bytes:
    """A small file (manifest) in one piece."""
    if url.startswith("file://"):
        path = _file_path(url)
        try:
            if path.stat().st_size > limit:
                raise FetchError("DownloadFailed", f"{url} is larger than {limit} bytes; is it really a manifest?", retryable=False)
            return await asyncio.to_thread(path.read_bytes)
        except OSError as exc:
            raise FetchError("DownloadFailed", f"{url}: {exc.strerror}") from exc
    try:
        async with session.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=60)) as resp:
            if resp.status != 200:
                raise FetchError("DownloadFailed", f"GET {url} answered {resp.status}", retryable=resp.status >= 500 or resp.status == 429)
            data = await resp.content.read(limit + 1)
            if len(data) > limit:
                raise FetchError("DownloadFailed", f"{url} is larger than {limit} bytes; is it really a manifest?", retryable=False)
            return data
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise FetchError("DownloadFailed", f"GET {url}: {type(exc).__name__}: {exc}") from exc


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


async def download(
    session: aiohttp.ClientSession,
    url: str,
    part: Path,
    headers: dict[str, str],
    timeout_s: float,
    on_bytes: Callable[[int], None] = lambda n: None,
    progress: Callable[[int, int | None], None] = lambda done, total: None,
    max_bytes: int | None = None,
) -> None:
    """Download ``url`` to ``part``, continuing a previous partial download when there is one.

    ``max_bytes`` (the size the signed manifest gives, or the cache bound) is never exceeded on
    disk: a store that sends more is cut off, and the part file deleted.
    """
    part.parent.mkdir(parents=True, exist_ok=True)
    limit = max_bytes if max_bytes is not None else 1 << 62

    def too_large(size: int | str) -> FetchError:
        part.unlink(missing_ok=True)
        return FetchError("DownloadFailed", f"GET {url}: the store sends {size} bytes, more than the {limit} expected "
                          "(the size in the signed manifest, or the cache bound); discarded")  # fmt: skip

    if url.startswith("file://"):
        source = _file_path(url)
        try:
            if source.stat().st_size > limit:
                raise too_large(source.stat().st_size)
            data = await asyncio.to_thread(source.read_bytes)
        except OSError as exc:
            raise FetchError("DownloadFailed", f"{url}: {exc.strerror}") from exc
        await asyncio.to_thread(part.write_bytes, data)
        on_bytes(len(data))
        return
    have = part.stat().st_size if part.exists() else 0
    if have > limit:
        part.unlink(missing_ok=True)
        have = 0
    request_headers = dict(headers)
    if have:
        request_headers["Range"] = f"bytes={have}-"
    last_report = time.monotonic()
    try:
        async with session.get(
            url, headers=request_headers, timeout=aiohttp.ClientTimeout(total=timeout_s, sock_read=60)
        ) as resp:
            if resp.status == 416 and have:  # the part file already holds everything (or is too long)
                log.info("Store answered 416 to Range bytes=%d- for %s; restarting the download", have, url)
                part.unlink(missing_ok=True)
                raise FetchError("DownloadFailed", f"GET {url}: range not satisfiable; restarting")
            if resp.status not in (200, 206):
                raise FetchError(
                    "DownloadFailed", f"GET {url} answered {resp.status}", retryable=resp.status >= 500 or resp.status in (404, 429)
                )
            mode = "ab" if resp.status == 206 else "wb"
            done = have if resp.status == 206 else 0
            if have and resp.status == 206:
                log.info("Resuming download of %s at byte %d", url, have)
            total = (resp.content_length + done) if resp.content_length is not None else None
            if total is not None and total > limit:
                raise too_large(total)
            with part.open(mode) as fh:
                async for block in resp.content.iter_chunked(CHUNK):
                    if done + len(block) > limit:
                        fh.close()
                        raise too_large(f"at least {done + len(block)}")
                    fh.write(block)
                    done += len(block)
                    on_bytes(len(block))
                    if time.monotonic() - last_report > 5:
                        progress(done, total)
                        last_report = time.monotonic()
            progress(done, total)
            if total is not None and done < total:
                raise FetchError("DownloadFailed", f"GET {url}: connection closed after {done} of {total} bytes")
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        size = part.stat().st_size if part.exists() else 0
        raise FetchError("DownloadFailed", f"GET {url}: {type(exc).__name__}: {exc} (kept {size} bytes to resume)") from exc
