"""`edgemodel store` as a process: listens on a free port, serves, stops cleanly on SIGTERM."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import requests

EDGEMODEL = str(Path(sys.executable).parent / "edgemodel")


def test_store_command_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("abc\n")
    proc = subprocess.Popen([EDGEMODEL, "store", "--root", str(tmp_path / "root"), "--port", "0", "--token-file",
                             str(token)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
        assert match, line
        url = match.group(1)
        assert requests.get(f"{url}/healthz", timeout=10).json() == {"status": "ok"}
        assert requests.put(f"{url}/k/v", data=b"1", timeout=10).status_code == 401
        assert requests.put(f"{url}/k/v", data=b"1", headers={"Authorization": "Bearer abc"}, timeout=10).status_code == 201
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert (tmp_path / "root" / "k" / "v").read_bytes() == b"1"


def test_store_command_rejects_an_empty_token_file(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("")
    result = subprocess.run([EDGEMODEL, "store", "--root", str(tmp_path), "--token-file", str(tmp_path / "empty")],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "--token-file" in result.stderr
    assert "empty" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_store_put_publishes_files_for_conversion(tmp_path: Path) -> None:
    """`edgemodel store put` uploads with the token and prints the URIs a conversion Job reads (docs/install.md)."""
    from tests.store.running import running_store

    token = tmp_path / "token"
    token.write_text("abc\n")
    model = tmp_path / "model.pt"
    model.write_bytes(b"torchscript bytes")
    with running_store(tmp_path / "root", "abc") as url:
        def put(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([EDGEMODEL, "store", "put", "--url", url, *args], capture_output=True, text=True,
                                  timeout=60, check=False)

        refused = put("--prefix", "sources/default/digits", str(model))
        assert refused.returncode == 1
        assert "needs its upload token: --token-file" in refused.stderr
        done = put("--prefix", "sources/default/digits", "--token-file", str(token), "--cluster-url",
                   "http://edgemodel-store.edgemodel.svc:8081", str(model))
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["http://edgemodel-store.edgemodel.svc:8081/sources/default/digits/model.pt"]
        assert requests.get(f"{url}/sources/default/digits/model.pt", timeout=10).content == b"torchscript bytes"
        for prefix in ("default/digits", "default/digits/3"):
            wrong = put("--prefix", prefix, "--token-file", str(token), str(model))
            assert wrong.returncode == 2
            assert "that is where converted revisions go" in wrong.stderr
    missing = subprocess.run([EDGEMODEL, "store", "--port", "0"], capture_output=True, text=True, timeout=60,
                             check=False)
    assert missing.returncode == 2
    assert "--root is required to serve the store" in missing.stderr
