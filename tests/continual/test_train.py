"""The round: fine-tune with replay learns the new data without forgetting; the gate checks both."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgemodel.continual.gate import check
from edgemodel.continual.train import RoundSettings, accuracy, main, run_round
from edgemodel.signing import sign_bundle


def test_gate_needs_the_gain_and_no_forgetting() -> None:
    assert check(0.60, 0.96, 0.98, 0.975, min_gain=0.05, max_drop=0.01).passed
    small = check(0.60, 0.62, 0.98, 0.98, min_gain=0.05, max_drop=0.01)
    assert not small.passed
    assert "less than minAccuracyGain 5.0 pp" in small.message
    forgot = check(0.60, 0.99, 0.98, 0.90, min_gain=0.05, max_drop=0.01)
    assert not forgot.passed
    assert "more than maxAccuracyDrop 1.0 pp" in forgot.message


def blobs(rng: np.random.Generator, n: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
    """Three Gaussian classes in 2-D; ``shift`` moves class centres (the drifted world)."""
    centres = np.array([[0.0, 3.0], [3.0, -1.0], [-3.0, -1.0]]) + np.array(
        [[shift, 0.0], [0.0, shift], [-shift, shift]]
    )
    y = rng.integers(0, 3, n)
    return (centres[y] + rng.normal(0, 0.7, (n, 2))).astype(np.float32), y.astype(np.int64)


def trained(x: np.ndarray, y: np.ndarray):  # type: ignore[no-untyped-def]
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        opt.step()
    return torch.jit.script(model.eval())


def test_fine_tune_with_replay_passes_the_gate_on_drifted_data() -> None:
    rng = np.random.default_rng(0)
    x_train, y_train = blobs(rng, 600, 0.0)
    x_val, y_val = blobs(rng, 300, 0.0)
    x_new, y_new = blobs(rng, 300, 2.5)
    model = trained(x_train, y_train)
    assert accuracy(model, x_val, y_val) > 0.95
    gate, info = run_round(
        model,
        x_new,
        y_new,
        x_train,
        y_train,
        x_val,
        y_val,
        RoundSettings(epochs=30, learning_rate=1e-2, replay_ratio=1.0, min_gain=0.05, max_drop=0.02),
    )
    assert gate.passed, gate.message
    assert gate.new_after >= gate.new_before + 0.05
    assert gate.original_before - gate.original_after <= 0.02
    assert info["replayed"] == info["trainSamples"]


def test_an_unreachable_gain_is_rejected() -> None:
    rng = np.random.default_rng(1)
    x_train, y_train = blobs(rng, 600, 0.0)
    model = trained(x_train, y_train)
    x_same, y_same = blobs(rng, 200, 0.0)  # no drift: nothing to gain
    gate, _ = run_round(
        model,
        x_same,
        y_same,
        x_train,
        y_train,
        x_same,
        y_same,
        RoundSettings(epochs=2, min_gain=0.05, max_drop=0.01),
    )
    assert not gate.passed
    assert "minAccuracyGain" in gate.message


STORE_TOKEN = "store-token"


def write_manifest(folder: Path, stem: str, **override: Any) -> None:
    """The .json manifest of ``stem``.npz as an agent uploads it, and its .json.sig under the store token."""
    data = (folder / f"{stem}.npz").read_bytes()
    manifest = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "node": "n1", **override}
    raw = json.dumps(manifest).encode()
    (folder / f"{stem}.json").write_bytes(raw)
    (folder / f"{stem}.json.sig").write_text(sign_bundle(raw, STORE_TOKEN) + "\n")


@dataclass
class RoundJob:
    """A served artifact-store folder with a model, replay/validation data and one node's capture bundle."""

    root: Path
    url: str
    captures: Path

    def run(self, out: str, *extra: str) -> tuple[int, dict[str, Any]]:
        """main() as the training Job runs it; returns its exit code and report.json."""
        code = main(
            [
                "--source-uri", (self.root / "model.pt").as_uri(),
                "--captures-url", f"{self.url}/captures/ns/m/",
                "--replay-uri", (self.root / "train.npz").as_uri(),
                "--validation-uri", (self.root / "val.npz").as_uri(),
                "--out-dir", str(self.root / out),
                *extra,
            ]
        )
        return code, json.loads((self.root / out / "report.json").read_text())


