"""``edgemodel store``: run the default artifact store (HTTP over a folder, e.g. a PVC)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edgemodel.errors import UserError


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "store", help="run the HTTP artifact store (GET with Range, HEAD, PUT, atomic revision commits)",
        description="Serve a folder as the artifact store the conversion Job uploads to and agents download from. "
        "Uploads to {namespace}/{name}/{revision}/ are staged and become readable in one step on commit.",
    )
    p.add_argument("--root", type=Path, required=True, help="folder holding the artifacts (created when missing)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 in a pod)")
    p.add_argument("--port", type=int, default=8080, help="port to bind (0 picks a free one; default 8080)")
    p.add_argument("--token-file", type=Path,
                   help="file holding the bearer token that PUT, POST and DELETE must send (reads stay open)")
    p.add_argument("--max-upload-bytes", type=int, default=8 << 30, metavar="BYTES",
                   help="largest file a PUT may store; larger gets 413 (default 8 GiB)")
    p.add_argument("--staging-ttl", type=float, default=24 * 3600, metavar="SECONDS",
                   help="remove unfinished uploads older than this at start-up (default 86400)")


def run(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    from edgemodel.store.server import serve

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
