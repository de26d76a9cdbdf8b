"""One continual-learning round: fine-tune with replay, then gate (runs in the converter image).

    python -m edgemodel.continual.train --source-uri file:///m.pt --captures-url http://store/captures/ns/digits/ \\
        --replay-uri file:///train.npz --validation-uri file:///val.npz --min-gain 0.05 --max-drop 0.01 \\
        --store-url http://store --out-prefix continual/ns/digits/round-1

The labelled captured samples (``captures/{namespace}/{name}/*.npz``, each with a ``.json`` manifest
giving its sha256 and size and a ``.json.sig`` signing it, verified before the download) are split into train and held-out parts. The model
(TorchScript) is fine-tuned on the train part mixed with ``replay_ratio`` times as many samples of the
original training data, so it learns the new data without forgetting the old. The gate
(``edgemodel.continual.gate``) compares the accuracies before and after on the held-out new samples
and on the original validation set. ``report.json`` (and, when the gate passed, ``model.pt``) go to the
store under ``--out-prefix``; the report is also the container's termination message.
Exit codes: 0 passed, 3 rejected by the gate, 2 bad input, 1 other failure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgemodel.continual.gate import GateResult, check

log = logging.getLogger(__name__)

EXIT_REJECTED = 3
EXIT_BAD_INPUT = 2
TERMINATION_LOG = Path("/dev/termination-log")


@dataclass(frozen=True)
class RoundSettings:
    epochs: int = 15
    learning_rate: float = 1e-3
    replay_ratio: float = 1.0
    holdout_fraction: float = 0.3
    batch_size: int = 64
    min_gain: float = 0.05
    max_drop: float = 0.01
    max_seconds: float = 600.0
    seed: int = 0


def accuracy(model: Any, x: np.ndarray, y: np.ndarray, batch: int = 512) -> float:
    """Top-1 accuracy of a classifier on numpy inputs and labels."""
    import torch

    if len(x) == 0:
        return 0.0
    model.eval()
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(x), batch):
            logits = model(torch.from_numpy(np.ascontiguousarray(x[start : start + batch])))
            correct += int((logits.argmax(dim=1).numpy() == y[start : start + batch]).sum())
    return correct / len(x)


def split_holdout(x: np.ndarray, y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """Random train / held-out split of the new samples (held-out at least one sample)."""
    order = np.random.default_rng(seed).permutation(len(x))
    n_hold = max(1, round(len(x) * fraction))
    hold, train = order[:n_hold], order[n_hold:]
    return x[train], y[train], x[hold], y[hold]


def fine_tune_with_replay(
    model: Any,
    x_new: np.ndarray,
    y_new: np.ndarray,
    x_replay: np.ndarray,
    y_replay: np.ndarray,
    s: RoundSettings,
) -> dict[str, Any]:
    """Fine-tune ``model`` in place on the new samples mixed with replayed original samples each epoch."""
    import torch

    torch.manual_seed(s.seed)
    rng = np.random.default_rng(s.seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=s.learning_rate)
    loss_fn = torch.nn.CrossEntropyLoss()
    n_replay = min(len(x_replay), round(len(x_new) * s.replay_ratio))
    started = time.monotonic()
    epochs = 0
    model.train()
    for epoch in range(s.epochs):
        pick = rng.choice(len(x_replay), n_replay, replace=False) if n_replay else np.empty(0, dtype=np.int64)
        x = np.concatenate([x_new, x_replay[pick]]) if n_replay else x_new
        y = np.concatenate([y_new, y_replay[pick]]) if n_replay else y_new
        order = rng.permutation(len(x))
        for start in range(0, len(x), s.batch_size):
            idx = order[start : start + s.batch_size]
            optimiser.zero_grad()
            loss = loss_fn(
                model(torch.from_numpy(np.ascontiguousarray(x[idx]))),
                torch.from_numpy(y[idx].astype(np.int64)),
            )
            loss.backward()
            optimiser.step()
        epochs = epoch + 1
        log.info(
            "Fine-tuning epoch %d/%d (%d new + %d replayed samples)", epochs, s.epochs, len(x_new), n_replay
        )
        if time.monotonic() - started > s.max_seconds:
            log.warning(
                "Stopping fine-tuning after epoch %d: the %.0f s bound is reached", epochs, s.max_seconds
            )
            break
    model.eval()
    return {"epochs": epochs, "seconds": round(time.monotonic() - started, 2), "replayed": n_replay}


def run_round(
    model: Any,
    x_new: np.ndarray,
    y_new: np.ndarray,
    x_replay: np.ndarray,
    y_replay: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    s: RoundSettings,
) -> tuple[GateResult, dict[str, Any]]:
    """Measure, fine-tune with replay, measure again and gate; the model is changed in place."""
    x_train, y_train, x_hold, y_hold = split_holdout(x_new, y_new, s.holdout_fraction, s.seed)
    new_before = accuracy(model, x_hold, y_hold)
    original_before = accuracy(model, x_val, y_val)
    log.info(
        "Before: %.3f on %d held-out new samples, %.3f on %d original validation samples",
        new_before,
        len(x_hold),
        original_before,
        len(x_val),
    )
    info = fine_tune_with_replay(model, x_train, y_train, x_replay, y_replay, s)
    gate = check(
        new_before,
        accuracy(model, x_hold, y_hold),
        original_before,
        accuracy(model, x_val, y_val),
        s.min_gain,
        s.max_drop,
    )
    info.update(
        {"trainSamples": len(x_train), "heldOutSamples": len(x_hold), "validationSamples": len(x_val)}
    )
    log.info("Gate %s: %s", "passed" if gate.passed else "rejected", gate.message)
    return gate, info


# -- the Job ----------------------------------------------------------------------------------------
def _get(url: str, token: str = "") -> bytes:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=60) as response:
        return bytes(response.read())


def _get_optional(url: str, token: str) -> bytes | None:
    """The bytes at ``url``, or None when it does not exist (404)."""
    try:
        return _get(url, token)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def load_captures(
    captures_url: str, input_name: str, work: Path, token: str = "", max_bytes: int = 1 << 30
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Every capture bundle under ``captures_url`` (a store folder), each verified before it is read: its
    ``.json`` manifest's signature (HMAC under the store token, ``edgemodel.signing.verify_bundle``; required
    whenever the Job has a token), then the bundle's size (the download stops there) and sha256. A bundle
    whose manifest is not there yet is still being uploaded and is left for the next round."""
    from edgemodel.signing import SignatureError, verify_bundle
    from edgemodel.store.client import download

    base = captures_url.rstrip("/") + "/"
    listing = json.loads(_get(base, token))
    xs, ys, used = [], [], []
    total = 0
    for entry in listing.get("entries", []):
        name = str(entry.get("name", ""))
        if not name.endswith(".npz"):
            continue
        stem = base + name[:-4]
        raw = _get_optional(stem + ".json", token)
        if raw is None:
            log.info("Capture bundle %s has no manifest yet (upload in progress); left for the next round", name)
            continue
        if token:
            sig = _get_optional(stem + ".json.sig", token)
            if sig is None:
                raise SignatureError(f"{stem}.json is not signed (no .json.sig): refused")
            try:
                verify_bundle(raw, sig.decode("ascii", "replace"), token)
            except SignatureError as exc:
                raise SignatureError(f"{stem}.json: {exc}: refused") from exc
        manifest = json.loads(raw)
        size = int(manifest["bytes"])
        total += size
        if total > max_bytes:
            raise ValueError(
                f"captured samples exceed {max_bytes} bytes; raise the bound or prune old captures"
            )

        def bounded(done: int, _total: int | None, size: int = size, url: str = base + name) -> None:
            if done > size:
                raise ValueError(f"{url}: more than the {size} bytes its manifest says; download stopped")

        path = work / name
        download(base + name, path, sha256=str(manifest["sha256"]), on_bytes=bounded,
                 headers={"Authorization": f"Bearer {token}"} if token else None)  # fmt: skip
        if path.stat().st_size != size:
            raise ValueError(f"{base + name}: {path.stat().st_size} bytes, its manifest says {size}")
        with np.load(path, allow_pickle=False) as z:
            if input_name not in z.files:
                raise ValueError(f"{base + name}: no input {input_name!r} (has {', '.join(z.files)})")
            xs.append(z[input_name])
            ys.append(z["labels"])
        used.append(base + name)
    if not xs:
        raise ValueError(f"no captured samples under {base}: agents upload labelled samples there")
    return np.concatenate(xs), np.concatenate(ys).astype(np.int64), used


