"""A population of simulated phones: who they are, what data they hold, who is online.

Nothing per device is stored: a device's profile and data are derived from the seed
and its id when it is needed, so the population costs the same memory at 100 devices
as at 100,000.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from devicetune.config import FleetConfig
from devicetune.data.labeled import LabeledData
from devicetune.data.sources import DeviceDataSource, FleetInput, open_fleet_data, user_of
from devicetune.fleet.streams import first_uniforms

_PROFILE_CACHE = 100_000


@dataclass(frozen=True)
class DeviceProfile:
    """What kind of phone a device is and how it behaves in a round."""

    device_id: int
    platform: str  # "android" or "ios"
    tier: str
    speed: float  # relative compute speed (1.0 = the fastest tier)
    availability: float  # P(online and eligible in a round)
    dropout: float  # P(drops out mid-round once sampled)
    local_epochs: int


@dataclass(frozen=True)
class LocalData:
    """A device's data split in time order: the past trains, the future tests."""

    train: LabeledData
    test: LabeledData


class Population:
    """The devices a `FleetConfig` describes.

    Args:
        fleet: the fleet section of the config.
        source: where each device's examples come from.
        seed: the run's seed; profiles, availability and dropout derive from it.
        test_fraction: the share of each device's data (its latest) kept for testing;
            default ``fleet.data.test_fraction``.
    """

    def __init__(self, fleet: FleetConfig, source: DeviceDataSource, seed: int,
                 test_fraction: float | None = None) -> None:
        self.fleet = fleet
        self.source = source
        self.seed = seed
        self.test_fraction = test_fraction or fleet.data.test_fraction
        self.devices = source.devices
        self._platforms = sorted(fleet.platform_mix)
        self._platform_p = np.array([fleet.platform_mix[p] for p in self._platforms])
        self._tier_p = np.array([t.share for t in fleet.tiers])
        self._profiles: dict[int, DeviceProfile] = {}

    @classmethod
    def from_config(cls, fleet: FleetConfig, seed: int, data_dir: Path,
                    data: FleetInput | None = None,
                    class_names: tuple[str, ...] | list[str] | None = None,
                    test_fraction: float | None = None) -> Population:
        """The population of ``fleet``, on ``data`` when a team gives its own."""
        source = open_fleet_data(fleet, seed, data_dir, data=data, class_names=class_names)
        return cls(fleet, source, seed, test_fraction)

    def user_of(self, device_id: int) -> str:
        """The id of the person behind a device, as the data had it ("" when mixed)."""
        return user_of(self.source, device_id)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.source.class_names

    def profile(self, device_id: int) -> DeviceProfile:
        cached = self._profiles.get(device_id)
        if cached is not None:
            return cached
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 4, device_id]))
        platform = self._platforms[int(rng.choice(len(self._platforms), p=self._platform_p))]
        tier = self.fleet.tiers[int(rng.choice(len(self.fleet.tiers), p=self._tier_p))]
        profile = DeviceProfile(
            device_id=device_id, platform=platform, tier=tier.name, speed=tier.speed,
            availability=self.fleet.availability, dropout=self.fleet.dropout,
            local_epochs=self.fleet.local_epochs,
        )
        if len(self._profiles) < _PROFILE_CACHE:  # a few MB even for a large fleet
            self._profiles[device_id] = profile
        return profile

    def local_data(self, device_id: int, data: LabeledData | None = None) -> LocalData:
        """The device's examples, the first part (in time) for training, the rest for
        testing what the device will see next (``data``: its examples, if already read)."""
        data = self.source.device(device_id) if data is None else data
        cut = self.train_examples(device_id, len(data))
        return LocalData(train=data.select(slice(0, cut)), test=data.select(slice(cut, None)))

    def train_examples(self, device_id: int, examples: int) -> int:
        """How many of a device's ``examples`` (its first, in time) it trains on: all
        but the latest ``test_fraction``, and at least one on each side.

        Raises:
            DataError: the device has fewer than 2 examples.
        """
        if examples < 2:
            from devicetune.errors import DataError

            raise DataError(f"device {device_id} (user {self.user_of(device_id)!r}) has "
                            f"{examples} example(s); each device needs at least 2, one to "
                            "train on and one to test on")
        n_test = int(round(examples * self.test_fraction))
        return examples - min(max(n_test, 1), examples - 1)

    def available(self, server_round: int) -> np.ndarray:
        """Ids of the devices online and eligible in this round (charging, idle, Wi-Fi)."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 5, server_round]))
        return np.flatnonzero(rng.random(self.devices) < self.fleet.availability)

    def poisson_sample(self, server_round: int, rate: float) -> np.ndarray:
        """Ids chosen by an independent coin flip per device with probability ``rate``
        (Poisson sampling: what DP accounting of a round assumes)."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 12, server_round]))
        return np.flatnonzero(rng.random(self.devices) < rate)

    def drops_out(self, device_id: int, server_round: int) -> bool:
        """Whether a sampled device leaves mid-round (deterministic per round)."""
        return bool(self.dropouts([device_id], server_round)[0])

    def dropouts(self, device_ids: Sequence[int], server_round: int) -> np.ndarray:
        """`drops_out` of each of ``device_ids``, decided for all of them at once: each
        device's coin is the first draw of its own generator, seeded by
        ``[seed, 6, round, device]``, so it does not depend on who else is asked."""
        if self.fleet.dropout == 0.0:  # a draw in [0, 1) is never below 0
            return np.zeros(len(device_ids), bool)
        return first_uniforms((self.seed, 6, server_round), device_ids) < self.fleet.dropout

    def sample_ids(self, count: int, salt: int) -> list[int]:
        """A fixed, seeded choice of ``count`` devices (for evaluation sets)."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 7, salt]))
        count = min(count, self.devices)
        return sorted(int(k) for k in rng.choice(self.devices, size=count, replace=False))
