"""Stopping the demo for sure: signals during shutdown, and a work folder the demo owns.

GNU ``timeout`` sends SIGTERM twice (to the child and to its process group) and people press
Ctrl-C twice; a second signal must not cut the shutdown short and leave agents, the store or
Prometheus running. The work folder is reset at start, so the demo only ever deletes a folder
it created (marked by :data:`MARKER`).
"""

from __future__ import annotations

import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from edgemodel.errors import UserError

MARKER = ".edgemodel-demo"
SIGNALS = (signal.SIGINT, signal.SIGTERM)
LINGER_S = 1.0
"""After a signal-started shutdown: how long the demo keeps noting the rest of the signal burst before it exits."""
# What a demo run writes at the top of its folder: a folder holding only these (and "kube") was made
# by a demo from before the marker existed.
DEMO_ENTRIES = frozenset({MARKER, "kube", "logs", "models", "pki", "prometheus", "signing", "store"})


class SignalGuard:
    """The first SIGINT/SIGTERM unwinds the demo (KeyboardInterrupt / exit 143); later ones are only noted.

    Call :meth:`stopping` when the shutdown begins (also without a signal): from then on no
    signal interrupts it.
    """

    def __init__(self, note: Callable[[str], None] | None = None) -> None:
        self.note = note or (lambda text: print(text, file=sys.stderr, flush=True))
        self.shutting_down = False
        self.signalled = False

    def finish(self, linger_s: float = LINGER_S) -> None:
        """The shutdown is done. After a signal, wait ``linger_s`` for the rest of its burst (GNU timeout's
        second SIGTERM, a repeated Ctrl-C: each is noted), then ignore SIGINT/SIGTERM: the interpreter's own
        teardown (which can take a while after torch) restores the default handlers, and a late signal would
        otherwise kill the process and replace the exit status (143 / 130) with death by signal."""
        if not self.signalled:
            return
        deadline = time.monotonic() + linger_s
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(left)
        for sig in SIGNALS:
            signal.signal(sig, signal.SIG_IGN)

    def install(self) -> SignalGuard:
        for sig in SIGNALS:
            signal.signal(sig, self._handle)
        return self

    def stopping(self) -> None:
        self.shutting_down = True

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.shutting_down:
            self.note(f"{name} received again: still stopping every process the demo started")
            return
        self.shutting_down = True
        self.signalled = True
        self.note(f"{name} received: stopping every process the demo started")
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)


def created_by_demo(workdir: Path) -> bool:
    """The marker is there, or the folder holds exactly what an older demo run wrote."""
    names = {p.name for p in workdir.iterdir()}
    return MARKER in names or ("kube" in names and names <= DEMO_ENTRIES)


def reset_workdir(workdir: Path) -> None:
    """Empty ``workdir`` for a new run; refuse a non-empty folder the demo did not create."""
    if workdir.exists():
        if not workdir.is_dir():
            raise UserError(f"--workdir {workdir} is a file, not a folder: choose a folder path, e.g. --workdir .demo")
        if any(workdir.iterdir()) and not created_by_demo(workdir):
            raise UserError(
                f"--workdir {workdir} is not empty and was not created by the demo (no {MARKER} in it); the demo "
                "deletes its work folder at start, so it will not touch this one: choose a new or empty folder, "
                "or remove this one yourself"
            )
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    (workdir / MARKER).write_text("created by `edgemodel-dev demo`; deleted and re-created by the next run\n")
