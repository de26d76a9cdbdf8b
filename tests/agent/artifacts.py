"""Test helpers: signed artifact revisions and a small artifact store with Range and fault injection."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from edgemodel.api import ArtifactManifest, ModelAssignment
from edgemodel.signing import generate_keypair, load_private_key, sha256_file, sign


@dataclass
class Keys:
    private: Path
    public: Path


def make_keys(directory: Path, name: str = "fleet") -> Keys:
    keys = Keys(directory / f"{name}.pem", directory / f"{name}.pub.pem")
    generate_keypair(keys.private, keys.public)
    return keys


@dataclass
class StoreStats:
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    """(method, path, Range header) of every request."""


class ArtifactStore:
    """Serves files from a folder on 127.0.0.1 with Range (206); can fail or cut responses on purpose."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.stats = StoreStats()
        self.fail_next = 0
        """Answer the next N requests with 503."""
        self.cut_next_after: int | None = None
        """Close the connection of the next file response after this many bytes."""
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _get(self, request: web.Request) -> web.StreamResponse:
        rng = request.headers.get("Range")
        self.stats.requests.append((request.method, request.path, rng))
        if self.fail_next > 0:
            self.fail_next -= 1
            return web.Response(status=503, text="store warming up")
        path = self.root / request.match_info["key"]
        if not path.is_file():
            return web.Response(status=404, text="no such key")
        data = path.read_bytes()
        status, start = 200, 0
        headers = {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        if rng and rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0])
            if start >= len(data):
                return web.Response(status=416, headers={"Content-Range": f"bytes */{len(data)}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        body = data[start:]
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = len(body)
        await response.prepare(request)
        if self.cut_next_after is not None and len(body) > self.cut_next_after:
            cut, self.cut_next_after = self.cut_next_after, None
            await response.write(body[:cut])
            await asyncio.sleep(0.05)
            assert request.transport is not None
            request.transport.close()  # the connection breaks mid-body
            return response
        await response.write(body)
        await response.write_eof()
        return response

    async def start(self) -> ArtifactStore:
        app = web.Application()
        app.router.add_get("/{key:.+}", self._get)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def publish(
        self,
        keys: Keys,
        model_file: Path,
        name: str,
        revision: int,
        namespace: str = "default",
        manifest_revision: int | None = None,
        **assignment: object,
    ) -> ModelAssignment:
        """Write a signed revision folder (like the converter) and return the operator's assignment for it."""
        folder = self.root / namespace / name / str(revision)
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / "model-cpu.onnx"
        target.write_bytes(model_file.read_bytes())
        sha = sha256_file(target)
        manifest = ArtifactManifest(
            model=name, namespace=namespace, revision=manifest_revision or revision, files={"model-cpu.onnx": sha}
        )
        manifest_bytes = (json.dumps(manifest.to_k8s(), indent=2) + "\n").encode()
        signature = sign(manifest_bytes, load_private_key(keys.private))
        (folder / "manifest.json").write_bytes(manifest_bytes)
        (folder / "manifest.json.sig").write_text(signature + "\n")
        base = f"{self.url}/{namespace}/{name}/{revision}"
        fields: dict[str, object] = {
            "name": name, "namespace": namespace, "revision": revision, "artifactUri": f"{base}/model-cpu.onnx",
            "sha256": sha, "manifestUri": f"{base}/manifest.json", "signature": signature,
        }  # fmt: skip
        fields.update(assignment)
        return ModelAssignment.model_validate(fields)
