"""examples/spoken_digits/run.py --quick: leave-one-speaker-out on FSDD, end to end (real
build with Core ML, real LiteRT and Core ML reference on the phones), two folds."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

SCRIPT = PROJECT_ROOT / "examples" / "spoken_digits" / "run.py"
SPEAKERS = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path
              ) -> tuple[Path, dict, str]:
    out = tmp_path_factory.mktemp("spoken-digits") / "run"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out), "--data", str(data_dir)],
        capture_output=True, text=True, timeout=900, cwd=PROJECT_ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, json.loads((out / "speakers.json").read_text()), result.stdout


def test_every_held_out_speaker_has_a_row_read_from_its_own_run(
        quick_run: tuple[Path, dict, str]) -> None:
    out, table, stdout = quick_run
    rows = table["speakers"]
    assert [r["speaker"] for r in rows] == ["george", "jackson"]
    for row in rows:
        run_dir = out / row["speaker"]
        with (run_dir / "devices.csv").open(newline="") as handle:
            (device,) = list(csv.DictReader(handle))
        summary = json.loads((run_dir / "summary.json").read_text())
        assert row["acc_global"] == float(device["acc_global"])
        assert row["acc_personal"] == float(device["acc_personal"])
        assert row["acc_naive"] == float(device["acc_naive"])
        assert (row["n_train"], row["n_test"]) == (int(device["n_train"]),
                                                   int(device["n_test"])) == (250, 250)
        assert row["platform"] == device["platform"]
        assert row["gain"] == row["acc_personal"] - row["acc_global"]
        # devices.csv keeps 6 decimals; summary.json the full value.
        assert summary["devices"] == 1
        assert summary["accuracy_global"]["mean"] == pytest.approx(row["acc_global"], abs=5e-7)
        assert summary["accuracy_personal"]["mean"] == pytest.approx(row["acc_personal"],
                                                                     abs=5e-7)
        assert summary["mean_gain"] == pytest.approx(row["gain"], abs=1e-6)
        assert summary["global_accuracy_final"] == pytest.approx(row["acc_global"], abs=5e-7)
        assert row["acc_global_before_rounds"] == summary["global_accuracy_initial"]
        assert (f"| {row['speaker']} | {row['platform']} | 250 | 250 "
                f"| {100 * row['acc_global_before_rounds']:.1f}% "
                f"| {100 * row['acc_global']:.1f}% | {100 * row['acc_personal']:.1f}% "
                f"| {100 * row['gain']:+.1f} | {100 * row['acc_naive']:.1f}% |") in stdout
    assert table["mean"]["gain"] == pytest.approx(sum(r["gain"] for r in rows) / len(rows))
    # The seed moves with the fold: both runtimes personalise someone.
    assert {r["platform"] for r in rows} == {"android", "ios"}


def test_the_held_out_speaker_is_in_no_training_but_their_own(
        quick_run: tuple[Path, dict, str]) -> None:
    out, table, _ = quick_run
    for row in table["speakers"]:
        held_out = SPEAKERS.index(row["speaker"])
        config = tomllib.loads((out / row["speaker"] / "config.toml").read_text())
        others = [s for s in range(6) if s != held_out]
        assert config["model"]["backbone"]["pretrain"]["subjects"] == others
        assert config["fleet"]["data"]["subjects"] == others
        assert config["fleet"]["personalization"]["subjects"] == [held_out]


def test_the_shipped_models_pass_parity_and_recognise_a_new_voice(
        quick_run: tuple[Path, dict, str]) -> None:
    out, table, _ = quick_run
    for row in table["speakers"]:
        parity = json.loads((out / row["speaker"] / "artifacts" / "parity.json").read_text())
        assert parity["passed"]
        names = {check["name"] for check in parity["checks"]}
        # Core ML was built for conv2d_small on 32x32x1 and its update checked too.
        assert any(n.startswith("tflite.train.") for n in names)
        assert any(n.startswith("coreml.update.") for n in names)
        # A speaker no training saw, ten digits (chance: 10%), even with the quick budget.
        assert row["acc_global"] > 0.25, row
