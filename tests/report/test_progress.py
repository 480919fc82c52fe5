"""The progress of a run's stages: a readable bar on a terminal, plain lines elsewhere."""

from __future__ import annotations

import io
import re

from rich.console import Console

from devicetune.report.console import STAGE_WIDTH, RichProgress, stage_name

LONG = ("converting to Core ML (updatable neural network) and checking its reference "
        "interpreter")


def test_a_long_stage_name_is_cut_so_the_bar_and_counts_fit_in_120_columns() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120, color_system=None)
    with RichProgress(console) as progress:
        progress.stage(LONG, 10)
        progress.advance(4)
    last = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue()).split("\r")[-1]
    assert stage_name(LONG) in last and len(stage_name(LONG)) == STAGE_WIDTH
    assert stage_name(LONG).endswith("…")
    assert re.search(r"━{30,}", last), last  # the bar keeps its width
    assert "4/4" in last and re.search(r"\d:\d\d:\d\d", last), last


def test_off_a_terminal_each_stage_is_one_plain_line() -> None:
    out = io.StringIO()
    with RichProgress(Console(file=out, width=120)) as progress:
        progress.stage("round 1/2", 3)
        progress.advance(3)
        progress.stage(LONG, None)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "\x1b" not in out.getvalue()
    assert re.fullmatch(r"round 1/2: 3/3, \d+\.\d s", lines[0]), lines
    assert re.fullmatch(re.escape(LONG) + r": \d+\.\d s", lines[1]), lines
