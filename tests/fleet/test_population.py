from __future__ import annotations

from pathlib import Path

import numpy as np

from devicetune.fleet.population import Population
from tests.conftest import small_config


def population(data_dir: Path, **fleet) -> Population:
    config = small_config(fleet=fleet)
    return Population.from_config(config.fleet, config.seed, data_dir)


def test_profiles_are_deterministic_and_follow_the_mix(data_dir: Path) -> None:
    pop = population(data_dir, devices=2000, platform_mix={"android": 0.7, "ios": 0.3})
    again = population(data_dir, devices=2000, platform_mix={"android": 0.7, "ios": 0.3})
    profiles = [pop.profile(k) for k in range(2000)]
    assert profiles[17] == again.profile(17)
    ios = np.mean([p.platform == "ios" for p in profiles])
    assert abs(ios - 0.3) < 0.04
    tiers = {p.tier for p in profiles}
    assert tiers == {"high", "mid", "low"}
    assert all(p.speed == {"high": 1.0, "mid": 0.6, "low": 0.3}[p.tier] for p in profiles)


def test_local_data_splits_in_time_order(data_dir: Path) -> None:
    pop = population(data_dir, data={"windows_per_device": 40, "test_fraction": 0.25})
    whole = pop.source.device(2)
    local = pop.local_data(2)
    assert len(local.train) + len(local.test) == len(whole)
    assert len(local.test) == round(len(whole) * 0.25)
    np.testing.assert_array_equal(local.train.x, whole.x[: len(local.train)])
    np.testing.assert_array_equal(local.test.y, whole.y[len(local.train):])


def test_availability_and_dropout_are_seeded_per_round(data_dir: Path) -> None:
    pop = population(data_dir, devices=5000, availability=0.6, dropout=0.2)
    first, second = pop.available(1), pop.available(2)
    assert abs(len(first) / 5000 - 0.6) < 0.03
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(first, pop.available(1))
    drops = np.mean([pop.drops_out(k, 1) for k in range(5000)])
    assert abs(drops - 0.2) < 0.03
    assert pop.drops_out(9, 4) == pop.drops_out(9, 4)
