"""``edgemodel store``: run the default artifact store (HTTP over a folder, e.g. a PVC)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edgemodel.errors import UserError


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "store", help="run the HTTP artifact store, or publish files into it (store put)",
        description="Serve a folder as the artifact store the conversion Job uploads to and agents download from. "
        "Uploads to {namespace}/{name}/{revision}/ are staged and become readable in one step on commit. "
        "`edgemodel store put` publishes a model (and its calibration and validation data) into a running store "
        "so that a conversion Job can read it over HTTP.",
    )
    p.add_argument("--root", type=Path, help="folder holding the artifacts (created when missing); required to serve")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 in a pod)")
    p.add_argument("--port", type=int, default=8080, help="port to bind (0 picks a free one; default 8080)")
    p.add_argument("--token-file", type=Path,
                   help="file holding the bearer token that PUT, POST and DELETE must send (reads stay open)")
    p.add_argument("--max-upload-bytes", type=int, default=8 << 30, metavar="BYTES",
                   help="largest file a PUT may store; larger gets 413 (default 8 GiB)")
    p.add_argument("--staging-ttl", type=float, default=24 * 3600, metavar="SECONDS",
                   help="remove unfinished uploads older than this at start-up (default 86400)")
    actions = p.add_subparsers(dest="store_action", metavar="{put}")
    put = actions.add_parser(
        "put", help="publish files for conversion (prints the URIs to put in the EdgeModel)",
        description="Upload files (e.g. model.pt, calib.npz, val.npz) to <url>/<prefix>/<file name> and print the "
        "URI of each as a conversion Job sees it (--cluster-url). With the chart: kubectl port-forward the store "
        "Service and pass the token from its Secret (docs/install.md, \"Publish a model\").",
    )
    put.add_argument("files", nargs="+", type=Path, help="files to upload")
    put.add_argument("--url", required=True, help="where to reach the store from here, e.g. http://127.0.0.1:8081")
    put.add_argument("--prefix", required=True,
                     help="folder in the store, e.g. sources/default/digits (its third part must not be a number)")
    put.add_argument("--token-file", dest="put_token_file", type=Path, help="file holding the store's upload token")
    put.add_argument("--cluster-url",
                     help="the store's URL inside the cluster, used in the printed URIs, e.g. "
                     "http://edgemodel-store.edgemodel.svc:8081 (default: --url)")


def _put(args: argparse.Namespace) -> int:
    from edgemodel.store.client import HttpStore, StoreError
    from edgemodel.store.layout import InvalidKey, split_key

    token = ""
    if args.put_token_file:
        try:
            token = args.put_token_file.read_text().strip()
        except OSError as exc:
            raise UserError(f"--token-file {args.put_token_file}: cannot read it ({exc.strerror})") from exc
    try:
        prefix = "/".join(split_key(args.prefix))
    except InvalidKey as exc:
        raise UserError(f"--prefix: {exc}") from exc
    if len(prefix.split("/")) == 2 or (len(prefix.split("/")) >= 3 and prefix.split("/")[2].isdigit()):
        raise UserError(f"--prefix {args.prefix}: that is where converted revisions go; use e.g. "
                        "sources/<namespace>/<name>")
    missing = [str(f) for f in args.files if not f.is_file()]
    if missing:
        raise UserError(f"no such file: {', '.join(missing)}")
    store = HttpStore(args.url, token)
    base = (args.cluster_url or args.url).rstrip("/")
    for path in args.files:
        key = f"{prefix}/{path.name}"
        try:
            store.put_file(key, path)
        except StoreError as exc:
            hint = " (the store needs its upload token: --token-file)" if "401" in str(exc) else ""
            raise UserError(f"{path}: upload to {args.url} failed: {exc}{hint}", 1) from exc
        print(f"{base}/{key}", flush=True)
    return 0


def run(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    from edgemodel.store.server import serve

    if args.store_action == "put":
        return _put(args)
    if args.root is None:
        raise UserError("--root is required to serve the store, e.g. edgemodel store --root /data --port 8081")

    token = ""
    if args.token_file:
        try:
            token = args.token_file.read_text().strip()
        except OSError as exc:
            raise UserError(f"--token-file {args.token_file}: cannot read it ({exc.strerror})") from exc
        if not token:
            raise UserError(f"--token-file {args.token_file}: the file is empty; put the bearer token in it")
    if args.max_upload_bytes < 1:
        raise UserError(f"--max-upload-bytes {args.max_upload_bytes}: use a positive number of bytes")
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port {args.port}: use a port between 0 and 65535")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(args.root, args.host, args.port, token, args.staging_ttl,
                    on_ready=lambda url: print(f"edgemodel store listening on {url}", flush=True), stop=stop,
                    max_upload_bytes=args.max_upload_bytes)

    try:
        asyncio.run(main())
    except OSError as exc:
        raise UserError(f"--host/--port: cannot listen on {args.host}:{args.port} ({exc.strerror})", 1) from exc
    return 0
