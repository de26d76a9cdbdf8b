"""Command-line arguments of the server and the client (stdlib only, so `edgemodel --help` needs no torch)."""

from __future__ import annotations

import argparse
from pathlib import Path


def server_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--bind",
        default="0.0.0.0",
        help="address the aggregation (gRPC, or HTTPS with secureAggregation) and status servers listen on",
    )
    tls = p.add_mutually_exclusive_group(required=True)
    tls.add_argument("--tls-dir", type=Path, help="folder with ca.pem, tls.crt and tls.key of the server")
    tls.add_argument("--insecure", action="store_true", help="no TLS (local experiments only)")
    out = p.add_mutually_exclusive_group()
    out.add_argument(
        "--store-url", help="artifact store the trained model is uploaded to ($EDGEMODEL_STORE_TOKEN)"
    )
    out.add_argument("--output", type=Path, help="write the trained model to this file instead")
    p.add_argument("--status-file", type=Path, help="also write the progress JSON to this file")
    p.add_argument(
        "--linger-seconds",
        type=float,
        default=30.0,
        help="keep /status up after the end until it was read once, at most this long",
    )


def client_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--node", required=True, help="this node's name (spec.nodeName)")
    p.add_argument("--server", required=True, help="HOST:PORT of the aggregation server")
    tls = p.add_mutually_exclusive_group(required=True)
    tls.add_argument(
        "--ca", type=Path, help="CA certificate (PEM) the server's certificate is checked against"
    )
    tls.add_argument("--insecure", action="store_true", help="no TLS (local experiments only)")
    p.add_argument("--data", type=Path, help="the node's .npz (spec.data.path as mounted)")
    p.add_argument(
        "--connect-wait-seconds",
        type=float,
        default=300.0,
        help="give up when the server cannot be reached for this long",
    )