def _load_npz(uri: str, input_name: str, labels: str, work: Path, what: str) -> tuple[np.ndarray, np.ndarray]:
    from edgemodel.convert.errors import Reason
    from edgemodel.convert.fetch import fetch

    path, _ = fetch(uri, work / f"{what}.npz", what, Reason.INVALID_SPEC)
    with np.load(path, allow_pickle=False) as z:
        if input_name not in z.files or labels not in z.files:
            raise ValueError(
                f"{what} {uri}: needs arrays {input_name!r} and {labels!r} (has {', '.join(z.files)})"
            )
        return z[input_name], z[labels].astype(np.int64)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m edgemodel.continual.train", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--source-uri", required=True, help="the current model (TorchScript)")
    parser.add_argument("--captures-url", required=True, help="store folder of the labelled captured samples")
    parser.add_argument("--replay-uri", required=True, help=".npz of original training data")
    parser.add_argument("--validation-uri", required=True, help=".npz of the original validation data")
    parser.add_argument("--input-name", default="input")
    parser.add_argument("--labels-array", default="labels")
    parser.add_argument("--store-url", default="")
    parser.add_argument("--out-prefix", default="", help="store key prefix for model.pt and report.json")
    parser.add_argument(
        "--out-dir", type=Path, default=None, help="write model.pt and report.json here instead"
    )
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--replay-ratio", type=float, default=1.0)
    parser.add_argument("--holdout-fraction", type=float, default=0.3)
    parser.add_argument("--min-gain", type=float, default=0.05)
    parser.add_argument("--max-drop", type=float, default=0.01)
    parser.add_argument("--max-seconds", type=float, default=600)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    import os

    import torch

    token = os.environ.get("EDGEMODEL_STORE_TOKEN", "")
    settings = RoundSettings(
        args.epochs,
        args.learning_rate,
        args.replay_ratio,
        args.holdout_fraction,
        min_gain=args.min_gain,
        max_drop=args.max_drop,
        max_seconds=args.max_seconds,
    )
    report: dict[str, Any] = {"passed": False}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        try:
            from edgemodel.convert.errors import Reason
            from edgemodel.convert.fetch import fetch

            source, _ = fetch(args.source_uri, work / "source.pt", "spec.source.uri", Reason.INVALID_SPEC)
            model = torch.jit.load(str(source))
            x_new, y_new, used = load_captures(args.captures_url, args.input_name, work, token)
            x_rep, y_rep = _load_npz(args.replay_uri, args.input_name, args.labels_array, work, "replay")
            x_val, y_val = _load_npz(
                args.validation_uri, args.input_name, args.labels_array, work, "validation"
            )
        except Exception as exc:
            report["message"] = f"bad input: {exc}"[:1000]
            _finish(report, args, work, None)
            return EXIT_BAD_INPUT
        gate, info = run_round(model, x_new, y_new, x_rep, y_rep, x_val, y_val, settings)
        report.update(
            {
                "passed": gate.passed,
                "gate": gate.to_json(),
                "message": gate.message,
                "captures": used,
                "samples": len(x_new),
                **info,
            }
        )
        _finish(report, args, work, model if gate.passed else None)
    return 0 if gate.passed else EXIT_REJECTED


