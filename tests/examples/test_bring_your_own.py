"""examples/bring_your_own/run.py --quick: a team's CSV through inspect, build, simulate
and report with the devicetune commands."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import PROJECT_ROOT

SCRIPT = PROJECT_ROOT / "examples" / "bring_your_own" / "run.py"


def test_a_team_csv_goes_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out)],
                            capture_output=True, text=True, timeout=900, cwd=PROJECT_ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for step in ("data inspect team.csv", "build team.toml", "simulate team.toml",
                 "report run"):
        assert f"$ devicetune {step}" in result.stdout
    assert "past lacks a future class" in result.stdout
    headline = json.loads((out / "walkthrough.json").read_text())
    assert headline["parity_passed"]
    assert headline["parity_inputs"] == "256 rows of the pretraining data"
    assert headline["global_accuracy_initial"] > 0.5  # pretrained on the team's people
    with (out / "run" / "devices.csv").open() as handle:
        users = sorted(row["user"] for row in csv.DictReader(handle))
    assert users == [f"user-{u:03d}" for u in range(18, 24)]  # the unseen people, by name
    assert (out / "run" / "report.html").stat().st_size > 10_000
