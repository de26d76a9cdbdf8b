"""The default artifact store: a small HTTP service over a folder (a PVC in the cluster).

Endpoints (keys are relative paths, see :mod:`edgemodel.store.layout`):

- ``GET /{key}`` and ``HEAD /{key}``: a file, with ``Range`` (206), ``ETag`` and
  ``Last-Modified``; a folder gives a JSON listing.
- ``PUT /{key}`` (bearer token when configured): store a file. ``X-Checksum-Sha256`` (hex),
  when sent, is verified. A revision key ``{ns}/{name}/{rev}/{file}`` is written to a staging
  area (``?upload=ID`` keeps concurrent attempts apart) and is not readable yet.
- ``POST /_commit/{ns}/{name}/{rev}?upload=ID``: rename the staged revision folder into place
  in one step (409 when that revision already exists).
- ``DELETE /_staging/{ns}/{name}/{rev}?upload=ID`` aborts an upload; ``DELETE /{ns}/{name}/{rev}``
  removes a committed revision (moved aside in one step, then deleted).
- ``GET /healthz``: liveness and readiness.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import BinaryIO

from aiohttp import web

from edgemodel.auth import bearer_matches
from edgemodel.http_runner import JsonErrorAppRunner
from edgemodel.store.layout import (
    STAGING_DIR,
    TMP_DIR,
    InvalidKey,
    RevisionRef,
    StoreLayout,
    revision_of,
    split_key,
)

log = logging.getLogger(__name__)

DEFAULT_UPLOAD_ID = "default"
DEFAULT_MAX_UPLOAD_BYTES = 8 << 30
"""Largest file a PUT may store (``edgemodel store --max-upload-bytes``); larger gets 413."""
CHECKSUM_HEADER = "X-Checksum-Sha256"
LAYOUT_KEY: web.AppKey[StoreLayout] = web.AppKey("layout", StoreLayout)
TOKEN_KEY: web.AppKey[str] = web.AppKey("token", str)
LOCK_KEY: web.AppKey[asyncio.Lock] = web.AppKey("lock", asyncio.Lock)
MAX_UPLOAD_KEY: web.AppKey[int] = web.AppKey("max_upload", int)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@web.middleware
async def _errors_and_auth(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Bearer token for writes; invalid keys become 400 with the reason."""
    token = request.app[TOKEN_KEY]
    writing = request.method in {"PUT", "POST", "DELETE"}
    if token and writing and not bearer_matches(request.headers.get("Authorization", ""), token.encode()):
        log.warning("Refused %s %s: missing or wrong bearer token", request.method, request.path)
        return web.json_response(
            {"error": "missing or wrong bearer token; send Authorization: Bearer <token>"},
            status=401, headers={"WWW-Authenticate": "Bearer"},
        )
    try:
        return await handler(request)
    except InvalidKey as exc:
        return _error(400, str(exc))
    except (NotADirectoryError, FileExistsError) as exc:
        where = Path(exc.filename).name if exc.filename else "a parent folder"
        return _error(409, f"{request.path!r} conflicts with an existing file or folder ({where}); choose another key")


async def healthz(request: web.Request) -> web.Response:
    root = request.app[LAYOUT_KEY].root
    if not root.is_dir():
        return _error(503, f"store root {root} is missing")
    return web.json_response({"status": "ok"})


def _listing(path: Path, key: str) -> web.Response:
    entries = []
    for child in sorted(path.iterdir()):
        if child.name.startswith((".", "_")) or child.is_symlink():
            continue
        is_dir = child.is_dir()
        entries.append({"name": child.name, "type": "dir" if is_dir else "file",
                        **({} if is_dir else {"size": child.stat().st_size})})
    return web.json_response({"key": key, "entries": entries})


async def get_object(request: web.Request) -> web.StreamResponse:
    layout = request.app[LAYOUT_KEY]
    key = request.match_info["key"]
    path = layout.live(split_key(key)) if key.strip("/") else layout.root
    if path.is_file():
        return web.FileResponse(path, headers={"Cache-Control": "no-cache"})
    if path.is_dir():
        return _listing(path, key)
    return _error(404, f"no object {key!r}")


def _reject_revision_shaped(segments: list[str]) -> None:
    """Writes outside the staging protocol must not land inside (or instead of) a revision folder."""
    if len(segments) >= 3 and segments[2].isdigit():
        raise InvalidKey(
            f"invalid key {'/'.join(segments)!r}: a revision folder holds files only, "
            "as {namespace}/{name}/{revision}/{file}"
        )


