"""The cloud side of the split benchmark: profile every cut's tail here, then serve every tail over HTTP.

Started by run.py as its own process. Serves, for model NAME version 1, the tail of every
candidate cut (selected by the ``X-Edgemodel-Cut`` header) and the whole model under the input's
name (cloud-only: the raw input is the "feature"). Prints ``READY <port>`` when serving; stops on
SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from edgemodel.split.devpki import make_pki
from edgemodel.split.graph import find_cut_candidates, load_model, split_model
from edgemodel.split.profile import profile_split
from edgemodel.split.remote import TailRegistry, TlsFiles, make_tail_app, start_tail_server
from edgemodel.split.runtime import OrtPart

log = logging.getLogger("bench.split.cloud")


async def serve(args: argparse.Namespace) -> None:
    import numpy as np

    model = load_model(args.model)
    inputs = {args.input_name: np.load(args.input)}
    profile = profile_split(model, inputs, threads=args.threads, runs=args.runs, warmup=3)
    profile.save(args.profile_out)
    registry = TailRegistry()
    full = OrtPart(model.SerializeToString(), threads=args.threads)
    registry.add(args.name, "1", full.run, args.input_name)
    for cut in find_cut_candidates(model):
        tail = OrtPart(split_model(model, cut).tail.SerializeToString(), threads=args.threads)
        registry.add(args.name, "1", tail.run, cut.tensor)
    ssl_context = None
    if args.tls_dir:
        pki = make_pki(args.tls_dir)
        ssl_context = TlsFiles(pki.ca, pki.server_cert, pki.server_key).server_context(require_client_cert=True)
    server = await start_tail_server(make_tail_app(registry, max_inflight=8), ssl_context=ssl_context)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"READY {server.port}", flush=True)
    try:
        await stop.wait()
    finally:
        await server.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--input", type=Path, required=True, help=".npy timing input")
    parser.add_argument("--input-name", default="input")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--profile-out", type=Path, required=True)
    parser.add_argument("--tls-dir", type=Path, help="write a throwaway PKI here and serve with mTLS")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s cloud %(levelname)s %(message)s")
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
