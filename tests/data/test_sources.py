from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from devicetune.config import FleetConfig
from devicetune.data import DirichletPartition, SyntheticFleet, load_har, open_fleet_data
from devicetune.errors import ConfigError


def fleet(**data) -> FleetConfig:
    devices = data.pop("devices", 10)
    return FleetConfig.model_validate({"devices": devices, "data": data})


def test_natural_har_partition_gives_each_device_one_subject(data_dir: Path) -> None:
    source = open_fleet_data(fleet(source="har", subjects="16-30", devices=15), 0, data_dir)
    assert source.devices == 15
    first = source.device(0)
    assert set(first.user.tolist()) == {16}
    assert len(first) == 366  # subject 16, per the dataset README
    assert source.example_shape == (128, 9)


def test_natural_partition_refuses_more_devices_than_users(data_dir: Path) -> None:
    with pytest.raises(ConfigError, match="fleet.devices = 10: .* only 6 users"):
        open_fleet_data(fleet(source="fsdd", devices=10), 0, data_dir)


def test_unknown_subjects_are_named(data_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"subjects = \[31, 32\]"):
        open_fleet_data(fleet(source="har", subjects=[1, 31, 32]), 0, data_dir)


def test_dirichlet_partition_deals_every_example_once(data_dir: Path) -> None:
    har = load_har(data_dir).for_users([1, 2, 3])
    part = DirichletPartition(har, devices=7, alpha=0.3, seed=0)
    sizes = [len(part.device(k)) for k in range(7)]
    assert sum(sizes) == len(har)
    mixes = np.stack([part.device(k).label_counts() / max(1, sizes[k]) for k in range(7)])
    assert mixes.std(axis=0).mean() > 0.05  # alpha 0.3 gives skewed label mixes


def test_synthetic_source_is_the_generator(data_dir: Path) -> None:
    source = open_fleet_data(fleet(source="synthetic", devices=12), 5, data_dir)
    assert isinstance(source, SyntheticFleet)
    np.testing.assert_array_equal(source.device(3).x, SyntheticFleet(12, seed=5).device(3).x)
