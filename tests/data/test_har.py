from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from devicetune.data import load_har, load_har_uci
from devicetune.data.har import CHANNELS
from devicetune.errors import DataError


def test_har_has_the_published_shape(data_dir: Path) -> None:
    har = load_har(data_dir)
    assert len(har) == 10_299
    assert har.x.shape == (10_299, 128, 9)
    assert har.users() == list(range(1, 31))
    assert har.num_classes == 6
    assert har.label_counts().tolist() == [1722, 1544, 1406, 1777, 1906, 1944]
    assert len(har.for_users([1])) == 347


def _write_uci_folder(root: Path, har, rows_by_split: dict[str, np.ndarray]) -> None:
    for split, rows in rows_by_split.items():
        folder = root / "UCI HAR Dataset" / split
        (folder / "Inertial Signals").mkdir(parents=True)
        for c, name in enumerate(CHANNELS):
            np.savetxt(folder / "Inertial Signals" / f"{name}_{split}.txt",
                       har.x[rows, :, c], fmt="%.8e")
        np.savetxt(folder / f"y_{split}.txt", har.y[rows] + 1, fmt="%d")
        np.savetxt(folder / f"subject_{split}.txt", har.user[rows], fmt="%d")


def test_original_uci_folder_layout_loads_the_same_windows(data_dir: Path,
                                                           tmp_path: Path) -> None:
    har = load_har(data_dir)
    rows = {"train": np.arange(0, 40), "test": np.arange(7352, 7372)}
    _write_uci_folder(tmp_path, har, rows)
    uci = load_har_uci(tmp_path)
    both = np.concatenate(list(rows.values()))
    np.testing.assert_allclose(uci.x, har.x[both], rtol=1e-6)
    np.testing.assert_array_equal(uci.y, har.y[both])
    np.testing.assert_array_equal(uci.user, har.user[both])
    assert uci.split.tolist() == [0] * 40 + [1] * 20


def test_uci_folder_with_a_missing_file_names_it(data_dir: Path, tmp_path: Path) -> None:
    har = load_har(data_dir)
    _write_uci_folder(tmp_path, har, {"train": np.arange(5), "test": np.arange(5)})
    victim = tmp_path / "UCI HAR Dataset" / "test" / "subject_test.txt"
    victim.unlink()
    with pytest.raises(DataError, match="subject_test.txt: not found"):
        load_har_uci(tmp_path)


def test_uci_folder_with_misaligned_rows_is_refused(data_dir: Path, tmp_path: Path) -> None:
    har = load_har(data_dir)
    _write_uci_folder(tmp_path, har, {"train": np.arange(5), "test": np.arange(5)})
    (tmp_path / "UCI HAR Dataset" / "train" / "y_train.txt").write_text("1\n2\n")
    with pytest.raises(DataError, match="same number of rows"):
        load_har_uci(tmp_path)


def test_missing_har_file_names_the_path_and_the_variable(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"har\.npz: not found; fetch it with `devicetune "
                       r"data download har --to .*`, or set DEVICETUNE_DATA"):
        load_har(tmp_path)


def test_corrupt_har_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "har.npz").write_bytes(b"PK\x03\x04 this is not a zip")
    with pytest.raises(DataError, match="not a readable .npz"):
        load_har(tmp_path)


def test_har_file_without_expected_arrays_is_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "har.npz", inertial=np.zeros((2, 128, 9), np.float32))
    with pytest.raises(DataError, match="missing array.*label"):
        load_har(tmp_path)


def test_har_file_with_wrong_window_shape_is_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "har.npz", inertial=np.zeros((2, 64, 9), np.float32),
             label=np.zeros(2), subject=np.ones(2), split=np.zeros(2),
             activity_names=np.array(["a"]))
    with pytest.raises(DataError, match=r"expected \(n, 128, 9\)"):
        load_har(tmp_path)
