from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from devicetune.config import FleetConfig
from devicetune.data import load_fsdd
from devicetune.data.fsdd import log_mel
from devicetune.errors import DataError
from devicetune.fleet.population import Population


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


def test_spectrograms_come_in_recording_order(data_dir: Path) -> None:
    fsdd = load_fsdd(data_dir)
    images = fsdd.spectrograms()
    order = fsdd.recording_order()
    # Speaker 0's first clips: repetition 0 of digits 0..9, then repetition 1.
    assert [str(name) for name in np.load(data_dir / "fsdd.npz")["file_names"][order[:11]]] \
        == [f"{d}_george_0.wav" for d in range(10)] + ["0_george_1.wav"]
    assert images.y[:20].tolist() == list(range(10)) * 2
    k = 1234
    assert np.array_equal(images.x[k, ..., 0], log_mel(fsdd.clip(order[k]), 8000, 32, 32))


def test_a_speakers_time_split_trains_and_tests_on_every_digit(data_dir: Path) -> None:
    """The past/future split of a phone's data: not digits 0-4 against 5-9, but
    repetitions 0-24 of every digit against repetitions 25-49."""
    fleet = FleetConfig.model_validate({"devices": 6, "data": {"source": "fsdd",
                                                               "test_fraction": 0.5}})
    population = Population.from_config(fleet, 0, data_dir)
    for device_id in (0, 5):
        local = population.local_data(device_id)
        assert local.train.label_counts().tolist() == [25] * 10
        assert local.test.label_counts().tolist() == [25] * 10


def test_fsdd_with_misaligned_offsets_is_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "fsdd.npz", audio=np.zeros(10, np.int16),
             offsets=np.array([0, 5]), digit=np.zeros(2), user=np.zeros(2),
             user_names=np.array(["a"]), split=np.zeros(2), sample_rate=np.int32(8000),
             recording_index=np.zeros(2))
    with pytest.raises(DataError, match="'offsets' must have 3 entries"):
        load_fsdd(tmp_path)


def test_missing_fsdd_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"fsdd\.npz: not found"):
        load_fsdd(tmp_path)
