from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from devicetune.data import load_fsdd
from devicetune.errors import DataError


def test_fsdd_has_3000_clips_from_6_speakers(data_dir: Path) -> None:
    fsdd = load_fsdd(data_dir)
    assert len(fsdd) == 3000
    assert len(fsdd.user_names) == 6
    assert np.bincount(fsdd.user).tolist() == [500] * 6
    assert np.bincount(fsdd.digit).tolist() == [300] * 10
    clip = fsdd.clip(0)
    assert clip.dtype == np.float32 and clip.min() >= -1.0 and clip.max() < 1.0
    assert 0.1 < len(clip) / fsdd.sample_rate < 2.5


def test_spectrograms_keep_labels_and_speakers(data_dir: Path) -> None:
    fsdd = load_fsdd(data_dir)
    images = fsdd.spectrograms(frames=32, bands=32)
    assert images.x.shape == (3000, 32, 32, 1)
    assert np.isfinite(images.x).all()
    assert images.users() == list(range(6))
    assert images.num_classes == 10
    # Different digits look different: class-mean images are not all alike.
    means = np.stack([images.x[images.y == d].mean(axis=0) for d in range(10)])
    assert np.abs(means[0] - means[1]).mean() > 0.1


def test_fsdd_with_misaligned_offsets_is_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "fsdd.npz", audio=np.zeros(10, np.int16),
             offsets=np.array([0, 5]), digit=np.zeros(2), user=np.zeros(2),
             user_names=np.array(["a"]), split=np.zeros(2), sample_rate=np.int32(8000))
    with pytest.raises(DataError, match="'offsets' must have 3 entries"):
        load_fsdd(tmp_path)


def test_missing_fsdd_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"fsdd\.npz: not found"):
        load_fsdd(tmp_path)
