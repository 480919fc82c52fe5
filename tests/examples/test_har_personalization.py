"""examples/har_personalization/run.py --quick: the three jobs end to end, as a team
would run them (real build, LiteRT, Flower processes, registry over HTTP, signatures)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from devicetune.artifacts.signing import verify_folder
from devicetune.device.litert import LiteRTModel
from tests.conftest import PROJECT_ROOT, run_cli

SCRIPT = PROJECT_ROOT / "examples" / "har_personalization" / "run.py"


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory: pytest.TempPathFactory, data_dir: Path
                ) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("har-example") / "run"
    result = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out)],
                            capture_output=True, text=True, timeout=1800, cwd=PROJECT_ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, result.stdout


def test_every_step_runs_and_says_what_it_ran(walkthrough: tuple[Path, str]) -> None:
    out, stdout = walkthrough
    for command in ("build", "simulate", "report", "keys generate", "serve", "device",
                    "registry serve", "registry fetch", "verify"):
        assert f"$ devicetune {command} " in stdout, command
    assert [line.split(".")[0] for line in stdout.splitlines() if line.startswith("== ")] \
        == [f"== {k}" for k in range(1, 9)]
    assert (out / "simulate" / "report.html").is_file()


def test_headline_numbers_are_the_runs_own(walkthrough: tuple[Path, str]) -> None:
    out, stdout = walkthrough
    headline = json.loads((out / "walkthrough.json").read_text())
    summary = json.loads((out / "simulate" / "summary.json").read_text())
    assert headline["parity_passed"] is True
    for key, value in headline["simulation"].items():
        assert summary[key] == value, key
    assert f"mean gain {summary['mean_gain'] * 100:+.1f} points" in stdout
    versions = [json.loads(line) for line in
                (out / "serve" / "versions.jsonl").read_text().splitlines()]
    assert versions[0]["version"] == 1 and versions[0]["emitted"]
    assert headline["fetched_version"] == max(v["version"] for v in versions if v["emitted"])
    # The downloaded model tells HAR activities apart on a person no step saw (chance: 1/6).
    assert headline["app_accuracy_unseen_subject"] > 0.6


def test_the_downloaded_model_is_the_servers_last_emitted_one(
        walkthrough: tuple[Path, str]) -> None:
    out, _ = walkthrough
    manifest = verify_folder(out / "app", out / "keys" / "public_key.pem")
    versions = [json.loads(line) for line in
                (out / "serve" / "versions.jsonl").read_text().splitlines()]
    last = next(v for v in reversed(versions) if v["emitted"])
    assert manifest.version == last["version"]
    update = np.load(out / "app" / "update.npz")
    stored = LiteRTModel(out / "app" / "model.tflite").get_weights()
    assert sorted(stored) == sorted(update.files)
    for name in update.files:
        np.testing.assert_array_equal(stored[name], update[name])
    if last["round"] == len((out / "serve" / "metrics.jsonl").read_text().splitlines()):
        served = np.load(out / "serve" / "global_weights.npz")
        for name in update.files:
            np.testing.assert_array_equal(update[name], served[name])


def test_a_tampered_download_is_refused(walkthrough: tuple[Path, str],
                                        tmp_path: Path) -> None:
    out, _ = walkthrough
    app = tmp_path / "app"
    app.mkdir()
    for path in (out / "app").iterdir():
        (app / path.name).write_bytes(path.read_bytes())
    model = bytearray((app / "model.tflite").read_bytes())
    model[len(model) // 2] ^= 0x01
    (app / "model.tflite").write_bytes(bytes(model))
    result = run_cli("verify", str(app), "--public-key", str(out / "keys" / "public_key.pem"))
    assert result.returncode == 2 and "model.tflite" in result.stderr, result.stderr


def test_an_existing_output_folder_is_left_alone(walkthrough: tuple[Path, str]) -> None:
    out, _ = walkthrough
    before = sorted(p.name for p in out.iterdir())
    result = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out)],
                            capture_output=True, text=True, timeout=120, cwd=PROJECT_ROOT)
    assert result.returncode != 0 and "exists" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == before
