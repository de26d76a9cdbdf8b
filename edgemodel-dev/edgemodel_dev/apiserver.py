"""The HTTP face of the emulator: discovery, OpenAPI, CRUD, watch, logs (aiohttp, 127.0.0.1 only)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml
from aiohttp import web

from edgemodel_dev import errors, openapi, protobuf, tables
from edgemodel_dev.admission import REQUESTER
from edgemodel_dev.auth import ADMIN, Identity, TokenAuth, authorize
from edgemodel_dev.errors import ApiError
from edgemodel_dev.registry import DeleteOptions, Registry, WriteResult
from edgemodel_dev.resources import ResourceType
from edgemodel_dev.selectors import (
    FieldTerm,
    Requirement,
    fields_match,
    labels_match,
    parse_field_selector,
    parse_label_selector,
)
from edgemodel_dev.store import Change

JSON = dict[str, Any]
log = logging.getLogger(__name__)

KUBERNETES_VERSION = {
    "major": "1",
    "minor": "36",
    "gitVersion": "v1.36.0-edgemodel-dev",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z",
    "goVersion": "go1.25",
    "compiler": "gc",
    "platform": "linux/amd64",
    "emulationMajor": "1",
    "emulationMinor": "36",
}
TABLE_KIND = "as=Table"
IDENTITY = web.RequestKey("identity", Identity)
PROTOBUF = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"
FRAME_CACHE_SIZE = 4096
NAME_FIELDS = ("metadata.name", "metadata.namespace")


def _watched_object(rt: ResourceType, namespace: str | None, fields: list[FieldTerm]) -> tuple[str, str] | None:
    """(namespace, name) when a watch can only ever see one object (``fieldSelector=metadata.name=X``)."""
    name = next((t.value for t in fields if t.path == "metadata.name" and not t.negate), None)
    if name is None or (rt.namespaced and not namespace):
        return None
    return (namespace or "", name)


class LogSource(Protocol):
    """Where pod logs come from (the kubelet)."""

    def log_path(self, pod: JSON, container: str, previous: bool) -> Path | None: ...

    def container_running(self, pod: JSON, container: str) -> bool: ...


@dataclass
class Target:
    """What a resource URL addresses."""

    rt: ResourceType
    namespace: str | None
    name: str | None
    subresource: str


def _dump(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _response(obj: Any, status: int = 200, warnings: list[str] | None = None) -> web.Response:
    headers = {}
    if warnings:
        escaped = [w.replace("\\", "\\\\").replace('"', '\\"') for w in warnings]
        headers["Warning"] = ", ".join(f'299 - "{w}"' for w in escaped)
    return web.Response(body=_dump(obj), status=status, content_type="application/json", headers=headers)


def _wants_table(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    first = accept.split(",")[0]
    return TABLE_KIND in first


def _flag(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes")


class ApiServer:
    """Serves one :class:`Registry` over HTTP; start/stop can be repeated (simulated outages)."""

    def __init__(
        self,
        registry: Registry,
        auth: TokenAuth | None = None,
        logs: LogSource | None = None,
        bookmark_interval: float = 15.0,
        default_watch_timeout: float = 1800.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.registry = registry
        self.store = registry.store
        self.catalog = registry.catalog
        self.auth = auth or TokenAuth()
        self.logs = logs
        self.bookmark_interval = bookmark_interval
        self.default_watch_timeout = default_watch_timeout
        #: how long a read at a resourceVersion newer than the store's waits (the watch cache's 3 s)
        self.fresh_timeout = 3.0
        self.ssl_context = ssl_context
        self.port = 0
        self.host = "127.0.0.1"
        self._runner: web.AppRunner | None = None
        self._closing = asyncio.Event()
        self._openapi_cache: dict[str, tuple[int, Any]] = {}
        self._frames: dict[tuple[int, str], bytes] = {}
        """Encoded watch events by (resourceVersion, apiVersion), newest last (see ``_shared_frame``)."""
        self.requests = 0

    # lifecycle -----------------------------------------------------------------------------
    def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024 * 1024)
        app.router.add_get("/version", self._version)
        app.router.add_get("/version/", self._version)
        for path in ("/healthz", "/livez", "/readyz"):
            app.router.add_get(path, self._healthz)
        app.router.add_get("/openapi/v2", self._openapi_v2)
        app.router.add_get("/openapi/v3", self._openapi_v3_index)
        app.router.add_get("/openapi/v3/{path:.*}", self._openapi_v3_doc)
        app.router.add_route("*", "/api", self._core_root)
        app.router.add_route("*", "/api/", self._core_root)
        app.router.add_route("*", "/api/{tail:.*}", self._core)
        app.router.add_route("*", "/apis", self._groups)
        app.router.add_route("*", "/apis/", self._groups)
        app.router.add_route("*", "/apis/{tail:.*}", self._apis)
        return app

    async def start(self, port: int = 0) -> int:
        """Listen on 127.0.0.1 (port 0 picks a free one; a restart reuses the previous port)."""
        self._closing = asyncio.Event()
        self._runner = web.AppRunner(self._app(), access_log=None, handle_signals=False,
                                     shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, port or self.port, reuse_address=True,
                           ssl_context=self.ssl_context)
        await site.start()
        server = site._server
        assert server is not None
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1]
        log.info("Started the API server on %s://%s:%d", "https" if self.ssl_context else "http", self.host,
                 self.port)
        return self.port

    async def stop(self) -> None:
        """Stop listening and drop every connection (watches end); the store is kept."""
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            log.info("Stopped the API server on port %d", self.port)

    @property
    def running(self) -> bool:
        return self._runner is not None

    # middleware ----------------------------------------------------------------------------
    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        self.requests += 1
        try:
            identity = ADMIN
            if request.path not in ("/version", "/version/", "/healthz", "/livez", "/readyz"):
                identity = request[IDENTITY] = self.auth.identify(request.headers.get("Authorization"))
            requester = REQUESTER.set(identity)  # admission checks the writes of agents
            try:
                return await handler(request)
            finally:
                REQUESTER.reset(requester)
        except ApiError as exc:
            if exc.code >= 500:
                log.error("%s %s failed: %s", request.method, request.path_qs, exc.message)
            else:
                log.debug("%s %s -> %d %s", request.method, request.path_qs, exc.code, exc.message)
            return _response(exc.status(), exc.code)
        except web.HTTPException:
            raise
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        except Exception as exc:
            log.exception("%s %s crashed the handler", request.method, request.path_qs)
            error = ApiError(500, "InternalError", f"an error on the server has prevented the request from "
                                                   f"succeeding: {type(exc).__name__}: {exc}")
            return _response(error.status(), 500)

    # discovery -----------------------------------------------------------------------------
    async def _version(self, request: web.Request) -> web.Response:
        return _response(KUBERNETES_VERSION)

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _core_root(self, request: web.Request) -> web.Response:
        return _response({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": f"{self.host}:{self.port}"}],
        })

    def _group_entry(self, group: str, versions: list[str]) -> JSON:
        entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {"name": group, "versions": entries, "preferredVersion": entries[0]}

    async def _groups(self, request: web.Request) -> web.Response:
        groups = [self._group_entry(g, vs) for g, vs in sorted(self.catalog.group_versions().items()) if g]
        return _response({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})

    def _resource_list(self, group: str, version: str) -> JSON:
        types = self.catalog.in_group_version(group, version)
        if not types:
            raise ApiError(404, "NotFound", "the server could not find the requested resource", details={})
        resources = [e for rt in sorted(types, key=lambda r: r.plural) for e in rt.discovery_entries()]
        gv = f"{group}/{version}" if group else version
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}

    # openapi -------------------------------------------------------------------------------
    def _cached(self, key: str, build: Callable[[], Any]) -> Any:
        hit = self._openapi_cache.get(key)
        if hit is not None and hit[0] == self.catalog.generation:
            return hit[1]
        value = build()
        self._openapi_cache[key] = (self.catalog.generation, value)
        return value

    async def _openapi_v2(self, request: web.Request) -> web.Response:
        if "protobuf" in request.headers.get("Accept", ""):
            # An empty message is a valid, empty gnostic OpenAPI v2 Document: kubectl then
            # validates client-side against nothing and relies on server-side field validation.
            return web.Response(body=b"", content_type=PROTOBUF.split(";")[0])
        return _response(openapi.v2_json())

    async def _openapi_v3_index(self, request: web.Request) -> web.Response:
        body = self._cached("index", lambda: _dump(openapi.index(self.catalog)))
        return web.Response(body=body, content_type="application/json")

    async def _openapi_v3_doc(self, request: web.Request) -> web.Response:
        path = request.match_info["path"].strip("/")
        parts = path.split("/")
        if parts[0] == "api" and len(parts) == 2:
            group, version = "", parts[1]
        elif parts[0] == "apis" and len(parts) == 3:
            group, version = parts[1], parts[2]
        else:
            raise ApiError(404, "NotFound", f"no OpenAPI v3 document at /openapi/v3/{path}")

        def build() -> bytes | None:
            doc = openapi.group_version_doc(self.catalog, group, version)
            return None if doc is None else _dump(doc)

        body = self._cached(f"doc:{path}", build)
        if body is None:
            raise ApiError(404, "NotFound", f"no OpenAPI v3 document at /openapi/v3/{path}")
        return web.Response(body=body, content_type="application/json",
                            headers={"Cache-Control": "public, immutable"})

    # routing -------------------------------------------------------------------------------
    async def _core(self, request: web.Request) -> web.StreamResponse:
        parts = [p for p in request.match_info["tail"].split("/") if p]
        if not parts:
            return await self._core_root(request)
        if len(parts) == 1:
            return _response(self._resource_list("", parts[0]))
        return await self._resource(request, "", parts[0], parts[1:])

    async def _apis(self, request: web.Request) -> web.StreamResponse:
        parts = [p for p in request.match_info["tail"].split("/") if p]
        if not parts:
            return await self._groups(request)
        group = parts[0]
        if len(parts) == 1:
            versions = self.catalog.group_versions().get(group)
            if not versions:
                raise ApiError(404, "NotFound", "the server could not find the requested resource", details={})
            return _response({"kind": "APIGroup", "apiVersion": "v1", **self._group_entry(group, versions)})
        if len(parts) == 2:
            return _response(self._resource_list(group, parts[1]))
        return await self._resource(request, group, parts[1], parts[2:])

    def _target(self, group: str, version: str, parts: list[str]) -> Target:
        namespace: str | None = None
        if parts[0] == "namespaces" and len(parts) >= 3:
            candidate = self.catalog.find(group, version, parts[2])
            if candidate is not None and candidate.namespaced:
                namespace, parts = parts[1], parts[2:]
        rt = self.catalog.get(group, version, parts[0])
        name = parts[1] if len(parts) > 1 else None
        sub = "/".join(parts[2:]) if len(parts) > 2 else ""
        if sub and sub not in rt.subresources:
            raise ApiError(404, "NotFound", "the server could not find the requested resource", details={})
        if rt.namespaced and name is not None and namespace is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource", details={})
        return Target(rt, namespace, name, sub)

    async def _body(self, request: web.Request) -> Any:
        raw = await request.read()
        if not raw:
            return None
        ctype = request.content_type
        if ctype == protobuf.CONTENT_TYPE:
            return protobuf.decode_object(raw)
        try:
            if "yaml" in ctype:
                return yaml.safe_load(raw)
            return json.loads(raw)
        except (ValueError, yaml.YAMLError) as exc:
            raise errors.bad_request(f"the body of the request could not be decoded: {exc}") from None

    def _authorize(self, request: web.Request, verb: str, target: Target, name: str | None) -> None:
        identity: Identity = request.get(IDENTITY, ADMIN)
        resource = target.rt.plural + (f"/{target.subresource}" if target.subresource else "")
        authorize(identity, verb, target.rt.group, resource, target.namespace, name)

    async def _resource(self, request: web.Request, group: str, version: str,
                        parts: list[str]) -> web.StreamResponse:
        target = self._target(group, version, parts)
        q = request.query
        method = request.method
        dry_run = bool(q.get("dryRun"))
        validation = q.get("fieldValidation") or "Warn"
        rt = target.rt
        if target.name is None:
            if method == "GET":
                if _flag(q.get("watch")):
                    self._authorize(request, "watch", target, self._selected_name(q))
                    return await self._watch(request, target)
                self._authorize(request, "list", target, self._selected_name(q))
                if not q.get("continue"):
                    await self._wait_fresh(q.get("resourceVersion"))
                return self._list(request, target)
            if method == "POST":
                body = await self._body(request)
                if rt.kind == "SelfSubjectAccessReview":
                    return self._access_review(request, body)
                name = ((body or {}).get("metadata") or {}).get("name") if isinstance(body, dict) else None
                self._authorize(request, "create", target, name)
                result = self.registry.create(rt, target.namespace, body, dry_run=dry_run,
                                              field_validation=validation, field_manager=q.get("fieldManager"))
                return _response(result.obj, 201, result.warnings)
            if method == "DELETE":
                self._authorize(request, "deletecollection", target, None)
                return self._delete_collection(request, target, await self._body(request))
            raise errors.method_not_allowed(f"{method} is not supported on a collection of {rt.qualified}")
        name = target.name
        if target.subresource == "log":
            self._authorize(request, "get", target, name)
            return await self._log(request, target)
        verb = {"GET": "get", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method)
        if verb is None or (verb == "delete" and target.subresource):
            raise errors.method_not_allowed(f"{method} is not supported on {rt.qualified}")
        self._authorize(request, verb, target, name)
        if verb == "get":
            await self._wait_fresh(q.get("resourceVersion"))
            obj = self.registry.get(rt, target.namespace, name)
            if _wants_table(request):
                return _response(tables.table(rt, [obj], q.get("includeObject", "Metadata"),
                                              {"resourceVersion": obj["metadata"]["resourceVersion"]}))
            return _response(obj)
        if verb == "update":
            body = await self._body(request)
            if not isinstance(body, dict):
                raise errors.bad_request("the body of the request must be a JSON object")
            result = self.registry.update(rt, target.namespace, name, body, subresource=target.subresource,
                                          dry_run=dry_run, field_validation=validation,
                                          field_manager=self._manager(request))
            return _response(result.obj, 200, result.warnings)
        if verb == "patch":
            raw = await request.read()
            result = self.registry.patch(rt, target.namespace, name, request.headers.get("Content-Type", ""), raw,
                                         subresource=target.subresource, dry_run=dry_run,
                                         field_validation=validation, field_manager=self._manager(request),
                                         force=_flag(q.get("force")))
            return self._patched(result)
        body = await self._body(request)
        options = DeleteOptions.parse(body if isinstance(body, dict) else None, dict(q))
        obj, removed = self.registry.delete(rt, target.namespace, name, options)
        if removed and not rt.returns_deleted_object:
            return _response({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                              "details": {"name": name, "group": rt.group, "kind": rt.plural,
                                          "uid": obj["metadata"].get("uid")}})
        return _response(obj, 200)

    @staticmethod
    def _manager(request: web.Request) -> str:
        """``fieldManager``, else ``?<user agent>`` (used only where fields are already managed)."""
        return request.query.get("fieldManager") or "?" + request.headers.get("User-Agent", "unknown")

    @staticmethod
    def _patched(result: WriteResult) -> web.Response:
        return _response(result.obj, 201 if result.created else 200, result.warnings)

    @staticmethod
    def _selected_name(q: Any) -> str | None:
        for term in parse_field_selector(q.get("fieldSelector")):
            if term.path == "metadata.name" and not term.negate:
                return term.value
        return None

    # reads at a resourceVersion --------------------------------------------------------------
    async def _wait_fresh(self, rv_param: str | None) -> None:
        """A read "not older than" a resourceVersion the server has not reached yet waits for it
        (the watch cache's 3 s), then fails as the real server does: 504 ResourceVersionTooLarge."""
        if not rv_param or rv_param == "0":
            return
        try:
            wanted = int(rv_param)
        except ValueError:
            raise errors.bad_request(f"invalid resourceVersion {rv_param!r}") from None
        deadline = time.monotonic() + self.fresh_timeout
        while self.store.rv < wanted and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.store.rv < wanted:
            raise ApiError(504, "Timeout", f"Timeout: Too large resource version: {wanted}, current: {self.store.rv}",
                           details={"causes": [{"reason": "ResourceVersionTooLarge",
                                                "message": "Too large resource version"}],
                                    "retryAfterSeconds": 1})

    # list ----------------------------------------------------------------------------------
    def _list(self, request: web.Request, target: Target) -> web.Response:
        """One list, or one page of it; every page of a paged list shows the state at the
        resourceVersion of its first page (rebuilt from the kind's history; 410 once that is gone)."""
        q = request.query
        rt = target.rt
        labels = parse_label_selector(q.get("labelSelector"))
        fields = parse_field_selector(q.get("fieldSelector"))
        list_rv = str(self.store.rv)
        start = 0
        if q.get("continue"):
            try:
                token = json.loads(base64.urlsafe_b64decode(q["continue"].encode()))
                after = (token["ns"], token["name"])
                list_rv = str(int(token["rv"]))
            except (ValueError, KeyError, TypeError):
                raise errors.bad_request("invalid continue token") from None
            page = self.registry.list_at(rt, target.namespace, labels, fields, at_rv=int(list_rv))
            if page is None:
                raise errors.gone(
                    "The provided continue parameter is too old to display a consistent list result. You can "
                    "start a new list without the continue parameter.")
            items = page
            start = next((i for i, o in enumerate(items) if (o["metadata"].get("namespace", ""),
                                                             o["metadata"]["name"]) > after), len(items))
        else:
            items = self.registry.list_objects(rt, target.namespace, labels, fields)
        items = items[start:]
        meta: JSON = {"resourceVersion": list_rv}
        limit = int(q.get("limit") or 0)
        if 0 < limit < len(items):
            last = items[limit - 1]["metadata"]
            token = {"ns": last.get("namespace", ""), "name": last["name"], "rv": list_rv}
            meta["continue"] = base64.urlsafe_b64encode(_dump(token)).decode()
            meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        if _wants_table(request):
            return _response(tables.table(rt, items, q.get("includeObject", "Metadata"), meta))
        return _response({"kind": rt.list_kind, "apiVersion": rt.api_version, "metadata": meta, "items": items})

    def _delete_collection(self, request: web.Request, target: Target, body: Any) -> web.Response:
        q = request.query
        rt = target.rt
        options = DeleteOptions.parse(body if isinstance(body, dict) else None, dict(q))
        items = self.registry.list_objects(rt, target.namespace, parse_label_selector(q.get("labelSelector")),
                                   parse_field_selector(q.get("fieldSelector")))
        for item in items:
            with contextlib.suppress(ApiError):
                self.registry.delete(rt, item["metadata"].get("namespace"), item["metadata"]["name"], options)
        return _response({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"})

    # watch ---------------------------------------------------------------------------------
    async def _watch(self, request: web.Request, target: Target) -> web.StreamResponse:
        q = request.query
        rt = target.rt
        labels = parse_label_selector(q.get("labelSelector"))
        fields = parse_field_selector(q.get("fieldSelector"))
        timeout = float(q.get("timeoutSeconds") or self.default_watch_timeout)
        bookmarks = _flag(q.get("allowWatchBookmarks"))
        send_initial = _flag(q.get("sendInitialEvents"))
        as_table = _wants_table(request)
        rv_param = q.get("resourceVersion") or ""
        namespace = target.namespace if rt.namespaced else None
        queue: asyncio.Queue[Change] = asyncio.Queue()
        if rv_param not in ("", "0") and not send_initial:
            try:  # a resourceVersion from the future: wait for it, else one ERROR event (as the watch cache)
                await self._wait_fresh(rv_param)
            except ApiError as exc:
                if exc.code != 504:
                    raise
                response = web.StreamResponse(headers={"Content-Type": "application/json"})
                await response.prepare(request)
                await response.write(_dump({"type": "ERROR", "object": exc.status()}) + b"\n")
                await response.write_eof()
                return response

        def on_change(change: Change) -> None:
            if change.storage == rt.storage:
                queue.put_nowait(change)

        # Subscribe and snapshot without yielding to the loop: nothing can slip in between.
        unsubscribe = self.store.subscribe(on_change, rt.storage, _watched_object(rt, namespace, fields))
        initial: list[tuple[str, JSON]] = []
        expired: str | None = None
        if rv_param in ("", "0") or send_initial:
            for stored in self.store.items(rt.storage, namespace):
                obj = self.registry.present(rt, stored)
                if labels_match(labels, obj) and fields_match(fields, obj):
                    initial.append(("ADDED", obj))
        else:
            try:
                since = int(rv_param)
            except ValueError:
                unsubscribe()
                raise errors.bad_request(f"invalid resourceVersion {rv_param!r}") from None
            changes = self.store.changes_since(since, rt.storage)
            if changes is None:
                expired = f"too old resource version: {since} ({self.store.oldest_rv_of(rt.storage) + 1})"
            else:
                for change in changes:
                    event = self._event(rt, change, namespace, labels, fields)
                    if event:
                        initial.append(event)
        snapshot_rv = self.store.rv
        response = web.StreamResponse(headers={"Content-Type": "application/json",
                                               "Cache-Control": "no-cache, private"})
        response.enable_chunked_encoding()
        try:
            await response.prepare(request)
            if expired:
                status = errors.gone(expired).status()
                await response.write(_dump({"type": "ERROR", "object": status}) + b"\n")
                return response
            columns_sent = False
            for kind, obj in initial:
                await response.write(self._frame(rt, kind, obj, as_table, not columns_sent))
                columns_sent = True
            if send_initial:
                mark = {"kind": rt.kind, "apiVersion": rt.api_version,
                        "metadata": {"resourceVersion": str(snapshot_rv),
                                     "annotations": {"k8s.io/initial-events-end": "true"}}}
                await response.write(_dump({"type": "BOOKMARK", "object": mark}) + b"\n")
            deadline = time.monotonic() + timeout
            next_bookmark = time.monotonic() + self.bookmark_interval
            closing = asyncio.ensure_future(self._closing.wait())
            try:
                while not self._closing.is_set():
                    now = time.monotonic()
                    if now >= deadline:
                        break
                    if request.transport is None or request.transport.is_closing():
                        break  # the client went away
                    wait = min(deadline, next_bookmark if bookmarks else deadline, now + 1.0) - now  # no spin
                    getter = asyncio.ensure_future(queue.get())
                    done, _ = await asyncio.wait({getter, closing}, timeout=max(wait, 0.0),
                                                 return_when=asyncio.FIRST_COMPLETED)
                    if getter not in done:
                        getter.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await getter
                        if closing in done:
                            break
                        if bookmarks and time.monotonic() >= next_bookmark and queue.empty():
                            mark = {"kind": rt.kind, "apiVersion": rt.api_version,
                                    "metadata": {"resourceVersion": str(self.store.rv)}}
                            await response.write(_dump({"type": "BOOKMARK", "object": mark}) + b"\n")
                            next_bookmark = time.monotonic() + self.bookmark_interval
                        continue
                    change = getter.result()
                    frame = None if as_table or labels else self._shared_frame(rt, change, namespace, fields)
                    if frame is not None:
                        if frame:  # b"": not for this watch (an empty write could end the chunked stream)
                            await response.write(frame)
                        continue
                    event = self._event(rt, change, namespace, labels, fields)
                    if event:
                        await response.write(self._frame(rt, event[0], event[1], as_table, not columns_sent))
                        columns_sent = True
            finally:
                closing.cancel()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            unsubscribe()
        with contextlib.suppress(ConnectionResetError, RuntimeError):
            await response.write_eof()
        return response

    def _shared_frame(self, rt: ResourceType, change: Change, namespace: str | None,
                      fields: list[FieldTerm]) -> bytes | None:
        """The encoded event of ``change``, shared by every watcher of the same version without a label
        selector (the real watch cache serializes an event once, too); None when the watch's field
        selector needs more than the object's name and namespace (then ``_event`` decides)."""
        if change.storage != rt.storage or any(t.path not in NAME_FIELDS for t in fields):
            return None
        obj = change.obj
        if namespace and (obj["metadata"].get("namespace") or "") != namespace:
            return b""
        if fields and not fields_match(fields, obj):
            return b""
        key = (change.rv, rt.api_version)
        frame = self._frames.get(key)
        if frame is None:
            frame = _dump({"type": change.type, "object": self.registry.present(rt, obj)}) + b"\n"
            self._frames[key] = frame
            while len(self._frames) > FRAME_CACHE_SIZE:
                self._frames.pop(next(iter(self._frames)))
        return frame

    def _frame(self, rt: ResourceType, kind: str, obj: JSON, as_table: bool, with_columns: bool) -> bytes:
        if as_table:
            table = tables.table(rt, [obj], "Object", {"resourceVersion": obj["metadata"]["resourceVersion"]})
            if not with_columns:
                table["columnDefinitions"] = []
            obj = table
        return _dump({"type": kind, "object": obj}) + b"\n"

    def _event(self, rt: ResourceType, change: Change, namespace: str | None, labels: list[Requirement],
               fields: list[FieldTerm]) -> tuple[str, JSON] | None:
        if change.storage != rt.storage:
            return None
        if namespace and (change.obj["metadata"].get("namespace") or "") != namespace:
            return None
        obj = self.registry.present(rt, change.obj)

        def matches(candidate: JSON | None) -> bool:
            return candidate is not None and labels_match(labels, candidate) and fields_match(fields, candidate)

        now_matches = matches(obj)
        if change.type == "MODIFIED" and (labels or fields):
            was = matches(self.registry.present(rt, change.old)) if change.old else False
            if was and not now_matches:
                return ("DELETED", obj)
            if now_matches and not was:
                return ("ADDED", obj)
        return (change.type, obj) if now_matches else None

    # logs ----------------------------------------------------------------------------------
    async def _log(self, request: web.Request, target: Target) -> web.StreamResponse:
        q = request.query
        pod = self.registry.get(target.rt, target.namespace, str(target.name))
        containers = [c["name"] for c in (pod.get("spec") or {}).get("containers") or []]
        init = [c["name"] for c in (pod.get("spec") or {}).get("initContainers") or []]
        container = q.get("container")
        if not container:
            if len(containers) != 1:
                raise errors.bad_request(
                    f"a container name must be specified for pod {target.name}, choose one of: "
                    f"[{' '.join(containers)}]")
            container = containers[0]
        if container not in containers + init:
            raise errors.bad_request(f"container {container} is not valid for pod {target.name}")
        if self.logs is None:
            raise ApiError(404, "NotFound", "this server runs no kubelet, so there are no logs")
        path = self.logs.log_path(pod, container, _flag(q.get("previous")))
        if path is None or not path.exists():
            raise errors.bad_request(
                f'container "{container}" in pod "{target.name}" is waiting to start: ContainerCreating')
        tail = int(q["tailLines"]) if q.get("tailLines") else None
        limit = int(q["limitBytes"]) if q.get("limitBytes") else None
        data = path.read_bytes()
        if tail is not None:
            lines = data.splitlines(keepends=True)
            data = b"".join(lines[-tail:]) if tail > 0 else b""
        if limit is not None:
            data = data[:limit]
        if not _flag(q.get("follow")):
            return web.Response(body=data, content_type="text/plain")
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(data)
        offset = path.stat().st_size
        try:
            while not self._closing.is_set():
                current = self.registry.store.get(target.rt.storage, target.namespace or "", str(target.name))
                running = current is not None and self.logs.container_running(current, container)
                size = path.stat().st_size if path.exists() else offset
                if size > offset:
                    with path.open("rb") as handle:
                        handle.seek(offset)
                        chunk = handle.read(size - offset)
                    offset += len(chunk)
                    await response.write(chunk)
                    continue
                if not running:
                    break
                await asyncio.sleep(0.1)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        with contextlib.suppress(ConnectionResetError, RuntimeError):
            await response.write_eof()
        return response

    # access review -------------------------------------------------------------------------
    def _access_review(self, request: web.Request, body: Any) -> web.Response:
        identity: Identity = request.get(IDENTITY, ADMIN)
        attrs = ((body or {}).get("spec") or {}).get("resourceAttributes") or {}
        resource = str(attrs.get("resource", "")) + (f"/{attrs['subresource']}" if attrs.get("subresource") else "")
        allowed = identity.allows(str(attrs.get("verb", "")), str(attrs.get("group", "")), resource,
                                  attrs.get("name"), attrs.get("namespace"))
        result = dict(body or {})
        result.update({"kind": "SelfSubjectAccessReview", "apiVersion": "authorization.k8s.io/v1",
                       "status": {"allowed": allowed}})
        result.setdefault("metadata", {})
        return _response(result, 201)
