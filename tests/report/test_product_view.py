"""The report as a product lead reads it: the trade-off it measures, how sure each
headline number is, what the devices ran, and axes that do not exaggerate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from devicetune.report.intervals import device_intervals
from devicetune.report.plots import accuracy_limits, zero_based
from devicetune.report.write import write_report
from devicetune.run_files import PersonalizationResult
from tests.report.conftest import read_page, write_server_run


def _devices(gains: list[float], naive: list[float]) -> list[PersonalizationResult]:
    return [PersonalizationResult(k, "android", "high", 20, 20, 0.8, 0.8 + g, 3, g == 0,
                                  0.8 + n) for k, (g, n) in enumerate(zip(gains, naive,
                                                                          strict=True))]


def test_bootstrap_intervals_hold_the_estimate_and_widen_with_fewer_devices() -> None:
    rng = np.random.default_rng(1)
    gains = list(rng.normal(0.02, 0.03, 200))
    many = device_intervals(_devices(gains, gains))
    few = device_intervals(_devices(gains[:20], gains[:20]))
    assert many is not None and few is not None
    low, high = many.get("mean_gain")  # type: ignore[misc]
    assert low < float(np.mean(gains)) < high
    assert high - low < few.get("mean_gain")[1] - few.get("mean_gain")[0]  # type: ignore[index]
    assert device_intervals(_devices(gains, gains)) == many  # seeded: the same report twice
    assert device_intervals(_devices(gains[:1], gains[:1])) is None


def test_no_device_harmed_is_not_certainty_the_rule_of_three_bounds_it() -> None:
    found = device_intervals(_devices([0.0] * 30, [-0.1] * 3 + [0.1] * 27))
    assert found is not None
    assert found.get("fraction_harmed") == (0.0, pytest.approx(0.1))
    low, high = found.get("naive.fraction_harmed")  # type: ignore[misc]
    assert low <= 0.1 <= high and high > low


def test_the_page_states_the_trade_off_with_intervals(run_copy: Path) -> None:
    summary = json.loads((run_copy / "summary.json").read_text())
    report = write_report(run_copy)
    assert report.tradeoff is not None
    naive = f"{100 * summary['naive']['accuracy']['mean']:.1f}%"
    recipe = f"{100 * summary['accuracy_personal']['mean']:.1f}%"
    assert report.tradeoff.startswith("The trade-off measured: naive fine-tuning")
    assert naive in report.tradeoff and recipe in report.tradeoff
    assert report.tradeoff.count("95% interval") == 4
    # It describes the recipe the run used, not a fixed one.
    from devicetune.report.headline import RECIPES

    method = summary["personalization_method"]["name"]
    assert RECIPES[method] in report.tradeoff
    text = report.html.read_text()
    assert '<p class="tradeoff">' in text and "95% interval</th>" in text
    assert text.count("data-interval=") >= 5


def test_an_artifact_section_lists_files_parity_and_signatures(run_copy: Path,
                                                               small_artifacts: Path) -> None:
    shutil.copytree(small_artifacts, run_copy / "artifacts")
    page = read_page(write_report(run_copy).html)
    assert "artifacts" in page.sections
    text = (run_copy / "report.html").read_text()
    parity = json.loads((small_artifacts / "parity.json").read_text())
    passed = sum(c["passed"] for c in parity["checks"])
    assert f"Parity with TensorFlow: {passed} of {len(parity['checks'])} checks passed" in text
    assert "not signed" in text and "model.tflite" in text and "train_dp" in text
    size = (small_artifacts / "model.tflite").stat().st_size
    assert f"{size:,}" in text


def test_a_constant_per_round_value_gets_no_chart(tmp_path: Path) -> None:
    run = write_server_run(tmp_path / "server")
    rows = [json.loads(line) | {"attempts": 1}
            for line in (run / "metrics.jsonl").read_text().splitlines()]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = write_report(run).html.read_text()
    assert "Per-round values recorded in metrics.jsonl: clip_norm." in text
    assert "attempts" not in text


def test_a_flagged_version_says_why_it_shipped(tmp_path: Path) -> None:
    text = write_report(write_server_run(tmp_path / "server")).html.read_text()
    assert "the emit gate compares the global accuracy only" in text


def test_axes_do_not_stretch_tiny_ranges() -> None:
    assert zero_based([6.40, 6.45]) == (0.0, pytest.approx(6.45 * 1.15))
    assert zero_based([-1.0, 2.0]) is None
    low, high = accuracy_limits([92.0, 95.0])
    assert high - low >= 10 and low <= 92 and high >= 95
    assert accuracy_limits([99.0, 100.0])[1] == 100.0
