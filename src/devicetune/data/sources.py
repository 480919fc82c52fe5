"""Where a fleet's per-device data comes from: one interface, three partitions.

A `DeviceDataSource` hands out one device's examples, in time order, on demand:

- `SyntheticFleet`: the built-in generator (any number of devices, nothing stored);
- `NaturalPartition`: a real dataset split by the person who produced it (HAR subject,
  FSDD speaker), the split a phone fleet actually has;
- `DirichletPartition`: a pooled dataset split by a Dirichlet draw over labels per
  device (Hsu et al. 2019, "Measuring the Effects of Non-Identical Data Distribution").
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from devicetune.config import FleetConfig
from devicetune.data.labeled import LabeledData
from devicetune.data.synthetic import SyntheticFleet
from devicetune.errors import ConfigError


class DeviceDataSource(Protocol):
    """Per-device data for a fleet of ``devices`` devices."""

    devices: int

    @property
    def class_names(self) -> tuple[str, ...]: ...

    @property
    def example_shape(self) -> tuple[int, ...]: ...

    def device(self, device_id: int) -> LabeledData: ...


class _Partition:
    """Rows of one pooled dataset dealt out to devices; device ``k`` gets ``_rows[k]``."""

    def __init__(self, data: LabeledData, rows: list[np.ndarray]) -> None:
        self._data = data
        self._rows = rows
        self.devices = len(rows)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self._data.class_names

    @property
    def example_shape(self) -> tuple[int, ...]:
        return self._data.example_shape

    def device(self, device_id: int) -> LabeledData:
        return self._data.select(self._rows[device_id])


class NaturalPartition(_Partition):
    """Device ``k`` holds every example of the ``k``-th user in ``users``."""

    def __init__(self, data: LabeledData, users: list[int]) -> None:
        self.users = list(users)
        super().__init__(data, [np.flatnonzero(data.user == u) for u in self.users])


class DirichletPartition(_Partition):
    """Each device draws a label mix from Dirichlet(alpha); examples are dealt out so
    every pooled example lands on exactly one device. Row order is kept per device."""

    def __init__(self, data: LabeledData, devices: int, alpha: float, seed: int) -> None:
        rng = np.random.default_rng(np.random.SeedSequence([seed, 2]))
        owner = np.empty(len(data), dtype=np.int64)
        for label in range(data.num_classes):
            rows = np.flatnonzero(data.y == label)
            rng.shuffle(rows)
            shares = rng.dirichlet(np.full(devices, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(rows)).astype(int)
            for device_id, part in enumerate(np.split(rows, cuts)):
                owner[part] = device_id
        super().__init__(data, [np.flatnonzero(owner == d) for d in range(devices)])


def open_fleet_data(fleet: FleetConfig, seed: int, data_dir: Path) -> DeviceDataSource:
    """The data source a `FleetConfig` describes.

    Raises:
        ConfigError: the fleet asks for more devices or users than the dataset has.
        DataError: the dataset file is missing or malformed.
    """
    spec = fleet.data
    if spec.source == "synthetic":
        return SyntheticFleet(fleet.devices, seed=seed,
                              windows_per_device=spec.windows_per_device)
    data = load_dataset(spec.source, data_dir)
    available = data.users()
    users = spec.subjects or available
    unknown = sorted(set(users) - set(available))
    if unknown:
        raise ConfigError(f"fleet.data.subjects = {unknown}: not in {spec.source} "
                          f"(its users are {available[0]}..{available[-1]})")
    data = data.for_users(users)
    if spec.partition == "dirichlet":
        return DirichletPartition(data, fleet.devices, spec.dirichlet_alpha, seed)
    if fleet.devices > len(users):
        raise ConfigError(
            f"fleet.devices = {fleet.devices}: the natural {spec.source} split has only "
            f"{len(users)} users; lower devices or use partition = 'dirichlet'"
        )
    return NaturalPartition(data, users[: fleet.devices])


def load_dataset(name: str, data_dir: Path) -> LabeledData:
    """A shared dataset by name, as examples a backbone takes ("har" or "fsdd")."""
    if name == "har":
        from devicetune.data.har import load_har

        return load_har(data_dir)
    if name == "fsdd":
        from devicetune.data.fsdd import load_fsdd

        return load_fsdd(data_dir).spectrograms()
    raise ConfigError(f"unknown dataset {name!r}; allowed: 'har', 'fsdd', 'synthetic'")
