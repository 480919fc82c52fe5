"""Showing a download's progress: a rich bar on a terminal, a few plain lines otherwise
(a CI log or a pipe gets every 25 %, not a redraw per chunk)."""

from __future__ import annotations

import sys
from typing import TextIO

from devicetune.data.download import TransferProgress


def transfer_progress(stream: TextIO | None = None) -> TransferProgress:
    """The right progress display for ``stream`` (default: stderr)."""
    stream = stream or sys.stderr
    return RichTransfer(stream) if stream.isatty() else PlainTransfer(stream)


class RichTransfer:
    """A rich progress bar with bytes, speed and time left."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._progress = None
        self._task = None

    def start(self, description: str, total_bytes: int | None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
            TransferSpeedColumn(), TimeRemainingColumn(),
            console=Console(file=self._stream),
        )
        self._progress.start()
        self._task = self._progress.add_task(description, total=total_bytes)

    def advance(self, n_bytes: int) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, n_bytes)

    def finish(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


class PlainTransfer:
    """One line at the start, at every quarter of a known size, and at the end."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._description = ""
        self._total: int | None = None
        self._done = 0
        self._next_quarter = 1

    def start(self, description: str, total_bytes: int | None) -> None:
        self._description, self._total, self._done, self._next_quarter = (
            description, total_bytes, 0, 1)

    def advance(self, n_bytes: int) -> None:
        self._done += n_bytes
        if not self._total:
            return
        reached = min(3, self._done * 4 // self._total)
        if reached >= self._next_quarter:
            self._say(f"{25 * reached}%")
            self._next_quarter = reached + 1

    def finish(self) -> None:
        if self._description:
            self._say("done")
            self._description = ""

    def _say(self, what: str) -> None:
        print(f"{self._description}: {self._done:,} bytes, {what}", file=self._stream,
              flush=True)
