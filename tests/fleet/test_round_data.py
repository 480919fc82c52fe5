from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from devicetune.fleet.population import Population
from devicetune.fleet.round_data import train_data_of
from tests.conftest import small_config


@pytest.mark.parametrize("data, test_fraction", [
    ({"windows_per_device": 30}, None),
    ({"windows_per_device": 30, "test_fraction": 0.3}, 0.6),  # the Population's own cut
    ({"windows_per_device": 30, "label_shift": {"past_classes": 2,
                                                "future_overlap": 0.2}}, None),
    ({"windows_per_device": 30, "order": "class_grouped"}, None),  # read whole, then cut
])
def test_a_round_trains_on_exactly_the_past_local_data_holds(
        data_dir: Path, data: dict, test_fraction: float | None) -> None:
    config = small_config(fleet={"devices": 300, "data": data})
    population = Population.from_config(config.fleet, config.seed, data_dir,
                                        test_fraction=test_fraction)
    devices = [5, 0, 299, 17, 123]
    for device, train in zip(devices, train_data_of(population, devices), strict=True):
        expected = population.local_data(device).train
        np.testing.assert_array_equal(train.x, expected.x)
        np.testing.assert_array_equal(train.y, expected.y)
        np.testing.assert_array_equal(train.user, expected.user)
