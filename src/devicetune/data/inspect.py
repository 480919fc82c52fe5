"""`devicetune data inspect`: what a dataset holds, and whether personalization can work.

The figure that decides it is how often a person's past (the part a phone trains on)
lacks classes their future (the part it is measured on) has: fine-tuning on such a
past pushes the model away from exactly the classes the person will need.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from devicetune.config import DataFileFields, FleetData
from devicetune.data.labeled import LabeledData
from devicetune.errors import DevicetuneWarning


@dataclass(frozen=True)
class Inspection:
    """A dataset described per user (device), for a table or ``--json``.

    Attributes:
        rows_per_user: min, median and max rows a user has.
        label_mix_distance: p10, median and p90 over users of the total variation
            distance between a user's label mix and the whole dataset's.
        users_past_lacks_future_class: users whose past (the first ``1 - test_fraction``
            of their rows, in time) lacks at least one class their future has.
        future_rows_unseen: p10, median and p90 over users of the share of their future
            rows whose class their past does not have.
    """

    source: str
    users: int
    rows: int
    example_shape: list[int]
    classes: list[str]
    class_counts: list[int]
    rows_per_user: dict[str, float]
    label_mix_distance: dict[str, float]
    test_fraction: float
    users_past_lacks_future_class: int
    future_rows_unseen: dict[str, float]
    missing: dict[str, int] = field(default_factory=dict)
    constant: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def inspect_users(users: Iterable[LabeledData], class_names: tuple[str, ...],
                  example_shape: tuple[int, ...], test_fraction: float, source: str,
                  missing: dict[str, int] | None = None, constant: list[str] | None = None,
                  notes: list[str] | None = None) -> Inspection:
    """Describe users streamed one at a time (each in time order)."""
    num_classes = len(class_names)
    sizes, mixes, lacks, unseen = [], [], 0, []
    totals = np.zeros(num_classes, dtype=np.int64)
    for data in users:
        counts = np.bincount(data.y, minlength=num_classes)[:num_classes]
        totals += counts
        sizes.append(len(data))
        mixes.append(counts / max(1, counts.sum()))
        n_test = min(max(int(round(len(data) * test_fraction)), 1), max(len(data) - 1, 1))
        past, future = data.y[: len(data) - n_test], data.y[len(data) - n_test:]
        seen = np.isin(future, np.unique(past))
        lacks += int((~seen).any())
        unseen.append(float((~seen).mean()) if len(future) else 0.0)
    sizes_a = np.asarray(sizes, dtype=float)
    overall = totals / max(1, totals.sum())
    distance = 0.5 * np.abs(np.asarray(mixes) - overall).sum(axis=1) if mixes else np.zeros(0)
    return Inspection(
        source=source, users=len(sizes), rows=int(sizes_a.sum()),
        example_shape=list(example_shape), classes=list(class_names),
        class_counts=[int(c) for c in totals],
        rows_per_user=_min_median_max(sizes_a),
        label_mix_distance=_percentiles(distance), test_fraction=test_fraction,
        users_past_lacks_future_class=lacks, future_rows_unseen=_percentiles(unseen),
        missing=dict(missing or {}), constant=list(constant or []), notes=list(notes or []),
    )


def _min_median_max(values: np.ndarray) -> dict[str, float]:
    if not len(values):
        return {"min": 0.0, "median": 0.0, "max": 0.0}
    return {"min": float(values.min()), "median": float(np.median(values)),
            "max": float(values.max())}


def _percentiles(values: Iterable[float] | np.ndarray) -> dict[str, float]:
    array = np.asarray(list(values), dtype=float)
    if not len(array):
        return {"p10": 0.0, "median": 0.0, "p90": 0.0}
    p10, median, p90 = np.percentile(array, [10, 50, 90])
    return {"p10": float(p10), "median": float(median), "p90": float(p90)}


def inspect_file(spec: DataFileFields, test_fraction: float, limit: int = 1000
                 ) -> Inspection:
    """Describe a team's file, including what `load_file` would refuse (missing values
    are counted, then filled with medians only to describe the rest).

    Raises:
        DataError: the file cannot be read, or its labels or users are unusable.
    """
    from devicetune.data.files import load_file, read_table

    table = read_table(spec)
    notes = []
    if table.missing:
        notes.append("missing values would be refused without impute = \"median\"; they "
                     "were filled with medians to describe the rest")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DevicetuneWarning)  # constant columns: in the table
        data = load_file(spec.model_copy(update={"impute": "median"}))
    users = data.users()[:limit]
    if len(data.users()) > limit:
        notes.append(f"the first {limit} of {len(data.users())} users were described")
    return inspect_users((data.for_users([u]) for u in users), data.class_names,
                         data.example_shape, test_fraction, str(spec.path),
                         table.missing, table.constant, notes)


def scenario(spec: FleetData) -> str:
    """The split a fleet's data section describes, in a few words."""
    words = [spec.source, spec.partition, f"order {spec.order}"]
    if spec.label_shift is not None:
        words.append(f"label shift: pasts hold {spec.label_shift.past_classes} classes, "
                     f"future overlap {spec.label_shift.future_overlap:g}")
    return ", ".join(words)


def inspect_config(path: Path, data_dir: Path, test_fraction: float | None,
                   limit: int = 1000) -> Inspection:
    """Describe the devices a config personalises, split as the run would split them.

    Raises:
        ConfigError: the config is invalid or has no [fleet] section.
        DataError: its data cannot be read.
    """
    from devicetune.config import load_config
    from devicetune.data.sources import open_fleet_data

    config = load_config(path)
    config.require("fleet", command="devicetune data inspect")
    assert config.fleet is not None
    fleet, spec = config.fleet, config.fleet.personalization
    if spec.subjects:  # the people who personalise, as `simulate` picks them
        fleet = fleet.model_copy(update={
            "devices": len(spec.subjects),
            "data": fleet.data.model_copy(update={"subjects": spec.subjects,
                                                  "partition": "natural"})})
    classes = config.model.classes if config.model is not None else None
    source = open_fleet_data(fleet, config.seed, data_dir, class_names=classes)
    fraction = test_fraction or spec.test_fraction or fleet.data.test_fraction
    missing, constant, notes = {}, [], []
    if fleet.data.source == "file":
        from devicetune.data.files import read_table

        table = read_table(fleet.data)
        missing, constant = table.missing, table.constant
    count = min(limit, source.devices)
    if source.devices > limit:
        notes.append(f"the first {limit} of {source.devices} devices were described")
    name = f"{path} ({scenario(fleet.data)})"
    return inspect_users((source.device(k) for k in range(count)), source.class_names,
                         source.example_shape, fraction, name, missing, constant, notes)
