"""Download progress: plain lines when the output is not a terminal."""

from __future__ import annotations

import io

from devicetune.report.transfer import PlainTransfer, transfer_progress


def test_a_pipe_gets_a_line_per_quarter_not_per_chunk() -> None:
    out = io.StringIO()
    progress = transfer_progress(out)
    assert isinstance(progress, PlainTransfer)
    progress.start("har: download", 1000)
    for _ in range(100):
        progress.advance(10)
    progress.finish()
    assert out.getvalue().splitlines() == [
        "har: download: 250 bytes, 25%", "har: download: 500 bytes, 50%",
        "har: download: 750 bytes, 75%", "har: download: 1,000 bytes, done"]


def test_an_unknown_size_gets_only_the_final_line() -> None:
    out = io.StringIO()
    progress = transfer_progress(out)
    progress.start("fsdd: download", None)
    progress.advance(123)
    progress.finish()
    assert out.getvalue() == "fsdd: download: 123 bytes, done\n"
