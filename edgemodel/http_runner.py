"""An aiohttp runner whose own low-level errors (malformed request line or headers, header too
large, a broken chunked body) are ``{"error": "..."}`` JSON like every other answer, not text.

Used by the agent and the artifact store; it subclasses aiohttp's per-connection handler, so
``tests/agent/test_hostile_input.py`` checks the answers on every aiohttp upgrade."""

from __future__ import annotations

import json

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest


class JsonErrorHandler(RequestHandler):
    """The per-connection protocol; only the error page changes."""

    def handle_error(
        self, request: BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        super().handle_error(request, status, exc, message)  # logs, and raises when a response already started
        if status >= 500:
            text = "internal error while reading the request"
        else:
            detail = " ".join(str(message or exc or "").split())[:300]
            text = f"malformed HTTP request: {detail or 'cannot parse it'}"
        response = web.Response(status=status, body=json.dumps({"error": text}).encode(), content_type="application/json")
        response.force_close()
        return response


class _JsonErrorServer(web.Server):
    def __call__(self) -> RequestHandler:
        return JsonErrorHandler(self, loop=self._loop, **self._kwargs)


class JsonErrorAppRunner(web.AppRunner):
    """``web.AppRunner`` with JSON low-level errors; takes the same arguments."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _JsonErrorServer
        return server
