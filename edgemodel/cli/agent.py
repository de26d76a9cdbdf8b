"""``edgemodel agent``: the edge agent (ONNX Runtime on the Open Inference Protocol v2).

Standalone: ``edgemodel agent --model digits=./digits.onnx --port 8080`` serves local files.
In a cluster (DaemonSet): ``--in-cluster`` (or ``--kubeconfig``), ``--node-name`` (or NODE_NAME),
``--public-key`` and ``--cache-dir``; the agent registers its EdgeAgent and serves what the
operator assigns. Split inference: a cloud agent serves tails with ``--split-port``; with
``--split-tls-ca/--split-tls-cert/--split-tls-key`` the split link is mTLS (the same flags give an
edge agent its client identity towards the cloud). Every flag also reads from
``EDGEMODEL_AGENT_<FLAG>`` (flags win).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "agent",
        help="run the edge agent (Open Inference Protocol v2 over ONNX Runtime, /metrics)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serving = p.add_argument_group("serving")
    serving.add_argument("--model", action="append", metavar="NAME[:VERSION]=PATH", dest="models",
                         help="serve a local .onnx file (repeatable); version defaults to 1")
    serving.add_argument("--host", help="address to bind (default 127.0.0.1; 0.0.0.0 in a DaemonSet)")
    serving.add_argument("--port", type=int, help="HTTP port for v2 and /metrics (default 8080; 0 = any free port)")
    serving.add_argument("--grpc-port", type=int, metavar="PORT",
                         help="also serve the Open Inference Protocol over gRPC on this port, with the same token, TLS "
                         "and limits (0 = any free port; default: no gRPC server; 8081 in the Helm chart)")
    serving.add_argument("--token-file", type=Path, help="require 'Authorization: Bearer <token from this file>'")
    serving.add_argument("--metrics-require-token", action="store_true", default=None, help="also protect /metrics")
    serving.add_argument("--tls-cert", type=Path, help="PEM certificate chain: serve HTTPS (with --tls-key)")
    serving.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    limits = p.add_argument_group("request limits (docs/architecture.md#request-limits)")
    limits.add_argument("--max-body-bytes", type=int, metavar="BYTES",
                        help="largest request body as sent, compressed or not; larger gets 413 (default 8 MiB)")
    limits.add_argument("--max-decompressed-bytes", type=int, metavar="BYTES",
                        help="largest body after undoing gzip/deflate; larger gets 413 (default 8 MiB)")
    limits.add_argument("--max-json-bytes", type=int, metavar="BYTES",
                        help="largest JSON part of an inference request; larger gets 413 (default 3 MiB)")
    limits.add_argument("--max-elements", type=int, metavar="N",
                        help="tensor elements per request, all inputs (a BYTES element counts 64); more gets 413 "
                        "(default 4194304)")
    limits.add_argument("--body-read-timeout", type=float, dest="body_read_timeout_s", metavar="SECONDS",
                        help="longest wait for the next bytes of a request body; a stall gets 408 (default 10)")
    serving.add_argument("--accelerator", choices=["auto", "gpu", "cpu"],
                         help="execution provider for --model files: auto (TensorRT > CUDA > OpenVINO > CPU), gpu, cpu")
    serving.add_argument("--no-gpu-fallback", dest="gpu_fallback_to_cpu", action="store_false", default=None,
                         help="with --accelerator gpu: fail instead of serving on CPU when no GPU provider loads")
    serving.add_argument("--threads", type=int, dest="intra_op_threads", metavar="N",
                         help="ONNX Runtime intra-op threads (default: the container's CPU limit, plus a one-thread "
                         "session for overlapping runs of heavy models when measured faster)")
    serving.add_argument("--workers", type=int, dest="inference_workers", metavar="N",
                         help="inferences running at once (default: the container's CPU limit)")
    serving.add_argument("--batching", action="store_true", default=None,
                         help="dynamic batching for --model files (default: on without queue delay for models whose "
                         "load-time measurement shows batched runs clearly cheaper per row)")
    serving.add_argument("--no-batching", dest="batching", action="store_false", default=None, help="no dynamic batching")
    serving.add_argument("--max-batch-size", type=int, help="rows per batched run (default 8)")
    serving.add_argument("--max-queue-delay-ms", type=float, help="longest wait for a batch to fill (default 2)")
    serving.add_argument("--allow-non-finite", action="store_true", default=None, help="accept NaN/Inf inputs")
    cluster = p.add_argument_group("cluster (EdgeAgent)")
    cluster.add_argument("--in-cluster", action="store_true", default=None, help="use the pod's service account")
    cluster.add_argument("--kubeconfig", type=Path,
                         help="kubeconfig file (token or client certificate); without --model, $KUBECONFIG is used when $NODE_NAME is set")
    cluster.add_argument("--node-name", help="EdgeAgent name (default: $NODE_NAME from the downward API)")
    cluster.add_argument("--public-key", type=Path, help="fleet ed25519 public key (PEM) that signs artifacts")
    cluster.add_argument("--cache-dir", type=Path, help="artifact cache + saved assignment (default /var/lib/edgemodel-agent)")
    cluster.add_argument("--cache-max-bytes", type=int, help="artifact cache bound (default 2 GiB)")
    cluster.add_argument("--store-token-file", type=Path, help="bearer token for artifact store downloads")
    cluster.add_argument("--label", action="append", metavar="KEY=VALUE", dest="label_flags",
                         help="EdgeAgent label (repeatable), for people; EdgeModels select on the Node's labels")
    cluster.add_argument("--endpoint", help="URL clients reach this agent at (default http(s)://$POD_IP:PORT)")
    cluster.add_argument("--heartbeat-interval", type=float, dest="heartbeat_interval_s", metavar="SECONDS",
                         help="seconds between two renewals of the node's Lease, the heartbeat (default 10, at least 1)")
    cluster.add_argument("--lease-namespace", metavar="NAMESPACE",
                         help="namespace of the heartbeat Lease named after the node (default $POD_NAMESPACE, else default)")
    cluster.add_argument("--lease-duration", type=int, dest="lease_duration_s", metavar="SECONDS",
                         help="leaseDurationSeconds written into the Lease (default 40)")
    cluster.add_argument("--stats-interval", type=float, dest="stats_interval_s", metavar="SECONDS",
                         help="how often request counts and p50/p95 in status are refreshed when they changed (default 10)")
    split = p.add_argument_group("split inference (docs/split-inference.md)")
    split.add_argument("--split-port", type=int, metavar="PORT",
                       help="serve split tails (cloud agent) on this port; 0 = any free port (default: no tail server)")
    split.add_argument("--split-tls-ca", type=Path, metavar="PEM",
                       help="CA that verifies the peer on the split link (client certs here, the cloud's cert on a head)")
    split.add_argument("--split-tls-cert", type=Path, metavar="PEM",
                       help="this agent's certificate on the split link (tail server identity / head client identity)")
    split.add_argument("--split-tls-key", type=Path, metavar="PEM", help="private key of --split-tls-cert")


def run(args: argparse.Namespace) -> int:
    from edge_agent.app import run as run_agent
    from edge_agent.settings import load_settings, parse_label, parse_model_spec

    labels = dict(parse_label(spec) for spec in args.label_flags or []) or None
    keys = ("host", "port", "grpc_port", "models", "token_file", "metrics_require_token", "tls_cert", "tls_key", "max_body_bytes",
            "max_decompressed_bytes", "max_json_bytes", "max_elements", "body_read_timeout_s",
            "accelerator", "gpu_fallback_to_cpu", "intra_op_threads", "inference_workers", "batching", "max_batch_size",
            "max_queue_delay_ms", "allow_non_finite", "in_cluster", "kubeconfig", "node_name", "public_key",
            "cache_dir", "cache_max_bytes", "store_token_file", "endpoint", "heartbeat_interval_s",
            "lease_namespace", "lease_duration_s", "stats_interval_s",
            "split_port", "split_tls_ca", "split_tls_cert", "split_tls_key")  # fmt: skip
    settings = load_settings(labels=labels, **{k: getattr(args, k) for k in keys})
    if not settings.cluster_mode and not settings.models and settings.node_name and os.environ.get("KUBECONFIG"):
        # A node process started with NODE_NAME and KUBECONFIG (e.g. the local cluster's run_on_nodes).
        first = os.environ["KUBECONFIG"].split(os.pathsep)[0]
        settings = settings.model_copy(update={"kubeconfig": Path(first)})
    local = [parse_model_spec(spec) for spec in settings.models]
    if not local and not settings.cluster_mode:
        from edgemodel.errors import UserError

        raise UserError("nothing to serve: pass --model NAME=PATH.onnx, or --in-cluster / --kubeconfig to take assignments")
    run_agent(settings, local)
    return 0
