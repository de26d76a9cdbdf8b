"""SecAgg+ on Flower 1.42's Deployment Engine: round time secure vs plain, and SuperNodes killed.

    flock /work/bench.lock .venv/bin/python bench/federated/secagg_probe/probe.py [--clients 3] [--rounds 4]
        [--tuned] [--torch] [--kill N [--threshold T] [--fix-dropout]] [--only plain|secure]

Starts ``flower-superlink`` (insecure, 127.0.0.1, no runtime dependency installation) and one
``flower-supernode`` per client (subprocess isolation: each message runs the ClientApp in a fresh
``flwr-clientapp`` process), then ``flwr run`` of ./app: SECURE=0 (DefaultWorkflow) and SECURE=1
(SecAggPlusWorkflow + secaggplus_mod). --tuned cuts every poll interval (the ServerApp's Grid, the SuperExec,
the SuperNode via fast_supernode.py); --torch makes the ClientApp import torch in fit, as the product's client;
--kill N SIGKILLs the last N SuperNodes' process groups once round 1 is aggregated; --fix-dropout runs
edgemodel.federated.survivors.SurvivorsOnly instead of SecAggPlusWorkflow. Prints each round's and each SecAgg+ stage's wall time
(from the ServerApp's own timestamps). Not a product path: evidence for docs/federated.md (why
secureAggregation is still refused).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from ps), deepest first."""
    rows = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True, check=True).stdout.split("\n")
    children: dict[int, list[int]] = {}
    for row in rows:
        if row.strip():
            child, parent = map(int, row.split())
            children.setdefault(parent, []).append(child)
    return descendants_of(pid, children)


def descendants_of(pid: int, children: dict[int, list[int]]) -> list[int]:
    out: list[int] = []
    for child in children.get(pid, []):
        out += [*descendants_of(child, children), child]
    return out


def run(secure: bool, args: argparse.Namespace, work: Path) -> list[str]:
    clients = args.clients
    port = free_port()
    home = work / f"home-{int(secure)}"
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "probe"\n\n[superlink.probe]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    out = work / f"rounds-{int(secure)}.txt"
    out.unlink(missing_ok=True)
    env = {**os.environ, "FLWR_HOME": str(home), "SECURE": str(int(secure)), "OUT": str(out),
           "PYTHONPATH": str(HERE / "app"), "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "FAST_GRID": str(int(args.tuned)), "FIX_DROPOUT": str(int(args.fix_dropout)),
           "THRESHOLD": str(args.threshold), "TORCH_IN_FIT": str(int(args.torch)),
           "MIN_AVAILABLE": str(clients - args.kill), "STAGE_TIMEOUT": str(args.stage_timeout)}
    if args.tuned:
        env["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = "0.1"
    supernode = [str(BIN / "python"), str(HERE / "fast_supernode.py")] if args.tuned else [str(BIN / "flower-supernode")]
    procs: list[subprocess.Popen[bytes]] = []

    def start(argv: list[str], log: str) -> subprocess.Popen[bytes]:
        with (work / log).open("wb") as f:
            proc = subprocess.Popen(argv, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(proc)
        return proc

    try:
        start([str(BIN / "flower-superlink"), "--insecure", "--disable-runtime-dependency-installation",
               "--host", "127.0.0.1", "--port", str(port)], f"superlink-{int(secure)}.log")
        time.sleep(3)
        nodes = [start([*supernode, "--insecure", "--superlink", f"127.0.0.1:{port}",
                        "--port", str(free_port())], f"supernode-{int(secure)}-{i}.log") for i in range(clients)]
        time.sleep(3)
        flwr = subprocess.Popen([str(BIN / "flwr"), "run", str(HERE / "app"), "probe", "--stream",
                                 "--run-config", f"clients={clients} rounds={args.rounds}"], env=env,
                                stdout=(work / f"run-{int(secure)}.log").open("wb"), stderr=subprocess.STDOUT)
        killed, deadline = False, time.time() + args.deadline
        while flwr.poll() is None and time.time() < deadline:
            text = out.read_text() if out.exists() else ""
            if args.kill and not killed and "ROUND 1 " in text:
                for node in nodes[-args.kill:]:
                    os.killpg(node.pid, signal.SIGKILL)
                killed = True
                print(f"  killed {args.kill} supernode(s) after round 1")
            if "DONE" in text:
                break
            time.sleep(0.2)
        if flwr.poll() is None:
            flwr.kill()
        flwr.wait(timeout=60)
        procs.append(flwr)
    finally:
        family = [p for proc in procs for p in descendants(proc.pid)]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        for pid in family:  # flower-superexec and the flwr-serverapp/-clientapp it started (own process groups)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return out.read_text().splitlines() if out.exists() else []


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=3)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--kill", type=int, default=0, help="SIGKILL this many SuperNodes once round 1 is aggregated")
    p.add_argument("--tuned", action="store_true",
                   help="poll every 0.05-0.1 s: ServerApp grid, SuperExec (env), SuperNode (fast_supernode.py)")
    p.add_argument("--fix-dropout", action="store_true", help="SecAgg+ unmasks only share-keys survivors")
    p.add_argument("--threshold", type=int, default=0, help="reconstruction threshold (default clients - 1)")
    p.add_argument("--torch", action="store_true", help="the ClientApp imports torch in fit (as the product's)")
    p.add_argument("--only", choices=["plain", "secure"], default=None)
    p.add_argument("--deadline", type=float, default=240.0)
    p.add_argument("--stage-timeout", type=float, default=20.0, help="round (plain) / stage (SecAgg+) timeout")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="secagg-probe-") as tmp:
        modes = [m == "secure" for m in ([args.only] if args.only else ["plain", "secure"])]
        for secure in modes:
            lines = run(secure, args, Path(tmp))
            stamp = {ln.split()[0]: float(ln.rsplit("t=", 1)[1]) for ln in lines if ln.startswith(("START", "DONE"))}
            rounds = [ln for ln in lines if ln.startswith("ROUND")]
            times = [float(r.rsplit("t=", 1)[1]) for r in rounds]
            per_round = [b - a for a, b in zip([stamp.get("START", 0.0), *times[:-1]], times, strict=False)]
            label = "SecAgg+" if secure else "plain"
            done = "finished" if "DONE" in stamp else "did not finish"
            print(f"{label}: {len(rounds)} round(s) aggregated, run {done}; round seconds "
                  f"{[round(x, 1) for x in per_round]}")
            for ln in lines:
                print("  " + ln)
    return 0


if __name__ == "__main__":
    sys.exit(main())