def _finish(report: dict[str, Any], args: argparse.Namespace, work: Path, model: Any) -> None:
    """Save model.pt (when passed) and report.json to --out-dir or the store; the report as termination message."""
    import hashlib
    import os

    import torch

    files: dict[str, Path] = {}
    if model is not None:
        path = work / "model.pt"
        torch.jit.save(model, str(path))
        report["modelSha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        files["model.pt"] = path
    if args.out_dir is not None:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        for name, path in files.items():
            (args.out_dir / name).write_bytes(path.read_bytes())
            report["modelUri"] = (args.out_dir / name).resolve().as_uri()
    elif args.store_url and args.out_prefix:
        from edgemodel.store.client import HttpStore

        store = HttpStore(args.store_url, token=os.environ.get("EDGEMODEL_STORE_TOKEN", ""))
        for name, path in files.items():
            report["modelUri"] = store.put_file(f"{args.out_prefix}/{name}", path)
    text = json.dumps(report, indent=1)
    (work / "report.json").write_text(text)
    if args.out_dir is not None:
        (args.out_dir / "report.json").write_text(text)
    elif args.store_url and args.out_prefix:
        store.put_file(f"{args.out_prefix}/report.json", work / "report.json")
    if TERMINATION_LOG.parent.exists() and os.access(TERMINATION_LOG.parent, os.W_OK):
        with contextlib.suppress(OSError):
            TERMINATION_LOG.write_text(
                json.dumps({k: report.get(k) for k in ("passed", "message", "modelUri", "gate")})[:4000]
            )
    print(text)


if __name__ == "__main__":
    sys.exit(main())
