"""The aggregation server of a FederatedTraining (cloud side, one process): Flower's gRPC server with TLS (with
``spec.secureAggregation``: Flower's SecAgg+ workflow over the HTTPS grid of ``secure``), the strategy from the spec, validation on the cloud's held-out set after each round, progress on ``/status``, and
the trained model uploaded to the artifact store.

``python -m edgemodel.federated.server --tls-dir DIR [--store-url URL]`` with the object in
``EDGEMODEL_FEDERATED_OBJECT``; exit 0 ok, 2 bad input, 1 retryable; the termination message is a JSON result.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgemodel.api.federated import FederatedTraining
from edgemodel.federated import data as datasets
from edgemodel.federated import model as models
from edgemodel.federated.arguments import server_arguments
from edgemodel.federated.errors import EXIT_OK, FederatedError, Reason
from edgemodel.federated.progress import Progress, serve_status
from edgemodel.federated.runspec import load_object, write_termination
from edgemodel.signing import sha256_file

log = logging.getLogger(__name__)

STORE_TOKEN_ENV = "EDGEMODEL_STORE_TOKEN"
FINAL_POLL_GRACE = 0.5


def model_key(obj: FederatedTraining) -> str:
    """Store key of the trained model: ``federated/<namespace>/<name>/<uid8>/model.pt``."""
    meta = obj.metadata
    uid = (meta.uid or "local").replace("-", "")[:8] or "local"
    return f"federated/{meta.namespace or 'default'}/{meta.name or 'training'}/{uid}/model.pt"


def read_tls(directory: Path) -> tuple[bytes, bytes, bytes]:
    """(CA, server certificate, server key) PEM bytes from ``directory`` (ca.pem, tls.crt, tls.key)."""
    files = [directory / "ca.pem", directory / "tls.crt", directory / "tls.key"]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FederatedError(
            Reason.INVALID_SPEC, f"--tls-dir: missing {', '.join(missing)}; mount the server's TLS Secret"
        )
    return files[0].read_bytes(), files[1].read_bytes(), files[2].read_bytes()


def train(obj: FederatedTraining, args: argparse.Namespace, progress: Progress, work: Path) -> dict[str, Any]:
    """Run every round; return the result (the model's location, round and accuracy)."""
    from flwr.compat.server.app import start_server
    from flwr.server import ServerConfig
    from flwr.server.client_manager import SimpleClientManager
    from flwr.server.server import Server

    from edgemodel.federated.strategy import TrackedStrategy, build_strategy

    spec = obj.spec
    module = models.load_module(
        datasets.fetch_file(spec.model.uri, work / "model.pt", "spec.model.uri", Reason.MODEL_UNREADABLE),
        "spec.model.uri",
    )
    val_path = datasets.fetch_file(
        spec.validation.data_uri, work / "validation.npz", "spec.validation.dataUri", Reason.DATA_MISSING
    )
    validation = datasets.load_npz(
        val_path, "spec.validation.dataUri", spec.data.input_array, spec.data.labels_array
    )
    try:
        initial_loss, initial_acc = models.evaluate(module, validation)
    except Exception as exc:
        raise FederatedError(
            Reason.DATA_INVALID,
            f"spec.validation.dataUri: the model cannot run on its inputs "
            f"{validation.inputs.shape} ({exc}); check the array and the model",
        ) from exc
    log.info(
        "Loaded the initial model (accuracy %.4f on %d validation samples)", initial_acc, len(validation)
    )

    def evaluate(server_round: int, weights: Any, config: Any) -> tuple[float, dict[str, Any]]:
        models.set_weights(module, weights)
        loss, accuracy = models.evaluate(module, validation)
        return loss, {"accuracy": accuracy}

    inner = build_strategy(spec, models.get_weights(module), evaluate)
    tracked = TrackedStrategy(inner, progress, spec.max_drop_fraction, spec.validation.target_accuracy)
    certificates = read_tls(args.tls_dir) if args.tls_dir else None
    if certificates is None:
        log.warning("Running WITHOUT TLS (--insecure): model updates travel in clear text")
    progress.set_state("WaitingForClients")
    if spec.secure_aggregation:
        from edgemodel.federated.grid_http import server_tls
        from edgemodel.federated.secure import train_securely

        tls = server_tls(args.tls_dir / "tls.crt", args.tls_dir / "tls.key") if certificates else None
        train_securely(spec, tracked, args.bind, tls)
    else:
        start_server(
            server_address=f"{args.bind}:{spec.port}",
            server=Server(client_manager=SimpleClientManager(), strategy=tracked),
            config=ServerConfig(num_rounds=spec.rounds, round_timeout=float(spec.round_timeout_seconds)),
            certificates=certificates,
        )
    if tracked.last_round == 0 or tracked.last_parameters is None:
        raise FederatedError(Reason.TRAINING_FAILED, "no round finished; see the server log")
    from flwr.common import parameters_to_ndarrays

    models.set_weights(module, parameters_to_ndarrays(tracked.last_parameters))
    out = models.save(module, work / "trained.pt")
    digest = sha256_file(out)
    uri = _publish(obj, out, args)
    return {
        "uri": uri,
        "sha256": digest,
        "round": tracked.last_round,
        "accuracy": tracked.last_accuracy,
        "stoppedAtTarget": tracked.stopped_at is not None,
    }


def _publish(obj: FederatedTraining, path: Path, args: argparse.Namespace) -> str:
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_bytes(path.read_bytes())
        return args.output.resolve().as_uri()
    if not args.store_url:
        raise FederatedError(Reason.INVALID_SPEC, "--store-url or --output: say where the trained model goes")
    from edgemodel.store.client import HttpStore, StoreError

    store = HttpStore(args.store_url, token=os.environ.get(STORE_TOKEN_ENV, ""))
    try:
        url = store.put_file(model_key(obj), path)
    except StoreError as exc:
        raise FederatedError(
            Reason.UPLOAD_FAILED, f"uploading the trained model to {args.store_url} failed ({exc})"
        ) from exc
    log.info("Uploaded the trained model to %s", url)
    return url


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="edgemodel federated server", description=__doc__.split("\n\n")[0])
    server_arguments(p)
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    try:
        obj = load_object()
    except FederatedError as exc:
        log.error("Refused the FederatedTraining: %s", exc.message)
        write_termination({"ok": False, "reason": exc.reason.value, "message": exc.message})
        return exc.exit_code
    progress = Progress(0, obj.spec.rounds, args.status_file)
    code = EXIT_OK
    with serve_status(progress, args.bind, obj.spec.port + 1):
        with tempfile.TemporaryDirectory(prefix="federated-") as tmp:
            try:
                result = train(obj, args, progress, Path(tmp))
            except FederatedError as exc:
                log.error("Federated training failed (%s): %s", exc.reason.value, exc.message)
                progress.finish(error={"reason": exc.reason.value, "message": exc.message})
                write_termination({"ok": False, "reason": exc.reason.value, "message": exc.message})
                code = exc.exit_code
            else:
                log.info(
                    "Finished federated training after round %d (accuracy %s): %s",
                    result["round"],
                    result["accuracy"],
                    result["uri"],
                )
                progress.finish(result=result)
                write_termination({"ok": True, **result})
        _linger(progress, args.linger_seconds)
    return code


def _linger(progress: Progress, seconds: float) -> None:
    """Keep serving the final /status until someone read it (the operator) or ``seconds`` passed."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and progress.final_reads == 0:
        time.sleep(0.2)
    time.sleep(FINAL_POLL_GRACE if seconds > 0 else 0)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
