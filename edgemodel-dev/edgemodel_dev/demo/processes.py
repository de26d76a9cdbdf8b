"""Child processes of the demo and the end-to-end tests: logs to files, readiness waits, clean shutdown."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from edgemodel_dev.polling import http_ok, log_tail, wait_until


def wait_http(url: str, timeout: float, proc: Process | None = None, log: Path | None = None) -> None:
    """Wait until ``url`` answers 2xx; fail early with the log tail when ``proc`` exits."""
    wait_until(f"{url} to answer", lambda: http_ok(url), timeout, process=proc.popen if proc else None,
               explain=lambda: log_tail(log, 15))


class Process:
    """A child process in its own session, its output appended to ``log_dir/<name>.log``."""

    def __init__(self, name: str, argv: list[str], log_dir: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.name = name
        self.log = log_dir / f"{name}.log"
        log_dir.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True,
            )

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int | None:
        """Signal the process group, wait, then SIGKILL what is left of the group (children included)."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)  # the leader is gone; its children may not be
        self.popen.wait(timeout=10)
        return self.popen.returncode

    def kill(self) -> None:
        """SIGKILL at once: a crash, no cleanup."""
        self.stop(signal.SIGKILL, timeout=10)


@dataclass
class ProcessGroup:
    """Starts named processes with their output in ``log_dir``; stops all of them, newest first."""

    log_dir: Path
    procs: dict[str, Process] = field(default_factory=dict)

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> Process:
        """Start ``name`` (a restart appends to the same log)."""
        proc = Process(name, argv, self.log_dir, env=env, cwd=cwd)
        self.procs[name] = proc
        return proc

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def stop(self, name: str, timeout: float = 15) -> None:
        proc = self.procs.get(name)
        if proc is not None:
            proc.stop(timeout=timeout)
            self.procs.pop(name, None)

    def stop_all(self) -> None:
        """Stop every process, newest first; one that fails to stop does not keep the others running."""
        errors: list[BaseException] = []
        for name in reversed(list(self.procs)):
            try:
                self.stop(name)
            except Exception as exc:  # stop the rest, then report the first failure
                errors.append(exc)
        if errors:
            raise errors[0]
