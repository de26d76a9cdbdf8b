"""`edgemodel-dev demo` stops everything it started, even when signals keep coming during shutdown,
and never deletes a work folder it did not create."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgemodel_dev.polling import wait_until
from tests.conftest import require_tool

EDGEMODEL_DEV = str(Path(sys.executable).parent / "edgemodel-dev")


def leftovers(workdir: Path) -> str:
    """Processes whose command line names the demo's folder (agents, store, operator, pods)."""
    found = subprocess.run(["pgrep", "-a", "-f", str(workdir)], capture_output=True, text=True, check=False)
    return found.stdout.strip()


def test_a_non_empty_folder_the_demo_did_not_create_is_refused(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("keep me")
    demo = subprocess.Popen([EDGEMODEL_DEV, "demo", "--plain", "--no-prometheus", "--no-split", "--workdir", str(mine)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = demo.communicate(timeout=60)
    finally:
        if demo.poll() is None:  # it went ahead: stop it (SIGTERM unwinds its shutdown) before failing
            os.killpg(demo.pid, signal.SIGTERM)
            demo.wait(60)
    assert demo.returncode == 2, out + err
    assert f"--workdir {mine} is not empty and was not created by the demo" in err
    assert "choose a new or empty folder" in err
    assert (mine / "thesis.tex").read_text() == "keep me"


@pytest.mark.timeout(240)
def test_signals_during_shutdown_do_not_leave_processes_behind(tmp_path: Path) -> None:
    """SIGTERM as GNU `timeout` sends it, then SIGTERM and Ctrl-C again while the demo is stopping."""
    require_tool("kubectl")
    workdir = tmp_path / "demo"
    out = tmp_path / "demo.out"
    with out.open("wb") as sink:
        demo = subprocess.Popen(
            [EDGEMODEL_DEV, "demo", "--plain", "--no-prometheus", "--no-split", "--workdir", str(workdir), "--epochs", "1"],
            stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        wait_until("the demo to start its agents", lambda: "registered their EdgeAgents" in out.read_text(), 120,
                   process=demo, explain=lambda: out.read_text()[-3000:])
        assert leftovers(workdir), "the demo runs processes in its folder"
        os.kill(demo.pid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):  # the line says the shutdown began; without it, go on after 5 s
            wait_until("the demo to begin its shutdown", lambda: "Stopping every process" in out.read_text(), 5)
        os.killpg(demo.pid, signal.SIGTERM)  # the second SIGTERM of `timeout`, to the whole group
        time.sleep(0.3)
        os.killpg(demo.pid, signal.SIGINT)  # and an impatient Ctrl-C
        code = demo.wait(timeout=120)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait(10)
    text = out.read_text()
    assert code == 143, text[-3000:]
    assert "SIGTERM received again: still stopping" in text
    assert "SIGINT received again: still stopping" in text
    assert leftovers(workdir) == "", f"processes left running:\n{leftovers(workdir)}"


def test_after_a_signalled_shutdown_late_signals_are_noted_then_ignored() -> None:
    """The interpreter's teardown restores default handlers: a late Ctrl-C must not turn exit 143 into death by
    SIGINT, so the guard notes the rest of the burst for a moment, then ignores SIGINT/SIGTERM."""
    from edgemodel_dev.demo.shutdown import SIGNALS, SignalGuard

    saved = {sig: signal.getsignal(sig) for sig in SIGNALS}
    notes: list[str] = []
    try:
        quiet = SignalGuard(notes.append).install()
        quiet.stopping()  # a shutdown without a signal: nothing to linger for, handlers stay
        started = time.monotonic()
        quiet.finish(linger_s=5)
        assert time.monotonic() - started < 1
        assert signal.getsignal(signal.SIGINT) == quiet._handle

        guard = SignalGuard(notes.append).install()
        with pytest.raises(SystemExit) as exited:
            signal.raise_signal(signal.SIGTERM)  # the handler runs at once, in this thread
        assert exited.value.code == 143
        guard.finish(linger_s=0.05)
        assert all(signal.getsignal(sig) == signal.SIG_IGN for sig in SIGNALS)
        os.kill(os.getpid(), signal.SIGINT)  # ignored: this test goes on
        assert notes == ["SIGTERM received: stopping every process the demo started"]
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
