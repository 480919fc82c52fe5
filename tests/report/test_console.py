"""`devicetune report` in the terminal: the headline table, the notes, the exit codes."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_cli
from tests.report.conftest import write_server_run


def test_the_cli_prints_the_headline_and_writes_the_page(run_copy: Path) -> None:
    result = run_cli("report", str(run_copy))
    assert result.returncode == 0, result.stderr
    summary = json.loads((run_copy / "summary.json").read_text())
    out = result.stdout
    assert f"{100 * summary['mean_gain']:+.1f} pts" in out
    assert f"{100 * summary['accuracy_personal']['median']:.1f}%" in out
    assert f"{100 * summary['global_accuracy_final']:.1f}%" in out
    assert "of 10 devices" in out  # the who-gained-who-lost sentence
    assert str(run_copy / "report.html") in out.replace("\n", "")
    assert (run_copy / "report.html").exists()


def test_a_server_run_prints_its_versions_and_notes(tmp_path: Path) -> None:
    result = run_cli("report", str(write_server_run(tmp_path / "server")))
    assert result.returncode == 0, result.stderr
    assert "Model versions" in result.stdout and "emitted with a cohort regression" in \
        result.stdout
    assert "note: config.toml is missing" in result.stdout


def test_a_folder_that_is_not_a_run_exits_2_in_one_line(tmp_path: Path) -> None:
    result = run_cli("report", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "is not a run folder" in result.stderr
    assert "Traceback" not in result.stderr