@pytest.fixture
def round_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RoundJob]:
    """The inputs of a round (3 blobs, drifted captures) behind a real HTTP server that lists folders."""
    import torch

    rng = np.random.default_rng(2)
    x_train, y_train = blobs(rng, 600, 0.0)
    x_val, y_val = blobs(rng, 300, 0.0)
    x_new, y_new = blobs(rng, 300, 2.5)
    torch.jit.save(trained(x_train, y_train), str(tmp_path / "model.pt"))
    np.savez(tmp_path / "train.npz", input=x_train, labels=y_train)
    np.savez(tmp_path / "val.npz", input=x_val, labels=y_val)
    folder = tmp_path / "store" / "captures" / "ns" / "m"
    folder.mkdir(parents=True)
    np.savez(folder / "node-1.npz", input=x_new, labels=y_new)
    write_manifest(folder, "node-1")
    monkeypatch.setenv("EDGEMODEL_STORE_TOKEN", STORE_TOKEN)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):  # type: ignore[no-untyped-def]
            super().__init__(*a, directory=str(tmp_path / "store"), **kw)

        def do_GET(self) -> None:
            path = tmp_path / "store" / self.path.strip("/")
            if path.is_dir():
                body = json.dumps(
                    {"entries": [{"name": p.name, "type": "file"} for p in sorted(path.iterdir())]}
                ).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            super().do_GET()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield RoundJob(tmp_path, f"http://127.0.0.1:{server.server_port}", folder)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_the_job_entry_point_writes_the_model_and_the_report(round_job: RoundJob) -> None:
    """main() against a real artifact store folder served over HTTP (captures with manifests)."""
    code, report = round_job.run("out", "--epochs", "30", "--learning-rate", "0.01", "--max-drop", "0.02")
    assert code == 0, report
    assert report["passed"]
    assert report["samples"] == 300
    model = round_job.root / "out" / "model.pt"
    assert model.exists()
    assert report["modelSha256"] == hashlib.sha256(model.read_bytes()).hexdigest()


def _resign_other_bytes(job: RoundJob) -> None:
    """The bundle replaced by other bytes of the same size: the manifest (and its signature) are intact."""
    path = job.captures / "node-1.npz"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda job: (job.captures / "node-1.json.sig").unlink(), "is not signed (no .json.sig): refused"),
        (lambda job: (job.captures / "node-1.json").write_text(
            (job.captures / "node-1.json").read_text().replace('"n1"', '"n2"')),
         "signature does not match its manifest and the store token"),
        (lambda job: write_manifest(job.captures, "node-1", sha256="0" * 64) or
         (job.captures / "node-1.json.sig").write_text(sign_bundle(b"other", "another-token")),
         "signature does not match"),
        (_resign_other_bytes, "sha256"),
        (lambda job: write_manifest(job.captures, "node-1", bytes=100), "more than the 100 bytes its manifest says"),
    ],
    ids=["unsigned", "manifest-edited", "signed-with-another-key", "bundle-replaced", "bigger-than-its-manifest"],
)
def test_the_job_refuses_a_capture_bundle_that_fails_verification(
    round_job: RoundJob, tamper: Any, message: str
) -> None:
    tamper(round_job)
    code, report = round_job.run("bad")
    assert code == 2
    assert report["message"].startswith("bad input")
    assert message in report["message"]
    assert not (round_job.root / "bad" / "model.pt").exists()


def test_a_bundle_still_uploading_is_left_for_the_next_round(round_job: RoundJob) -> None:
    """An .npz whose manifest is not there yet is skipped; the signed bundles are used."""
    np.savez(round_job.captures / "node-2.npz", input=np.zeros((5, 2), np.float32), labels=np.zeros(5, np.int64))
    code, report = round_job.run("out", "--epochs", "30", "--learning-rate", "0.01", "--max-drop", "0.02")
    assert code == 0, report
    assert report["samples"] == 300
    assert [u.rsplit("/", 1)[-1] for u in report["captures"]] == ["node-1.npz"]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)
