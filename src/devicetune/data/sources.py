"""Where a fleet's per-device data comes from: one interface, three partitions.

A `DeviceDataSource` hands out one device's examples, in time order, on demand. Any
object with its four members can be passed to `devicetune.simulate(data=...)`; so can
a `LabeledData` (a team's arrays, `LabeledData.from_arrays`), which is then split as
``[fleet.data] partition`` says. The ones devicetune has:

- `SyntheticFleet`: the built-in generator (any number of devices, nothing stored);
- `NaturalPartition`: a real dataset split by the person who produced it (HAR subject,
  FSDD speaker, the ``user`` column of a team's file), the split a fleet actually has;
- `DirichletPartition`: a pooled dataset split by a Dirichlet draw over labels per
  device (Hsu et al. 2019, "Measuring the Effects of Non-Identical Data Distribution").
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from devicetune.config import FleetConfig
from devicetune.data.labeled import LabeledData
from devicetune.data.synthetic import SyntheticFleet
from devicetune.errors import ConfigError, DataError


@runtime_checkable
class DeviceDataSource(Protocol):
    """Per-device data for a fleet of ``devices`` devices.

    Attributes:
        devices: how many devices there are; ids run ``0..devices-1``.
        class_names: the classes, in the model's order.
        example_shape: one example's shape, without the batch.

    ``device(k)`` returns device ``k``'s examples in the order they were recorded (the
    first part trains, the rest tests). A source may also have ``user_of(k)``, the id the
    device's person had in the data, for ``devices.csv``.
    """

    devices: int

    @property
    def class_names(self) -> tuple[str, ...]: ...

    @property
    def example_shape(self) -> tuple[int, ...]: ...

    def device(self, device_id: int) -> LabeledData: ...


def user_of(source: DeviceDataSource, device_id: int) -> str:
    """The id of the person behind a device, as the data had it ("" when mixed)."""
    method = getattr(source, "user_of", None)
    return str(method(device_id)) if callable(method) else str(device_id)


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

    def user_of(self, device_id: int) -> str:
        return ""  # a dealt-out device mixes many people's rows


class NaturalPartition(_Partition):
    """Device ``k`` holds every example of the ``k``-th user in ``users``."""

    def __init__(self, data: LabeledData, users: list[int]) -> None:
        self.users = list(users)
        super().__init__(data, rows_by_key(data.user, self.users))

    def user_of(self, device_id: int) -> str:
        return self._data.user_name(self.users[device_id])


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
        super().__init__(data, rows_by_key(owner, list(range(devices))))


def rows_by_key(keys: np.ndarray, wanted: list[int]) -> list[np.ndarray]:
    """The row indices holding each wanted key, in row order: one stable sort, not a scan
    per key (10,000 users of 600,000 rows split in milliseconds, not seconds)."""
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    starts = np.searchsorted(ordered, wanted, side="left")
    ends = np.searchsorted(ordered, wanted, side="right")
    return [order[start:end] for start, end in zip(starts, ends, strict=True)]


FleetInput = DeviceDataSource | LabeledData


def open_fleet_data(fleet: FleetConfig, seed: int, data_dir: Path,
                    data: FleetInput | None = None,
                    class_names: Sequence[str] | None = None) -> DeviceDataSource:
    """The data source a `FleetConfig` describes, or the one given.

    Args:
        data: a team's own data instead of ``[fleet.data] source``: a `LabeledData`
            (split by ``partition`` and ``subjects`` as a file would be) or any
            `DeviceDataSource` (used as it is).
        class_names: the model's classes, onto which a file's text labels are mapped.

    Raises:
        ConfigError: the fleet asks for more devices or users than the dataset has.
        DataError: the dataset file is missing or malformed.
    """
    spec = fleet.data
    if data is not None and not isinstance(data, LabeledData):
        if not isinstance(data, DeviceDataSource):
            raise DataError(f"data = {type(data).__name__}: give a LabeledData "
                            "(LabeledData.from_arrays) or a DeviceDataSource (devices, "
                            "class_names, example_shape, device(k))")
        return data
    if data is None and spec.source == "synthetic":
        shift = spec.label_shift
        synthetic = SyntheticFleet(
            fleet.devices, seed=seed, windows_per_device=spec.windows_per_device,
            label_shift=None if shift is None else (shift.past_classes,
                                                    shift.future_overlap),
            past_fraction=1 - spec.test_fraction)
        return _ordered(synthetic, spec.order, seed)
    if data is None:
        data = load_source(spec, data_dir, class_names, section="fleet.data")
    name = "the data given" if spec.source == "synthetic" else spec.source
    available = data.users()
    users = spec.subjects or available
    unknown = sorted(set(users) - set(available))
    if unknown:
        raise ConfigError(f"fleet.data.subjects = {unknown}: not in {name} "
                          f"(its users are {available[0]}..{available[-1]})")
    data = data.for_users(users)
    if spec.partition == "dirichlet":
        partition: DeviceDataSource = DirichletPartition(data, fleet.devices,
                                                         spec.dirichlet_alpha, seed)
        return _ordered(partition, spec.order, seed)
    if fleet.devices > len(users):
        raise ConfigError(
            f"fleet.devices = {fleet.devices}: the natural split of {name} has only "
            f"{len(users)} users; lower devices or use partition = 'dirichlet'"
        )
    return _ordered(NaturalPartition(data, users[: fleet.devices]), spec.order, seed)


def _ordered(source: DeviceDataSource, order: str, seed: int) -> DeviceDataSource:
    return ClassGrouped(source, seed) if order == "class_grouped" else source


class ClassGrouped:
    """Another source's devices with each device's rows grouped by class: the classes
    one after another, in a random order per device, rows of a class in recorded order.

    It is the scenario where a person records one activity (or digit) for a while and
    then the next: the past (the first part) lacks the classes that come last, so
    personalization is measured on classes the device never trained on.
    """

    def __init__(self, source: DeviceDataSource, seed: int) -> None:
        self.source = source
        self.seed = seed
        self.devices = source.devices

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.source.class_names

    @property
    def example_shape(self) -> tuple[int, ...]:
        return self.source.example_shape

    def device(self, device_id: int) -> LabeledData:
        data = self.source.device(device_id)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 11, device_id]))
        rank = rng.permutation(len(self.class_names))  # the position of each class
        return data.select(np.argsort(rank[data.y], kind="stable"))

    def user_of(self, device_id: int) -> str:
        return user_of(self.source, device_id)


def load_source(spec, data_dir: Path, class_names: Sequence[str] | None,
                section: str) -> LabeledData:
    """A pooled dataset a config section names: a team's file (``source`` or ``dataset``
    = "file") or a shared dataset by name."""
    from devicetune.config import DataFileFields

    assert isinstance(spec, DataFileFields)
    name = getattr(spec, "source", None) or getattr(spec, "dataset", None)
    if name == "file":
        from devicetune.data.files import load_file

        return load_file(spec, class_names, section=section)
    return load_dataset(str(name), data_dir)


def load_dataset(name: str, data_dir: Path) -> LabeledData:
    """A shared dataset by name, as examples a backbone takes ("har" or "fsdd"), checked
    like a team's file (a damaged copy is refused, not trained on).

    Raises:
        DataError: the file is missing, its arrays disagree in length, or its values
            are not finite or not valid labels.
    """
    from devicetune.data.arrays import validate

    if name == "har":
        from devicetune.data.har import HAR_FILE, load_har

        where, loader = Path(data_dir) / HAR_FILE, lambda: load_har(data_dir)
    elif name == "fsdd":
        from devicetune.data.fsdd import FSDD_FILE, load_fsdd

        where, loader = Path(data_dir) / FSDD_FILE, lambda: load_fsdd(data_dir).spectrograms()
    else:
        raise ConfigError(f"unknown dataset {name!r}; allowed: 'har', 'fsdd', 'synthetic', "
                          "'file'")
    try:
        data = loader()
    except (ValueError, IndexError) as exc:  # arrays of different lengths, bad offsets
        raise DataError(f"{where}: {exc}") from None
    validate(data, str(where))
    return data
