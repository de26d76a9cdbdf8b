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
        self.flood_next = 0
        """Follow the next file response with this many extra bytes, without a Content-Length (a hostile store)."""
        self.flooded = 0
        """Extra bytes the last flood wrote before the client hung up."""
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
        if self.flood_next and path.suffix == ".onnx":
            flood, self.flood_next = self.flood_next, 0
            await response.prepare(request)  # chunked: the client cannot know the size in advance
            await response.write(body)
            sent = 0
            block = b"\0" * (1 << 20)
            try:
                while sent < flood:
                    await response.write(block)
                    sent += len(block)
                await response.write_eof()
            except (ConnectionError, RuntimeError):
                pass  # the agent hung up: what a bounded download does
            self.flooded = sent
            return response
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
        with_sizes: bool = True,
        **assignment: object,
    ) -> ModelAssignment:
        """Write a signed revision folder (like the converter) and return the operator's assignment for it."""
        folder = self.root / namespace / name / str(revision)
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / "model-cpu.onnx"
        target.write_bytes(model_file.read_bytes())
        sha = sha256_file(target)
        manifest = ArtifactManifest(
            model=name, namespace=namespace, revision=manifest_revision or revision, files={"model-cpu.onnx": sha},
            sizes={"model-cpu.onnx": target.stat().st_size} if with_sizes else {},
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


@dataclass
class SplitRevision:
    """A signed split revision in the store (head.onnx, tail.onnx, model-cpu.onnx) and its assignments."""

    name: str
    namespace: str
    revision: int
    cut: str
    base: str
    signature: str
    sha: dict[str, str]

    def _entry(self, file: str, role: str, split: dict[str, object], **extra: object) -> ModelAssignment:
        fields: dict[str, object] = {
            "name": self.name, "namespace": self.namespace, "revision": self.revision,
            "artifactUri": f"{self.base}/{file}", "sha256": self.sha[file], "manifestUri": f"{self.base}/manifest.json",
            "signature": self.signature, "role": role, "split": split,
        }  # fmt: skip
        fields.update(extra)
        return ModelAssignment.model_validate(fields)

    def head(self, cloud_url: str, wire: str = "int8", fallback: str = "local", with_full: bool = True) -> ModelAssignment:
        """The edge entry: head.onnx, the cloud URL, the policy and (with_full) the whole model for a local fallback."""
        split: dict[str, object] = {"cut": self.cut, "wire": wire, "cloudUrl": cloud_url, "fallback": fallback}
        if with_full:
            split.update(fullArtifactUri=f"{self.base}/model-cpu.onnx", fullSha256=self.sha["model-cpu.onnx"])
        return self._entry("head.onnx", "head", split)

    def tail(self, wire: str = "int8") -> ModelAssignment:
        """The cloud entry: tail.onnx for this revision."""
        return self._entry("tail.onnx", "tail", {"cut": self.cut, "wire": wire})


def publish_split(
    store: ArtifactStore,
    keys: Keys,
    name: str,
    revision: int,
    files: dict[str, Path],
    cut: str,
    inputs: list[dict[str, object]],
    outputs: list[dict[str, object]],
    namespace: str = "default",
) -> SplitRevision:
    """Write a signed split revision like the converter: ``files`` maps head.onnx, tail.onnx, model-cpu.onnx to sources."""
    folder = store.root / namespace / name / str(revision)
    folder.mkdir(parents=True, exist_ok=True)
    sha: dict[str, str] = {}
    for file, source in files.items():
        (folder / file).write_bytes(source.read_bytes())
        sha[file] = sha256_file(folder / file)
    manifest = ArtifactManifest.model_validate({
        "model": name, "namespace": namespace, "revision": revision, "files": sha, "inputs": inputs, "outputs": outputs,
        "split": {"cut": cut, "wire": "int8", "chosenBy": "manual", "files": ["head.onnx", "tail.onnx"]},
    })  # fmt: skip
    manifest_bytes = (json.dumps(manifest.to_k8s(), indent=2) + "\n").encode()
    signature = sign(manifest_bytes, load_private_key(keys.private))
    (folder / "manifest.json").write_bytes(manifest_bytes)
    (folder / "manifest.json.sig").write_text(signature + "\n")
    return SplitRevision(name, namespace, revision, cut, f"{store.url}/{namespace}/{name}/{revision}", signature, sha)