def _create(tmp: Path) -> BinaryIO:
    """Open ``tmp`` for writing, creating its folder (again if a concurrent prune removed it meanwhile)."""
    for _ in range(3):
        tmp.parent.mkdir(parents=True, exist_ok=True)
        try:
            return tmp.open("wb")
        except FileNotFoundError:
            continue
    return tmp.open("wb")


async def _receive(request: web.Request) -> tuple[Path, int, str]:
    """Stream the body to a temp file outside every revision folder (fsynced); its path, size and sha256."""
    layout = request.app[LAYOUT_KEY]
    limit = request.app[MAX_UPLOAD_KEY]
    expected = request.headers.get(CHECKSUM_HEADER, "").lower()
    layout.tmp.mkdir(parents=True, exist_ok=True)
    tmp = layout.tmp / f"{uuid.uuid4().hex}.part"
    digest = hashlib.sha256()
    size = 0
    try:
        with _create(tmp) as fh:
            async for chunk in request.content.iter_chunked(1 << 20):
                size += len(chunk)
                if size > limit:
                    raise _Refused(413, f"the upload exceeds the store's limit of {limit} bytes (edgemodel store --max-upload-bytes)")
                digest.update(chunk)
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if expected and expected != digest.hexdigest():
        tmp.unlink(missing_ok=True)
        raise _Refused(400, f"sha256 mismatch: header {CHECKSUM_HEADER} says {expected}, body is {digest.hexdigest()}")
    return tmp, size, digest.hexdigest()


class _Refused(Exception):
    """An upload refused with ``status`` (too large, checksum mismatch)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _place(tmp: Path, target: Path) -> None:
    """Rename a received temp file into place (call under the store lock)."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.replace(target)
        _fsync_dir(target.parent)
    finally:
        tmp.unlink(missing_ok=True)


async def put_object(request: web.Request) -> web.Response:
    layout = request.app[LAYOUT_KEY]
    key = request.match_info["key"]
    segments = split_key(key)
    ref = revision_of(segments)
    if ref is None:
        _reject_revision_shaped(segments)
        target = layout.live(segments)
    else:
        target = layout.staging_dir(ref, request.query.get("upload", DEFAULT_UPLOAD_ID)) / segments[3]
    conflict = _put_conflict(layout, key, ref, target)
    if conflict is not None:
        return conflict
    try:
        tmp, size, sha = await _receive(request)
    except _Refused as exc:
        return _error(exc.status, exc.message)
    async with request.app[LOCK_KEY]:  # commits take the lock too: a file lands in staging or not at all
        conflict = _put_conflict(layout, key, ref, target)
        if conflict is not None:
            tmp.unlink(missing_ok=True)
            return conflict
        _place(tmp, target)
    log.info("Stored %s (%d bytes, sha256 %s)%s", key, size, sha[:12], " in staging" if ref else "")
    return web.json_response({"key": key, "size": size, "sha256": sha, "staged": ref is not None}, status=201)


def _put_conflict(layout: StoreLayout, key: str, ref: RevisionRef | None, target: Path) -> web.Response | None:
    if ref is not None and layout.revision_dir(ref).exists():
        return _error(409, f"revision {ref.prefix} is already committed; revisions are immutable")
    if target.is_dir():
        return _error(409, f"{key!r} is a folder")
    return None


def _revision_ref(request: web.Request) -> RevisionRef:
    return RevisionRef.parse(request.match_info["namespace"], request.match_info["name"], request.match_info["revision"])


async def commit_revision(request: web.Request) -> web.Response:
    layout = request.app[LAYOUT_KEY]
    ref = _revision_ref(request)
    staged = layout.staging_dir(ref, request.query.get("upload", DEFAULT_UPLOAD_ID))
    live = layout.revision_dir(ref)
    async with request.app[LOCK_KEY]:
        if live.exists():
            return _error(409, f"revision {ref.prefix} is already committed; revisions are immutable")
        if not (staged / "manifest.json").is_file():
            return _error(400, f"nothing to commit for {ref.prefix}: upload manifest.json (and the other files) first")
        files = sorted(p.name for p in staged.iterdir() if not p.name.startswith("."))
        if live.parent.exists() and not live.parent.is_dir():
            return _error(409, f"cannot commit {ref.prefix}: {ref.namespace}/{ref.name} is a file, not a folder; delete it first")
        live.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staged, live)
        _fsync_dir(live.parent)
        layout.prune_empty(staged.parent)
    log.info("Committed revision %s (%s)", ref.prefix, ", ".join(files))
    return web.json_response({"revision": ref.prefix, "files": files}, status=201)


