"""devices.csv as simulate writes it and report reads it back."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from devicetune.run_files import PersonalizationResult, read_device, write_devices


def test_devices_csv_reads_back_what_was_written(tmp_path: Path) -> None:
    written = [PersonalizationResult(0, "android", "high", 12, 12, 0.75, 0.875, 3, False, 0.5),
               PersonalizationResult(1, "ios", "low", 4, 4, 0.5, 0.5, 0, True)]
    write_devices(tmp_path / "devices.csv", written)
    with (tmp_path / "devices.csv").open(newline="") as handle:
        read = [read_device(row) for row in csv.DictReader(handle)]
    assert read == written
    assert read[0].gain == pytest.approx(0.125)


@pytest.mark.parametrize("change", [{"acc_global": "nan"}, {"epochs": "three"}])
def test_a_bad_devices_row_is_refused(change: dict[str, str]) -> None:
    row = {"device_id": "0", "platform": "android", "tier": "mid", "n_train": "5",
           "n_test": "5", "acc_global": "0.5", "acc_personal": "0.6", "epochs": "2",
           "kept_global": "False", "acc_naive": ""}
    assert read_device(row).acc_naive is None
    with pytest.raises(ValueError):
        read_device({**row, **change})


def test_a_run_folder_is_replaced_only_with_overwrite(tmp_path: Path) -> None:
    from devicetune.errors import RunFolderError
    from devicetune.run_files import clear_run_folder

    run = tmp_path / "run"
    clear_run_folder(run, overwrite=False)  # absent: fine, nothing made
    run.mkdir()
    clear_run_folder(run, overwrite=False)  # empty: fine
    (run / "metrics.jsonl").write_text("{}\n")
    (run / "artifacts").mkdir()
    with pytest.raises(RunFolderError, match="not empty.*--overwrite"):
        clear_run_folder(run, overwrite=False)
    with pytest.raises(RunFolderError, match="inside --out"):
        clear_run_folder(run, overwrite=True, keep=run / "artifacts")
    assert (run / "metrics.jsonl").exists()
    clear_run_folder(run, overwrite=True)
    assert not run.exists()


def test_overwrite_refuses_a_folder_that_holds_no_run(tmp_path: Path) -> None:
    from devicetune.errors import RunFolderError
    from devicetune.run_files import clear_run_folder

    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RunFolderError, match="holds no run"):
        clear_run_folder(tmp_path, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    with pytest.raises(RunFolderError, match="is a file"):
        clear_run_folder(tmp_path / "notes.txt", overwrite=True)


def test_simulate_refuses_an_existing_run_folder(tmp_path: Path) -> None:
    from tests.conftest import run_cli

    (tmp_path / "config.toml").write_text("seed = 0\n")
    result = run_cli("simulate", "simulations/quickstart.toml", "--out", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: --out {tmp_path} is not empty")
    assert "--overwrite" in result.stderr
    assert (tmp_path / "config.toml").read_text() == "seed = 0\n"
