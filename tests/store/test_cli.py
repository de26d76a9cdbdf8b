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
