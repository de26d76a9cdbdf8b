"""``edgemodel-dev up``: the local Kubernetes control plane (API emulator + kubelet) for the demo.

    edgemodel-dev up --nodes 3 --state-dir .demo/dev
    export KUBECONFIG=.demo/dev/kubeconfig
    kubectl get nodes
"""

from __future__ import annotations

import argparse
import logging
import shlex
import signal
import threading
from pathlib import Path
from typing import Any

from edgemodel.errors import UserError

log = logging.getLogger("edgemodel_dev")


def add_parser(sub: Any) -> None:
    up = sub.add_parser(
        "up",
        help="start the local Kubernetes API emulator + kubelet and run until Ctrl-C",
        description="A local Kubernetes control plane: API server (127.0.0.1), garbage collector, Job, "
                    "Deployment and DaemonSet controllers and a kubelet that runs pods as local processes. "
                    "See docs/testing.md.",
    )
    up.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default 0: a free port)")
    up.add_argument("--state-dir", type=Path, default=Path(".demo/dev"),
                    help="folder for the kubeconfig, pod logs and volumes (default .demo/dev)")
    up.add_argument("--kubeconfig", type=Path, help="where to write the admin kubeconfig "
                                                    "(default STATE_DIR/kubeconfig)")
    up.add_argument("--nodes", type=int, default=2, help="simulated edge nodes to create (default 2)")
    up.add_argument("--sites", default="site-a", help="comma-separated edgemodel.io/site labels, assigned "
                                                      "round-robin (default site-a)")
    up.add_argument("--arch", default="amd64", help="kubernetes.io/arch label of the edge nodes")
    up.add_argument("--crds", type=Path, action="append",
                    help="CRD file or folder to apply at start (repeatable; default: the edgemodel CRDs shipped in this package)")
    up.add_argument("--no-crds", action="store_true", help="apply no CRDs at start")
    up.add_argument("--auth", action="store_true",
                    help="require bearer tokens; agents get tokens that only reach their own EdgeAgent")
    up.add_argument("--agent-command", help="command to run once per edge node with NODE_NAME and KUBECONFIG "
                                            "set ({node} is replaced), e.g. 'edgemodel agent --node {node}'")
    up.add_argument("--container-runtime", choices=("process", "podman"), default="process",
                    help="how the kubelet runs Job pods: process (default: local processes, no images) or "
                         "podman (real containers from locally built images: user, fsGroup, file modes, "
                         "read-only root file system as on a real node; see docs/images.md)")
    up.add_argument("--persist", action="store_true",
                    help="save the objects to STATE_DIR/store.json on exit and load them at start")


def run(args: argparse.Namespace) -> int:
    from edgemodel_dev.cluster import DEFAULT_CRDS, LocalCluster

    if args.nodes < 0:
        raise UserError(f"--nodes: must be 0 or more, got {args.nodes}")
    if not 0 <= args.port < 65536:
        raise UserError(f"--port: must be between 0 and 65535, got {args.port}")
    crds = [] if args.no_crds else (args.crds or ([DEFAULT_CRDS] if DEFAULT_CRDS.is_dir() else []))
    for path in crds:
        if not path.exists():
            raise UserError(f"--crds: {path} does not exist; pass a CRD file or folder (e.g. crds/)")
    agent_argv = shlex.split(args.agent_command) if args.agent_command else None
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    state_dir = args.state_dir.resolve()
    cluster = LocalCluster(state_dir, port=args.port, auth=args.auth, persist=args.persist,
                           kubeconfig=args.kubeconfig, container_runtime=args.container_runtime)
    try:
        try:
            cluster.start()
        except OSError as exc:
            raise UserError(f"--port: cannot listen on 127.0.0.1:{args.port} ({exc.strerror}); choose another "
                            "port or 0 for a free one") from None
        for path in crds:
            names = cluster.apply_crds([path])
            log.info("Applied CRDs %s", ", ".join(names))
        existing = [n["metadata"]["name"] for n in cluster.list_objects("v1", "nodes")
                    if "node-role.kubernetes.io/edge" in (n["metadata"].get("labels") or {})]
        missing = max(args.nodes - len(existing), 0)
        if missing:
            sites = [s.strip() for s in args.sites.split(",") if s.strip()] or ["site-a"]
            names = cluster.add_nodes(missing, sites=sites, arch=args.arch)
            log.info("Created edge nodes %s", ", ".join(names))
        if agent_argv:
            processes = cluster.run_on_nodes(agent_argv)
            for node, process in processes.items():
                log.info("Started the agent of node %s (pid %s, log %s)", node, process.pid, process.log_path)
        print(f"edgemodel-dev up: Kubernetes API at {cluster.url}")
        print(f"edgemodel-dev up: kubeconfig {cluster.kubeconfig}")
        print(f"  export KUBECONFIG={cluster.kubeconfig}")
        print("edgemodel-dev up: running; press Ctrl-C to stop", flush=True)
        while not stop.wait(1.0):
            for node, process in cluster.node_processes.items():
                if not process.running and process.returncode is not None and process.starts == 1:
                    log.warning("The agent of node %s exited with %s; see %s", node, process.returncode,
                                process.log_path)
                    process.starts += 1  # warn once
    except KeyboardInterrupt:
        pass
    finally:
        print("edgemodel-dev up: stopping", flush=True)
        cluster.close()
    return 0
