"""UCI HAR smartphone sensor windows, split naturally by subject (30 people).

Two sources: the compact ``har.npz`` in the shared datasets folder, and the original
UCI folder (``train/Inertial Signals/*.txt``, ``subject_train.txt``, ...) that users
download themselves.

References:
    Anguita et al., "A Public Domain Dataset for Human Activity Recognition Using
    Smartphones", ESANN 2013.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from devicetune.data.labeled import LabeledData
from devicetune.data.npz import read_npz
from devicetune.errors import DataError

HAR_FILE = "har.npz"
CHANNELS = (
    "body_acc_x", "body_acc_y", "body_acc_z",
    "body_gyro_x", "body_gyro_y", "body_gyro_z",
    "total_acc_x", "total_acc_y", "total_acc_z",
)
ACTIVITIES = (
    "WALKING", "WALKING_UPSTAIRS", "WALKING_DOWNSTAIRS", "SITTING", "STANDING", "LAYING",
)
WINDOW_STEPS = 128


def load_har(data_dir: Path) -> LabeledData:
    """Load ``har.npz``: 10,299 windows of 128 steps x 9 channels, 30 subjects, 6 classes.

    Rows keep the file's order, which is time order within a subject.

    Raises:
        DataError: the file is missing, unreadable, or lacks the expected arrays.
    """
    path = Path(data_dir) / HAR_FILE
    arrays = read_npz(path, {"inertial", "label", "subject", "split", "activity_names"},
                      dataset="har")
    x = arrays["inertial"]
    if x.ndim != 3 or x.shape[1:] != (WINDOW_STEPS, len(CHANNELS)):
        raise DataError(
            f"{path}: 'inertial' has shape {x.shape}, expected (n, {WINDOW_STEPS}, "
            f"{len(CHANNELS)})"
        )
    return LabeledData(
        x=x.astype(np.float32, copy=False),
        y=arrays["label"].astype(np.int64),
        user=arrays["subject"].astype(np.int64),
        class_names=tuple(str(a) for a in arrays["activity_names"]),
        split=arrays["split"].astype(np.int64),
        meta={"source": str(path), "channels": CHANNELS},
    )


def load_har_uci(root: Path) -> LabeledData:
    """Load the original UCI HAR folder (the one holding ``train/`` and ``test/``).

    Train rows come first, then test rows, each in the files' order; labels are shifted
    to 0..5.

    Raises:
        DataError: a file is missing or its rows do not line up.
    """
    root = Path(root)
    if (root / "UCI HAR Dataset").is_dir():
        root = root / "UCI HAR Dataset"
    parts = [_read_uci_split(root, split) for split in ("train", "test")]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    subject = np.concatenate([p[2] for p in parts])
    split = np.concatenate([np.full(len(p[1]), i, dtype=np.int64) for i, p in enumerate(parts)])
    return LabeledData(
        x=x, y=y, user=subject, class_names=_uci_activity_names(root), split=split,
        meta={"source": str(root), "channels": CHANNELS},
    )


def _read_uci_split(root: Path, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    folder = root / split
    channels = []
    for name in CHANNELS:
        path = folder / "Inertial Signals" / f"{name}_{split}.txt"
        data = _read_txt(path, dtype=np.float32, ndmin=2)
        if data.shape[1] != WINDOW_STEPS:
            raise DataError(f"{path}: rows have {data.shape[1]} values, expected {WINDOW_STEPS}")
        channels.append(data)
    labels = _read_txt(folder / f"y_{split}.txt", dtype=np.int64, ndmin=1)
    subjects = _read_txt(folder / f"subject_{split}.txt", dtype=np.int64, ndmin=1)
    rows = {len(c) for c in channels} | {len(labels), len(subjects)}
    if len(rows) != 1:
        raise DataError(
            f"{folder}: the 9 signal files, y_{split}.txt and subject_{split}.txt must have "
            f"the same number of rows, found {sorted(rows)}"
        )
    if labels.size and (labels.min() < 1 or labels.max() > len(ACTIVITIES)):
        raise DataError(f"{folder / f'y_{split}.txt'}: labels must be 1..{len(ACTIVITIES)}")
    return np.stack(channels, axis=-1), labels - 1, subjects


def _uci_activity_names(root: Path) -> tuple[str, ...]:
    path = root / "activity_labels.txt"
    if not path.exists():
        return ACTIVITIES
    names = [line.split()[1] for line in path.read_text().splitlines() if line.strip()]
    return tuple(names) if len(names) == len(ACTIVITIES) else ACTIVITIES


def _read_txt(path: Path, dtype: type, ndmin: int) -> np.ndarray:
    if not path.exists():
        raise DataError(f"{path}: not found; expected the original UCI HAR folder layout "
                        "(train/Inertial Signals/body_acc_x_train.txt, train/y_train.txt, ...)")
    try:
        return np.loadtxt(path, dtype=dtype, ndmin=ndmin)
    except ValueError as exc:
        raise DataError(f"{path}: not a whitespace-separated table of numbers ({exc})") from None
