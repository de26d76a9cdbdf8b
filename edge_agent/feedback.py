"""HTTP endpoints of continual learning, beside the v2 API and behind the same bearer token.

- ``POST /v2/models/{name}/feedback`` with ``{"labels": [{"id": "<request id>", "label": 3}, ...]}``
  (``label`` may be a list, one class per row of a batched request): ground truth for requests the
  model answered. 200 with counts; 400 naming the bad field; 404 when no id is known; 413 when too big.
- ``GET /v2/models/{name}/continual``: drift scores, feedback accuracy and the capture buffer.
- ``POST /v2/models/{name}/capture/upload``: send the labelled captured samples to the artifact store.
- ``GET /v2/models/{name}/capture/labelled``: the same samples as an .npz (``X-Checksum-Sha256``).

Every body is hostile: read under ``MAX_FEEDBACK_BYTES``, at most ``MAX_ITEMS`` labels, ids of at most
``MAX_ID_CHARS``; nothing is changed unless the whole request is valid.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from aiohttp import web

from edge_agent.capture_worker import ContinualHub, FeedbackError

MAX_FEEDBACK_BYTES = 1 << 20
MAX_ITEMS = 1000
MAX_ID_CHARS = 256
MAX_ROWS = 1024
MAX_CLASS = 1 << 20


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def parse_feedback(body: bytes) -> list[tuple[str, list[int]]]:
    """Validate a feedback body into (request id, labels); FeedbackError 400 naming the field otherwise."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FeedbackError(
            400, f'the body is not JSON ({exc}); send {{"labels": [{{"id": "req-1", "label": 3}}]}}'
        ) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("labels"), list):
        raise FeedbackError(
            400,
            'labels: expected an object with a "labels" list, e.g. {"labels": [{"id": "req-1", "label": 3}]}',
        )
    raw = doc["labels"]
    if not raw:
        raise FeedbackError(400, 'labels: the list is empty; send at least one {"id", "label"}')
    if len(raw) > MAX_ITEMS:
        raise FeedbackError(
            413, f"labels: {len(raw)} items, more than {MAX_ITEMS} per request; send them in batches"
        )
    items: list[tuple[str, list[int]]] = []
    seen: set[str] = set()
    for index, item in enumerate(raw):
        where = f"labels[{index}]"
        if not isinstance(item, dict):
            raise FeedbackError(400, f'{where}: expected an object {{"id": ..., "label": ...}}')
        request_id = item.get("id")
        if not isinstance(request_id, str) or not request_id or len(request_id) > MAX_ID_CHARS:
            raise FeedbackError(
                400,
                f"{where}.id: expected the non-empty request id (at most {MAX_ID_CHARS} characters) "
                'sent as "id" in the inference request',
            )
        if request_id in seen:
            raise FeedbackError(
                400, f"{where}.id: {request_id[:80]!r} appears twice; send one label per request"
            )
        seen.add(request_id)
        label = item.get("label")
        labels: list[Any] = label if isinstance(label, list) else [label]
        if (
            not labels
            or len(labels) > MAX_ROWS
            or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < MAX_CLASS for v in labels)
        ):
            raise FeedbackError(
                400,
                f"{where}.label: expected a class index (integer >= 0) or a list of them, one per "
                f"row of the request; got {json.dumps(label)[:80]}",
            )
        items.append((request_id, labels))
    return items


async def read_bounded(request: web.Request, limit: int = MAX_FEEDBACK_BYTES) -> bytes:
    """The body, refusing more than ``limit`` bytes (413) before reading them all."""
    if request.content_length is not None and request.content_length > limit:
        raise FeedbackError(
            413, f"the body has {request.content_length} bytes, more than {limit}; send fewer labels"
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > limit:
            raise FeedbackError(413, f"the body has more than {limit} bytes; send fewer labels per request")
        chunks.append(chunk)
    return b"".join(chunks)


class FeedbackApi:
    """The continual-learning routes; ``authorize`` is the v2 API's bearer check."""

    def __init__(
        self,
        hub: ContinualHub,
        authorize: Callable[[web.Request], None],
        uploader: Callable[[str], dict[str, Any]] | None = None,
    ) -> None:
        self.hub = hub
        self.authorize = authorize
        self.uploader = uploader
        """Uploads a model's labelled samples to the artifact store (set in a cluster)."""

    async def feedback(self, request: web.Request) -> web.Response:
        self.authorize(request)
        try:
            items = parse_feedback(await read_bounded(request))
            result = await asyncio.to_thread(self.hub.feedback, request.match_info["name"], items)
        except FeedbackError as exc:
            return _error(exc.status, exc.message)
        return web.json_response(result)

    async def status(self, request: web.Request) -> web.Response:
        self.authorize(request)
        name = request.match_info["name"]
        for entry in self.hub.status():
            if entry["name"] == name:
                return web.json_response(entry)
        return _error(404, f"model {name!r} has not answered any request on this agent yet")

    async def labelled(self, request: web.Request) -> web.Response:
        self.authorize(request)
        try:
            data, manifest, _ = await asyncio.to_thread(self.hub.export, request.match_info["name"])
        except FeedbackError as exc:
            return _error(exc.status, exc.message)
        return web.Response(
            body=data,
            headers={
                "Content-Type": "application/octet-stream",
                "X-Checksum-Sha256": manifest["sha256"],
                "X-Samples": str(manifest["samples"]),
            },
        )

    async def upload(self, request: web.Request) -> web.Response:
        self.authorize(request)
        if self.uploader is None:
            return _error(
                409,
                "this agent has no artifact store to upload to (standalone); fetch the samples with "
                f"GET /v2/models/{request.match_info['name']}/capture/labelled instead",
            )
        try:
            manifest = await asyncio.to_thread(self.uploader, request.match_info["name"])
        except FeedbackError as exc:
            return _error(exc.status, exc.message)
        except Exception as exc:  # the store failed: the samples stay, marked not uploaded
            return _error(
                502, f"upload to the artifact store failed ({exc}); the samples are kept, try again"
            )
        return web.json_response(manifest)

    def routes(self) -> list[web.AbstractRouteDef]:
        m = "/v2/models/{name}"
        return [
            web.post(f"{m}/feedback", self.feedback),
            web.get(f"{m}/continual", self.status),
            web.get(f"{m}/capture/labelled", self.labelled),
            web.post(f"{m}/capture/upload", self.upload),
        ]
