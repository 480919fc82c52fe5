"""How varied a fleet is: sizes, label mixes and feature statistics per device.

Streams over devices, keeping a few numbers per device, so it works for 10,000 users.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np

from devicetune.data.labeled import LabeledData
from devicetune.data.synthetic import SyntheticFleet


@dataclass(frozen=True)
class Spread:
    """Percentiles of one per-device quantity."""

    p10: float
    median: float
    p90: float

    @classmethod
    def of(cls, values: Iterable[float]) -> Spread:
        p10, median, p90 = np.percentile(np.asarray(list(values), dtype=float), [10, 50, 90])
        return cls(float(p10), float(median), float(p90))


@dataclass(frozen=True)
class FleetSummary:
    """Per-device statistics of a fleet, as spreads across devices."""

    devices: int
    windows: int
    windows_per_device: Spread
    classes_seen: Spread
    label_mix_distance: Spread  # total variation from the fleet's overall label mix
    channel_mean_between_std: float  # std across devices of per-device channel means
    channel_mean_within_std: float  # typical std of a channel within one device
    style: dict[str, Spread]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def summarize(devices: Iterable[tuple[int, LabeledData]], num_classes: int,
              styles: dict[str, list[float]] | None = None) -> FleetSummary:
    """Summarize devices streamed as ``(device_id, data)``."""
    sizes, seen, mixes, means, within = [], [], [], [], []
    for _, data in devices:
        counts = data.label_counts()[:num_classes]
        sizes.append(len(data))
        seen.append(int((counts > 0).sum()))
        mixes.append(counts / max(1, counts.sum()))
        flat = data.x.reshape(len(data), -1, data.x.shape[-1])
        means.append(flat.mean(axis=(0, 1)))
        within.append(flat.std(axis=(0, 1)).mean())
    mix = np.asarray(mixes)
    overall = (mix * np.asarray(sizes)[:, None]).sum(axis=0) / max(1, sum(sizes))
    distance = 0.5 * np.abs(mix - overall).sum(axis=1)
    return FleetSummary(
        devices=len(sizes),
        windows=int(sum(sizes)),
        windows_per_device=Spread.of(sizes),
        classes_seen=Spread.of(seen),
        label_mix_distance=Spread.of(distance),
        channel_mean_between_std=float(np.asarray(means).std(axis=0).mean()),
        channel_mean_within_std=float(np.mean(within)),
        style={name: Spread.of(values) for name, values in (styles or {}).items()},
    )


def summarize_synthetic(fleet: SyntheticFleet, device_ids: Iterable[int] | None = None
                        ) -> FleetSummary:
    """Summarize a synthetic fleet, including the spread of its personal styles."""
    ids = list(range(fleet.devices)) if device_ids is None else list(device_ids)
    styles: dict[str, list[float]] = {"rotation_deg": [], "gain": [], "tempo": [],
                                      "noise_std": []}
    for device_id in ids:
        style = fleet.style(device_id)
        styles["rotation_deg"].append(style.rotation_deg)
        styles["gain"].append(float(style.gain.mean()))
        styles["tempo"].append(style.tempo)
        styles["noise_std"].append(style.noise_std)
    return summarize(fleet.iter_devices(ids), len(fleet.class_names), styles)
