"""Progress of a conversion: stages with a step count; the CLI draws bars, the Job logs lines."""

from __future__ import annotations

import logging
from typing import Protocol

log = logging.getLogger("edgemodel.convert")


class Progress(Protocol):
    def stage(self, title: str, total: int) -> None:
        """A new stage of ``total`` steps begins."""

    def advance(self, detail: str = "") -> None:
        """One step of the current stage is done."""

    def add_steps(self, count: int) -> None:
        """The current stage turned out to have ``count`` more steps."""


class LogProgress:
    """Progress as log lines (the Job's output): one line per stage; the modules log each step."""

    def __init__(self) -> None:
        self.title = ""
        self.total = 0
        self.done = 0
        self.index = 0

    def stage(self, title: str, total: int) -> None:
        self.title, self.total, self.done = title, total, 0
        self.index += 1
        log.info("Stage %d: %s (%d step%s)", self.index, title, total, "" if total == 1 else "s")

    def advance(self, detail: str = "") -> None:
        self.done += 1
        log.debug("[%s %d/%d] %s", self.title, self.done, self.total, detail)

    def add_steps(self, count: int) -> None:
        self.total += count


class QuietThirdParty(logging.Filter):
    """Let edgemodel's INFO lines through but only warnings from libraries (ORT quantisation logs a lot)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.startswith("edgemodel") or record.levelno >= logging.WARNING
