"""`write_report` end to end: a real simulation, a crashed one, a hand-made server run."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from devicetune.errors import RunFolderError
from devicetune.report.write import REPORT_FILE, write_report
from tests.report.conftest import png_bytes, read_page, write_server_run

SIMULATION_SECTIONS = ["headline", "personalization-gain", "worst-decile", "cohorts",
                       "global-accuracy", "participation"]


def _leaves(value: object, prefix: str = "") -> dict[str, float]:
    """Every number in summary.json, by dotted path."""
    if isinstance(value, dict):
        out: dict[str, float] = {}
        for key, child in value.items():
            out |= _leaves(child, f"{prefix}{key}.")
        return out
    return {prefix[:-1]: value} if isinstance(value, int | float) else {}


def _shown_value(text: str) -> tuple[float, float]:
    """A displayed number back on the 0..1 (or count) scale, and its rounding:
    "93.9%", "+2.0 pts", "31.3/s", "5"."""
    number = float(text.replace("pts", "").replace("%", "").replace("/s", "")
                   .replace(" s", "").replace(",", "").strip())
    if text.endswith(("%", "pts")):
        return number / 100, 0.0005 + 1e-9
    return number, 0.05 + 1e-9


def test_a_simulation_report_has_every_section_and_image(run_copy: Path) -> None:
    report = write_report(run_copy)
    assert report.html == run_copy / REPORT_FILE
    page = read_page(report.html)
    assert page.sections == SIMULATION_SECTIONS  # complete run: no notes section
    assert set(report.images) == set(SIMULATION_SECTIONS[1:])
    assert len(page.images) == len(report.images)
    for image in page.images:
        data = png_bytes(image["src"])
        assert data == (run_copy / image["data-file"]).read_bytes()  # the PNG beside it
        with Image.open(io.BytesIO(data)) as png:
            assert png.format == "PNG" and png.width >= 1000 and png.height >= 150
    assert page.references == []  # self-contained: nothing fetched from anywhere


def test_the_numbers_in_the_page_equal_summary_json(run_copy: Path) -> None:
    summary = json.loads((run_copy / "summary.json").read_text())
    page = read_page(write_report(run_copy).html)
    expected = _leaves(summary)
    shown = {}
    for number in page.numbers:
        source = number["data-source"]
        if source.startswith("summary.json:"):
            path = source.removeprefix("summary.json:")
            assert float(number["data-value"]) == expected[path], path
            value, rounding = _shown_value(number["text"])
            assert value == pytest.approx(expected[path], abs=rounding), path
            shown[path] = number["data-value"]
    assert set(shown) == set(expected)  # every number of the summary is on the page


def test_a_truncated_metrics_file_still_reports_with_a_note(run_copy: Path) -> None:
    metrics = run_copy / "metrics.jsonl"
    text = metrics.read_text()
    metrics.write_text(text[:len(text) - 25])  # a crash mid-way through the last round
    report = write_report(run_copy)
    page = read_page(report.html)
    assert page.sections == ["headline", "notes", *SIMULATION_SECTIONS[1:]]
    assert any("metrics.jsonl" in note and "cut off" in note for note in report.run.notes)
    assert [r["round"] for r in report.run.rounds] == [1]
    assert "after round 1." in report.html.read_text()


def test_a_run_that_crashed_before_personalising_reports_its_rounds(run_copy: Path) -> None:
    (run_copy / "devices.csv").unlink()
    (run_copy / "summary.json").unlink()
    metrics = run_copy / "metrics.jsonl"
    metrics.write_text(metrics.read_text().splitlines()[0] + "\n")
    report = write_report(run_copy)
    page = read_page(report.html)
    assert page.sections == ["headline", "notes", "global-accuracy", "participation"]
    notes = " ".join(report.run.notes)
    assert "devices.csv is missing" in notes and "summary.json is missing" in notes
    assert "1 of the 2 rounds" in notes
    sources = {n["data-source"].split(":")[0] for n in page.numbers}
    assert sources == {"metrics.jsonl"}


def test_a_server_run_flags_the_cohort_that_regressed(tmp_path: Path) -> None:
    report = write_report(write_server_run(tmp_path / "server"))
    page = read_page(report.html)
    assert page.sections == ["headline", "notes", "versions", "global-accuracy",
                             "participation", "privacy", "other-metrics"]
    rows = {cells[0]: (cls, cells) for cls, cells in page.rows if cells[0].startswith("v")}
    assert rows["v3"][0] == "regressed" and rows["v3"][1][-1] == "ios"
    assert "▼ 76.0% (-6.0)" in rows["v3"][1]
    assert rows["v2"][0] == "" and rows["v2"][1][-1] == "none"
    assert rows["v4"][0] == "refused" and "accuracy fell 15.0 points" in rows["v4"][1][3]
    cards = {n["data-source"]: n["text"] for n in page.numbers}
    assert cards["versions.jsonl:emitted and regressed"] == "1"
    headline = {cells[0]: cells[-1] for _, cells in page.rows if len(cells) == 2}
    assert headline["emitted"] == "3" and headline["refused"] == "1"
    assert headline["emitted with a cohort regression"] == "1"
    assert any("config.toml is missing" in note for note in report.run.notes)


def test_the_configured_regression_tolerance_decides_what_is_flagged(tmp_path: Path) -> None:
    run = write_server_run(tmp_path / "server")
    (run / "config.toml").write_text("[emit]\nmax_regression = 0.1\n")
    page = read_page(write_report(run).html)
    flagged = [cells[0] for cls, cells in page.rows if cls == "regressed"]
    assert flagged == []  # iOS lost 6 points, within the 10 the config allows


def test_a_folder_that_is_not_a_run_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(RunFolderError, match="not a run folder"):
        write_report(tmp_path)
    with pytest.raises(RunFolderError, match="no such folder"):
        write_report(tmp_path / "missing")
    assert not (tmp_path / REPORT_FILE).exists()