async def abort_upload(request: web.Request) -> web.Response:
    layout = request.app[LAYOUT_KEY]
    ref = _revision_ref(request)
    staged = layout.staging_dir(ref, request.query.get("upload", DEFAULT_UPLOAD_ID))
    shutil.rmtree(staged, ignore_errors=True)
    async with request.app[LOCK_KEY]:
        layout.prune_empty(staged.parent)
    log.info("Aborted upload of %s", ref.prefix)
    return web.Response(status=204)


async def delete_object(request: web.Request) -> web.Response:
    layout = request.app[LAYOUT_KEY]
    segments = split_key(request.match_info["key"])
    target = layout.live(segments)
    if not target.exists():
        return _error(404, f"no object {request.match_info['key']!r}")
    async with request.app[LOCK_KEY]:
        layout.trash.mkdir(parents=True, exist_ok=True)
        aside = layout.trash / uuid.uuid4().hex
        os.rename(target, aside)
        layout.prune_empty(target.parent)
    if aside.is_dir():
        shutil.rmtree(aside, ignore_errors=True)
    else:
        aside.unlink(missing_ok=True)
    log.info("Deleted %s", "/".join(segments))
    return web.Response(status=204)


def clean_stale(layout: StoreLayout, max_age_s: float, now: float | None = None) -> int:
    """Remove staged uploads older than ``max_age_s`` and everything in the trash; return how many."""
    now = time.time() if now is None else now
    removed = 0
    staging = layout.root / STAGING_DIR
    if staging.is_dir():
        for path in staging.glob("*/*/*"):
            if path.is_dir() and path.parent.parent.name != TMP_DIR and now - path.stat().st_mtime > max_age_s:
                shutil.rmtree(path, ignore_errors=True)
                layout.prune_empty(path.parent)
                removed += 1
    if layout.tmp.is_dir():
        for path in layout.tmp.iterdir():
            if now - path.stat().st_mtime > max_age_s:
                path.unlink(missing_ok=True)
                removed += 1
    if layout.trash.is_dir():
        for path in layout.trash.iterdir():
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            removed += 1
    return removed


def create_app(root: Path, token: str = "", max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES) -> web.Application:
    """The store as an aiohttp application over ``root`` (created when missing)."""
    root.mkdir(parents=True, exist_ok=True)
    app = web.Application(middlewares=[_errors_and_auth])
    app[LAYOUT_KEY] = StoreLayout(root.resolve())
    app[TOKEN_KEY] = token
    app[LOCK_KEY] = asyncio.Lock()
    app[MAX_UPLOAD_KEY] = max_upload_bytes
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/_commit/{namespace}/{name}/{revision}", commit_revision)
    app.router.add_delete("/_staging/{namespace}/{name}/{revision}", abort_upload)
    app.router.add_get("/{key:.*}", get_object)  # HEAD is served by the GET route
    app.router.add_put("/{key:.+}", put_object)
    app.router.add_delete("/{key:.+}", delete_object)
    return app


async def serve(
    root: Path, host: str = "127.0.0.1", port: int = 0, token: str = "",
    staging_ttl_s: float = 24 * 3600, on_ready: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
) -> None:
    """Serve the store until ``stop`` is set (or forever); ``on_ready`` gets the base URL."""
    app = create_app(root, token, max_upload_bytes)
    removed = clean_stale(app[LAYOUT_KEY], staging_ttl_s)
    if removed:
        log.info("Removed %d stale staged uploads and trashed objects", removed)
    runner = JsonErrorAppRunner(app, access_log=logging.getLogger("edgemodel.store.access"))
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0]
    url = f"http://{host if ':' not in host else f'[{host}]'}:{bound[1]}"
    log.info("Serving artifact store %s at %s%s", root, url, " (writes need a bearer token)" if token else "")
    if on_ready:
        on_ready(url)
    try:
        await (stop or asyncio.Event()).wait()
    finally:
        with contextlib.suppress(Exception):
            await runner.cleanup()
