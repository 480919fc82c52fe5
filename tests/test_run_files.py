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
