"""The images of docker/*.Dockerfile, built with podman and run as real containers the way the chart
runs them: uid 10001, read-only root file system, no capabilities, no network but loopback.

The store (operator image), one conversion Job (converter image, `edgemodel convert --job`, the
signing key mounted as the fixed Job mounts it) and an agent (agent image) serving the result,
answering a v2 request from tritonclient; all three share one network namespace with loopback only.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from edgemodel.signing import generate_keypair
from edgemodel_dev.containers import Engine
from edgemodel_dev.examples_models import DigitsExample
from edgemodel_dev.images import Built
from edgemodel_dev.polling import wait_until
from tests.containers.conftest import USER, in_netns, restricted_run

pytestmark = pytest.mark.timeout(1800)  # a cold machine builds the images first (about 10 min)
UID = 10001
KEY_DIR = "/var/run/edgemodel/signing"
FAST = ["--latency-runs", "5", "--latency-budget", "0.05", "--threads", "1", "--no-plot"]
CLIENT = r"""
import json, sys
import numpy as np
import pytest
import tritonclient.http as httpclient
data = np.load(sys.argv[2])
x, labels = data["input"][:64].astype(np.float32), data["labels"][:64]
client = httpclient.InferenceServerClient(sys.argv[1])
inp = httpclient.InferInput("input", list(x.shape), "FP32")
inp.set_data_from_numpy(x)
result = client.infer("digits", [inp])
out = result.as_numpy(result.get_response()["outputs"][0]["name"])
print(json.dumps({"live": client.is_server_live(), "correct": int((out.argmax(1) == labels).sum()), "n": len(labels),
                  "model": result.get_response()["model_name"]}))
"""



def edgemodel_object(example: DigitsExample, mounted: str) -> str:
    """The EdgeModel the Job gets in EDGEMODEL_OBJECT, its file:// URIs pointing into the container."""
    doc = example.manifest(name="digits", max_accuracy_drop=0.03)
    text = json.dumps(doc).replace(example.directory.resolve().as_uri(), f"file://{mounted}")
    obj = json.loads(text)
    obj["metadata"]["generation"] = 1
    return json.dumps(obj)


def owned(path: Path, mode: int, uid: int = UID, gid: int = UID) -> Path:
    os.chown(path, uid, gid)
    path.chmod(mode)
    return path


def test_images_are_non_root_and_the_agent_has_no_torch(engine: Engine, images: dict[str, Built]) -> None:
    for name in ("agent", "operator", "converter"):
        assert engine.image_user(images[name].ref) == USER, name
    probe = ("import importlib.util as u, json; print(json.dumps({m: bool(u.find_spec(m)) for m in "
             "('torch', 'kopf', 'onnxruntime', 'edge_agent', 'edgemodel_operator')}))")
    found = {}
    for name in ("agent", "operator", "converter"):
        proc = restricted_run(engine, images[name].ref, "-c", probe, name=f"probe-{name}-{os.getpid()}",
                              entrypoint="python")
        assert proc.returncode == 0, proc.stderr
        found[name] = json.loads(proc.stdout)
    assert found == {
        "agent": {"torch": False, "kopf": False, "onnxruntime": True, "edge_agent": True, "edgemodel_operator": True},
        "operator": {"torch": False, "kopf": True, "onnxruntime": False, "edge_agent": True, "edgemodel_operator": True},
        "converter": {"torch": True, "kopf": False, "onnxruntime": True, "edge_agent": True,
                      "edgemodel_operator": True},
    }
    assert engine.image_size(images["agent"].ref) < 600 * 2**20, "the agent image must stay light"


def test_conversion_job_and_agent_in_real_containers(engine: Engine, images: dict[str, Built], digits: DigitsExample,
                                                     tmp_path: Path, containers: list[str]) -> None:
    tag = f"{os.getpid()}-{tmp_path.name[-12:]}".replace("_", "-").lower()
    store_root = tmp_path / "store"
    store_root.mkdir()
    owned(store_root, 0o755)
    keys = tmp_path / "signing"
    keys.mkdir()
    generate_keypair(keys / "private.pem", keys / "public.pem")
    termination = tmp_path / "termination-log"
    termination.touch()
    owned(termination, 0o644)

    # The artifact store from the operator image (the chart runs it so), loopback only.
    store = f"store-{tag}"
    containers.append(store)
    proc = restricted_run(engine, images["operator"].ref, "store", "--root", "/data", "--port", "8080",
                          name=store, detach=True, volumes=(f"{store_root}:/data:rw",))
    assert proc.returncode == 0, proc.stderr
    health = [sys.executable, "-c",
              "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
    wait_until("the store container to answer", lambda: in_netns(engine, store, *health, timeout=10).returncode == 0,
               timeout=60)

    def convert(key_mode: int, key_group: int, name: str) -> tuple[int, str]:
        owned(keys / "private.pem", key_mode, uid=0, gid=key_group)  # as a kubelet mounts the Secret
        proc = restricted_run(
            engine, images["converter"].ref, "convert", "--job", "--revision", "1", "--store-url",
            "http://127.0.0.1:8080", "--signing-key", f"{KEY_DIR}/private.pem", *FAST,
            name=name, network=f"container:{store}", timeout=600,
            volumes=(f"{keys}:{KEY_DIR}:ro", f"{digits.directory}:/models:ro", f"{termination}:/dev/termination-log:rw"),
            env={"EDGEMODEL_OBJECT": edgemodel_object(digits, "/models"), "TMPDIR": "/tmp"})
        return proc.returncode, termination.read_text() + proc.stdout[-2000:] + proc.stderr[-3000:]

    # Issue 14 item 3 for real: 0400 root:root (no fsGroup) is unreadable for uid 10001.
    code, out = convert(0o400, 0, f"convert-denied-{tag}")
    assert code == 2, out
    assert "SigningKeyUnreadable" in out or "Permission denied" in out, out
    # As the fixed Job mounts it: group fsGroup (10001), 0440.
    code, out = convert(0o440, UID, f"convert-{tag}")
    assert code == 0, out
    result = json.loads(termination.read_text())
    assert result["ok"] is True, result
    revision = store_root / "default" / "digits" / "1"
    assert (revision / "manifest.json").is_file()
    assert (revision / "model-cpu.onnx").is_file()

    # The agent serves the converted model; a v2 request from tritonclient in the same loopback-only netns.
    agent = f"agent-{tag}"
    containers.append(agent)
    proc = restricted_run(engine, images["agent"].ref, "agent", "--model", "digits=/store/model-cpu.onnx",
                          "--host", "127.0.0.1", "--port", "8081", name=agent, network=f"container:{store}",
                          detach=True, volumes=(f"{revision}:/store:ro",))
    assert proc.returncode == 0, proc.stderr
    client = [sys.executable, "-c", CLIENT, "127.0.0.1:8081", str(digits.val_npz)]
    answers: dict[str, object] = {}

    def answered() -> bool:
        proc = in_netns(engine, store, *client, timeout=60)
        if proc.returncode == 0:
            answers.update(json.loads(proc.stdout.strip().splitlines()[-1]))
        return proc.returncode == 0

    wait_until("the agent container to answer a v2 request", answered, timeout=90)
    assert answers["live"] is True
    assert answers["model"] == "digits"
    assert int(answers["correct"]) >= 0.9 * int(answers["n"]), answers  # type: ignore[call-overload]
    logs = engine.run(["logs", agent], timeout=30).stdout + engine.run(["logs", agent], timeout=30).stderr
    assert "Traceback" not in logs
    assert np.load(digits.val_npz)["labels"].shape[0] == 200
